"""Gateway authentication: /system/* for admin keys, key-protected functions, API Gateway's 401/403
answers, keys that rotate without a restart, and AWS Signature V4 as boto3 signs."""
from __future__ import annotations

import datetime
import json

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from kfn.core.keys import ApiKey, parse_key_file
from kfn_gateway.auth import AuthError, Scope, authenticate
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.keys import ADMIN, OTHER, TEAM, MutableKeys, bearer

# -- /system/* ------------------------------------------------------------------------------------------

async def test_system_paths_without_a_key_are_401_as_api_gateway_answers() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(system_auth=True),
                                        keys=MutableKeys()) as gw:
        for path in ("/system/functions", "/system/functions/hello", "/system/logs/hello", "/system/anything"):
            status, body, headers = await gw.json("GET", path)
            assert (status, body) == (401, {"message": "Unauthorized"}), path
            assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [bearer(ADMIN), {"X-Api-Key": ADMIN}])
async def test_an_admin_key_opens_the_system_paths(headers: dict[str, str]) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(system_auth=True),
                                        keys=MutableKeys()) as gw:
        status, body, _ = await gw.json("GET", "/system/functions", headers=headers)
    assert status == 200 and body[0]["name"] == "hello"


async def test_a_namespace_key_on_the_system_paths_is_403() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(system_auth=True),
                                        keys=MutableKeys()) as gw:
        status, body, _ = await gw.json("GET", "/system/functions", headers=bearer(TEAM))
    assert (status, body) == (403, {"message": "Forbidden"})


async def test_without_system_auth_the_system_paths_stay_open_and_health_and_metrics_always_do() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        assert (await gw.json("GET", "/system/functions"))[0] == 200
    async with backend, running_gateway(backend, settings=GatewaySettings(system_auth=True)) as gw:
        assert (await gw.json("GET", "/healthz"))[0] == 200
        async with gw.session.get(gw.url("/metrics")) as response:
            assert response.status == 200


# -- key-protected functions --------------------------------------------------------------------------------

def protected(name: str = "secret", namespace: str = "team") -> object:
    return make_function(name, namespace=namespace, http={"auth": {"type": "key"}})


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    (bearer("not-a-key-of-anyone-at-all"), 401),
    (bearer(OTHER), 403),
    (bearer(TEAM), 200),
    ({"X-Api-Key": TEAM}, 200),
    (bearer(ADMIN), 200),
])
async def test_a_key_protected_function_answers_only_keys_of_its_namespace_or_admin(headers: dict[str, str],
                                                                                   status: int) -> None:
    backend = FakeBackend(protected())
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        await backend.add_instance("secret.team")
        got, body, _ = await gw.json("GET", "/function/secret.team/x", headers=headers)
    assert got == status
    if status == 401:
        assert body == {"message": "Unauthorized"}


async def test_a_public_function_needs_no_key() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        await backend.add_instance("hello")
        assert (await gw.json("GET", "/function/hello"))[0] == 200


@pytest.mark.parametrize("headers", [bearer(TEAM), {"X-Api-Key": TEAM}])
async def test_the_key_never_reaches_the_function(headers: dict[str, str]) -> None:
    backend = FakeBackend(protected())
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        await backend.add_instance("secret.team")
        status, event, _ = await gw.json("GET", "/function/secret.team", headers={**headers, "X-Other": "kept"})
    assert status == 200
    assert "authorization" not in event["headers"] and "x-api-key" not in event["headers"]
    assert event["headers"]["x-other"] == "kept"
    assert TEAM not in json.dumps(event)


async def test_a_refused_request_never_reaches_an_instance_nor_starts_one() -> None:
    backend = FakeBackend(protected(), start_on_scale=False)
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        status, _, _ = await gw.json("POST", "/function/secret.team", data=b"x" * 1000)
    assert status == 401
    assert backend.scale_calls == []


async def test_a_rotated_key_works_at_once_and_the_old_one_stops_working() -> None:
    keys = MutableKeys()
    backend = FakeBackend(protected())
    async with backend, running_gateway(backend, keys=keys) as gw:
        await backend.add_instance("secret.team")
        assert (await gw.json("GET", "/function/secret.team", headers=bearer(TEAM)))[0] == 200
        rotated = "rotated-secret-0123456789"
        keys.ring = parse_key_file({"namespaces": {"team": {"app": rotated}}})
        assert (await gw.json("GET", "/function/secret.team", headers=bearer(TEAM)))[0] == 401
        assert (await gw.json("GET", "/function/secret.team", headers=bearer(rotated)))[0] == 200


async def test_a_cors_preflight_to_a_key_protected_function_is_answered_without_a_key() -> None:
    function = make_function("secret", namespace="team", http={
        "auth": {"type": "key"}, "cors": {"allowOrigins": ["https://app.example.com"], "allowMethods": ["GET"]}})
    backend = FakeBackend(function)
    async with backend, running_gateway(backend, keys=MutableKeys()) as gw:
        async with gw.session.options(gw.url("/function/secret.team"), headers={
                "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}) as response:
            assert response.status == 204
        status, _, headers = await gw.json("GET", "/function/secret.team", headers={"Origin": "https://app.example.com"})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"   # the browser can read the 401


# -- the function the Invoke API calls ---------------------------------------------------------------------

def request(headers: dict[str, str], *, method: str = "POST",
            path: str = "/2015-03-31/functions/hello/invocations"):  # type: ignore[no-untyped-def]
    return make_mocked_request(method, path, headers=CIMultiDict(headers))


def test_authenticate_returns_the_key_or_raises_401_or_403() -> None:
    keys = MutableKeys().keys()
    assert authenticate(request(bearer(TEAM)), Scope.of_namespace("team"), keys) == ApiKey("app", "team")
    with pytest.raises(AuthError) as refused:
        authenticate(request(bearer(TEAM)), Scope.of_namespace("other"), keys)
    assert refused.value.status == 403
    with pytest.raises(AuthError) as refused:
        authenticate(request({}), Scope.system(), keys)
    assert refused.value.status == 401
    assert refused.value.response().headers["WWW-Authenticate"].startswith("Bearer")


def signed(body: bytes, *, key_id: str = "app", secret: str = TEAM, when: datetime.datetime | None = None,
           path: str = "/2015-03-31/functions/hello.team/invocations?Qualifier=%24LATEST") -> dict[str, str]:
    """The headers boto3 sends for a Lambda Invoke (botocore's own signer)."""
    from unittest import mock

    pytest.importorskip("botocore")

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    aws = AWSRequest(method="POST", url=f"http://gateway.example:8080{path}", data=body,
                     headers={"Content-Type": "application/json", "X-Amz-Invocation-Type": "RequestResponse"})
    fixed = when or datetime.datetime.now(datetime.UTC)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed.replace(tzinfo=None)):
        SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(aws)
    headers = dict(aws.headers.items())
    headers["Host"] = "gateway.example:8080"
    return headers


def test_an_aws_signature_v4_made_with_a_key_is_accepted() -> None:
    body = b'{"x": 1}'
    path = "/2015-03-31/functions/hello.team/invocations?Qualifier=%24LATEST"
    key = authenticate(request(signed(body), path=path), Scope.of_namespace("team"), MutableKeys().keys(), body=body)
    assert key == ApiKey("app", "team")


@pytest.mark.parametrize("tamper", ["body", "secret", "key id", "old", "no body given"])
def test_an_aws_signature_v4_that_does_not_check_out_is_401(tamper: str) -> None:
    body = b'{"x": 1}'
    path = "/2015-03-31/functions/hello.team/invocations?Qualifier=%24LATEST"
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    headers = signed(body, secret="wrong-secret-0123456789" if tamper == "secret" else TEAM,
                     key_id="nobody" if tamper == "key id" else "app", when=an_hour_ago if tamper == "old" else None)
    sent = b'{"x": 2}' if tamper == "body" else body
    with pytest.raises(AuthError) as refused:
        authenticate(request(headers, path=path), Scope.of_namespace("team"), MutableKeys().keys(),
                     body=None if tamper == "no body given" else sent)
    assert refused.value.status == 401
