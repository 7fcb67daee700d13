"""One function instance as a pod runs it: `python bench/runtime_latency.py [--starts 10] [--requests 2000]`.

Starts `python -m kfn_runtime` with the KFN_* environment a pod gets (the operator's, except
KFN_HOST=127.0.0.1 and KFN_PORT=0), serving examples/hello.yaml's handler (and async-hello.yaml's)
from a temporary code directory, and measures, as medians over --starts runs:

  - process start -> the `{"msg": "ready", ...}` line on stdout, and -> the first invocation answered
    (POST /2015-03-31/functions/function/invocations with the API Gateway 2.0 event the gateway
    sends for `GET /function/hello?name=bench`);
  - warm latency: --requests sequential invocations over one keep-alive connection (raw-socket
    client), p50 / p99 / mean and the resulting requests per second;
  - throughput with wrk at 16 connections (skipped without wrk).

Two ways to start the pod process are shown: this virtualenv's `python` (its site-packages hold
kfn's editable install, whose import hook costs milliseconds), and `python -S` (no site-packages:
closer to the runtime image, whose site-packages hold only prometheus-client). Bytecode is cached
in a temporary PYTHONPYCACHEPREFIX and one discarded start fills it first, as the image's
compileall does; so stale bytecode in the checkout never inflates a start.

The helpers below the measurements (raw HTTP client, wrk, /proc readers, Markdown tables, process
cleanup) are shared with bench/environments.py and bench/gateway.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = ROOT / "runtime-images" / "python"
PYTHON = sys.executable
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PY_VERSION = f"python{sys.version_info[0]}.{sys.version_info[1]}"

FALLBACK_HELLO = ("main.handler", {"main.py": (
    "import json\n\n\ndef handler(event, context):\n"
    "    params = event.get('queryStringParameters') or {}\n"
    "    name = params.get('name', 'world')\n"
    "    return {'statusCode': 200, 'headers': {'Content-Type': 'application/json'},\n"
    "            'body': json.dumps({'message': f'Hello, {name}!'})}\n")})


# -- numbers and tables ----------------------------------------------------------------------------

def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_ms(seconds: float, digits: int = 1) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.{digits}f} ms"


def fmt_us(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1e6:.0f} µs" if seconds < 0.01 else f"{seconds * 1000:.2f} ms"


def fmt_mib(kib: float) -> str:
    return "n/a" if kib != kib else f"{kib / 1024:.1f} MiB"


def ratio(value: float, reference: float) -> str:
    if not reference or value != value or reference != reference:
        return ""
    return f"{value / reference:.2f}×"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def machine() -> str:
    load = os.getloadavg()
    return (f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the function under test -------------------------------------------------------------------------

def example(name: str) -> tuple[str, dict[str, str]] | None:
    """(handler, files) of examples/NAME.yaml, or None if it is missing or has no inline source."""
    path = ROOT / "examples" / f"{name}.yaml"
    if not path.exists():
        return None
    import yaml

    spec = (yaml.safe_load(path.read_text()) or {}).get("spec") or {}
    files = (spec.get("source") or {}).get("files")
    if not spec.get("handler") or not files:
        return None
    return spec["handler"], dict(files)


def hello() -> tuple[str, dict[str, str]]:
    return example("hello") or FALLBACK_HELLO


def write_code(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def gateway_event(path: str = "/", query: str = "name=bench") -> bytes:
    """The API Gateway HTTP API 2.0 event kfn's gateway sends for `GET /function/hello{path}?{query}`."""
    try:
        from kfn_gateway import apigateway
    except ImportError:  # the runtime alone: a hand-made event of the same shape
        return json.dumps({"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
                           "headers": {"host": "127.0.0.1", "user-agent": "bench"},
                           "queryStringParameters": dict(p.split("=", 1) for p in query.split("&") if "=" in p),
                           "requestContext": {"http": {"method": "GET", "path": path}},
                           "isBase64Encoded": False}).encode()
    request = apigateway.HttpRequest(
        method="GET", path=path, raw_query=query, headers=[("Host", "127.0.0.1:8080"), ("User-Agent", "bench")],
        body=b"", source_ip="127.0.0.1", forwarded_for="127.0.0.1", prefix="/function/hello")
    return json.dumps(apigateway.event(request, api_request_id=apigateway.request_id())).encode()


# -- processes -----------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command name (state = index 0), or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def start_time(pid: int) -> str | None:
    """The process's start time (tells it from a later process reusing the PID); None if gone or a zombie."""
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far ((0, 0) if it is gone)."""
    fields = _stat_fields(pid)
    return (0.0, 0.0) if fields is None else (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (0 if it is gone)."""
    return sum(cpu_times(pid))


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process so far, all its threads."""
    voluntary = involuntary = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
    return voluntary, involuntary


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (children first), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(root, ()))
    while todo and len(out) < 100_000:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """rss, pss and uss (private pages) of a process in KiB, from /proc/PID/smaps_rollup ({} if gone)."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        try:
            values["rss"] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            pass
        return values
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return {"rss": values.get("Rss", 0), "pss": values.get("Pss", 0),
            "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


class Reaper:
    """PIDs (with their start times) that the bench started, directly or not, to kill at the end."""

    def __init__(self) -> None:
        self._seen: dict[int, str] = {}

    def track(self, *roots: int | None) -> None:
        for root in roots:
            if root is None:
                continue
            for pid in (root, *descendants(root)):
                started = start_time(pid)
                if started is not None:
                    self._seen.setdefault(pid, started)

    def remember(self, *pids: int | None) -> None:
        """Remember these processes only (no /proc scan for descendants)."""
        for pid in pids:
            started = start_time(pid) if pid is not None else None
            if pid is not None and started is not None:
                self._seen.setdefault(pid, started)

    def kill_all(self) -> list[int]:
        """SIGKILL every remembered process still alive (and its group if it leads one)."""
        killed = []
        for pid, started in self._seen.items():
            if start_time(pid) != started:
                continue
            killed.append(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._seen.clear()
        return killed


def stop_process(process: subprocess.Popen[Any], *, grace: float = 15.0) -> None:
    """SIGTERM `process`, wait up to `grace` s (then SIGKILL), and kill whatever of its tree is left."""
    reaper = Reaper()   # this process's tree only: other servers of the bench may still be running
    reaper.track(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    time.sleep(0.05)
    leftovers = reaper.kill_all()
    if leftovers:
        note(f"killed {len(leftovers)} process(es) left behind by PID {process.pid}: {leftovers}")


def bench_env(cache_dir: Path | None = None) -> dict[str, str]:
    """This process's environment for a child, bytecode writes allowed (into `cache_dir` if given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_") and k != "PYTHONDONTWRITEBYTECODE"}
    if cache_dir is not None:
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env


# -- HTTP -------------------------------------------------------------------------------------------

def http_request(method: str, path: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawClient:
    """HTTP/1.1 over one keep-alive TCP connection with as little client work as possible."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one request (bytes as http_request makes them); the answer's status and body."""
        self.sock.sendall(data)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        self._buffer = self._buffer[end + 4:]
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = b""
            while True:
                while (line_end := self._buffer.find(b"\r\n")) < 0:
                    self._fill()
                size = int(self._buffer[:line_end].split(b";")[0], 16)
                while len(self._buffer) < line_end + 2 + size + 2:
                    self._fill()
                body += self._buffer[line_end + 2:line_end + 2 + size]
                self._buffer = self._buffer[line_end + 2 + size + 2:]
                if size == 0:
                    return status, body
        length = int(fields.get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body


def sequential(port: int, request: bytes, *, requests: int, warmup: int = 200,
               expect: bytes | None = None) -> list[float]:
    """Seconds per request for `requests` requests one after another on one connection (after `warmup`)."""
    client = RawClient(port)
    samples: list[float] = []
    try:
        for i in range(warmup + requests):
            started = time.perf_counter()
            status, body = client.request(request)
            elapsed = time.perf_counter() - started
            if status != 200 or (expect is not None and expect not in body):
                raise SystemExit(f"bench: 127.0.0.1:{port} answered {status}: {body[:300]!r}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        client.close()
    return samples


@dataclass
class WrkResult:
    rps: float
    requests: int
    errors: int           # socket errors and non-2xx/3xx answers
    p50: float            # seconds
    p99: float
    cpu: float            # wrk's own CPU seconds

    @property
    def text(self) -> str:
        errors = f", {self.errors} errors" if self.errors else ""
        return f"{self.rps:,.0f} req/s{errors}"


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk_binary() -> str | None:
    found = shutil.which("wrk")
    if found is None:
        note("wrk is missing (Debian: apt-get install -y wrk): throughput rows are skipped")
    return found


def wrk(url: str, *, connections: int, duration: float, threads: int = 1, script: Path | None = None) -> WrkResult:
    """`wrk -tT -cC -dDs --latency` against `url`; bounded by a subprocess timeout."""
    binary = shutil.which("wrk") or "wrk"
    command = [binary, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = result.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise SystemExit(f"bench: wrk failed:\n{out}\n{result.stderr}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    return WrkResult(rps=float(rps.group(1)), requests=int(total.group(1)), errors=errors,
                     p50=_duration(latency.get("50", "")), p99=_duration(latency.get("99", "")),
                     cpu=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def wrk_post_script(directory: Path, body: bytes) -> Path:
    """A wrk Lua script that POSTs `body` as JSON."""
    path = directory / "post.lua"
    text = body.decode()
    path.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(text)}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
    return path


# -- the pod process --------------------------------------------------------------------------------

def pod_env(code_dir: Path, handler: str, *, concurrency: int = 10, cache_dir: Path | None = None,
            name: str = "hello") -> dict[str, str]:
    """What the operator sets on a pod's runtime container (kfn_operator.builders), on 127.0.0.1:0."""
    from kfn_runtime import contract

    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": str(code_dir), "PYTHONPATH": str(RUNTIME_DIR), "PYTHONUNBUFFERED": "1"}
    if cache_dir is not None:
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    env.update({
        contract.ENV_RUNTIME: PY_VERSION, contract.ENV_HANDLER: handler, contract.ENV_CODE_DIR: str(code_dir),
        contract.ENV_DEPS_DIR: str(code_dir.parent / "deps"), contract.ENV_FUNCTION_NAME: name,
        contract.ENV_FUNCTION_VERSION: "$LATEST", contract.ENV_NAMESPACE: "default",
        contract.ENV_REGION: "us-east-1", contract.ENV_TIMEOUT: "30", contract.ENV_CONCURRENCY: str(concurrency),
        contract.ENV_MEMORY_MB: "256", contract.ENV_HOST: "127.0.0.1", contract.ENV_PORT: "0",
        contract.ENV_DRAIN_TIMEOUT: "5",
    })
    return env


class Pod:
    """`python -m kfn_runtime` in a session of its own; its stdout is read (and drained) by a thread."""

    def __init__(self, code_dir: Path, handler: str, *, flags: Sequence[str] = (), concurrency: int = 10,
                 cache_dir: Path | None = None, reaper: Reaper) -> None:
        self.reaper = reaper
        self.port = 0
        self.ready_at = 0.0
        self.ready_line: dict[str, Any] = {}
        self._ready = threading.Event()
        self._stderr = tempfile.TemporaryFile()
        env = pod_env(code_dir, handler, concurrency=concurrency, cache_dir=cache_dir)
        self.started = time.perf_counter()
        self.process = subprocess.Popen([PYTHON, *flags, "-m", "kfn_runtime"], env=env, cwd=code_dir,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                        start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not self._ready.is_set() and line.startswith(b"{") and b'"ready"' in line:
                stamp = time.perf_counter()
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("msg") == "ready":
                        self.ready_at, self.ready_line, self.port = stamp, record, int(record["port"])
                        self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from spawn to the ready line."""
        if not self._ready.wait(timeout):
            self.stop()
            self._stderr.seek(0)
            raise SystemExit(f"bench: the runtime did not get ready:\n{self._stderr.read().decode(errors='replace')}")
        self.reaper.track(self.process.pid)
        return self.ready_at - self.started

    def stop(self) -> None:
        stop_process(self.process)
        self._reader.join(timeout=5)
        self._stderr.close()


@contextlib.contextmanager
def running_pod(code_dir: Path, handler: str, **options: Any) -> Iterator[Pod]:
    pod = Pod(code_dir, handler, **options)
    try:
        pod.wait_ready()
        yield pod
    finally:
        pod.stop()


def measure_starts(code_dir: Path, handler: str, runs: int, *, flags: Sequence[str] = (), cache_dir: Path,
                   reaper: Reaper) -> dict[str, list[float]]:
    """Per run: spawn -> ready line, spawn -> first answer, ready -> first answer, the runtime's startupMs."""
    event = http_request("POST", INVOKE_PATH, body=gateway_event(), headers=[("Content-Type", "application/json")])
    out: dict[str, list[float]] = {"ready": [], "first": [], "alone": [], "startup": []}
    for _ in range(runs):
        pod = Pod(code_dir, handler, flags=flags, cache_dir=cache_dir, reaper=reaper)
        try:
            ready = pod.wait_ready()
            client = RawClient(pod.port)
            status, body = client.request(event)
            answered = time.perf_counter()
            client.close()
            if status != 200:
                raise SystemExit(f"bench: the first invocation answered {status}: {body[:300]!r}")
            out["ready"].append(ready)
            out["first"].append(answered - pod.started)
            out["alone"].append(answered - pod.ready_at)
            out["startup"].append(float(pod.ready_line.get("startupMs", "nan")) / 1000)
        finally:
            pod.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--starts", type=int, default=10, help="pod starts per variant (default 10)")
    parser.add_argument("--requests", type=int, default=2000, help="warm sequential invocations (default 2000)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of the wrk run (default 5)")
    args = parser.parse_args(argv)

    cases: list[tuple[str, str, dict[str, str]]] = [("examples/hello.yaml", *hello())]
    async_hello = example("async-hello")
    if async_hello is not None:
        cases.append(("examples/async-hello.yaml", *async_hello))
    have_wrk = wrk_binary() is not None
    reaper = Reaper()
    start_rows: list[list[object]] = []
    warm_rows: list[list[object]] = []
    wrk_rows: list[list[object]] = []
    event = gateway_event()
    invoke = http_request("POST", INVOKE_PATH, body=event, headers=[("Content-Type", "application/json")])
    try:
        with tempfile.TemporaryDirectory(prefix="kfn-bench-runtime-") as tmp:
            cache = Path(tmp) / "pycache"
            for index, (label, handler, files) in enumerate(cases):
                code_dir = write_code(Path(tmp) / f"code-{index}" / "task", files)
                variants: list[tuple[str, tuple[str, ...]]] = [("python -m kfn_runtime", ())]
                if index == 0:
                    variants.append(("python -S -m kfn_runtime", ("-S",)))
                for variant, flags in variants:
                    note(f"{label}: {args.starts} starts of `{variant}` ...")
                    measure_starts(code_dir, handler, 1, flags=flags, cache_dir=cache, reaper=reaper)  # fills the cache
                    runs = measure_starts(code_dir, handler, args.starts, flags=flags, cache_dir=cache, reaper=reaper)
                    start_rows.append([label, f"`{variant}`", fmt_ms(median(runs["ready"])),
                                       fmt_ms(median(runs["first"])), fmt_ms(max(runs["first"])),
                                       fmt_ms(median(runs["alone"])), fmt_ms(median(runs["startup"]))])
                note(f"{label}: {args.requests} warm invocations ...")
                with running_pod(code_dir, handler, cache_dir=cache, reaper=reaper) as pod:
                    warm = sequential(pod.port, invoke, requests=args.requests)
                    warm_rows.append([label, fmt_us(pct(warm, 50)), fmt_us(pct(warm, 99)),
                                      fmt_us(statistics.fmean(warm)), f"{len(warm) / sum(warm):,.0f}"])
                    if have_wrk and index == 0:
                        note(f"{label}: wrk c16 ...")
                        script = wrk_post_script(Path(tmp), event)
                        url = f"http://127.0.0.1:{pod.port}{INVOKE_PATH}"
                        wrk(url, connections=16, duration=1, script=script)   # lets environments start
                        result = wrk(url, connections=16, duration=args.duration, script=script)
                        environments = len(descendants(pod.process.pid)) - 1   # all but the zygote
                        wrk_rows.append([label, "16", f"{environments} (concurrency 10)", result.text,
                                         fmt_ms(result.p50, 2), fmt_ms(result.p99, 2)])
    finally:
        reaper.kill_all()

    print(f"\n## Runtime: one instance (`python -m kfn_runtime`, pod environment, 127.0.0.1)\n\n{machine()}; "
          f"{args.starts} starts per row (medians), {args.requests} warm invocations over one keep-alive connection. "
          f"The event is the gateway's API Gateway 2.0 event for `GET /function/hello?name=bench` "
          f"({len(event)} bytes).\n")
    table(["function", "process", "start→ready", "start→1st answer", "(max)", "1st invoke alone",
           "startupMs (runtime's own)"], start_rows)
    table(["function", "warm p50", "warm p99", "mean", "req/s (sequential)"], warm_rows)
    if wrk_rows:
        table(["function", "wrk connections", "environments after", "throughput", "p50", "p99"], wrk_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
