"""kfn local through its gateway, next to a plain aiohttp server calling the same handler in-process.

    python bench/gateway.py [--requests 2000] [--cold-starts 7] [--duration 5] [--no-profile]

Starts `kfn local DIR` on 127.0.0.1 with three functions made from examples/hello.yaml's code:
`hello` (the example as it is), `cold` (the same, scaled to zero after 0.3 s idle) and `sleep`
(sleeps 50 ms, then answers as hello; concurrency 64, one instance). Next to it, in the same run,
the reference: a plain aiohttp server (this file, `--serve-reference`, on uvloop as kfn local)
calling the same handlers in-process, hello on the event loop, sleep in a 64-thread pool. Every
kfn figure comes with its ratio to the reference's. Measured:

  - process start -> first 200 (kfn local: its boot and hello's start from zero);
  - cold start: a request to `cold` while it has zero instances (new connection; medians over
    --cold-starts; between runs the autoscaler takes it back to zero and its processes are gone);
  - warm latency: --requests sequential GETs over one keep-alive connection (raw-socket client);
  - throughput: `wrk -t1 -c16` on hello, and `wrk -t1 -c64` on sleep (each after a 2 s warm-up);
  - memory: RSS and PSS (/proc/PID/smaps_rollup) summed over the whole process tree, peak of
    samples every 0.5 s during the c64 run;
  - CPU per request during the c16 run, from /proc/PID/stat (user + system): the kfn local process
    (gateway, autoscaler, instance hosts), the environment processes (and zygotes), wrk itself; and
    context switches per request (/proc/PID/task/*/status);
  - where that CPU goes (unless --no-profile or py-spy is missing): py-spy samples of each
    process during another c16 run, grouped by the component of the innermost Python frame.

wrk is a Debian package (`apt-get install -y wrk`); without it the throughput rows are skipped.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.append(str(Path(__file__).resolve().parents[1]))   # for `bench.*`

from bench.runtime_latency import (
    PYTHON,
    ROOT,
    RawClient,
    Reaper,
    WrkResult,
    bench_env,
    cpu_times,
    descendants,
    fmt_mib,
    fmt_ms,
    fmt_us,
    hello,
    http_request,
    machine,
    median,
    memory_kib,
    note,
    pct,
    ratio,
    sequential,
    stop_process,
    switches,
    table,
    write_code,
    wrk,
    wrk_binary,
)

SLEEP_MODULE = ("import time\n\nfrom main import handler as hello\n\n\n"
                "def handler(event, context):\n    time.sleep(0.05)\n    return hello(event, context)\n")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TARGETS = {"cold": 0.150, "sleep_rps": 1000.0, "rss_kib": 200 * 1024}


# -- the reference: a plain aiohttp server --------------------------------------------------------

def serve_reference(port: int, code_dir: str) -> None:
    """aiohttp on uvloop: /function/hello calls main.handler on the loop, /function/sleep calls
    sleep.handler in a 64-thread pool; the event has the shape of API Gateway's 2.0 event."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web

    sys.path.insert(0, code_dir)
    import main  # type: ignore[import-not-found]
    import sleep  # type: ignore[import-not-found]

    pool = ThreadPoolExecutor(64)

    def event(request: web.Request, body: bytes) -> dict[str, Any]:
        return {"version": "2.0", "routeKey": "$default", "rawPath": request.path,
                "rawQueryString": request.query_string, "headers": dict(request.headers),
                "queryStringParameters": dict(request.query) or None,
                "requestContext": {"http": {"method": request.method, "path": request.path}},
                "body": body.decode() if body else None, "isBase64Encoded": False}

    def respond(result: dict[str, Any]) -> web.Response:
        return web.Response(status=result.get("statusCode", 200), text=result.get("body", ""),
                            headers=result.get("headers") or {})

    async def hello_view(request: web.Request) -> web.Response:
        return respond(main.handler(event(request, await request.read()), None))

    async def sleep_view(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        return respond(await loop.run_in_executor(pool, sleep.handler, event(request, await request.read()), None))

    app = web.Application()
    app.router.add_route("*", "/function/hello", hello_view)
    app.router.add_route("*", "/function/sleep", sleep_view)
    try:
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


# -- servers --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with _OPENER.open(url, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    started: float
    log: Path
    first_ok: float = 0.0     # seconds from spawn to the first 200

    @property
    def pid(self) -> int:
        return self.process.pid


def first_ok(server: Server, path: str, *, timeout: float = 60.0) -> float:
    """Poll (every 5 ms) until GET `path` answers 200; seconds since the server's spawn."""
    request = http_request("GET", path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"bench: {server.name} exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            client = RawClient(server.port, timeout=30)
        except OSError:
            time.sleep(0.005)
            continue
        try:
            status, _ = client.request(request)
        except OSError:
            status = 0
        finally:
            client.close()
        if status == 200:
            return time.perf_counter() - server.started
        time.sleep(0.005)
    raise SystemExit(f"bench: {server.name} did not answer {path} with 200 within {timeout:g}s:\n"
                     f"{server.log.read_text()}")


@contextlib.contextmanager
def server(name: str, command: list[str], port: int, log: Path, reaper: Reaper, *,
           ready_path: str) -> Iterator[Server]:
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=bench_env(), cwd=ROOT, start_new_session=True)
    running = Server(name, process, port, started, log)
    try:
        running.first_ok = first_ok(running, ready_path)
        reaper.track(process.pid)
        yield running
    finally:
        stop_process(process, grace=30)


def kfn_local(directory: Path, tmp: Path, reaper: Reaper) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    return server("kfn local", [PYTHON, "-m", "kfn", "local", str(directory), "--host", "127.0.0.1", "--port",
                                str(port), "--log-level", "warning"], port, tmp / "kfn-local.log", reaper,
                  ready_path="/function/hello?name=bench")


def reference(code_dir: Path, tmp: Path, reaper: Reaper) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    return server("plain aiohttp", [PYTHON, str(Path(__file__).resolve()), "--serve-reference", str(port),
                                    str(code_dir)], port, tmp / "reference.log", reaper,
                  ready_path="/function/hello?name=bench")


# -- measurements -----------------------------------------------------------------------------------

def cold_starts(kfn: Server, count: int, reaper: Reaper) -> list[float]:
    """Seconds for a request to `cold` while it has zero instances, on a new connection."""
    base = f"http://127.0.0.1:{kfn.port}"
    request = http_request("GET", "/function/cold?name=bench")
    samples: list[float] = []
    for _ in range(count):
        deadline = time.monotonic() + 60
        while True:
            function = get_json(f"{base}/system/functions/cold")
            instances = get_json(f"{base}/system/instances/cold")["instances"]
            if function["replicas"] == 0 and function["availableReplicas"] == 0 and not instances:
                break
            if time.monotonic() > deadline:
                raise SystemExit("bench: `cold` did not scale to zero within 60 s")
            time.sleep(0.05)
        time.sleep(0.3)   # the old instance's processes are gone; let the machine settle
        started = time.perf_counter()
        client = RawClient(kfn.port)
        try:
            status, body = client.request(request)
        finally:
            client.close()
        samples.append(time.perf_counter() - started)
        if status != 200:
            raise SystemExit(f"bench: the cold request answered {status}: {body[:300]!r}")
        reaper.track(kfn.pid)
    return samples


@dataclass
class Load:
    result: WrkResult
    cpu: dict[str, float]                    # seconds over the run: "main", "children", and their "... sys" part
    switches: dict[str, tuple[int, int]]     # context switches over the run: "main", "children"
    peak_rss: float = float("nan")           # KiB, whole tree
    peak_pss: float = float("nan")
    peak_procs: int = 0
    peak_main: tuple[float, float] = (float("nan"), float("nan"))   # the main process's RSS, PSS then


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree every `interval` s, in a thread."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = self.peak_pss = 0.0
        self.peak_procs = 0
        self.peak_main: tuple[float, float] = (float("nan"), float("nan"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, float, int]:
        """(RSS, PSS, processes) of the whole tree now; remembers the main process's share at the peak."""
        pids = [self.root, *descendants(self.root)]
        memory = [memory_kib(pid) for pid in pids]
        rss, pss = sum(m.get("rss", 0) for m in memory), sum(m.get("pss", 0) for m in memory)
        if rss > self.peak_rss:
            self.peak_main = (memory[0].get("rss", 0), memory[0].get("pss", 0))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        return rss, pss, len(pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def load(target: Server, path: str, *, connections: int, duration: float, memory: bool = False) -> Load:
    """A 2 s warm-up, then the measured wrk run, with the CPU time of the target's processes."""
    url = f"http://127.0.0.1:{target.port}{path}"
    wrk(url, connections=connections, duration=2)
    main_before, main_switches = cpu_times(target.pid), switches(target.pid)
    children_before = {pid: (cpu_times(pid), switches(pid)) for pid in descendants(target.pid)}
    sampler = TreeSampler(target.pid) if memory else None
    with sampler or contextlib.nullcontext():
        result = wrk(url, connections=connections, duration=duration)
    # A process born during the run started at 0 (a fork's CPU counters start at zero); one that
    # died during it is lost (environments are only stopped after 60 s idle).
    children = {pid: (cpu_times(pid), switches(pid)) for pid in descendants(target.pid)}
    main_after, main_cpu = switches(target.pid), cpu_times(target.pid)
    children_user = children_sys = 0.0
    voluntary = involuntary = 0
    for pid, ((user, system), (v, i)) in children.items():
        (user_before, sys_before), (v_before, i_before) = children_before.get(pid, ((0.0, 0.0), (0, 0)))
        children_user, children_sys = children_user + user - user_before, children_sys + system - sys_before
        voluntary, involuntary = voluntary + v - v_before, involuntary + i - i_before
    out = Load(result, {"main": sum(main_cpu) - sum(main_before), "main sys": main_cpu[1] - main_before[1],
                        "children": children_user + children_sys, "children sys": children_sys},
               {"main": (main_after[0] - main_switches[0], main_after[1] - main_switches[1]),
                "children": (voluntary, involuntary)})
    if sampler is not None:
        out.peak_rss, out.peak_pss, out.peak_procs = sampler.peak_rss, sampler.peak_pss, sampler.peak_procs
        out.peak_main = sampler.peak_main
    return out


# -- profiles (py-spy) ----------------------------------------------------------------------------

COMPONENTS = [   # (pattern on the innermost frame's file as py-spy names it, component); first match wins
    (r"^kfn_gateway/", "kfn gateway (kfn_gateway)"),
    (r"^kfn/processes/supervisor\.py$", "local endpoint (kfn.processes.supervisor)"),
    (r"^kfn_runtime/(host|execution|reports)\.py$", "instance host: dispatch (kfn_runtime.host)"),
    (r"^kfn_runtime/(runtime_api|frames)\.py$", "instance host: Runtime API server, kfn's channel (runtime_api)"),
    (r"^kfn_runtime/wire\.py$", "instance host: HTTP parsing (kfn_runtime.wire)"),
    (r"^kfn_runtime/environments\.py$", "instance host: spawner (kfn_runtime.environments)"),
    (r"^kfn_runtime/ric\.py$", "Runtime API client (kfn_runtime.ric)"),
    (r"^kfn_runtime/(context|logs)\.py$", "Lambda context, logging (kfn_runtime)"),
    (r"^kfn_runtime/", "kfn_runtime, other"),
    (r"^kfn_autoscaler/", "autoscaler"),
    (r"^kfn/", "kfn, other"),
    (r"^aiohttp/web_protocol", "aiohttp: connection, request parsing (web_protocol)"),
    (r"^aiohttp/(web_response|http_writer|abc)", "aiohttp: response writing (web_response, http_writer)"),
    (r"^aiohttp/", "aiohttp, other"),
    (r"^(multidict|yarl)/", "multidict / yarl"),
    (r"^json/|orjson", "json"),
    (r"^asyncio/runners\.py$|^uvloop/", "event loop (uvloop's C code: I/O, callbacks)"),
    (r"^asyncio/", "asyncio (Python part)"),
    (r"^(concurrent/|threading\.py$|queue\.py$)", "threads (pool, queue)"),
    (r"^gateway\.py$", "the reference's own code (bench/gateway.py)"),
    (r"^(main|sleep)\.py$", "the handler"),
]


def frame_file(frame: str) -> str:
    """The file of a py-spy frame `function (file:line)` (py-spy drops sys.path prefixes)."""
    match = re.search(r" \((.*):\d+\)$", frame)
    return match.group(1) if match else ""


def component(frame: str) -> str:
    path = frame_file(frame)
    for pattern, name in COMPONENTS:
        if re.search(pattern, path):
            return name
    return f"other: {path or frame}"


def read_profile(path: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """py-spy raw output -> (samples per component, samples per innermost function), for the innermost frame."""
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return by_component, by_function
    for match in re.finditer(r"(.*?) (\d+)\n", path.read_text(errors="replace"), re.S):
        leaf = match.group(1).rsplit(";", 1)[-1].strip()
        if not leaf or leaf.startswith("process "):
            leaf = "(no Python frame)"
        count = int(match.group(2))
        by_component[component(leaf)] += count
        by_function[re.sub(r":\d+\)$", ")", leaf)] += count   # without the line number
    return by_component, by_function


def py_spy() -> str | None:
    beside = Path(PYTHON).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(target: Server, path: str, tmp: Path, *, duration: float, connections: int = 16) -> dict[str, Any]:
    """py-spy on the target's main process and (with --subprocesses) on each direct child during a wrk run."""
    binary = py_spy()
    assert binary is not None
    url = f"http://127.0.0.1:{target.port}{path}"
    wrk(url, connections=connections, duration=1)
    outputs = {"main": tmp / f"spy-{target.pid}-main.txt"}
    commands = [[binary, "record", "-p", str(target.pid), "-r", "250", "--nonblocking", "-d", f"{duration + 1:g}",
                 "-f", "raw", "-o", str(outputs["main"])]]
    for child in [pid for pid in descendants(target.pid) if _parent(pid) == target.pid]:
        outputs[f"child-{child}"] = tmp / f"spy-{target.pid}-{child}.txt"
        commands.append([binary, "record", "-p", str(child), "--subprocesses", "-r", "250", "--nonblocking",
                         "-d", f"{duration + 1:g}", "-f", "raw", "-o", str(outputs[f"child-{child}"])])
    spies = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
             for c in commands]
    try:
        time.sleep(0.5)
        result = wrk(url, connections=connections, duration=duration)
    finally:
        for spy in spies:
            try:
                spy.wait(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
    main_profile = read_profile(outputs["main"])
    children: tuple[collections.Counter[str], collections.Counter[str]] = (collections.Counter(), collections.Counter())
    for key, output in outputs.items():
        if key != "main":
            components, functions = read_profile(output)
            children[0].update(components)
            children[1].update(functions)
    return {"main": main_profile, "children": children, "requests": result.requests}


def _parent(pid: int) -> int:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2:].split()[1])


# -- the run ----------------------------------------------------------------------------------------

@dataclass
class Results:
    start: dict[str, float] = field(default_factory=dict)
    cold: list[float] = field(default_factory=list)
    warm: dict[str, list[float]] = field(default_factory=dict)
    c16: dict[str, Load] = field(default_factory=dict)
    c64: dict[str, Load] = field(default_factory=dict)
    idle_memory: tuple[float, float, int] = (float("nan"), float("nan"), 0)
    instances: str = ""
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def manifests(directory: Path) -> None:
    source = ROOT / "examples" / "hello.yaml"
    handler, files = hello()
    base: dict[str, Any] = (yaml.safe_load(source.read_text()) if source.exists() else
                            {"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "hello"},
                             "spec": {"handler": handler, "source": {"files": files}}})
    cold = json.loads(json.dumps(base))
    cold["metadata"]["name"] = "cold"
    cold["spec"]["scale"] = {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "0.3s", "stableWindow": "1s"}
    sleep = json.loads(json.dumps(base))
    sleep["metadata"]["name"] = "sleep"
    sleep["spec"]["handler"] = "sleep.handler"
    sleep["spec"]["source"]["files"]["sleep.py"] = SLEEP_MODULE
    sleep["spec"]["concurrency"] = 64
    sleep["spec"]["scale"] = {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "10m"}
    for manifest in (base, cold, sleep):
        (directory / f"{manifest['metadata']['name']}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def run(args: argparse.Namespace, tmp: Path, reaper: Reaper) -> Results:
    out = Results()
    directory = tmp / "functions"
    directory.mkdir()
    manifests(directory)
    handler, files = hello()
    code = write_code(tmp / "reference-code", {**files, "sleep.py": SLEEP_MODULE})
    have_wrk = wrk_binary() is not None
    hello_path, sleep_path = "/function/hello?name=bench", "/function/sleep?name=bench"
    request = http_request("GET", hello_path)

    note("reference: 3 starts ...")
    starts = []
    for _ in range(3):
        with reference(code, tmp, reaper) as ref:
            starts.append(ref.first_ok)
    out.start["ref"] = median(starts)
    note("kfn local: a first start (bytecode), then the measured one ...")
    with kfn_local(directory, tmp, reaper):
        pass
    with reference(code, tmp, reaper) as ref, kfn_local(directory, tmp, reaper) as kfn:
        out.start["kfn"] = kfn.first_ok
        note(f"kfn local: {args.cold_starts} cold starts from zero ...")
        out.cold = cold_starts(kfn, args.cold_starts, reaper)
        note(f"{args.requests} sequential requests each ...")
        out.warm["kfn"] = sequential(kfn.port, request, requests=args.requests)
        out.warm["ref"] = sequential(ref.port, request, requests=args.requests)
        if have_wrk:
            for name, target in (("kfn", kfn), ("ref", ref)):
                note(f"{name}: wrk c16 on hello ...")
                out.c16[name] = load(target, hello_path, connections=16, duration=args.duration)
            status = get_json(f"http://127.0.0.1:{kfn.port}/system/instances/hello")["instances"]
            out.instances = (f"{len(status)} instance(s), {sum(len(i['environments']) for i in status)} "
                             f"environments")
            reaper.track(kfn.pid)
            if not args.no_profile and py_spy() is not None:
                for name, target in (("kfn", kfn), ("ref", ref)):
                    note(f"{name}: py-spy during wrk c16 ...")
                    out.profiles[name] = profile(target, hello_path, tmp, duration=args.duration)
            out.idle_memory = TreeSampler(kfn.pid).sample()
            for name, target in (("kfn", kfn), ("ref", ref)):
                note(f"{name}: wrk c64 on sleep ...")
                out.c64[name] = load(target, sleep_path, connections=64, duration=args.duration, memory=True)
            reaper.track(kfn.pid)
    return out


def report(args: argparse.Namespace, out: Results) -> None:
    print(f"\n## kfn local through the gateway vs a plain aiohttp server (same handler, same run)\n\n{machine()}. "
          f"Reference: aiohttp on uvloop calling the handler in-process (hello on the loop, sleep in 64 threads). "
          f"Ratios are kfn ÷ reference.\n")
    rows: list[list[object]] = []
    cold = out.cold
    rows.append(["process start → first 200", fmt_ms(out.start["kfn"]), fmt_ms(out.start["ref"]),
                 ratio(out.start["kfn"], out.start["ref"]), ""])
    rows.append([f"cold start from zero, p50 of {len(cold)} (new connection)", fmt_ms(median(cold)),
                 "— (no scale to zero)", "", f"≤ {TARGETS['cold'] * 1000:.0f} ms"])
    rows.append([f"cold start from zero, min / max of {len(cold)}", f"{fmt_ms(min(cold))} / {fmt_ms(max(cold))}",
                 "", "", ""])
    kw, rw = out.warm["kfn"], out.warm["ref"]
    rows.append([f"warm latency p50 ({len(kw)} sequential, keep-alive)", fmt_us(pct(kw, 50)), fmt_us(pct(rw, 50)),
                 ratio(pct(kw, 50), pct(rw, 50)), ""])
    rows.append(["warm latency p99", fmt_us(pct(kw, 99)), fmt_us(pct(rw, 99)), ratio(pct(kw, 99), pct(rw, 99)), ""])
    if out.c16:
        k, r = out.c16["kfn"].result, out.c16["ref"].result
        rows.append([f"hello, wrk -t1 -c16 -d{args.duration:g}s", k.text, r.text, ratio(k.rps, r.rps), ""])
        rows.append(["hello c16 latency p50 / p99 (wrk)", f"{fmt_ms(k.p50, 2)} / {fmt_ms(k.p99, 2)}",
                     f"{fmt_ms(r.p50, 2)} / {fmt_ms(r.p99, 2)}", ratio(k.p50, r.p50), ""])
    if out.c64:
        k64, r64 = out.c64["kfn"], out.c64["ref"]
        rows.append([f"sleep 50 ms, wrk -t1 -c64 -d{args.duration:g}s", k64.result.text, r64.result.text,
                     ratio(k64.result.rps, r64.result.rps), f"≥ {TARGETS['sleep_rps']:,.0f} req/s"])
        rows.append(["sleep c64 latency p50 / p99 (wrk)", f"{fmt_ms(k64.result.p50)} / {fmt_ms(k64.result.p99)}",
                     f"{fmt_ms(r64.result.p50)} / {fmt_ms(r64.result.p99)}", ratio(k64.result.p50, r64.result.p50),
                     ""])
        rows.append(["peak RSS of the process tree at c64 (sum)",
                     f"{fmt_mib(k64.peak_rss)} ({k64.peak_procs} processes)",
                     f"{fmt_mib(r64.peak_rss)} ({r64.peak_procs} process)", ratio(k64.peak_rss, r64.peak_rss),
                     f"≤ {TARGETS['rss_kib'] / 1024:.0f} MiB"])
        rows.append(["peak PSS of the process tree at c64 (sum)", fmt_mib(k64.peak_pss), fmt_mib(r64.peak_pss),
                     ratio(k64.peak_pss, r64.peak_pss), ""])
        rows.append(["of which the main process (RSS / PSS, at the RSS peak)",
                     f"{fmt_mib(k64.peak_main[0])} / {fmt_mib(k64.peak_main[1])}",
                     f"{fmt_mib(r64.peak_main[0])} / {fmt_mib(r64.peak_main[1])}", "", ""])
        idle_rss, idle_pss, idle_procs = out.idle_memory
        rows.append(["kfn tree before the c64 run: RSS / PSS", f"{fmt_mib(idle_rss)} / {fmt_mib(idle_pss)} "
                     f"({idle_procs} processes)", "", "", ""])
    table(["metric", "kfn local", "plain aiohttp", "kfn ÷ plain", "target"], rows)
    if out.instances:
        print(f"After the c16 run, hello (examples/hello.yaml: concurrency 10, maxReplicas 5) had {out.instances}.\n")

    if out.c16:
        k16, r16 = out.c16["kfn"], out.c16["ref"]
        kn, rn = k16.result.requests, r16.result.requests
        k_total, r_total = (k16.cpu["main"] + k16.cpu["children"]) / kn, (r16.cpu["main"] + r16.cpu["children"]) / rn
        print(f"CPU per request during the c16 hello run (/proc/PID/stat utime+stime ÷ requests; {kn:,} and "
              f"{rn:,} requests; the machine has {os.cpu_count()} CPUs shared by server and wrk).\n")
        table(["process", "kfn local", "plain aiohttp"], [
            ["server main process (kfn: gateway + autoscaler + instance hosts)", cpu_text(k16, "main"),
             cpu_text(r16, "main")],
            ["environment processes (+ zygotes)", cpu_text(k16, "children"), "—"],
            ["server total", fmt_us(k_total), fmt_us(r_total) + f" (kfn {ratio(k_total, r_total)})"],
            ["wrk (the client)", fmt_us(k16.result.cpu / kn), fmt_us(r16.result.cpu / rn)],
            ["context switches per request, main process (voluntary + involuntary)",
             per_request_switches(k16.switches["main"], kn), per_request_switches(r16.switches["main"], rn)],
            ["context switches per request, environment processes",
             per_request_switches(k16.switches["children"], kn), "—"],
        ])
        if out.profiles:
            report_profiles(out, k16, r16)


def cpu_text(run: Load, key: str) -> str:
    """CPU per request of `key`, with its system (kernel) part."""
    requests = run.result.requests
    return f"{fmt_us(run.cpu[key] / requests)} (sys {fmt_us(run.cpu[key + ' sys'] / requests)})"


def per_request_switches(counts: tuple[int, int], requests: int) -> str:
    return f"{counts[0] / requests:.2f} + {counts[1] / requests:.2f}"


def report_profiles(out: Results, k16: Load, r16: Load) -> None:
    kfn, ref = out.profiles["kfn"], out.profiles.get("ref")
    per_request = {"kfn main": k16.cpu["main"] / k16.result.requests,
                   "kfn children": k16.cpu["children"] / k16.result.requests,
                   "ref main": r16.cpu["main"] / r16.result.requests}

    def rows_for(samples: collections.Counter[str], cpu: float, limit: int = 12) -> list[list[object]]:
        total = sum(samples.values()) or 1
        return [[name, f"{count / total:.0%}", fmt_us(cpu * count / total)]
                for name, count in samples.most_common(limit)]

    print("Where the CPU goes: py-spy samples (250 Hz, non-blocking, active samples only) during another c16 run, "
          "by the innermost Python frame's component; µs/request = share × the CPU per request above. "
          "Time in C code (uvloop, the HTTP parsers, syscalls) counts for the Python frame that called it; so does "
          "time a process was runnable but not running: on 2 busy CPUs a socket write that wakes the peer process "
          "is often preempted by it right there, so the write sites (`_RuntimeAPI.send`, aiohttp's "
          "`_writelines`, the environments' `post_and_next`) carry the cost of each process hop.\n")
    print("kfn local main process (gateway + instance hosts):\n")
    table(["component", "share", "≈ µs/request"], rows_for(kfn["main"][0], per_request["kfn main"]))
    print("kfn environment processes (all environments of every instance):\n")
    table(["component", "share", "≈ µs/request"], rows_for(kfn["children"][0], per_request["kfn children"]))
    if ref is not None:
        print("plain aiohttp (the reference):\n")
        table(["component", "share", "≈ µs/request"], rows_for(ref["main"][0], per_request["ref main"]))
    print("Hottest functions of the kfn local main process (innermost frame):\n")
    table(["function", "share", "≈ µs/request"], rows_for(kfn["main"][1], per_request["kfn main"], limit=15))
    print("Hottest functions of the kfn environment processes (innermost frame):\n")
    table(["function", "share", "≈ µs/request"], rows_for(kfn["children"][1], per_request["kfn children"], limit=8))


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--serve-reference":
        serve_reference(int(sys.argv[2]), sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per server (default 2000)")
    parser.add_argument("--cold-starts", type=int, default=7, help="cold starts from zero (default 7, at least 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run (default 5)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    args = parser.parse_args(argv)
    reaper = Reaper()
    try:
        with tempfile.TemporaryDirectory(prefix="kfn-bench-gateway-") as tmp:
            out = run(args, Path(tmp), reaper)
    finally:
        reaper.kill_all()
    report(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
