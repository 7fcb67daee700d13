"""Helpers for the real-cluster tier, written once: kubectl, helm, HTTP, waiting, load, logs.

Everything here drives the real things: the kubectl of the cluster, the chart through
`.cache/bin/helm`, the gateway's NodePort on 127.0.0.1 and the `kfn` command line. Every wait is
bounded in time and polls at a short interval; every process started here is stopped by its PID.
Nothing imports kfn: the tier checks the product from the outside, as a user sees it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime
import http.client
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support import waiting

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kfn"
EXAMPLES = REPO / "examples"
CRD_NAME = "functions.kfn.dev"
# The node's address on the pod network: pods reach servers bound here (a package index).
NODE_IP = os.environ.get("KFN_NODE_IP", "10.88.0.1")

# Labels the chart puts on the operator's and the gateway's pods, and the operator on functions'.
COMPONENT_PODS = "app.kubernetes.io/name in (kfn-operator,kfn-gateway)"
LABEL_FUNCTION = "kfn.dev/function"
LABEL_COMPONENT = "kfn.dev/component"
LABEL_INSTANCE = "app.kubernetes.io/instance"

# How a test names a function to the gateway and to `kfn invoke/logs`: NAME.NAMESPACE, since
# /function/NAME means the gateway's default namespace only.
QUALIFIED_NAMES = True

T = TypeVar("T")


def _first_executable(*candidates: str | None) -> str:
    for candidate in candidates:
        if candidate and (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            return candidate
        if candidate and os.sep not in candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    raise FileNotFoundError(f"none of {[c for c in candidates if c]} is an executable")


KUBECTL = _first_executable(os.environ.get("KFN_KUBECTL"), "/var/lib/realk8s/bin/kubectl", "kubectl")
HELM = _first_executable(os.environ.get("KFN_HELM"), str(REPO / ".cache" / "bin" / "helm"))
KFN = _first_executable(os.environ.get("KFN_CLI"), str(Path(sys.executable).with_name("kfn")),
                        str(REPO / ".venv" / "bin" / "kfn"))


# -- figures: what the tier measured, printed at the end of the session -----------------------------

FIGURES: list[tuple[str, str]] = []


def record(name: str, value: float | int | str, unit: str = "") -> None:
    """Keep a measured figure for the session's summary (install time, cold starts, failures)."""
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    FIGURES.append((name, f"{text}{(' ' + unit) if unit else ''}"))


# -- processes ------------------------------------------------------------------------------------

class CommandFailed(AssertionError):
    pass


def run(args: list[str], *, input: str | None = None, timeout: float = 60, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (killed after `timeout`); CommandFailed names it and its stderr."""
    try:
        result = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(f"{' '.join(args[:6])} did not finish in {timeout:g}s") from e
    if check and result.returncode != 0:
        raise CommandFailed(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr.strip()[-3000:]}")
    return result


def kubectl(*args: str, namespace: str | None = None, input: str | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    ns = ["-n", namespace] if namespace else []
    return run([KUBECTL, *ns, *args], input=input, timeout=timeout, check=check)


def items(kind: str, *, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
    """Objects of `kind` in `namespace` (None: every namespace), optionally by label selector."""
    scope = ["-n", namespace] if namespace else ["-A"]
    sel = ["-l", selector] if selector else []
    return json.loads(run([KUBECTL, "get", kind, *scope, *sel, "-o", "json"]).stdout)["items"]


def get(kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
    """One object, or None when it does not exist."""
    result = kubectl("get", kind, name, "-o", "json", "--ignore-not-found", namespace=namespace)
    return json.loads(result.stdout) if result.stdout.strip() else None


def apply(manifests: dict[str, Any] | list[dict[str, Any]], *, namespace: str,
          check: bool = True, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    """`kubectl apply -f -` of one manifest or several, into `namespace`."""
    docs = manifests if isinstance(manifests, list) else [manifests]
    extra = ["--dry-run=server"] if dry_run else []
    return kubectl("apply", "-f", "-", *extra, namespace=namespace, input=yaml.safe_dump_all(docs), check=check)


class ApiProxy:
    """`kubectl proxy` on a free port of 127.0.0.1, for API calls that must not wait for a kubectl
    to start (a restart timed to the millisecond, a benchmark). Stopped by its PID on exit."""

    def __enter__(self) -> ApiProxy:
        self._process = subprocess.Popen([KUBECTL, "proxy", "--port=0", "--address=127.0.0.1"],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self._process.stdout.readline()  # type: ignore[union-attr]  # "Starting to serve on 127.0.0.1:PORT"
        if "serve on" not in line:
            stop_process(self._process)
            raise CommandFailed(f"kubectl proxy did not start: {line.strip()}")
        self.address = "127.0.0.1:" + line.strip().rsplit(":", 1)[1]
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self._process)

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        conn = http.client.HTTPConnection(self.address, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": content_type})
            response = conn.getresponse()
            data = response.read()
            if response.status >= 300:
                raise CommandFailed(f"{method} {path}: HTTP {response.status} {data[:300]!r}")
            return json.loads(data)
        finally:
            conn.close()

    @contextlib.contextmanager
    def watch(self, path: str, *, timeout: float = 60) -> Iterator[Iterator[dict[str, Any]]]:
        """The changes after now to the collection at `path`, each waited for at most `timeout`.

        Lists first and watches from the list's resourceVersion, as informers do (a watch
        without one may wait for the watch cache and end in a 504 ERROR event).
        """
        version = self.call("GET", path)["metadata"]["resourceVersion"]
        conn = http.client.HTTPConnection(self.address, timeout=timeout)

        def events(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
            for line in response:
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise CommandFailed(f"watch of {path} failed: {event.get('object')}")
                yield event

        try:
            conn.request("GET", f"{path}{'&' if '?' in path else '?'}watch=1&resourceVersion={version}")
            yield events(conn.getresponse())
        finally:
            conn.close()


# -- waiting ---------------------------------------------------------------------------------------

def wait_until(what: str, probe: Callable[[], T], *, timeout: float = 60, interval: float = 0.25) -> T:
    """Call `probe` until it returns something truthy (returned); AssertionError after `timeout`
    (`tests.support.waiting.wait_until`, at the cluster's pace).

    Exceptions from the probe count as "not yet" (the last one is reported on timeout).
    """
    return waiting.wait_until(probe, timeout=timeout, interval=interval, what=what,
                              ignoring=(CommandFailed, OSError, http.client.HTTPException, ValueError, KeyError))


# -- namespaces --------------------------------------------------------------------------------------

# A letter first: an id of digits only (1 in 17) would be a number, not a string, as a label value in YAML.
RUN_ID = os.environ.get("KFN_TEST_RUN_ID") or "r" + secrets.token_hex(3)
RUN_LABEL = "kfn.dev/test-run"
_created_namespaces: list[str] = []


def create_namespace(prefix: str) -> str:
    """A fresh namespace `PREFIX-RUNID-XXXX`, labelled with the run; removed by `delete_namespaces`."""
    name = f"{prefix}-{RUN_ID}-{secrets.token_hex(2)}"
    kubectl("create", "namespace", name)
    _created_namespaces.append(name)
    kubectl("label", "namespace", name, f"{RUN_LABEL}={RUN_ID}")
    # A namespace is usable once its default ServiceAccount exists (pods need it).
    wait_until(f"the default ServiceAccount of {name}",
               lambda: get("serviceaccount", "default", namespace=name), timeout=30, interval=0.1)
    return name


def delete_namespace(name: str) -> None:
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    with contextlib.suppress(ValueError):
        _created_namespaces.remove(name)


def delete_namespaces() -> None:
    for name in list(_created_namespaces):
        delete_namespace(name)


def delete_crd() -> None:
    """Delete the Function CRD (and with it every Function left, and their children); bounded, never raises."""
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--timeout=90s", check=False, timeout=120)


def another_kfn(what: str) -> bool:
    """True, after saying so on stderr, when the cluster already has the Function CRD: `what` (a bench)
    installs its own release and removes the CRD at the end, so it must not run next to another kfn."""
    if get("crd", CRD_NAME) is None:
        return False
    print(f"{what}: the cluster already has the {CRD_NAME} CRD (another kfn?); this bench installs its own "
          "release and removes the CRD at the end, so it does not run next to it", file=sys.stderr)
    return True


# -- HTTP --------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request(method: str, url: str, *, body: bytes | None = None, timeout: float = 40,
         headers: dict[str, str] | None = None) -> Answer:
    """One request on a fresh connection (no proxies, no retries)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def http_get(url: str, **kwargs: Any) -> Answer:
    return request("GET", url, **kwargs)


def get_in_background(url: str, *, timeout: float = 40) -> concurrent.futures.Future[Answer]:
    """A GET in a daemon thread: the caller watches something else while it is held."""
    future: concurrent.futures.Future[Answer] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(http_get(url, timeout=timeout))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)

    threading.Thread(target=work, name="background-get", daemon=True).start()
    return future


def function_path(name: str, namespace: str) -> str:
    """The gateway path of a function (see QUALIFIED_NAMES)."""
    return f"/function/{cli_name(name, namespace)}"


def cli_name(name: str, namespace: str) -> str:
    """How `kfn invoke`/`kfn logs` name a function (see QUALIFIED_NAMES)."""
    return f"{name}.{namespace}" if QUALIFIED_NAMES else name


# -- load --------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What a load generator saw: status codes, connection errors and when failures happened."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)   # (seconds since start, what)
    latencies: list[float] = field(default_factory=list)
    bodies: collections.Counter[bytes] = field(default_factory=collections.Counter)
    duration: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + sum(self.errors.values())

    def summary(self) -> str:
        codes = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        errors = ", ".join(f"{e}: {n}" for e, n in self.errors.most_common())
        first = "; ".join(f"{t:.2f}s {w}" for t, w in self.failures[:10])
        return (f"{self.total} requests in {self.duration:.1f}s, {self.failed} failed "
                f"(statuses {{{codes}}}; errors {{{errors or 'none'}}}; first failures: {first or 'none'})")


class _Recorder:
    def __init__(self) -> None:
        self.report = LoadReport()
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def request(self, conn_factory: Callable[[], http.client.HTTPConnection], path: str,
                conn: http.client.HTTPConnection | None = None) -> http.client.HTTPConnection | None:
        """One GET; returns the connection to reuse (None after an error or a close)."""
        t0 = time.monotonic()
        try:
            conn = conn or conn_factory()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            status = response.status
            keep = not response.will_close
        except (OSError, http.client.HTTPException) as e:
            with self._lock:
                what = type(e).__name__
                self.report.errors[what] += 1
                self.report.failures.append((t0 - self.started, f"{what}: {e}"))
            if conn is not None:
                conn.close()
            return None
        with self._lock:
            self.report.statuses[status] += 1
            self.report.latencies.append(time.monotonic() - t0)
            self.report.bodies[body] += 1
            if not 200 <= status < 300:
                self.report.failures.append((t0 - self.started, f"HTTP {status}: {body[:200]!r}"))
        if not keep:
            conn.close()
            return None
        return conn


class SteadyLoad:
    """GETs at a fixed rate from a pool of worker threads, like an HTTP client library's pool.

    Each worker keeps its keep-alive connection (so the NodePort spreads connections, not
    requests, over the gateway replicas) and opens a new one after the server closed it or an
    error. Nothing is retried: a request that fails is counted as failed. Use as a context
    manager; `report` holds the counts after it exits.
    """

    def __init__(self, url: str, *, rate: float = 20.0, workers: int = 10, timeout: float = 40.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._interval = 1.0 / rate
        self._timeout = timeout
        self._workers = workers
        self._ticks: queue.Queue[bool] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._recorder = _Recorder()
        self.report = self._recorder.report

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _schedule(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._ticks.put(True)
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        for _ in self._threads:
            self._ticks.put(False)

    def _work(self) -> None:
        conn = None
        while self._ticks.get():
            conn = self._recorder.request(self._connect, self._path, conn)
        if conn is not None:
            conn.close()

    def __enter__(self) -> SteadyLoad:
        self._recorder.started = time.monotonic()
        self._threads = [threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
                         for i in range(self._workers)]
        for t in self._threads:
            t.start()
        self._scheduler = threading.Thread(target=self._schedule, name="load-scheduler", daemon=True)
        self._scheduler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._scheduler.join(5)
        deadline = time.monotonic() + self._timeout + 5
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.report.duration = time.monotonic() - self._recorder.started
        assert not any(t.is_alive() for t in self._threads), "load generator threads did not stop"


class Burst:
    """`connections` threads, each sending GETs back to back on its own keep-alive connection."""

    def __init__(self, url: str, *, connections: int = 40, timeout: float = 40.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._stop = threading.Event()
        self._recorder = _Recorder()
        self.report = self._recorder.report
        self._threads = [threading.Thread(target=self._work, name=f"burst-{i}", daemon=True)
                         for i in range(connections)]

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _work(self) -> None:
        conn = None
        while not self._stop.is_set():
            conn = self._recorder.request(self._connect, self._path, conn)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Burst:
        self._recorder.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + self._timeout + 5
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.report.duration = time.monotonic() - self._recorder.started
        assert not any(t.is_alive() for t in self._threads), "burst threads did not stop"


# -- functions ---------------------------------------------------------------------------------------

def function(name: str, code: str, *, handler: str = "main.handler", **spec: Any) -> dict[str, Any]:
    """A Function manifest with `code` as main.py; `spec` adds or overrides spec fields.

    Test functions get a short timeout: the operator derives the pods' termination grace period
    from it (timeout + 10s), and namespaces of the run are deleted while pods may still run.
    """
    return {
        "apiVersion": "kfn.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"handler": handler, "source": {"files": {"main.py": code}}, "timeout": "5s", **spec},
    }


def ready_condition(fn: dict[str, Any] | None) -> dict[str, Any] | None:
    for condition in ((fn or {}).get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return condition
    return None


def wait_ready(name: str, namespace: str, *, timeout: float = 60) -> dict[str, Any]:
    """Wait for the operator's Ready=True condition (instances ready, or scaled to zero)."""
    def probe() -> dict[str, Any] | None:
        fn = get("function", name, namespace=namespace)
        condition = ready_condition(fn)
        return fn if condition and condition.get("status") == "True" else None
    return wait_until(f"Function {namespace}/{name} Ready=True", probe, timeout=timeout)


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    return items("pods", namespace=namespace, selector=selector)


def ready_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    out = []
    for pod in pods(namespace, selector):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or ()}
        if conditions.get("Ready") == "True":
            out.append(pod)
    return out


def function_pods(name: str, namespace: str) -> list[dict[str, Any]]:
    return pods(namespace, f"{LABEL_FUNCTION}={name},{LABEL_COMPONENT}=function")


# -- warm pools (kfn.core.pool) ------------------------------------------------------------------

LABEL_POOL = "kfn.dev/pool"
LABEL_POOL_STATE = "kfn.dev/pool-state"
POOL_RUNTIME = "python3.12"


def pool_deployment(runtime: str = POOL_RUNTIME) -> str:
    """The name of a namespace's pool Deployment of `runtime` (kfn.core.pool.deployment_name)."""
    return "kfn-pool-" + runtime.replace(".", "-")


def pool_pods(namespace: str, state: str | None = None) -> list[dict[str, Any]]:
    """Pods that came from a pool of `namespace` (idle, claimed or specialised), not being deleted;
    only those in `state` when given."""
    selector = f"{LABEL_POOL_STATE}={state}" if state else LABEL_POOL_STATE
    return [p for p in pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")]


def idle_pool_ready(namespace: str, size: int, runtime: str = POOL_RUNTIME) -> list[dict[str, Any]] | None:
    """The pool's ready idle pods once there are `size` of them, else None (a wait_until probe)."""
    ready = [p for p in ready_pods(namespace, f"{LABEL_POOL}={runtime},{LABEL_POOL_STATE}=idle")]
    return ready if len(ready) >= size else None


def instances(name: str, namespace: str) -> int:
    """How many instances a function has asked for: its Deployment's replicas plus its pods that
    came from a pool (claimed or specialised), as the autoscaler counts them."""
    pooled = [p for p in pool_pods(namespace) if (p["metadata"].get("labels") or {}).get(LABEL_FUNCTION) == name]
    return (deployment_replicas(name, namespace) or 0) + len(pooled)


def deployment_replicas(name: str, namespace: str) -> int | None:
    deployment = get("deployment", name, namespace=namespace)
    return None if deployment is None else int(deployment["spec"].get("replicas") or 0)


def function_log(name: str, namespace: str) -> str:
    """What every pod of a function printed so far (its instance container, runtime and handler)."""
    return "".join(kubectl("logs", pod["metadata"]["name"], "-c", "function", namespace=namespace, check=False,
                           timeout=30).stdout for pod in function_pods(name, namespace))


def kill_container(pod: dict[str, Any], container: str) -> int:
    """SIGKILL every process of one container of `pod`, as the OOM killer or a crash would end it;
    the kubelet then restarts the container. This machine is the node (the tier runs there): the
    processes are those whose cgroup names the container's id. Returns how many were killed."""
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == container]
    container_id = status["containerID"].rpartition("://")[2]
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if container_id in (proc / "cgroup").read_text():
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    if not killed:
        raise CommandFailed(f"no process of container {container} of {pod['metadata']['name']} on this machine")
    return killed


@contextlib.contextmanager
def port_forward(target: str, port: int, *, namespace: str) -> Iterator[int]:
    """`kubectl port-forward TARGET :PORT` (e.g. service/NAME); yields the local port on 127.0.0.1.
    The kubectl is stopped by its PID on exit."""
    process = subprocess.Popen([KUBECTL, "port-forward", "-n", namespace, "--address=127.0.0.1", target, f":{port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]  # "Forwarding from 127.0.0.1:PORT -> 4222"
        found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        if not found:
            raise CommandFailed(f"kubectl port-forward {target} did not start: {line.strip()}")
        # Keep reading its output, so that kubectl never blocks on a full pipe.
        threading.Thread(target=lambda: collections.deque(process.stdout, maxlen=0),  # type: ignore[arg-type]
                         name="port-forward-output", daemon=True).start()
        yield int(found.group(1))
    finally:
        stop_process(process)


# -- storage -------------------------------------------------------------------------------------------

STORAGE_CLASS = f"kfn-test-{RUN_ID}"
VOLUME_UID = 65532   # the chart's pods run as this uid (the NATS server writes its store)


def default_storage_class() -> str | None:
    for sc in items("storageclasses"):
        if (sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
            return str(sc["metadata"]["name"])
    return None


@contextlib.contextmanager
def local_storage(count: int, *, size: str = "2Gi") -> Iterator[str | None]:
    """Volumes for the run's PersistentVolumeClaims (the chart's NATS store), where the cluster has
    no default StorageClass (realk8s has no provisioner): a default StorageClass of the run
    (kubernetes.io/no-provisioner, WaitForFirstConsumer) and `count` `local` PersistentVolumes on
    directories of this machine, the node (the tier runs on it), pinned to it by node affinity.
    Each claim binds one for good (reclaim policy Retain). Yields the class's name, or None when
    the cluster has a default class of its own (then nothing is made). At exit the volumes are
    deleted once their claims are gone (bounded), then the class and the directories.
    """
    if default_storage_class() is not None:
        yield None
        return
    (node,) = [n["metadata"]["name"] for n in items("nodes")]
    root = Path(tempfile.mkdtemp(prefix=f"kfn-volumes-{RUN_ID}-"))
    labels = {RUN_LABEL: RUN_ID}
    manifests: list[dict[str, Any]] = [{
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "labels": labels,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }]
    for i in range(count):
        path = root / f"pv-{i}"
        path.mkdir(mode=0o750)
        os.chown(path, VOLUME_UID, VOLUME_UID)
        manifests.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{STORAGE_CLASS}-{i}", "labels": labels},
            "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                "local": {"path": str(path)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            },
        })
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
        yield STORAGE_CLASS
    finally:
        # A volume goes once no claim holds it (and a claim once no pod uses it): then nothing
        # writes in its directory any more.
        kubectl("delete", "pv", "-l", f"{RUN_LABEL}={RUN_ID}", "--ignore-not-found", "--timeout=120s",
                check=False, timeout=150)
        kubectl("delete", "storageclass", STORAGE_CLASS, "--ignore-not-found", check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- the API server ----------------------------------------------------------------------------------

REALK8S = Path(os.environ.get("REALK8S", "/var/lib/realk8s"))
REALK8S_RUN = Path(os.environ.get("REALK8S_RUN", "/run/realk8s"))


class ApiServer:
    """realk8s' kube-apiserver, stopped and started again the way realk8s' `up` starts it
    (../shared/realk8s/up: `setsid nohup sh -c 'echo $$ > PIDFILE; exec CMD...'`, appending to
    its log), so realk8s' own `down` still finds and stops it afterwards."""

    def __init__(self) -> None:
        self.pidfile = REALK8S_RUN / "pids" / "kube-apiserver.pid"
        self.log = REALK8S / "logs" / "kube-apiserver.log"

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def command(self) -> list[str]:
        """The running API server's command line, argument for argument."""
        return Path(f"/proc/{self.pid()}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")

    def stop(self, *, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)

    def start(self, command: list[str]) -> None:
        """Start `command` as `up` does; detached (not a child of the test), with its pid file."""
        launcher = ('p=$1; l=$2; shift 2; setsid nohup sh -c \'echo $$ > "$0"; exec "$@"\' "$p" "$@" '
                    '>>"$l" 2>&1 </dev/null &')
        run(["sh", "-c", launcher, "sh", str(self.pidfile), str(self.log), *command], timeout=30)

    def wait_ready(self, *, timeout: float = 120) -> None:
        wait_until("the API server's /readyz", lambda: kubectl("get", "--raw", "/readyz", check=False,
                                                                timeout=10).stdout.strip() == "ok",
                   timeout=timeout, interval=0.5)


def queued(gateway_urls: list[str], name: str, namespace: str) -> float:
    """Requests the gateway replicas hold in their queues for a function (their /metrics)."""
    total = 0.0
    for base in gateway_urls:
        with contextlib.suppress(OSError):
            for line in http_get(base + "/metrics", timeout=5).text.splitlines():
                if line.startswith("kfn_gateway_queue_depth{") and f'function="{name}"' in line \
                        and f'namespace="{namespace}"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


# -- the chart ---------------------------------------------------------------------------------------

RELEASES: list[Release] = []           # every release of the session, uninstalled at its end


class Release:
    """One `helm install` of charts/kfn into its own namespace, reached through a NodePort."""

    def __init__(self, name: str, namespace: str, values: dict[str, Any]) -> None:
        self.name = name
        self.namespace = namespace
        self.values = {"gateway": {"service": {"type": "NodePort"}}}
        _merge(self.values, values)
        self.installed = False
        self.install_seconds: float | None = None
        self.uninstall_started: str | None = None   # UTC, as the pods stamp their logs
        self._gateway: str | None = None
        self._admin_key: str | None = None

    # The chart's names: the release name contains "kfn", so the full name is the release name.
    @property
    def operator(self) -> str:
        return f"{self.name}-operator"

    @property
    def gateway_deployment(self) -> str:
        return f"{self.name}-gateway"

    @property
    def nats(self) -> str:
        """The NATS StatefulSet (async.nats.install) and its client Service."""
        return f"{self.name}-nats"

    def selector(self, component: str) -> str:
        return f"{LABEL_INSTANCE}={self.name},app.kubernetes.io/component={component}"

    def install(self, *, timeout: float = 180) -> float:
        """helm install --wait; returns the seconds it took."""
        if self not in RELEASES:
            RELEASES.append(self)
        # Even a failed install leaves a release behind for uninstall to remove.
        self.installed = True
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kfn-values-") as f:
            yaml.safe_dump(self.values, f)
            f.flush()
            started = time.monotonic()
            run([HELM, "install", self.name, str(CHART), "--namespace", self.namespace, "--values", f.name,
                 "--wait", "--timeout", f"{int(timeout)}s"], timeout=timeout + 30)
        self.install_seconds = time.monotonic() - started
        return self.install_seconds

    def upgrade(self, values: dict[str, Any], *, timeout: float = 180) -> float:
        """helm upgrade --wait with `values` merged into the release's; returns the seconds it took."""
        _merge(self.values, values)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kfn-values-") as f:
            yaml.safe_dump(self.values, f)
            f.flush()
            started = time.monotonic()
            run([HELM, "upgrade", self.name, str(CHART), "--namespace", self.namespace, "--values", f.name,
                 "--wait", "--timeout", f"{int(timeout)}s"], timeout=timeout + 30)
        return time.monotonic() - started

    def back_to_one_operator(self, *, timeout: float = 60) -> float:
        """After a test ran two operator replicas: helm upgrade to one, wait until the other pod is gone
        (terminating pods included: a standalone operator elects nothing, so a lingering old replica
        would act beside it), and delete the Leases the two left; returns the upgrade's seconds."""
        took = self.upgrade({"operator": {"replicas": 1}})
        selector = self.selector("operator")
        wait_until("one operator pod", lambda: len(pods(self.namespace, selector)) == 1, timeout=timeout)
        kubectl("delete", "lease", "kfn-operator", "kfn-scheduler", "kfn-autoscaler", "--ignore-not-found",
                namespace=self.namespace, check=False)
        return took

    def uninstall(self, *, timeout: float = 120) -> float | None:
        """helm uninstall --wait (idempotent); returns the seconds it took, None if not installed."""
        if not self.installed:
            return None
        if COLLECTOR is not None:
            COLLECTOR.snapshot(self.namespace)
        # From here Helm deletes the RBAC while the pods still terminate: what they log then is no RBAC gap.
        self.uninstall_started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        started = time.monotonic()
        run([HELM, "uninstall", self.name, "--namespace", self.namespace, "--wait", "--timeout", f"{int(timeout)}s"],
            timeout=timeout + 30)
        self.installed = False
        return time.monotonic() - started

    @property
    def gateway(self) -> str:
        """http://127.0.0.1:NODEPORT, the gateway as a client outside the cluster reaches it."""
        if self._gateway is None:
            service = get("service", self.gateway_deployment, namespace=self.namespace)
            assert service is not None, f"no gateway Service {self.namespace}/{self.gateway_deployment}"
            self._gateway = f"http://127.0.0.1:{service['spec']['ports'][0]['nodePort']}"
        return self._gateway

    @property
    def admin_key(self) -> str:
        """The admin key of /system/* (the chart generated it into the Secret kfn-admin-keys)."""
        if self._admin_key is None:
            import base64

            secret = get("secret", "kfn-admin-keys", namespace=self.namespace)
            assert secret is not None, f"no admin key Secret in {self.namespace}"
            self._admin_key = base64.b64decode(secret["data"]["admin"]).decode()
        return self._admin_key

    @property
    def nats_password(self) -> str:
        """The platform user's NATS password (the install hook generated it into <name>-nats-auth)."""
        import base64

        secret = get("secret", f"{self.name}-nats-auth", namespace=self.namespace)
        assert secret is not None, f"no NATS password Secret in {self.namespace}"
        return base64.b64decode(secret["data"]["password"]).decode()

    def nats_url(self, host: str, port: int = 4222) -> str:
        """nats://kfn:PASSWORD@HOST:PORT: the platform user's URL (the chart's user is kfn)."""
        return f"nats://kfn:{self.nats_password}@{host}:{port}"

    def system_headers(self) -> dict[str, str]:
        """What a request to /system/* needs: the admin key."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def gateway_pod_urls(self) -> list[str]:
        """Each ready gateway replica directly on its pod IP (the host reaches pod IPs)."""
        port = (self.values.get("gateway") or {}).get("port", 8080)
        return [f"http://{p['status']['podIP']}:{port}" for p in ready_pods(self.namespace, self.selector("gateway"))]

    def url(self, name: str, namespace: str, query: str = "") -> str:
        return self.gateway + function_path(name, namespace) + (f"?{query}" if query else "")

    def deploy(self, manifest: dict[str, Any], namespace: str, *, timeout: float = 60) -> dict[str, Any]:
        """Apply a Function and wait until it can be invoked: the operator made its children
        (Ready=True) and every gateway replica knows it."""
        apply(manifest, namespace=namespace)
        name = manifest["metadata"]["name"]
        fn = wait_ready(name, namespace, timeout=timeout)
        self.wait_known(name, namespace)
        return fn

    def wait_known(self, name: str, namespace: str, *, timeout: float = 30) -> None:
        path = "/system/functions/" + cli_name(name, namespace)
        for base in self.gateway_pod_urls():
            wait_until(f"gateway {base} to know {namespace}/{name}",
                       lambda base=base: http_get(base + path, timeout=5, headers=self.system_headers()).status == 200,
                       timeout=timeout, interval=0.1)

    def kfn(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """The kfn command line against this release's gateway."""
        return run([KFN, *args], timeout=timeout, check=check,
                   env={"KFN_GATEWAY": self.gateway, "KFN_API_KEY": self.admin_key})


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# -- logs of the operator and the gateway -----------------------------------------------------------

_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?Z?\s*")
_FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
# The API server's answer to a create in a namespace being deleted: a 403 that is not about RBAC.
_NAMESPACE_TERMINATING = re.compile(r"NamespaceTerminating|because it is being terminated")


def log_records(text: str) -> list[str]:
    """A log split into records: a line starting with a timestamp and its continuation lines
    (tracebacks, an ApiException's headers and body)."""
    records: list[str] = []
    for line in text.splitlines():
        if _RECORD_START.match(line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def forbidden_records(text: str, *, rbac_only: bool = False, before: str | None = None) -> list[str]:
    """First lines of the records that report a 403 / Forbidden (a timestamp's milliseconds are not
    one). rbac_only: leave out the 403s for a namespace being deleted (NamespaceTerminating).
    before: only records stamped earlier ("YYYY-MM-DD HH:MM:SS", UTC as the pods log)."""
    out = []
    for record in log_records(text):
        if not _FORBIDDEN.search(_RECORD_START.sub("", record)):
            continue
        if rbac_only and _NAMESPACE_TERMINATING.search(record):
            continue
        if before is not None and record[:19].replace("T", " ") >= before:
            continue
        out.append(record.splitlines()[0][:300])
    return out


class LogCollector:
    """Follows the logs of every operator and gateway container for the whole session.

    Pods come and go (restarts, deleted pods, uninstalled releases), so a watcher thread lists
    them every `interval` seconds and starts one `kubectl logs -f` per running container
    (one per restart), writing to a file in `directory`. `stop()` stops the followers by PID and
    saves, for pods still there, the current and the previous container's logs once more.
    """

    def __init__(self, directory: Path, *, interval: float = 1.0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._interval = interval
        self._followed: dict[tuple[str, str, str, int], subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="log-collector", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.poll()
            self._stop.wait(self._interval)

    def poll(self) -> None:
        for pod in items("pods", selector=COMPONENT_PODS):
            meta = pod["metadata"]
            for status in pod.get("status", {}).get("containerStatuses") or ():
                if "running" not in (status.get("state") or {}):
                    continue
                key = (meta["namespace"], meta["name"], status["name"], int(status.get("restartCount") or 0))
                with self._lock:
                    if key in self._followed or self._stop.is_set():
                        continue
                    path = self.directory / "{}_{}_{}_{}.log".format(*key)
                    with open(path, "ab") as out:
                        self._followed[key] = subprocess.Popen(
                            [KUBECTL, "logs", "-f", "-n", key[0], key[1], "-c", key[2]],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def snapshot(self, namespace: str, selector: str = COMPONENT_PODS) -> None:
        """Save the logs (current and previous containers) of matching pods now, e.g. before they go."""
        for pod in items("pods", namespace=namespace, selector=selector):
            self._save(pod)

    def _save(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        for status in pod.get("status", {}).get("containerStatuses") or ():
            for previous in ([False, True] if status.get("restartCount") else [False]):
                args = ["logs", meta["name"], "-c", status["name"]] + (["--previous"] if previous else [])
                result = kubectl(*args, namespace=meta["namespace"], check=False, timeout=30)
                suffix = "previous" if previous else "final"
                (self.directory / f"{meta['namespace']}_{meta['name']}_{status['name']}_{suffix}.log").write_text(
                    result.stdout + result.stderr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        with contextlib.suppress(Exception):
            for pod in items("pods", selector=COMPONENT_PODS):
                self._save(pod)
        with self._lock:
            for process in self._followed.values():
                stop_process(process)

    def files(self, prefix: str = "") -> Iterator[Path]:
        yield from sorted(p for p in self.directory.glob("*.log") if p.name.startswith(prefix))

    def forbidden(self, prefix: str = "", *, rbac_only: bool = False) -> dict[str, list[str]]:
        """{log file: records with a 403} over everything collected so far (a namespace prefix
        selects a release's pods), leaving out what a release's pods logged once its uninstall
        began; see forbidden_records."""
        uninstalled = {r.namespace: r.uninstall_started for r in RELEASES if r.uninstall_started}
        out = {}
        for path in self.files(prefix):
            before = next((at for ns, at in uninstalled.items() if path.name.startswith(ns + "_")), None)
            records = forbidden_records(path.read_text(errors="replace"), rbac_only=rbac_only, before=before)
            if records:
                out[path.name] = records
        return out


COLLECTOR: LogCollector | None = None  # the session's, set by tests/cluster/conftest.py


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout`, to this one process (by its PID)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


# -- a package index on the node address ------------------------------------------------------------

_INDEX_SERVER = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer((sys.argv[1], 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def package_index(packages: Iterable[str], *, host: str = NODE_IP, dependencies: bool = False) -> Iterator[str]:
    """Download wheels with pip (with their `dependencies`, for this machine's Python, which the
    runtime images' share) and serve them as a PEP 503 simple index on host:<free port>.

    http.server's directory listing of simple/<project>/ is the page of links pip reads. Yields
    the index URL (http://HOST:PORT/simple); the server process is stopped by its PID on exit.
    """
    with tempfile.TemporaryDirectory(prefix="kfn-index-") as root:
        wheels = Path(root) / "wheels"
        run([sys.executable, "-m", "pip", "download", "--quiet", *(() if dependencies else ("--no-deps",)),
             "--only-binary=:all:", "--disable-pip-version-check", "-d", str(wheels), *packages], timeout=300)
        for wheel in wheels.glob("*.whl"):
            project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
            target = Path(root) / "simple" / project
            target.mkdir(parents=True, exist_ok=True)
            wheel.rename(target / wheel.name)
        server = subprocess.Popen([sys.executable, "-c", _INDEX_SERVER, host, root], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(server.stdout.readline())  # type: ignore[union-attr]
            yield f"http://{host}:{port}/simple"
        finally:
            stop_process(server)
