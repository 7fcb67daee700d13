"""Key-protected functions on a real cluster: keys from each namespace's kfn-api-keys Secret, the
admin keys from the release's, and a rotation that needs no gateway restart."""
from __future__ import annotations

import base64
import secrets

from tests.cluster import platform
from tests.cluster.platform import Release

CODE = """
def handler(event, context):
    return {"authorization": event["headers"].get("authorization"), "apiKey": event["headers"].get("x-api-key")}
"""


def key_secret(namespace: str, keys: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kfn-api-keys", "namespace": namespace},
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}}


def answers(release: Release, url_path: str, key: str | None) -> set[int]:
    """The status each gateway replica answers (straight to each pod)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return {platform.http_get(base + url_path, timeout=10, headers=headers).status
            for base in release.gateway_pod_urls()}


def test_a_key_protected_function_takes_its_namespaces_keys_and_rotation_needs_no_restart(
        release: Release) -> None:
    namespace = platform.create_namespace("auth")
    other = platform.create_namespace("auth-other")
    first, rotated, foreign = (secrets.token_hex(20) for _ in range(3))
    platform.apply(key_secret(namespace, {"app": first}), namespace=namespace)
    platform.apply(key_secret(other, {"app": foreign}), namespace=other)
    name = "guarded"
    release.deploy(platform.function(name, CODE, http={"auth": {"type": "key"}}, scale={"minReplicas": 1}),
                   namespace)
    path = platform.function_path(name, namespace)
    gateway_pods = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
                    for p in platform.ready_pods(release.namespace, release.selector("gateway"))}

    assert answers(release, path, None) == {401}
    platform.wait_until("every gateway to accept the namespace's key", lambda: answers(release, path, first) == {200},
                        timeout=60)
    platform.wait_until("a key of another namespace to be 403", lambda: answers(release, path, foreign) == {403},
                        timeout=60)
    assert answers(release, path, release.admin_key) == {200}
    seen = platform.http_get(release.gateway + path, headers={"Authorization": f"Bearer {first}"}).json()
    assert seen == {"authorization": None, "apiKey": None}   # the key never reaches the function

    platform.apply(key_secret(namespace, {"app": rotated}), namespace=namespace)
    platform.wait_until("the rotated key to work and the old one to stop", lambda: answers(
        release, path, rotated) == {200} and answers(release, path, first) == {401}, timeout=60)
    platform.record("key rotation (Secret edited): old key refused, new key accepted by every gateway", "yes")
    after = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
             for p in platform.ready_pods(release.namespace, release.selector("gateway"))}
    assert after == gateway_pods   # the same gateway pods, not restarted
    platform.delete_namespace(namespace)
    platform.delete_namespace(other)
