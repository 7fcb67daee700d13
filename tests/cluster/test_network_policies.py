"""The chart's NetworkPolicies on a real API server, and the platform working with them in place;
the operator's check of the installed CRD there.

This cluster's network plugin (a bridge) does not enforce NetworkPolicies: what they let through is
checked by evaluating them (tests/chart/test_network_policies.py). Here the real API server must
accept every policy, the operator must give a function namespace its policy `kfn-functions`, and a
synchronous and an asynchronous invocation must work with all of them installed.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

POLICY = "kfn-functions"
MARKER_CODE = """
import json


def handler(event, context):
    payload = json.loads(event["body"]) if "requestContext" in event else event
    print("MARKER", payload.get("marker"), flush=True)
    return {"marker": payload.get("marker")}
"""


@pytest.fixture(scope="module")
def marked(release: Release) -> Iterator[tuple[str, str]]:
    """A Function that prints each event's marker, in a namespace of its own; (name, namespace)."""
    namespace = platform.create_namespace("netpol")
    platform.apply(platform.function("marker", MARKER_CODE, scale={"minReplicas": 1, "maxReplicas": 1}),
                   namespace=namespace)
    platform.wait_ready("marker", namespace, timeout=120)
    yield "marker", namespace
    platform.kubectl("delete", "function", "marker", "--ignore-not-found", "--wait=false", namespace=namespace,
                     check=False)


def test_the_api_server_accepts_every_network_policy_of_the_release(release: Release) -> None:
    names = {p["metadata"]["name"] for p in platform.items("networkpolicies", namespace=release.namespace)}
    assert names == {release.nats, release.gateway_deployment, release.operator}


def test_the_operator_gives_a_function_namespace_its_network_policy(release: Release,
                                                                  marked: tuple[str, str]) -> None:
    _, namespace = marked
    policy = platform.wait_until(f"NetworkPolicy {namespace}/{POLICY}", lambda: platform.get(
        "networkpolicy", POLICY, namespace=namespace), timeout=30)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    (gateway, *_) = rule["from"]
    assert gateway["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": release.namespace}
    # The peer selects the release's gateway pods, as they run.
    selector = ",".join(f"{k}={v}" for k, v in gateway["podSelector"]["matchLabels"].items())
    assert {p["metadata"]["name"] for p in platform.pods(release.namespace, selector)} == {
        p["metadata"]["name"] for p in platform.pods(release.namespace, release.selector("gateway"))}


def test_a_synchronous_invocation_works_with_the_policies_installed(release: Release,
                                                                  marked: tuple[str, str]) -> None:
    name, namespace = marked
    marker = uuid.uuid4().hex
    answer = platform.request("POST", f"{release.gateway}{platform.function_path(name, namespace)}",
                              body=json.dumps({"marker": marker}).encode(),
                              headers={"Content-Type": "application/json"})
    assert answer.status == 200, f"{answer.status} {answer.text}"
    assert answer.json() == {"marker": marker}


def test_an_asynchronous_invocation_is_delivered_with_the_policies_installed(release: Release,
                                                                           marked: tuple[str, str]) -> None:
    name, namespace = marked
    marker = uuid.uuid4().hex
    answer = platform.request("POST", f"{release.gateway}/async-function/{platform.cli_name(name, namespace)}",
                              body=json.dumps({"marker": marker}).encode(),
                              headers={"Content-Type": "application/json"})
    assert answer.status == 202, f"{answer.status} {answer.text}"
    platform.wait_until(f"the event {marker} delivered", lambda: f"MARKER {marker}" in platform.function_log(
        name, namespace), timeout=60, interval=1)


def test_the_operator_finds_the_installed_crd_is_the_one_it_was_built_with(release: Release) -> None:
    from kfn.core import crd

    log = platform.kubectl("logs", f"deployment/{release.operator}", namespace=release.namespace, check=False).stdout
    assert f"the installed CRD {platform.CRD_NAME} is revision {crd.REVISION}, this operator's" in log, log[-2000:]
    events = platform.items("events", namespace=release.namespace)
    assert not [e for e in events if e.get("reason") == "CRDOutdated"]
