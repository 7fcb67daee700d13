"""A key-protected function (spec.http.auth key) never runs without a key, through any path, even
when the gateway has no keys at all (kfn local without --keys, an emptied keys file, kfn gateway
without key Secrets): nobody can present a key then, so nobody may call it. Public functions keep
working without keys."""
from __future__ import annotations

import pytest

from kfn.core.keys import KeyRing, StaticKeys
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend
from tests.support.events import FakeStore
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.invoke_api import assert_lambda_error, invoke, signed

NO_KEYS = StaticKeys(KeyRing())
ANY_KEY = "whatever-key-0123456789"


def backend() -> FakeBackend:
    return FakeBackend(make_function("secret", http={"auth": {"type": "key"}, "hosts": ["secret.example.com"]}),
                       make_function("hello"), start_on_scale=False)


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {ANY_KEY}"}, {"X-Api-Key": ANY_KEY}],
                         ids=["no-key", "bearer", "x-api-key"])
@pytest.mark.parametrize("path", ["/function/secret", "/function/secret/deep?x=1"])
async def test_with_no_keys_a_key_protected_function_is_401_on_its_path(path: str, headers: dict[str, str]) -> None:
    fake = backend()
    async with fake, running_gateway(fake, keys=NO_KEYS) as gw:
        instance = await fake.add_instance("secret")
        status, body, _ = await gw.json("POST", path, data=b"{}", headers=headers)
    assert (status, body) == (401, {"message": "Unauthorized"})
    assert fake.fake(instance).invocations == 0


async def test_with_no_keys_a_key_protected_function_is_401_at_its_host() -> None:
    fake = backend()
    async with fake, running_gateway(fake, keys=NO_KEYS) as gw:
        instance = await fake.add_instance("secret")
        status, body, _ = await gw.json("GET", "/anything", headers={"Host": "secret.example.com"})
    assert (status, body) == (401, {"message": "Unauthorized"})
    assert fake.fake(instance).invocations == 0


async def test_with_no_keys_a_key_protected_functions_async_invocation_is_401_and_nothing_is_stored() -> None:
    fake, store = backend(), FakeStore()
    async with fake, running_gateway(fake, keys=NO_KEYS, events=store) as gw:
        status, body, _ = await gw.json("POST", "/async-function/secret", data=b"{}")
    assert (status, body) == (401, {"message": "Unauthorized"})
    assert store.events == {}


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event", "DryRun"])
async def test_with_no_keys_the_invoke_api_refuses_a_key_protected_function_unsigned(invocation_type: str) -> None:
    fake, store = backend(), FakeStore()
    async with fake, running_gateway(fake, keys=NO_KEYS, events=store) as gw:
        instance = await fake.add_instance("secret")
        answer = await invoke(gw, "secret", headers={"X-Amz-Invocation-Type": invocation_type})
    assert_lambda_error(answer, 403, "MissingAuthenticationTokenException")
    assert fake.fake(instance).invocations == 0
    assert store.events == {}


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event", "DryRun"])
async def test_with_no_keys_the_invoke_api_refuses_a_key_protected_function_whatever_the_signature(
        invocation_type: str) -> None:
    fake, store = backend(), FakeStore()
    payload = b'{"x": 1}'
    async with fake, running_gateway(fake, keys=NO_KEYS, events=store) as gw:
        instance = await fake.add_instance("secret")
        headers = signed(gw, "secret", payload, key_id="anyone", secret=ANY_KEY,
                         headers={"X-Amz-Invocation-Type": invocation_type})
        sigv4 = await invoke(gw, "secret", payload, headers=headers)
        bearer = await invoke(gw, "secret", payload, headers={"Authorization": f"Bearer {ANY_KEY}",
                                                              "X-Amz-Invocation-Type": invocation_type})
    assert_lambda_error(sigv4, 403, "UnrecognizedClientException")
    assert_lambda_error(bearer, 403, "UnrecognizedClientException")
    assert fake.fake(instance).invocations == 0
    assert store.events == {}


async def test_with_no_keys_a_public_function_still_runs_through_every_path() -> None:
    fake, store = backend(), FakeStore()
    async with fake, running_gateway(fake, keys=NO_KEYS, events=store,
                                     settings=GatewaySettings(queue_timeout=5)) as gw:
        await fake.add_instance("hello")
        assert (await gw.json("GET", "/function/hello"))[0] == 200
        assert (await gw.json("POST", "/async-function/hello", data=b"{}"))[0] == 202
        assert (await invoke(gw, "hello")).status == 200
        assert (await invoke(gw, "hello", headers={"X-Amz-Invocation-Type": "Event"})).status == 202
        assert (await invoke(gw, "hello", headers={"X-Amz-Invocation-Type": "DryRun"})).status == 204
    assert len(store.events) == 2
