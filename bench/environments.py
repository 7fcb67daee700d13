"""Execution environments: what the zygote buys. `python bench/environments.py [--envs 20] [--fanout 8,32]`.

Drives `kfn_runtime.host.InstanceHost` directly, built by `kfn_runtime.launch.build_host` exactly as
`python -m kfn_runtime` and kfn local build it, in this process (on uvloop when installed, as kfn
local runs), with examples/hello.yaml's handler in a temporary code directory. Side by side, in one
run:

  - adding an environment to a running instance: `host._pool.new()` until the new environment
    polls the Runtime API (its state is idle), --envs times, for environments forked from the
    zygote and for environments that are a new interpreter each (CommandSpawner running kfn's
    own Runtime API client, and AWS's awslambdaric when installed); next to cold interpreter
    starts of the same handler (`python -S -c 'import main'`, spawn -> exit), a whole instance's
    start (`host.start()`: zygote boot + first environment) and a pod's start -> ready;
  - fan-out: N parallel 0.3 s invocations sent to an instance that has 1 environment (concurrency
    N): when the last of them started running, and when all were answered;
  - memory: RSS, PSS and USS (private pages) from /proc/PID/smaps_rollup of the zygote and of its
    environments after each served invocations, next to a cold interpreter that imported the
    handler;
  - one invocation through the InstanceHost alone (no HTTP in front), sequential, p50 / p99 and
    CPU per invocation on each side, next to the same through a pod's invoke endpoint.

Uses InstanceHost's private environment pool (`_pool.new`) and its change event to time exactly the
environment start; everything else is public API.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))   # for `bench.*`

from bench.runtime_latency import (
    INVOKE_PATH,
    PY_VERSION,
    PYTHON,
    RUNTIME_DIR,
    Reaper,
    cpu_seconds,
    descendants,
    fmt_mib,
    fmt_ms,
    fmt_us,
    gateway_event,
    hello,
    http_request,
    machine,
    median,
    memory_kib,
    note,
    pct,
    ratio,
    running_pod,
    sequential,
    switches,
    table,
    write_code,
)
from kfn_runtime.config import Config
from kfn_runtime.execution import IDLE, Invocation
from kfn_runtime.host import InstanceHost
from kfn_runtime.launch import build_host

SLOW = ("import time\n\n\ndef handler(event, context):\n    time.sleep(event['sleep'])\n"
        "    return {'slept': event['sleep']}\n")
# An environment that is a new interpreter: kfn's own Runtime API client, without a zygote.
COLD_ENV = ("import os\nfrom kfn_runtime import ric\nfrom kfn_runtime.handlers import load_handler, prepare_path\n"
            "prepare_path(os.getcwd(), '')\nric.serve(load_handler(os.environ['_HANDLER']))\n")
ZYGOTE, KFN_RIC, AWSLAMBDARIC = "fork from the zygote", "new interpreter (kfn ric)", "new interpreter (awslambdaric)"


def has_awslambdaric() -> bool:
    return subprocess.run([PYTHON, "-c", "import awslambdaric"], capture_output=True).returncode == 0


class Bench:
    def __init__(self, tmp: Path, reaper: Reaper) -> None:
        self.reaper = reaper
        self.cache = tmp / "pycache"
        handler, files = hello()
        self.handler = handler
        self.code = write_code(tmp / "hello" / "task", files)
        self.slow = write_code(tmp / "slow" / "task", {"slow.py": SLOW})
        self.event = gateway_event()

    def host(self, way: str, *, code: Path | None = None, handler: str | None = None,
             concurrency: int = 64) -> InstanceHost:
        code = code or self.code
        handler = handler or self.handler
        command: list[str] | None = None
        user_env = {"PYTHONPYCACHEPREFIX": str(self.cache)}
        if way == KFN_RIC:
            command = [PYTHON, "-S", "-c", COLD_ENV]
            user_env["PYTHONPATH"] = str(RUNTIME_DIR)
        elif way == AWSLAMBDARIC:
            command = [PYTHON, "-m", "awslambdaric", handler]
        config = Config(handler=handler, runtime=PY_VERSION, command=command, code_dir=str(code),
                        deps_dir=str(code.parent / "deps"), runtime_dir=str(RUNTIME_DIR), function_name="bench",
                        function_version="$LATEST", namespace="default", region="us-east-1", timeout=30.0,
                        concurrency=concurrency, memory_mb=256, host="127.0.0.1", port=0, drain_timeout=5.0,
                        idle_timeout=600.0, max_body_bytes=12 * 1024 * 1024, user_env=user_env)
        return build_host(config, python=PYTHON, path=os.environ.get("PATH"))

    def track(self, host: InstanceHost) -> None:
        zygote = getattr(getattr(host, "_spawner", None), "pid", None)
        self.reaper.track(zygote)
        self.reaper.remember(*(env.pid for env in host.environments))

    async def close(self, host: InstanceHost) -> None:
        self.track(host)
        async with asyncio.timeout(30):
            await host.close()

    # -- measurements --------------------------------------------------------------------------------

    async def instance_start(self, way: str, runs: int) -> list[float]:
        """Seconds of `host.start()`: what the instance needs before its first invocation."""
        out = []
        for _ in range(runs + 1):   # the first fills the bytecode cache
            host = self.host(way)
            try:
                started = time.perf_counter()
                async with asyncio.timeout(60):
                    await host.start()
                out.append(time.perf_counter() - started)
            finally:
                await self.close(host)
        return out[1:]

    async def add_environments(self, host: InstanceHost, count: int) -> tuple[list[float], list[float]]:
        """Per new environment: seconds from asking to its process running, and to it polling."""
        changed: asyncio.Event = host._idle_changed   # set whenever an environment polls
        running, polling = [], []
        for _ in range(count):
            started = time.perf_counter()
            env = await host._pool.new()
            spawned = time.perf_counter()
            async with asyncio.timeout(30):
                while env.state != IDLE:
                    changed.clear()
                    await changed.wait()
            polling.append(time.perf_counter() - started)
            running.append(spawned - started)
        return running, polling

    async def fan_out(self, way: str, n: int, *, reps: int, sleep: float = 0.3) -> tuple[list[float], list[float]]:
        """N parallel `sleep` s invocations on a 1-environment instance: seconds until the last one
        started running, and until all were answered (minus `sleep`)."""
        last_started, answered = [], []
        payload = json.dumps({"sleep": sleep}).encode()
        for _ in range(reps):
            host = self.host(way, code=self.slow, handler="slow.handler", concurrency=n)
            try:
                async with asyncio.timeout(60):
                    await host.start()
                    t0 = time.monotonic()
                    invocations = [Invocation(payload, timeout=30.0) for _ in range(n)]
                    results = await asyncio.gather(*(host.invoke(i) for i in invocations))
                    done = time.monotonic()
                if any(r.function_error for r in results):
                    raise SystemExit(f"bench: a slow invocation failed: {results[0].result[:300]!r}")
                last_started.append(max(i.started for i in invocations) - t0)
                answered.append(done - t0 - sleep)
            finally:
                await self.close(host)
        return last_started, answered

    async def invoke_sequential(self, host: InstanceHost, requests: int) -> dict[str, Any]:
        """Sequential invocations through the host alone: latencies and CPU per invocation."""
        for _ in range(200):
            await host.invoke(Invocation(self.event, timeout=30.0))
        envs = [env.pid for env in host.environments if env.pid is not None]
        env_cpu = sum(cpu_seconds(pid) for pid in envs)
        env_switches = [switches(pid) for pid in envs]
        own_cpu = time.process_time()
        samples = []
        for _ in range(requests):
            invocation = Invocation(self.event, timeout=30.0)
            started = time.perf_counter()
            await host.invoke(invocation)
            samples.append(time.perf_counter() - started)
            if invocation.function_error:
                raise SystemExit(f"bench: the invocation failed: {invocation.result[:300]!r}")
        after = [switches(pid) for pid in envs]
        return {"latency": samples, "host_cpu": (time.process_time() - own_cpu) / requests,
                "env_cpu": (sum(cpu_seconds(pid) for pid in envs) - env_cpu) / requests,
                "env_switches": tuple(sum(a[i] - b[i] for a, b in zip(after, env_switches, strict=True)) / requests
                                      for i in (0, 1))}


def spawn_exit(command: Sequence[str], cwd: Path, env: dict[str, str], runs: int) -> list[float]:
    """Seconds from spawn to exit of `command`, `runs` times after one discarded run."""
    out = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, stdin=subprocess.DEVNULL, timeout=60)
        out.append(time.perf_counter() - started)
    return out[1:]


def cold_process_memory(code: Path, env: dict[str, str]) -> dict[str, int]:
    """Memory of an idle `python -S` that imported the handler's module: an environment without a zygote."""
    process = subprocess.Popen([PYTHON, "-S", "-c", "import main, sys, time\nprint('ok', flush=True)\ntime.sleep(30)"],
                               cwd=code, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return memory_kib(process.pid)
    finally:
        process.kill()
        process.wait(timeout=10)


async def run(args: argparse.Namespace, tmp: Path, reaper: Reaper) -> dict[str, Any]:
    bench = Bench(tmp, reaper)
    ways = [ZYGOTE, KFN_RIC] + ([AWSLAMBDARIC] if has_awslambdaric() else [])
    out: dict[str, Any] = {"ways": ways, "start": {}, "add": {}, "fan": {}, "memory": {}}
    for way in ways:
        note(f"instance start, {way} ...")
        out["start"][way] = await bench.instance_start(way, args.starts)

    # The hello instance: sequential invocations through the host, then more environments, then memory.
    for way in ways:
        host = bench.host(way, concurrency=args.envs + 1)
        try:
            async with asyncio.timeout(60):
                await host.start()
            if way == ZYGOTE:
                note(f"{args.requests} invocations through the InstanceHost ...")
                out["host_invoke"] = await bench.invoke_sequential(host, args.requests)
            note(f"adding {args.envs} environments, {way} ...")
            out["add"][way] = await bench.add_environments(host, args.envs)
            # Every environment serves invocations before its memory is read (pages written since the fork).
            async with asyncio.timeout(60):
                for _ in range(20):
                    await asyncio.gather(*(host.invoke(Invocation(bench.event, timeout=30.0))
                                           for _ in range(len(host.environments))))
            envs = [memory_kib(env.pid) for env in host.environments if env.pid is not None]
            zygote = getattr(getattr(host, "_spawner", None), "pid", None)
            out["memory"][way] = {"envs": envs, "zygote": memory_kib(zygote) if zygote else None}
        finally:
            await bench.close(host)

    fanouts = [int(n) for n in args.fanout.split(",") if n.strip()]
    for way in ways:
        for n in fanouts:
            note(f"fan-out of {n}, {way} ...")
            out["fan"][(way, n)] = await bench.fan_out(way, n, reps=args.reps)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--envs", type=int, default=20, help="environments added one by one (default 20)")
    parser.add_argument("--starts", type=int, default=5, help="instance and pod starts (default 5)")
    parser.add_argument("--fanout", default="8,32", help="parallel invocations on a 1-environment instance")
    parser.add_argument("--reps", type=int, default=3, help="repeats of each fan-out (default 3)")
    parser.add_argument("--requests", type=int, default=2000, help="sequential invocations (default 2000)")
    args = parser.parse_args(argv)

    loop_name = "asyncio"
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run
    try:
        import uvloop

        loop_name = "uvloop"
        runner = uvloop.run
    except ImportError:
        pass
    reaper = Reaper()
    try:
        with tempfile.TemporaryDirectory(prefix="kfn-bench-envs-") as tmp_name:
            tmp = Path(tmp_name)
            out = runner(run(args, tmp, reaper))
            bench_code = tmp / "hello" / "task"
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
            note("cold interpreters and pod starts ...")
            cold = {
                "`python -S -c pass` (spawn → exit)": spawn_exit([PYTHON, "-S", "-c", "pass"], bench_code, env, 10),
                "`python -S -c 'import main'` (the handler's module)":
                    spawn_exit([PYTHON, "-S", "-c", "import main"], bench_code, env, 10),
                "`python -c 'import main'` (with this venv's site-packages)":
                    spawn_exit([PYTHON, "-c", "import main"], bench_code, env, 10),
            }
            handler, _ = hello()
            pod_ready: list[float] = []
            for i in range(args.starts + 1):
                with running_pod(bench_code, handler, flags=("-S",), cache_dir=tmp / "pycache", reaper=reaper) as pod:
                    if i:
                        pod_ready.append(pod.ready_at - pod.started)
                    if i == args.starts:
                        note(f"{args.requests} invocations through a pod's invoke endpoint ...")
                        request = http_request("POST", INVOKE_PATH, body=gateway_event(),
                                               headers=[("Content-Type", "application/json")])
                        pid = pod.process.pid
                        kids = descendants(pid)
                        sequential(pod.port, request, requests=200, warmup=0)
                        before_pod, before_envs = cpu_seconds(pid), sum(cpu_seconds(k) for k in kids)
                        before_switches = [switches(k) for k in kids]
                        pod_latency = sequential(pod.port, request, requests=args.requests, warmup=0)
                        pod_cpu = (cpu_seconds(pid) - before_pod) / args.requests
                        pod_env_cpu = (sum(cpu_seconds(k) for k in kids) - before_envs) / args.requests
                        pod_switches = tuple(sum(switches(k)[i] - b[i] for k, b in zip(kids, before_switches,
                                                                                        strict=True)) / args.requests
                                             for i in (0, 1))
            cold_memory = cold_process_memory(bench_code, env)
    finally:
        reaper.kill_all()

    ways: list[str] = out["ways"]
    print(f"\n## Execution environments (InstanceHost driven directly, on {loop_name})\n\n{machine()}. "
          f"Handler: examples/hello.yaml's. Medians; p90 and max over {args.envs} added environments.\n")
    add_zygote = median(out["add"][ZYGOTE][1])
    rows: list[list[object]] = []
    for way in ways:
        running, polling = out["add"][way]
        rows.append([f"add an environment: {way}, ask → process running", fmt_ms(median(running), 2),
                     fmt_ms(pct(running, 90), 2), fmt_ms(max(running), 2), ""])
        rows.append([f"add an environment: {way}, ask → polling the Runtime API", fmt_ms(median(polling), 2),
                     fmt_ms(pct(polling, 90), 2), fmt_ms(max(polling), 2), ratio(median(polling), add_zygote)])
    for label, times in cold.items():
        rows.append([f"cold interpreter: {label}", fmt_ms(median(times), 2), fmt_ms(pct(times, 90), 2),
                     fmt_ms(max(times), 2), ratio(median(times), add_zygote)])
    for way in ways:
        times = out["start"][way]
        rows.append([f"instance start (`host.start()`), {way}", fmt_ms(median(times), 2), fmt_ms(pct(times, 90), 2),
                     fmt_ms(max(times), 2), ratio(median(times), add_zygote)])
    rows.append(["pod `python -S -m kfn_runtime`, start → ready line", fmt_ms(median(pod_ready), 2),
                 fmt_ms(pct(pod_ready, 90), 2), fmt_ms(max(pod_ready), 2), ratio(median(pod_ready), add_zygote)])
    table(["what", "median", "p90", "max", "× a forked environment"], rows)

    fanouts = [int(n) for n in args.fanout.split(",") if n.strip()]
    rows = []
    for n in fanouts:
        for way in ways:
            started, answered = out["fan"][(way, n)]
            rows.append([n, way, fmt_ms(median(started)), fmt_ms(max(started)), fmt_ms(median(answered))])
    print(f"Fan-out: N parallel 0.3 s invocations sent at once to an instance that has 1 environment "
          f"(concurrency N); medians over {args.reps} runs.\n")
    table(["N", "environments", "last invocation started after", "(max)", "all answered after (minus 0.3 s)"], rows)

    rows = []
    for way in ways:
        memory = out["memory"][way]
        envs = memory["envs"]
        if memory["zygote"]:
            z = memory["zygote"]
            rows.append([f"zygote ({way})", fmt_mib(z["rss"]), fmt_mib(z["pss"]), fmt_mib(z["uss"])])
        rows.append([f"one environment, median of {len(envs)} ({way})", fmt_mib(median([e["rss"] for e in envs])),
                     fmt_mib(median([e["pss"] for e in envs])), fmt_mib(median([e["uss"] for e in envs]))])
        total = [sum(e[k] for e in envs) + (memory["zygote"] or {}).get(k, 0) for k in ("rss", "pss", "uss")]
        rows.append([f"all {len(envs)} environments{' + zygote' if memory['zygote'] else ''} ({way})",
                     *(fmt_mib(v) for v in total)])
    rows.append(["idle `python -S` that imported the handler", fmt_mib(cold_memory.get("rss", float("nan"))),
                 fmt_mib(cold_memory.get("pss", float("nan"))), fmt_mib(cold_memory.get("uss", float("nan")))])
    print("Memory after every environment served 20 invocations (/proc/PID/smaps_rollup; USS = private pages; "
          "RSS counts shared pages in every process, PSS splits them among their sharers).\n")
    table(["process", "RSS", "PSS", "USS"], rows)

    host_invoke = out["host_invoke"]
    latency = host_invoke["latency"]
    print(f"One invocation at a time ({args.requests} sequential, same event), what each hop costs; "
          f"CPU from /proc/PID/stat and this process's process_time.\n")
    table(["path", "p50", "p99", "CPU/invocation, host side", "CPU/invocation, environment",
           "environment's context switches/invocation (voluntary + involuntary)"], [
        ["`InstanceHost.invoke` in this process (no HTTP)", fmt_us(pct(latency, 50)), fmt_us(pct(latency, 99)),
         fmt_us(host_invoke["host_cpu"]) + " (incl. this bench loop)", fmt_us(host_invoke["env_cpu"]),
         "{:.2f} + {:.2f}".format(*host_invoke["env_switches"])],
        ["pod invoke endpoint (`python -S -m kfn_runtime`, asyncio), raw HTTP client",
         fmt_us(pct(pod_latency, 50)), fmt_us(pct(pod_latency, 99)), fmt_us(pod_cpu) + " (pod process)",
         fmt_us(pod_env_cpu), "{:.2f} + {:.2f}".format(*pod_switches)],
    ])
    print(f"The HTTP front of a pod adds ≈ {fmt_us(pct(pod_latency, 50) - pct(latency, 50))} at p50 "
          f"(its event loop is asyncio, this one {loop_name}).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
