"""The production chart on a real cluster: keys made once by the install hook (no random value in
any render, never changed by an upgrade), and a NATS server that admits only the platform's user.

NATS is reached from this host on the server pod's IP (the host reaches pod IPs), with nats-py.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
import nats.errors
import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

ECHO = """
def handler(event, context):
    print("DELIVERED", event.get("body"), context.aws_request_id, flush=True)
    return {}
"""


def generated_secrets(release: Release) -> dict[str, dict[str, Any]]:
    """name → the Secrets the install hook made in the release namespace."""
    return {s["metadata"]["name"]: s for s in platform.items(
        "secrets", namespace=release.namespace,
        selector=f"{platform.LABEL_INSTANCE}={release.name},app.kubernetes.io/component=secrets")}


def nats_pod_ip(release: Release) -> str:
    pod = platform.get("pod", f"{release.nats}-0", namespace=release.namespace)
    assert pod is not None and pod["status"].get("podIP"), "no NATS pod with an IP"
    return str(pod["status"]["podIP"])


async def try_connect(url: str, **login: str) -> BaseException | None:
    """Connect once (no retries) and publish one message; None if that worked, else the error."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **login)
    except (nats.errors.Error, OSError, TimeoutError) as e:
        return e
    try:
        await nc.publish("kfn-test.ping", b"{}")
        await nc.flush(timeout=5)
    finally:
        await nc.close()
    return None


# -- keys made once ------------------------------------------------------------------------------------

def test_the_install_hook_made_each_key_and_went_once_it_succeeded(release: Release) -> None:
    secrets = generated_secrets(release)
    assert set(secrets) == {"kfn-admin-keys", f"{release.name}-archive-key", f"{release.name}-pool-key",
                            f"{release.name}-nats-auth"}
    for secret in secrets.values():
        # Not in the release's manifest; marked for it (a later render of one adopts it) and kept:
        # Helm never deletes them.
        annotations = secret["metadata"].get("annotations") or {}
        assert annotations.get("meta.helm.sh/release-name") == release.name
        assert annotations.get("helm.sh/resource-policy") == "keep"
    hook = f"{release.name}-secrets"
    for kind in ("job", "serviceaccount", "role", "rolebinding"):
        assert platform.get(kind, hook, namespace=release.namespace) is None, f"the hook's {kind} stayed"


def test_an_upgrade_keeps_every_generated_key(release: Release) -> None:
    before = {name: s["data"] for name, s in generated_secrets(release).items()}
    seconds = release.upgrade({})
    platform.record("helm upgrade --wait (the install hook ran again)", seconds, "s")
    assert {name: s["data"] for name, s in generated_secrets(release).items()} == before


# -- NATS admits only the platform's user ----------------------------------------------------------------

def test_nats_refuses_a_client_without_credentials(release: Release) -> None:
    error = asyncio.run(try_connect(f"nats://{nats_pod_ip(release)}:4222"))
    assert error is not None, "a client without credentials was admitted"
    assert "authorization violation" in str(error).lower(), repr(error)


def test_nats_refuses_a_wrong_password(release: Release) -> None:
    error = asyncio.run(try_connect(f"nats://{nats_pod_ip(release)}:4222", user="kfn",
                                    password="not-the-password-0123456789"))
    assert error is not None and "authorization violation" in str(error).lower(), repr(error)


def test_nats_admits_the_platforms_credentials(release: Release) -> None:
    assert asyncio.run(try_connect(release.nats_url(nats_pod_ip(release)))) is None


def test_the_gateways_and_the_operator_are_connected_as_the_platform_user(release: Release) -> None:
    ip = nats_pod_ip(release)
    connz = platform.http_get(f"http://{ip}:8222/connz?auth=true&limit=1024", timeout=5).json()
    users = {c.get("name"): c.get("authorized_user") for c in connz.get("connections") or ()}
    # The gateways' event store (and their archive store and NATS triggers once used; the
    # operator's scheduler when it leads).
    assert "kfn-events" in users, users
    assert set(users.values()) == {"kfn"}, users


def test_async_invocations_are_still_delivered(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "nats-auth-echo"
    deployed.append(name)
    release.deploy(platform.function(name, ECHO, scale={"minReplicas": 1, "maxReplicas": 1}), fn_ns)
    marker = f"auth-{uuid.uuid4().hex[:8]}"
    answer = platform.request("POST", f"{release.gateway}/async-function/{platform.cli_name(name, fn_ns)}",
                              body=json.dumps({"marker": marker}).encode(),
                              headers={"Content-Type": "application/json"})
    assert answer.status == 202, f"{answer.status} {answer.text}"
    request_id = answer.json()["requestId"]
    platform.wait_until(f"the event {request_id} delivered to {name}",
                        lambda: request_id in platform.function_log(name, fn_ns), timeout=90, interval=1)
    assert marker in platform.function_log(name, fn_ns)


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_no_log_shows_the_nats_password(release: Release, component: str) -> None:
    password = release.nats_password
    for pod in platform.pods(release.namespace, release.selector(component)):
        log = platform.kubectl("logs", pod["metadata"]["name"], namespace=release.namespace, check=False).stdout
        assert password not in log, pod["metadata"]["name"]
