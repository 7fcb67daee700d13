"""The operator restarted in the middle of reconciling a batch of Functions."""
from __future__ import annotations

import collections
import threading
import time

from tests.cluster import platform
from tests.cluster.platform import Release

BATCH = 10
CODE = """
def handler(event, context):
    return {{"n": {n}}}
"""


def test_operator_restart_mid_batch_converges_without_duplicates(release: Release) -> None:
    namespace = platform.create_namespace("batch")
    names = [f"batch-{n}" for n in range(BATCH)]
    operator = release.selector("operator")
    (old,) = [p["metadata"]["name"] for p in platform.pods(release.namespace, operator)]

    started = time.monotonic()
    batch = [platform.function(name, CODE.format(n=n)) for n, name in enumerate(names)]
    with platform.ApiProxy() as api, api.watch(f"/apis/kfn.dev/v1alpha1/namespaces/{namespace}/functions") as events:
        applying = threading.Thread(target=platform.apply, args=(batch,), kwargs={"namespace": namespace})
        applying.start()
        next(events)  # the operator sees the batch arrive as this watch does: restart it now
        api.call("DELETE", f"/api/v1/namespaces/{release.namespace}/pods/{old}", {"gracePeriodSeconds": 1})
        # Where the batch stood: children made, and Functions whose reconcile finished (a status).
        stood = {what: len(api.call("GET", path)["items"]) for what, path in (
            ("Deployments", f"/apis/apps/v1/namespaces/{namespace}/deployments"),
            ("Functions", f"/apis/kfn.dev/v1alpha1/namespaces/{namespace}/functions"))}
        stood["Functions with a status"] = sum(1 for fn in api.call(
            "GET", f"/apis/kfn.dev/v1alpha1/namespaces/{namespace}/functions")["items"] if fn.get("status"))
        applying.join(30)
    platform.wait_until("a new operator pod ready", lambda: [
        p for p in platform.ready_pods(release.namespace, operator) if p["metadata"]["name"] != old], timeout=60)
    for name in names:
        platform.wait_ready(name, namespace, timeout=90)
    converged = time.monotonic() - started

    platform.record("operator restarted mid-batch: when it was deleted, of 10",
                    ", ".join(f"{what} {n}" for what, n in stood.items()))
    platform.record("operator restarted mid-batch: apply → all 10 Ready", converged, "s")
    per_function = collections.defaultdict(collections.Counter)
    for kind in ("deployments", "services", "configmaps"):
        for obj in platform.items(kind, namespace=namespace, selector="kfn.dev/function"):
            per_function[obj["metadata"]["labels"]["kfn.dev/function"]][kind] += 1
    expected = {"deployments": 1, "configmaps": 1}   # and no Service: the gateway reaches pods at their IPs
    assert {name: dict(per_function[name]) for name in names} == {name: expected for name in names}
    for name in names:
        fn = platform.get("function", name, namespace=namespace)
        (configmap,) = platform.items("configmaps", namespace=namespace,
                                      selector=f"kfn.dev/function={name},kfn.dev/component=code")
        assert configmap["metadata"]["name"] == f"{name}-code-{fn['status']['codeHash']}"
    platform.delete_namespace(namespace)
