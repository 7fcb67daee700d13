"""How `kfn local` startup grows with the number of functions: 10, 100, 1,000 (issue 12).

    python bench/startup.py [--counts 10,100,1000] [--requests 500] [--idle 10] [--runs 1]

For each count N, a directory of N Function manifests (hello's code, scale to zero; one of them,
fn-0000, keeps one instance) is served by a fresh `kfn local`, and measured:

  - time to listening: process start → /healthz answers 200. kfn local reads every manifest before
    it listens, so at that moment it knows all N functions (the bench checks: /system/functions lists N);
  - time to ready: process start → /system/functions lists all N functions and one invocation of
    the last one (fn-N-1, at zero replicas: a cold start) answers 200; and the CPU seconds kfn local
    and its descendants used until then (less sensitive than wall time to a busy machine);
  - RSS and PSS of the kfn local process (gateway, autoscaler, manifest watcher, instance hosts)
    once ready, and its RSS once fn-0000's instance is up; instances' own processes are not counted;
  - idle CPU: % of one core used by the kfn local process and all its descendants (the two warm
    instances) over `--idle` seconds right after ready, with no traffic: utime+stime from
    /proc/PID/stat of each (plus the children it reaped meanwhile);
  - routing latency: sequential GETs over one keep-alive connection, median and p99, to the
    warm function fn-0000 (a full invocation) and to a name no function has (404: the routing alone).

Prints a Markdown table. Every process it starts is stopped by PID, its process group killed.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HELLO = 'def handler(event, context):\n    return {"statusCode": 200, "body": "hello"}\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_functions(directory: Path, count: int) -> None:
    for i in range(count):
        name = f"fn-{i:04d}"
        manifest = {"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
                    "spec": {"handler": "main.handler", "source": {"files": {"main.py": HELLO}},
                             "scale": {"minReplicas": 1 if i == 0 else 0, "idleTimeout": "10m"}}}
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def pss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it, from each process's parent in /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return tree


def cpu_ticks(pid: int) -> dict[int, int]:
    """utime+stime, in clock ticks, of `pid` and each of its descendants; `pid`'s entry also counts
    the children it reaped (cutime+cstime)."""
    out: dict[int, int] = {}
    for each in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat(each)
            ticks = int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
            if each == pid:
                ticks += int(fields[13]) + int(fields[14])   # cutime, cstime
            out[each] = ticks
    return out


def idle_cpu(pid: int, seconds: float) -> tuple[float, float]:
    """(% of one core used by `pid` itself, by `pid` and its descendants) over `seconds` of quiet."""
    hertz = os.sysconf("SC_CLK_TCK")
    before = cpu_ticks(pid)
    started = time.monotonic()
    time.sleep(seconds)
    after = cpu_ticks(pid)
    elapsed = time.monotonic() - started
    own = (after.get(pid, 0) - before.get(pid, 0)) / hertz / elapsed * 100
    total = sum(ticks - before.get(each, 0) for each, ticks in after.items()) / hertz / elapsed * 100
    return own, total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def kfn_local(directory: Path, port: int, log: Path, *,
              stop_timeout: float = 30) -> Iterator[subprocess.Popen[bytes]]:
    """`kfn local DIRECTORY` on `port` (its output into `log`), stopped with SIGTERM (SIGKILL
    after `stop_timeout`) and its whole process group killed on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    env["XDG_CACHE_HOME"] = str(directory.parent / "cache")
    with log.open("wb") as out:
        process = subprocess.Popen([PYTHON, "-m", "kfn", "local", str(directory), "--port", str(port),
                                    "--log-level", "warning"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def latencies(port: int, path: str, requests: int) -> tuple[float, float]:
    """(median, p99) in ms of sequential GETs over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out: list[float] = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            out.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    out.sort()
    return statistics.median(out), out[min(len(out) - 1, int(len(out) * 0.99))]


def measure(count: int, requests: int, idle: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kfn-bench-startup-") as tmp:
        directory = Path(tmp) / "functions"
        directory.mkdir()
        write_functions(directory, count)
        port = free_port()
        started = time.monotonic()
        with kfn_local(directory, port, Path(tmp) / "kfn-local.log") as process:
            deadline = started + 300
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"kfn local exited:\n{(Path(tmp) / 'kfn-local.log').read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    if get(port, "/healthz", timeout=1)[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("kfn local did not become ready in 300 s")
                time.sleep(0.01)
            listening = time.monotonic() - started
            status, body = get(port, "/system/functions", timeout=60)
            known = len(json.loads(body)) if status == 200 else -1
            last = f"/function/fn-{count - 1:04d}"
            while known == count and get(port, last, timeout=60)[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{last} did not answer 200 in 300 s")
                time.sleep(0.01)
            ready = time.monotonic() - started
            cpu_ready = sum(cpu_ticks(process.pid).values()) / os.sysconf("SC_CLK_TCK")
            rss_ready, pss_ready = rss_mib(process.pid), pss_mib(process.pid)
            idle_own, idle_all = idle_cpu(process.pid, idle)
            for _ in range(600):   # fn-0000's one instance (minReplicas 1), at most 60 s
                if get(port, "/function/fn-0000")[0] == 200:
                    break
                time.sleep(0.1)
            warm = latencies(port, "/function/fn-0000", requests)
            unknown = latencies(port, "/function/no-such-function", requests)
            rss_serving = rss_mib(process.pid)
    return {"count": count, "known": known, "listening_s": listening, "ready_s": ready, "cpu_ready": cpu_ready,
            "rss_ready": rss_ready,
            "pss_ready": pss_ready, "idle_own": idle_own, "idle_all": idle_all, "rss_serving": rss_serving,
            "warm_p50": warm[0], "warm_p99": warm[1], "route_p50": unknown[0], "route_p99": unknown[1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of quiet over which idle CPU is measured")
    parser.add_argument("--runs", type=int, default=1, help="runs per count (one row each)")
    args = parser.parse_args()
    rows = [measure(int(n), args.requests, args.idle) for n in args.counts.split(",") for _ in range(args.runs)]
    print("\n### kfn local startup by number of functions\n")
    print("Listening: process start → /healthz answers 200 (every manifest is read by then). Ready: process "
          "start → /system/functions lists every function and one invocation of the last one (a cold start) "
          "answers 200. CPU to ready: CPU seconds used by then by kfn local and its descendants (less "
          f"sensitive than wall time to a busy machine). Idle CPU: % of one core over {args.idle:g} s right after "
          "ready, no traffic, kfn local "
          "alone / with its descendants (two warm instances). RSS and PSS of the kfn local process.\n")
    print("| functions | known | listening | ready | CPU to ready | RSS / PSS ready | idle CPU (kfn local / all) "
          "| RSS serving 1 instance | warm invoke p50 / p99 | 404 routing p50 / p99 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['count']:,} | {r['known']:,} | {r['listening_s']:.2f} s | {r['ready_s']:.2f} s "
              f"| {r['cpu_ready']:.2f} s "
              f"| {r['rss_ready']:.0f} / {r['pss_ready']:.0f} MiB | {r['idle_own']:.1f} % / {r['idle_all']:.1f} % "
              f"| {r['rss_serving']:.0f} MiB | {r['warm_p50']:.2f} / {r['warm_p99']:.2f} ms "
              f"| {r['route_p50']:.2f} / {r['route_p99']:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
