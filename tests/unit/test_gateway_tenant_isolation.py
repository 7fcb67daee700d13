"""A kfn key never reaches a function's code, whatever function a client sends it to; no function
can take the requests addressed to the gateway by its IP address, nor a host another namespace
claimed first (SECURITY.md).

Clients send their key with every request (`kfn invoke` with $KFN_API_KEY, an SDK configured
once): the owner of a public function they call, often another tenant, must not receive it. A
function's own credentials (a JWT, a password) in the same headers still reach it."""
from __future__ import annotations

from typing import Any

import pytest

from kfn.core.functions import InvalidFunction
from kfn.core.keys import StaticKeys, parse_key_file
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend
from tests.support.events import FakeStore
from tests.support.functions import make_function
from tests.support.gateway import running_gateway

TEAM = "team-secret-0123456789ab"
ADMIN = "admin-secret-0123456789"
KEYS = StaticKeys(parse_key_file({"admin": {"ops": ADMIN}, "namespaces": {"team": {"app": TEAM}}}))


def event_headers(body: Any) -> dict[str, str]:
    assert isinstance(body, dict), body
    return {name.lower(): value for name, value in body["headers"].items()}


@pytest.mark.parametrize("key", [TEAM, ADMIN], ids=["namespace-key", "admin-key"])
@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key"])
async def test_a_key_sent_to_a_public_function_is_not_passed_on_to_it(key: str, header: str) -> None:
    backend = FakeBackend(make_function("hello", namespace="other"))
    value = f"Bearer {key}" if header == "Authorization" else key
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        status, body, _ = await gw.json("POST", "/function/hello.other", data=b"{}", headers={header: value})
    assert status == 200
    assert header.lower() not in event_headers(body)
    assert key not in str(body)


async def test_a_key_sent_with_an_asynchronous_invocation_of_a_public_function_is_not_stored() -> None:
    backend, store = FakeBackend(make_function("hello", namespace="other")), FakeStore()
    async with backend, running_gateway(backend, keys=KEYS, events=store) as gw:
        status, _, _ = await gw.json("POST", "/async-function/hello.other", data=b"{}",
                                     headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 202
    [(_, payload)] = store.events.values()
    assert ADMIN.encode() not in payload


async def test_a_key_sent_to_a_public_functions_host_is_not_passed_on_to_it() -> None:
    backend = FakeBackend(make_function("site", namespace="other", http={"hosts": ["site.example.com"]}))
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        status, body, _ = await gw.json("GET", "/system/functions", headers={
            "Host": "site.example.com", "Authorization": f"Bearer {ADMIN}"})
    assert status == 200
    assert ADMIN not in str(body)


async def test_a_key_repeated_after_another_value_of_its_header_is_not_passed_on() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        status, body, _ = await gw.json("GET", "/function/hello", headers=[
            ("X-Api-Key", "not-a-key"), ("X-Api-Key", TEAM)])
    assert status == 200
    assert TEAM not in str(body)


async def test_a_public_function_still_gets_its_own_credentials_that_are_no_kfn_key() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        status, body, _ = await gw.json("GET", "/function/hello", headers={
            "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "X-Api-Key": "the-functions-own-key-123"})
    assert status == 200
    headers = event_headers(body)
    assert headers["authorization"] == "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"
    assert headers["x-api-key"] == "the-functions-own-key-123"


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.7", "0x7f.1", "localhost", "kfn-gateway"])
def test_a_function_cannot_claim_an_ip_address_or_a_single_label_name_as_its_host(host: str) -> None:
    with pytest.raises(InvalidFunction, match="spec.http.hosts"):
        make_function("thief", http={"hosts": [host]})


async def test_requests_addressed_to_the_gateways_ip_address_stay_the_gateways() -> None:
    # Pods are probed and scraped by their IP address. A function that claimed one before hosts were
    # checked (a backend keeps the last valid definition of a Function) takes nothing either.
    thief = make_function("thief", namespace="evil", http={"hosts": ["thief.example.com"]})
    thief.spec.http.hosts[0] = "127.0.0.1"
    backend = FakeBackend(thief, make_function("hello"))
    async with backend, running_gateway(backend, keys=KEYS, settings=GatewaySettings(system_auth=True)) as gw:
        health = await gw.json("GET", "/healthz", headers={"Host": f"127.0.0.1:{gw.port}"})   # the kubelet's probe
        scrape = await gw.json("GET", "/metrics", headers={"Host": f"127.0.0.1:{gw.port}"})   # the autoscaler's
        system = await gw.json("GET", "/system/functions", headers={"Host": "127.0.0.1"})
        hello = await gw.json("GET", "/function/hello", headers={"Host": "127.0.0.1", "X-Api-Key": TEAM})
    assert health[:2] == (200, {"status": "ok"})
    assert scrape[0] == 200 and "kfn_" in scrape[1]
    assert system[:2] == (401, {"message": "Unauthorized"})
    assert hello[0] == 200
    assert hello[1]["rawPath"] == "/"   # hello's own event (the thief would see /function/hello)


async def test_a_host_claimed_by_two_namespaces_stays_with_the_function_that_claimed_it_first() -> None:
    # As the Gateway API resolves conflicting routes: the oldest wins, whatever the names sort as.
    shop = make_function("shop", namespace="shop", metadata={"creationTimestamp": "2026-01-05T10:00:00Z"},
                         http={"hosts": ["shop.example.com"]})
    squatter = make_function("aaa", namespace="aaa", metadata={"creationTimestamp": "2026-03-01T09:00:00Z"},
                             http={"hosts": ["shop.example.com"]})
    backend = FakeBackend(squatter, shop)
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        status, _, headers = await gw.json("GET", "/", headers={"Host": "shop.example.com"})
        served_by = {i.id: i.function for f in (shop, squatter) for i in backend.ready(f.ref)}
    assert status == 200
    assert served_by[headers["X-Instance"]] == shop.ref
