"""Cold starts on a real cluster: a bare runtime pod, kfn's Deployment path and kfn's warm pool.

    make bench-cluster            (scripts/test-cluster --bench: starts the cluster, loads the images)
    python bench/cluster_cold_start.py [--runs 10]      (with KUBECONFIG set and the images loaded)

Installs its own release of charts/kfn (NodePort, pool.size POOL_SIZE) in a namespace of its own and
applies, with idleTimeout 1s so each goes back to zero quickly:
- `hello` (examples/hello.yaml): a pool can serve it, so a cold start claims and specialises a
  pool pod;
- `hello-deploy`: the same code with resources outside the pool's class, so it takes the
  Deployment path (a pod start); its pod template is copied into a plain Deployment `bare-hello`
  that nothing of kfn watches;
- `fastapi-hello` and `fastapi-deploy`: a FastAPI app behind Mangum (`requirements: [fastapi==0.*,
  mangum==0.*]`, from a package index this bench serves on the node's address: pods have no
  internet), through the pool and through the Deployment path. Their requirements are built once,
  by a build Job (apply → Ready is printed: the build); each cold start fetches the archive.

Then, alternating, `--runs` times each:
- bare pod: the Deployment's scale subresource patched 0 → 1 (through `kubectl proxy`); the time
  from that call to the first 200 from the runtime on the pod's IP, polled every 5 ms as soon as a
  watch reports the IP. The floor of a pod start: no readiness probe, EndpointSlice or gateway.
- each function at zero: the time from sending the request to the gateway's NodePort on
  127.0.0.1 to its 200; for pool runs also the pool's refill (the request → the pool has
  POOL_SIZE ready idle pods again). Before a pool run the pool is full.

Prints p50/p99 of each against the targets of issue 17 (pool p50 <= 150 ms, p99 <= 300 ms; FastAPI
from the pool p50 <= 250 ms; the Deployment path with requirements p50 <= 1.3x the bare pod) as
PASS/MISS: information, never an assertion. Removes the release, its namespaces and the CRD at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import platform  # noqa: E402 - the tier's helpers: kubectl, helm, waits

TARGET_P50, TARGET_P99 = 1.2, 1.5
TARGET_REQUIREMENTS_P50 = 1.3
TARGET_POOL_P50, TARGET_POOL_P99 = 0.150, 0.300
TARGET_POOL_FASTAPI_P50 = 0.250
POOL_SIZE = 2
# Resources outside the pool's class (its cpu request is 50m): the Deployment path.
DEPLOYMENT_PATH_RESOURCES = {"requests": {"cpu": "51m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
FASTAPI = "fastapi-hello"
FASTAPI_DEPLOY = "fastapi-deploy"
HELLO_DEPLOY = "hello-deploy"
FASTAPI_REQUIREMENTS = ["fastapi==0.*", "mangum==0.*"]
FASTAPI_CODE = """
from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/{path:path}")
def hello(name: str = "world"):
    return {"message": f"Hello, {name}!"}


handler = Mangum(app, lifespan="off")
"""
POLL_SECONDS = 0.005
BARE = "bare-hello"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 10 values, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class PodIPWatch:
    """Streams the pods of a label selector and reports the first pod IP that appears after `arm()`."""

    def __init__(self, proxy: platform.ApiProxy, namespace: str, selector: str) -> None:
        self._path = f"/api/v1/namespaces/{namespace}/pods?watch=1&labelSelector={selector}"
        self._proxy = proxy.address
        self._ip: str | None = None
        self._armed = threading.Event()
        self._found = threading.Event()
        self._stop = False
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="pod-ip-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._conn = http.client.HTTPConnection(self._proxy, timeout=300)
            try:
                self._conn.request("GET", self._path)
                response = self._conn.getresponse()
                for line in response:
                    event = json.loads(line)
                    pod = event.get("object") or {}
                    ip = (pod.get("status") or {}).get("podIP")
                    alive = not (pod.get("metadata") or {}).get("deletionTimestamp")
                    if self._armed.is_set() and ip and alive and event.get("type") != "DELETED":
                        self._ip = ip
                        self._found.set()
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.1)
            finally:
                self._conn.close()

    def arm(self) -> None:
        self._ip = None
        self._found.clear()
        self._armed.set()

    def wait(self, timeout: float) -> str:
        if not self._found.wait(timeout):
            raise TimeoutError(f"no pod IP within {timeout:g}s")
        self._armed.clear()
        assert self._ip is not None
        return self._ip

    def close(self) -> None:
        self._stop = True
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(2)
        self._thread.join(5)


def first_200(url: str, deadline: float, *, method: str = "GET", body: bytes | None = None) -> float:
    """Poll `url` every POLL_SECONDS until it answers 200; the monotonic time it did."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if platform.request(method, url, body=body, timeout=2).status == 200:
                return time.monotonic()
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{url} did not answer 200 in time")


def bare_cold_start(proxy: platform.ApiProxy, namespace: str, watch: PodIPWatch) -> float:
    scale = f"/apis/apps/v1/namespaces/{namespace}/deployments/{BARE}/scale"
    watch.arm()
    started = time.monotonic()
    proxy.call("PATCH", scale, {"spec": {"replicas": 1}}, content_type="application/merge-patch+json")
    ip = watch.wait(60)
    # The runtime's own invoke endpoint (the Runtime Interface Emulator's path): the first invocation it runs.
    seconds = first_200(f"http://{ip}:8080{INVOKE_PATH}", started + 60, method="POST",
                        body=b'{"queryStringParameters": {"name": "bench"}}') - started
    proxy.call("PATCH", scale, {"spec": {"replicas": 0}}, content_type="application/merge-patch+json")
    platform.wait_until(f"no {BARE} pod", lambda: not platform.pods(namespace, f"app={BARE}"), timeout=60)
    return seconds


def kfn_cold_start(release: platform.Release, namespace: str, name: str, watch: PodIPWatch | None = None,
                   *, pool_runtime: str | None = None) -> tuple[float, float | None]:
    """(request → 200 through the gateway, a second figure or None).

    Deployment path (`watch` given): the second figure is request → the new pod's runtime ready on
    its IP, polled every 5 ms as soon as it has one; the difference is what kfn adds after the
    runtime is ready (the kubelet's readiness probe, the gateway's informer and the proxying).
    Pool (`pool_runtime` given): the pool is full first, and the second figure is request → the
    pool full again (its refill).
    """
    url = release.url(name, namespace, "name=bench")
    side: list[float] = []
    if pool_runtime is not None:
        wait_pool_full(namespace, pool_runtime)

    def poll_pod() -> None:
        assert watch is not None
        with contextlib.suppress(TimeoutError):
            ip = watch.wait(60)
            side.append(first_200(f"http://{ip}:8080/_/ready", time.monotonic() + 60))

    if watch is not None:
        watch.arm()
    poller = threading.Thread(target=poll_pod, name="pod-ready-poller", daemon=True)
    started = time.monotonic()
    if watch is not None:
        poller.start()
    answer = platform.http_get(url, timeout=60)
    seconds = time.monotonic() - started
    if watch is not None:
        poller.join(5)
    if answer.status != 200:
        raise RuntimeError(f"{name} answered {answer.status}: {answer.text}")
    if pool_runtime is not None:
        wait_pool_full(namespace, pool_runtime)
        side.append(time.monotonic())
    # Back to zero by kfn's own means (idleTimeout), and every gateway replica knows it.
    platform.wait_until(f"{name} scaled to zero", lambda: platform.instances(name, namespace) == 0, timeout=60)
    platform.wait_until(f"no {name} pod", lambda: not platform.function_pods(name, namespace), timeout=60)
    for base in release.gateway_pod_urls():
        platform.wait_until(f"{base} to see {name} at zero", lambda base=base: platform.http_get(
            base + "/system/functions/" + platform.cli_name(name, namespace), timeout=5,
            headers=release.system_headers()).json()["replicas"] == 0,
            timeout=30, interval=0.1)
    return seconds, (side[0] - started if side else None)


def wait_pool_full(namespace: str, runtime: str) -> None:
    platform.wait_until(f"the {runtime} pool full", lambda: platform.idle_pool_ready(namespace, POOL_SIZE, runtime),
                        timeout=90, interval=0.02)


def bare_deployment(namespace: str) -> dict[str, Any]:
    """A plain Deployment with the pod template the operator built for hello-deploy, at zero replicas."""
    built = platform.get("deployment", HELLO_DEPLOY, namespace=namespace)
    template = built["spec"]["template"]
    template["metadata"] = {"labels": {"app": BARE}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": BARE, "labels": {"app": BARE}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": BARE}}, "template": template},
    }


def _ms(x: float) -> str:
    return f"{x * 1000:8.0f} ms"


def _row(label: str, values: list[float]) -> str:
    return f"{label:50} {_ms(statistics.median(values))} {_ms(percentile(values, 99))} {_ms(min(values))}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(runs: dict[str, list[float]], build_seconds: float) -> None:
    version = platform.kubectl("version", "-o", "json").stdout
    server = json.loads(version).get("serverVersion", {}).get("gitVersion", "?")
    bare, deploy, ready, pool, refill = (runs["bare"], runs["deploy"], runs["deploy ready"], runs["pool"],
                                         runs["pool refill"])
    fastapi_deploy, fastapi_pool = runs["fastapi deploy"], runs["fastapi pool"]
    print(f"\ncold starts on a real cluster: Kubernetes {server}, {os.cpu_count()} CPUs, "
          f"{len(bare)} runs each, alternating; p99 is nearest-rank (with 10 runs: the slowest)\n")
    print(f"{'':50} {'p50':>11} {'p99':>11} {'min':>11}")
    print(_row("bare pod: scale 0→1 → 200 on the pod IP", bare))
    print(_row("kfn, Deployment path: request at zero → 200", deploy))
    if len(ready) == len(deploy):
        print(_row("  of which: request → runtime ready on pod IP", ready))
        print(_row("  and: runtime ready → 200 via the gateway", [k - r for k, r in zip(deploy, ready, strict=True)]))
    r50 = statistics.median(deploy) / statistics.median(bare)
    r99 = percentile(deploy, 99) / percentile(bare, 99)
    print(f"{'  / bare pod (target <= 1.2x p50, <= 1.5x p99)':50} {r50:10.2f}x {r99:10.2f}x  "
          f"{_verdict(r50 <= TARGET_P50)} {_verdict(r99 <= TARGET_P99)}")
    print(_row("kfn, warm pool: request at zero → 200", pool))
    p50, p99 = statistics.median(pool), percentile(pool, 99)
    print(f"{'  target p50 <= 150 ms, p99 <= 300 ms':50} {_verdict(p50 <= TARGET_POOL_P50):>11} "
          f"{_verdict(p99 <= TARGET_POOL_P99):>11}")
    if refill:
        print(_row(f"  the pool's refill: request → {POOL_SIZE} idle pods ready", refill))
    print(_row("kfn, FastAPI + Mangum, Deployment path", fastapi_deploy))
    f50 = statistics.median(fastapi_deploy) / statistics.median(bare)
    print(f"{'  / bare pod (target p50 <= 1.3x)':50} {f50:10.2f}x {'':11}  {_verdict(f50 <= TARGET_REQUIREMENTS_P50)}")
    print(_row("kfn, FastAPI + Mangum, warm pool", fastapi_pool))
    print(f"{'  target p50 <= 250 ms':50} {_verdict(statistics.median(fastapi_pool) <= TARGET_POOL_FASTAPI_P50):>11}")
    print(f"{'FastAPI + Mangum build (apply → Ready: Job, pip, store)':50} {build_seconds * 1000:8.0f} ms")
    print("\nevery run (ms):")
    for label, values in runs.items():
        print(f"  {label:16} " + " ".join(f"{x * 1000:.0f}" for x in values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if platform.another_kfn("bench"):
        return 1
    # The NATS store in an emptyDir: no claim to bind on a cluster without a provisioner, and cold
    # starts do not touch it.
    index = contextlib.ExitStack()
    index_url = index.enter_context(platform.package_index(FASTAPI_REQUIREMENTS, dependencies=True))
    host = index_url.split("/")[2].split(":")[0]
    release = platform.Release(f"kfn-bench-{platform.RUN_ID}", platform.create_namespace("kfn-bench"),
                               {"async": {"nats": {"persistence": {"enabled": False}}},
                                "pool": {"size": POOL_SIZE},
                                "functions": {"pip": {"indexUrl": index_url, "trustedHosts": [host]}}})
    try:
        started = time.monotonic()
        release.install()
        namespace = platform.create_namespace("bench")
        hello = yaml.safe_load((platform.EXAMPLES / "hello.yaml").read_text())
        hello["spec"]["scale"]["idleTimeout"] = "1s"
        release.deploy(hello, namespace)
        deploy = yaml.safe_load((platform.EXAMPLES / "hello.yaml").read_text())
        deploy["metadata"]["name"] = HELLO_DEPLOY
        deploy["spec"]["scale"]["idleTimeout"] = "1s"
        deploy["spec"]["resources"] = DEPLOYMENT_PATH_RESOURCES
        release.deploy(deploy, namespace)
        platform.apply(bare_deployment(namespace), namespace=namespace)
        print(f"release installed and hello deployed in {time.monotonic() - started:.1f}s")
        started = time.monotonic()
        release.deploy(platform.function(FASTAPI, FASTAPI_CODE, runtime="python3.11", requirements=FASTAPI_REQUIREMENTS,
                                         scale={"minReplicas": 0, "idleTimeout": "1s"}), namespace, timeout=600)
        build_seconds = time.monotonic() - started
        print(f"{FASTAPI}: requirements built in {build_seconds:.1f}s (apply → Ready)")
        release.deploy(platform.function(FASTAPI_DEPLOY, FASTAPI_CODE, runtime="python3.11",
                                         requirements=FASTAPI_REQUIREMENTS, resources=DEPLOYMENT_PATH_RESOURCES,
                                         scale={"minReplicas": 0, "idleTimeout": "1s"}), namespace, timeout=600)
        runs: dict[str, list[float]] = {k: [] for k in ("bare", "deploy", "deploy ready", "pool", "pool refill",
                                                        "fastapi deploy", "fastapi pool", "fastapi pool refill")}
        with platform.ApiProxy() as proxy:
            bare_watch = PodIPWatch(proxy, namespace, f"app={BARE}")
            deploy_watch = PodIPWatch(proxy, namespace, f"kfn.dev/function={HELLO_DEPLOY},kfn.dev/component=function")
            try:
                for run in range(1, args.runs + 1):
                    runs["bare"].append(bare_cold_start(proxy, namespace, bare_watch))
                    seconds, ready = kfn_cold_start(release, namespace, HELLO_DEPLOY, deploy_watch)
                    runs["deploy"].append(seconds)
                    if ready is not None:
                        runs["deploy ready"].append(ready)
                    seconds, refill = kfn_cold_start(release, namespace, "hello", pool_runtime="python3.12")
                    runs["pool"].append(seconds)
                    if refill is not None:
                        runs["pool refill"].append(refill)
                    runs["fastapi deploy"].append(kfn_cold_start(release, namespace, FASTAPI_DEPLOY)[0])
                    seconds, refill = kfn_cold_start(release, namespace, FASTAPI, pool_runtime="python3.11")
                    runs["fastapi pool"].append(seconds)
                    if refill is not None:
                        runs["fastapi pool refill"].append(refill)
                    print(f"run {run:2}: " + "   ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in runs.items() if v),
                          flush=True)
            finally:
                bare_watch.close()
                deploy_watch.close()
        report(runs, build_seconds)
    finally:
        index.close()
        release.uninstall()
        platform.delete_namespaces()
        platform.delete_crd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
