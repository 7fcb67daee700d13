"""Benchmark of kfn's data path in local mode: what the gateway costs, and how fast a cold start is.

    python bench/gateway.py [--requests 2000] [--cold-starts 20] [--duration 5]

Starts `kfn local` on 127.0.0.1 with examples/hello.yaml (concurrency raised to 100 so that direct
runs are not throttled by the runtime, plus a copy that scales to zero after a fraction of a second,
for cold starts) and measures:

- warm latency p50/p99 of sequential keep-alive requests, through the gateway and directly to the
  runtime instance behind it (its address comes from local mode's /system/instances/NAME);
- throughput at concurrency 1, 16 and 64 with wrk, through the gateway and directly;
- cold start from zero, p50/p99 (the function is back at zero instances before every request);
- peak RSS (VmHWM) of the kfn local process and of one runtime instance.

wrk is a Debian package; if it is missing the bench runs `apt-get install -y wrk` (as root), or
prints how to install it and skips the throughput rows.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hello.yaml"
PYTHON = sys.executable
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FALLBACK_HELLO = {
    "apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "hello"},
    "spec": {"handler": "main.handler", "source": {"files": {"main.py": (
        "import json\n\ndef handler(event, context):\n"
        "    name = (event.get('queryStringParameters') or {}).get('name', 'world')\n"
        "    return {'statusCode': 200, 'headers': {'Content-Type': 'application/json'},\n"
        "            'body': json.dumps({'message': f'Hello, {name}!'})}\n")}},
        "scale": {"maxReplicas": 5, "idleTimeout": "30s"}},
}


# -- kfn local -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> Any:
    with _OPENER.open(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            value = predicate()
            if value:
                return value
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


@contextlib.contextmanager
def kfn_local(directory: Path, log: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    with log.open("wb") as out:
        process = subprocess.Popen([PYTHON, "-m", "kfn", "local", str(directory), "--port", str(port),
                                    "--log-level", "warning"],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO, start_new_session=True)
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"bench: kfn local exited with {process.returncode}:\n{log.read_text()}")
            return _get_json(url + "/healthz") is not None
        _wait(up, timeout=30, what="kfn local")
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _instance(url: str, name: str) -> dict[str, Any]:
    status = _get_json(f"{url}/system/instances/{name}")
    ready = [i for i in status["instances"] if i["state"] == "ready"]
    if not ready:
        raise SystemExit(f"bench: {name} has no ready instance")
    return ready[0]


# -- measurements ------------------------------------------------------------------------------------

def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def sequential_latency(base: str, path: str, *, requests: int, warmup: int = 200) -> list[float]:
    """Milliseconds per request, one keep-alive connection, one request at a time."""
    parsed = urllib.request.urlparse(base)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    samples: list[float] = []
    try:
        for i in range(warmup + requests):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise SystemExit(f"bench: {base}{path} answered {response.status}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        connection.close()
    return samples


def cold_starts(base: str, name: str, *, count: int) -> list[float]:
    """Milliseconds for a request that finds the function at zero instances (each one does)."""
    samples: list[float] = []
    for _ in range(count):
        _wait(lambda: (f := _get_json(f"{base}/system/functions/{name}"))["availableReplicas"] == 0
              and f["replicas"] == 0, timeout=30, what=f"{name} to scale to zero")
        started = time.perf_counter()
        with _OPENER.open(f"{base}/function/{name}", timeout=30) as response:
            response.read()
            if response.status != 200:
                raise SystemExit(f"bench: cold request answered {response.status}")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install -y wrk) ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return shutil.which("wrk")
    print("bench: wrk is missing: install it (Debian: apt-get install -y wrk) for the throughput rows", file=sys.stderr)
    return None


def wrk(binary: str, url: str, *, connections: int, duration: float) -> float:
    threads = 1 if connections == 1 else 2
    result = subprocess.run([binary, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", url],
                            capture_output=True, text=True, timeout=duration + 60)
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    if not match:
        raise SystemExit(f"bench: wrk failed:\n{result.stdout}\n{result.stderr}")
    if errors:
        print(f"bench: {errors.group(1)} non-2xx answers from {url} at c={connections}", file=sys.stderr)
    return float(match.group(1))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the report --------------------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "FAIL")


def print_table(rows: list[Row]) -> None:
    header = Row("metric", "value", "target")
    table = [(r.metric, r.value, r.target, r.verdict if r is not header else "") for r in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    parser.add_argument("--cold-starts", type=int, default=20)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    args = parser.parse_args(argv)

    hello = yaml.safe_load(EXAMPLE.read_text()) if EXAMPLE.exists() else FALLBACK_HELLO
    # Direct requests bypass the gateway's queue: with the example's concurrency (10) the runtime
    # would turn most of a c=64 run away with fast 503s, which is no throughput to compare with.
    hello["spec"]["concurrency"] = 100
    cold = json.loads(json.dumps(hello))
    cold["metadata"]["name"] = "cold"
    cold["spec"]["scale"] = {"minReplicas": 0, "idleTimeout": "0.2s", "stableWindow": "1s"}
    wrk_binary = ensure_wrk()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kfn-bench-") as tmp:
        directory = Path(tmp) / "functions"
        directory.mkdir()
        (directory / "hello.yaml").write_text(yaml.safe_dump(hello))
        (directory / "cold.yaml").write_text(yaml.safe_dump(cold))
        with kfn_local(directory, Path(tmp) / "kfn-local.log") as (url, local_pid):
            path = "/function/hello?name=bench"
            _wait(lambda: sequential_latency(url, path, requests=1, warmup=0), timeout=30, what="hello")
            direct = _instance(url, "hello")
            direct_url = direct["url"]

            print("bench: warm latency ...", file=sys.stderr)
            through = sequential_latency(url, path, requests=args.requests)
            straight = sequential_latency(direct_url, "/?name=bench", requests=args.requests)
            p50_added = _percentile(through, 50) - _percentile(straight, 50)
            rows += [
                Row("warm latency p50, through gateway", f"{_percentile(through, 50):.2f} ms"),
                Row("warm latency p99, through gateway", f"{_percentile(through, 99):.2f} ms"),
                Row("warm latency p50, direct to instance", f"{_percentile(straight, 50):.2f} ms"),
                Row("warm latency p99, direct to instance", f"{_percentile(straight, 99):.2f} ms"),
                Row("gateway overhead at p50", f"{p50_added:.2f} ms", "<= 1 ms", p50_added <= 1.0),
            ]

            if wrk_binary:
                for connections in (1, 16, 64):
                    print(f"bench: throughput at c={connections} ...", file=sys.stderr)
                    direct_url = _instance(url, "hello")["url"]
                    rps_direct = wrk(wrk_binary, f"{direct_url}/?name=bench", connections=connections,
                                     duration=args.duration)
                    rps_gateway = wrk(wrk_binary, url + path, connections=connections, duration=args.duration)
                    ratio = rps_gateway / rps_direct if rps_direct else 0.0
                    check = connections == 16
                    rows += [
                        Row(f"throughput c={connections}, direct", f"{rps_direct:,.0f} req/s"),
                        Row(f"throughput c={connections}, through gateway", f"{rps_gateway:,.0f} req/s ({ratio:.0%})",
                            ">= 60% of direct" if check else "", (ratio >= 0.6) if check else None),
                    ]
            instance_rss = peak_rss_mb(int(_instance(url, "hello")["pid"]))

            print(f"bench: {args.cold_starts} cold starts ...", file=sys.stderr)
            colds = cold_starts(url, "cold", count=args.cold_starts)
            rows += [
                Row(f"cold start p50 ({len(colds)} starts)", f"{_percentile(colds, 50):.0f} ms", "<= 300 ms",
                    _percentile(colds, 50) <= 300),
                Row(f"cold start p99 ({len(colds)} starts)", f"{_percentile(colds, 99):.0f} ms"),
                Row("peak RSS, kfn local (gateway + autoscaler + backend)", f"{peak_rss_mb(local_pid):.1f} MiB"),
                Row("peak RSS, one runtime instance", f"{instance_rss:.1f} MiB"),
            ]
    print()
    load = os.getloadavg()[0]
    print(f"kfn gateway bench (local mode, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {load:.1f} at the end)")
    if load > (os.cpu_count() or 1):
        print("note: the machine was busy with other work; throughput and tail latencies are pessimistic")
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
