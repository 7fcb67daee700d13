"""How fast the Python runtime starts and answers: `python bench/runtime_latency.py`.

Starts `python -m kfn_runtime` on 127.0.0.1 serving examples/hello.yaml (and async-hello.yaml when
present; a built-in hello handler otherwise) and measures:
  - cold start: process spawn -> "ready <port>" on KFN_READY_FD, and spawn -> first 200 response
    (median and max of --starts runs);
  - warm latency: --requests sequential GETs over one keep-alive connection (http.client),
    p50 / p99 / mean and requests per second.
The runtime's stdout (one JSON line per invocation) goes to /dev/null, so logging cost is included.
"""
from __future__ import annotations

import argparse
import http.client
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = ROOT / "runtime-images" / "python"
sys.path.insert(0, str(RUNTIME_DIR))

from kfn_runtime import contract  # noqa: E402

FALLBACK = {"handler": "main.handler", "files": {"main.py": (
    "import json\n\ndef handler(event, context):\n"
    "    return {'statusCode': 200, 'body': json.dumps({'message': 'Hello, world!'})}\n")}}


def load_example(name: str) -> tuple[str, dict[str, str]] | None:
    path = ROOT / "examples" / f"{name}.yaml"
    if not path.exists():
        return None
    import yaml

    from kfn.core.functions import parse_function

    function = parse_function(yaml.safe_load(path.read_text()))
    if function.spec.source is None or function.spec.source.files is None:
        return None
    return function.spec.handler, dict(function.spec.source.files)


class Runtime:
    def __init__(self, code_dir: Path, handler: str) -> None:
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        env.update({
            "PYTHONPATH": str(RUNTIME_DIR), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
            contract.ENV_HANDLER: handler, contract.ENV_CODE_DIR: str(code_dir), contract.ENV_HOST: "127.0.0.1",
            contract.ENV_PORT: "0", contract.ENV_READY_FD: str(write_end), contract.ENV_FUNCTION_NAME: "bench",
            contract.ENV_CONCURRENCY: "10",
        })
        self.spawned = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "kfn_runtime"], env=env, cwd=code_dir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(write_end,))
        os.close(write_end)
        self._ready = read_end

    def wait_ready(self, timeout: float = 30.0) -> tuple[int, float]:
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in data and time.monotonic() < deadline:
                if not select.select([self._ready], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                chunk = os.read(self._ready, 64)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._ready)
        elapsed = time.perf_counter() - self.spawned
        if not data.startswith(b"ready "):
            self.stop()
            raise RuntimeError(f"the runtime did not start: {self.process.stderr.read().decode()}")
        return int(data.split()[1]), elapsed

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def measure_starts(code_dir: Path, handler: str, runs: int) -> tuple[list[float], list[float]]:
    to_ready, to_first = [], []
    for _ in range(runs):
        runtime = Runtime(code_dir, handler)
        try:
            port, ready = runtime.wait_ready()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status = get(conn, "/?name=bench")
            first = time.perf_counter() - runtime.spawned
            conn.close()
            if status != 200:
                raise RuntimeError(f"first request answered {status}")
            to_ready.append(ready)
            to_first.append(first)
        finally:
            runtime.stop()
    return to_ready, to_first


def measure_interpreter(runs: int) -> list[float]:
    """Spawn -> exit of `python -c pass`: the floor under any cold start on this machine."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return times


def measure_warm(code_dir: Path, handler: str, requests: int) -> list[float]:
    runtime = Runtime(code_dir, handler)
    try:
        port, _ = runtime.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(50):  # warm-up: threads, imports on first use
            get(conn, "/?name=warm")
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            status = get(conn, "/?name=bench")
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"request answered {status}")
        conn.close()
        return latencies
    finally:
        runtime.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10, help="cold starts to measure (default 10)")
    parser.add_argument("--requests", type=int, default=2000, help="warm requests (default 2000)")
    args = parser.parse_args()

    cases = []
    for name in ("hello", "async-hello"):
        example = load_example(name)
        if example is not None:
            cases.append((f"examples/{name}.yaml", *example))
    if not cases:
        cases.append(("built-in hello", FALLBACK["handler"], FALLBACK["files"]))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.starts} cold starts, {args.requests} warm requests over one keep-alive connection")
    floor = measure_interpreter(args.starts)
    print(f"interpreter alone (python -c pass): median {statistics.median(floor) * 1000:.1f} ms")
    header = f"{'function':<28} {'start->ready':>13} {'start->1st resp':>16} {'warm p50':>9} {'warm p99':>9} " \
             f"{'warm mean':>10} {'req/s':>7}"
    print(header)
    print("-" * len(header))
    for label, handler, files in cases:
        with tempfile.TemporaryDirectory(prefix="kfn-bench-") as tmp:
            code_dir = Path(tmp)
            for name, text in files.items():
                (code_dir / name).write_text(text)
            ready, first = measure_starts(code_dir, handler, args.starts)
            warm = measure_warm(code_dir, handler, args.requests)
        print(f"{label:<28} {statistics.median(ready) * 1000:>10.1f} ms {statistics.median(first) * 1000:>13.1f} ms "
              f"{percentile(warm, 0.50) * 1e6:>6.0f} us {percentile(warm, 0.99) * 1e6:>6.0f} us "
              f"{statistics.fmean(warm) * 1e6:>7.0f} us {len(warm) / sum(warm):>7.0f}")
        print(f"{'':<28} (max {max(ready) * 1000:.1f} ms)  (max {max(first) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
