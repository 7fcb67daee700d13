"""Cold starts on a real cluster: a bare runtime pod against a function through kfn's gateway.

    make bench-cluster            (scripts/test-cluster --bench: starts the cluster, loads the images)
    python bench/cluster_cold_start.py [--runs 10]      (with KUBECONFIG set and the images loaded)

Installs its own release of charts/kfn (NodePort) in a namespace of its own, applies
examples/hello.yaml (idleTimeout shortened so it goes back to zero quickly) and copies the pod
template the operator built for it into a plain Deployment `bare-hello` that nothing of kfn
watches. Then, alternating, `--runs` times each:

- bare pod: the Deployment's scale subresource patched 0 → 1 (through `kubectl proxy`); the time
  from that call to the first 200 from the runtime on the pod's IP, polled every 5 ms as soon as a
  watch reports the IP. The floor: what Kubernetes and the runtime take, with no readiness probe,
  EndpointSlice or gateway in between.
- through kfn: the function at zero replicas; the time from sending the request to the gateway's
  NodePort on 127.0.0.1 to its 200 (the gateway scales from zero, waits for a ready endpoint and
  forwards).
- through kfn, with requirements: `fastapi-hello`, a FastAPI app behind Mangum
  (`requirements: [fastapi==0.*, mangum==0.*]`, from a package index this bench serves on the node's
  address: pods have no internet). Its requirements are built once, by a build Job (the time from
  apply to Ready is printed: the build); each cold start fetches the archive in the init container,
  with no installer.

Prints p50/p99 of each and their ratio against the targets (kfn p50 <= 1.2x, p99 <= 1.5x the bare
pod's; with requirements p50 <= 1.3x) as PASS/MISS: information, never an assertion. Removes the
release, its namespaces and the CRD at the end.
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
FASTAPI = "fastapi-hello"
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


def kfn_cold_start(release: platform.Release, namespace: str, watch: PodIPWatch,
                   name: str = "hello") -> tuple[float, float | None]:
    """(request → 200 through the gateway, request → the new pod's runtime ready on its IP).

    The second is measured on the side, by polling the pod's /_/ready every 5 ms as soon as it
    has an IP: the difference is what kfn adds after the runtime is ready (the kubelet's
    readiness probe, the EndpointSlice, the gateway's informer and the proxying).
    """
    url = release.url(name, namespace, "name=bench")
    direct: list[float] = []

    def poll_pod() -> None:
        with contextlib.suppress(TimeoutError):
            ip = watch.wait(60)
            direct.append(first_200(f"http://{ip}:8080/_/ready", time.monotonic() + 60))

    watch.arm()
    poller = threading.Thread(target=poll_pod, name="pod-ready-poller", daemon=True)
    started = time.monotonic()
    poller.start()
    answer = platform.http_get(url, timeout=60)
    seconds = time.monotonic() - started
    poller.join(5)
    if answer.status != 200:
        raise RuntimeError(f"{name} answered {answer.status}: {answer.text}")
    # Back to zero by kfn's own means (idleTimeout), and every gateway replica knows it.
    platform.wait_until(f"{name} scaled to zero", lambda: platform.deployment_replicas(name, namespace) == 0,
                        timeout=60)
    platform.wait_until(f"no {name} pod", lambda: not platform.function_pods(name, namespace), timeout=60)
    for base in release.gateway_pod_urls():
        platform.wait_until(f"{base} to see {name} at zero", lambda base=base: platform.http_get(
            base + "/system/functions/" + platform.cli_name(name, namespace), timeout=5,
            headers=release.system_headers()).json()["replicas"] == 0,
            timeout=30, interval=0.1)
    return seconds, (direct[0] - started if direct else None)


def bare_deployment(namespace: str) -> dict[str, Any]:
    """A plain Deployment with the pod template the operator built for hello, at zero replicas."""
    built = platform.get("deployment", "hello", namespace=namespace)
    template = built["spec"]["template"]
    template["metadata"] = {"labels": {"app": BARE}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": BARE, "labels": {"app": BARE}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": BARE}}, "template": template},
    }


def report(bare: list[float], kfn: list[float], kfn_ready: list[float], fastapi: list[float],
           build_seconds: float) -> None:
    def ms(x: float) -> str:
        return f"{x * 1000:8.0f} ms"

    version = platform.kubectl("version", "-o", "json").stdout
    server = json.loads(version).get("serverVersion", {}).get("gitVersion", "?")
    print(f"\ncold starts on a real cluster: Kubernetes {server}, {os.cpu_count()} CPUs, "
          f"{len(bare)} runs each, alternating; p99 is nearest-rank (with 10 runs: the slowest)\n")
    print(f"{'':44} {'p50':>11} {'p99':>11} {'min':>11}")
    print(f"{'bare pod: scale 0→1 → 200 on the pod IP':44} {ms(statistics.median(bare))} "
          f"{ms(percentile(bare, 99))} {ms(min(bare))}")
    print(f"{'kfn: request at zero → 200 via the gateway':44} {ms(statistics.median(kfn))} "
          f"{ms(percentile(kfn, 99))} {ms(min(kfn))}")
    r50 = statistics.median(kfn) / statistics.median(bare)
    r99 = percentile(kfn, 99) / percentile(bare, 99)
    if kfn_ready:
        print(f"{'  of which: request → runtime ready on pod IP':44} {ms(statistics.median(kfn_ready))} "
              f"{ms(percentile(kfn_ready, 99))} {ms(min(kfn_ready))}")
        after = [k - r for k, r in zip(kfn, kfn_ready, strict=True)]
        print(f"{'  and: runtime ready → 200 via the gateway':44} {ms(statistics.median(after))} "
              f"{ms(percentile(after, 99))} {ms(min(after))}")
    print(f"{'kfn / bare pod':44} {r50:10.2f}x {r99:10.2f}x")
    print(f"{'target':44} {'<= ' + format(TARGET_P50, '.1f') + 'x':>11} {'<= ' + format(TARGET_P99, '.1f') + 'x':>11}")
    print(f"{'':44} {'PASS' if r50 <= TARGET_P50 else 'MISS':>11} {'PASS' if r99 <= TARGET_P99 else 'MISS':>11}")
    if fastapi:
        f50 = statistics.median(fastapi) / statistics.median(bare)
        print(f"{'kfn, FastAPI + Mangum (archive fetched)':44} {ms(statistics.median(fastapi))} "
              f"{ms(percentile(fastapi, 99))} {ms(min(fastapi))}")
        print(f"{'  / bare pod (target p50 <= ' + format(TARGET_REQUIREMENTS_P50, '.1f') + 'x)':44} {f50:10.2f}x "
              f"{'PASS' if f50 <= TARGET_REQUIREMENTS_P50 else 'MISS':>11}")
        print(f"{'  its build (apply → Ready: Job, pip, store)':44} {build_seconds * 1000:8.0f} ms")
    print("\nevery run (ms): bare " + " ".join(f"{x * 1000:.0f}" for x in bare))
    print("                kfn  " + " ".join(f"{x * 1000:.0f}" for x in kfn))
    if fastapi:
        print("                fastapi " + " ".join(f"{x * 1000:.0f}" for x in fastapi))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if platform.get("crd", platform.CRD_NAME) is not None:
        print(f"bench: the cluster already has the {platform.CRD_NAME} CRD (another kfn?); this bench installs "
              "its own release and removes the CRD at the end, so it does not run next to it", file=sys.stderr)
        return 1
    # The NATS store in an emptyDir: no claim to bind on a cluster without a provisioner, and cold
    # starts do not touch it.
    index = contextlib.ExitStack()
    index_url = index.enter_context(platform.package_index(FASTAPI_REQUIREMENTS, dependencies=True))
    host = index_url.split("/")[2].split(":")[0]
    release = platform.Release(f"kfn-bench-{platform.RUN_ID}", platform.create_namespace("kfn-bench"),
                               {"async": {"nats": {"persistence": {"enabled": False}}},
                                "functions": {"pip": {"indexUrl": index_url, "trustedHosts": [host]}}})
    try:
        started = time.monotonic()
        release.install()
        namespace = platform.create_namespace("bench")
        hello = yaml.safe_load((platform.EXAMPLES / "hello.yaml").read_text())
        hello["spec"]["scale"]["idleTimeout"] = "1s"
        release.deploy(hello, namespace)
        platform.apply(bare_deployment(namespace), namespace=namespace)
        print(f"release installed and hello deployed in {time.monotonic() - started:.1f}s")
        started = time.monotonic()
        release.deploy(platform.function(FASTAPI, FASTAPI_CODE, runtime="python3.11", requirements=FASTAPI_REQUIREMENTS,
                                         scale={"minReplicas": 0, "idleTimeout": "1s"}), namespace, timeout=600)
        build_seconds = time.monotonic() - started
        print(f"{FASTAPI}: requirements built in {build_seconds:.1f}s (apply → Ready)")
        fastapi: list[float] = []
        bare: list[float] = []
        kfn: list[float] = []
        kfn_ready: list[float] = []
        with platform.ApiProxy() as proxy:
            bare_watch = PodIPWatch(proxy, namespace, f"app={BARE}")
            kfn_watch = PodIPWatch(proxy, namespace, "kfn.dev/function=hello,kfn.dev/component=function")
            fastapi_watch = PodIPWatch(proxy, namespace, f"kfn.dev/function={FASTAPI},kfn.dev/component=function")
            try:
                for run in range(1, args.runs + 1):
                    bare.append(bare_cold_start(proxy, namespace, bare_watch))
                    seconds, ready = kfn_cold_start(release, namespace, kfn_watch)
                    kfn.append(seconds)
                    if ready is not None:
                        kfn_ready.append(ready)
                    fastapi.append(kfn_cold_start(release, namespace, fastapi_watch, FASTAPI)[0])
                    print(f"run {run:2}: bare {bare[-1] * 1000:6.0f} ms   kfn {kfn[-1] * 1000:6.0f} ms"
                          f" (runtime ready on its pod IP after {ready * 1000 if ready else float('nan'):.0f} ms)"
                          f"   fastapi {fastapi[-1] * 1000:6.0f} ms", flush=True)
            finally:
                bare_watch.close()
                kfn_watch.close()
                fastapi_watch.close()
        report(bare, kfn, kfn_ready if len(kfn_ready) == len(kfn) else [], fastapi, build_seconds)
    finally:
        index.close()
        release.uninstall()
        platform.delete_namespaces()
        platform.kubectl("delete", "crd", platform.CRD_NAME, "--ignore-not-found", "--timeout=90s", check=False,
                         timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
