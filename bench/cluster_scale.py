"""The control plane at scale on a real cluster: 100, 300 and 1,000 Functions applied at once.

    make bench-cluster-scale      (scripts/test-cluster --bench-scale: starts the cluster, loads the images)
    python bench/cluster_scale.py [--sizes 100,300,1000]      (with KUBECONFIG set and the images loaded)

Installs its own release of charts/kfn (NodePort, the chart's defaults otherwise) in a namespace of
its own, and a `probe` function (examples/hello.yaml, idleTimeout 1s) in a namespace of its own. Then,
for each size N, in a fresh namespace:

- a settled cold start of `probe` (at zero, no batch running): request → 200 through the NodePort;
- `kubectl apply` of N Functions (hello's code, minReplicas 0) in one file; the time until every one
  of them has Ready=True (polled each second), and until each quarter of them had; beside it, the
  same apply with the CRD alone and nothing of kfn running (measured first, before the install): the
  floor the API server and kubectl set on this machine;
- a cold start of `probe` issued one second after the apply started (during the batch) and one right
  after all are Ready;
- the RSS of the operator's and each gateway's process (VmRSS of the host's view of the container's
  process: this is a single-node cluster), before the batch and once all are Ready;
- the latency of `GET /system/functions` (all namespaces) and of `kfn list`, once all are Ready.

Between sizes the namespace is deleted and its deletion waited for. Prints one Markdown table, with
the targets of issue 18 as PASS/MISS (information, never an assertion): 1,000 Ready <= 60 s, growing no
faster than linearly from 100; operator RSS <= 250 MiB and gateway RSS <= 150 MiB with 1,000; a cold
start during the batch <= 2x a settled one. Removes the release, its namespaces and the CRD at the end.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import platform  # noqa: E402 - the tier's helpers: kubectl, helm, waits

TARGET_READY_1000 = 60.0
TARGET_OPERATOR_RSS_MIB = 250
TARGET_GATEWAY_RSS_MIB = 150
TARGET_COLD_DURING = 2.0
READY_TIMEOUT = 600.0
PROBE = "probe"
CODE = 'def handler(event, context):\n    return {"statusCode": 200, "body": "ok"}\n'


def functions(n: int, namespace: str) -> str:
    docs = []
    for i in range(n):
        docs.append({"apiVersion": "kfn.dev/v1alpha1", "kind": "Function",
                     "metadata": {"name": f"fn-{i:04d}", "namespace": namespace},
                     "spec": {"runtime": "python3.12", "handler": "main.handler",
                              "source": {"files": {"main.py": CODE}},
                              "scale": {"minReplicas": 0, "idleTimeout": "30s"}}})
    return yaml.safe_dump_all(docs)


def ready_count(namespace: str) -> int:
    out = platform.kubectl("get", "functions", "-o", "json", namespace=namespace, timeout=60)
    count = 0
    for item in json.loads(out.stdout).get("items") or ():
        ready = platform.ready_condition(item)
        if ready is not None and ready.get("status") == "True":
            count += 1
    return count


def rss_mib(pattern: tuple[str, ...]) -> list[float]:
    """VmRSS (MiB) of each host process whose command line has every word of `pattern`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            words = [w.decode(errors="replace") for w in cmdline]
            if not all(any(p == w or w.endswith("/" + p) for w in words) for p in pattern):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sorted(found)


def cold_start(release: platform.Release, namespace: str) -> float:
    """Wait until `probe` is at zero, then time a request → 200."""
    platform.wait_until("probe at zero", lambda: platform.instances(PROBE, namespace) == 0 or None,
                        timeout=180, interval=0.5)
    url = release.url(PROBE, namespace, "name=bench")
    started = time.monotonic()
    answer = platform.http_get(url, timeout=120)
    seconds = time.monotonic() - started
    if answer.status != 200:
        raise RuntimeError(f"probe answered {answer.status}: {answer.text()[:200]}")
    return seconds


def timed(fn: Any, *args: Any) -> float:
    started = time.monotonic()
    fn(*args)
    return time.monotonic() - started


def apply_floor(n: int) -> float:
    """Seconds `kubectl apply` of `n` Functions takes with the CRD alone (no kfn running): the floor
    under "all Ready", as the API server and kubectl do it on this machine."""
    namespace = platform.create_namespace(f"floor{n}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kfn-floor-") as f:
        f.write(functions(n, namespace))
        f.flush()
        started = time.monotonic()
        platform.kubectl("apply", "-f", f.name, timeout=600)
        seconds = time.monotonic() - started
    platform.kubectl("delete", "namespace", namespace, "--timeout=600s", timeout=660)
    return seconds


def run_size(release: platform.Release, probe_ns: str, n: int) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n}
    row["settled"] = cold_start(release, probe_ns)
    row["operator rss before"] = max(rss_mib(("kfn", "operator")), default=0.0)
    row["gateway rss before"] = max(rss_mib(("kfn", "gateway")), default=0.0)
    namespace = platform.create_namespace(f"scale{n}")
    platform.wait_until("probe at zero", lambda: platform.instances(PROBE, probe_ns) == 0 or None,
                        timeout=180, interval=0.5)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kfn-scale-") as f:
        f.write(functions(n, namespace))
        f.flush()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            apply = subprocess.Popen([platform.KUBECTL, "apply", "-f", f.name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            during = pool.submit(_timed_request, release, probe_ns)
            if apply.wait(timeout=300) != 0:
                detail = apply.stderr.read().decode()[-500:] if apply.stderr else ""
                raise RuntimeError(f"kubectl apply failed: {detail}")
            row["apply"] = time.monotonic() - started
            quarters: list[float] = []
            deadline = started + READY_TIMEOUT
            while True:
                count = ready_count(namespace)
                elapsed = time.monotonic() - started
                while len(quarters) < 4 and count >= n * (len(quarters) + 1) / 4:
                    quarters.append(elapsed)
                if count >= n:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{count} of {n} Ready after {READY_TIMEOUT:.0f}s")
                time.sleep(1.0)
            row["ready"] = quarters[-1]
            row["quarters"] = quarters
            row["during"] = during.result(timeout=300)
    row["operator rss"] = max(rss_mib(("kfn", "operator")), default=0.0)
    row["gateway rss"] = max(rss_mib(("kfn", "gateway")), default=0.0)
    headers = release.system_headers()
    list_times = []
    for _ in range(5):
        started = time.monotonic()
        answer = platform.http_get(f"{release.gateway}/system/functions", headers=headers, timeout=60)
        list_times.append(time.monotonic() - started)
        if answer.status != 200:
            raise RuntimeError(f"/system/functions answered {answer.status}")
    row["system functions"] = sorted(list_times)[len(list_times) // 2]
    env = {**os.environ, "KFN_GATEWAY": release.gateway, "KFN_API_KEY": release.admin_key}
    cli_times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([str(REPO / ".venv/bin/kfn"), "list", "-o", "json"], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        cli_times.append(time.monotonic() - started)
    row["kfn list"] = sorted(cli_times)[len(cli_times) // 2]
    row["after"] = cold_start(release, probe_ns)
    started = time.monotonic()
    platform.kubectl("delete", "namespace", namespace, "--timeout=600s", timeout=660)
    row["delete"] = time.monotonic() - started
    return row


def _timed_request(release: platform.Release, namespace: str) -> float:
    url = release.url(PROBE, namespace, "name=bench")
    started = time.monotonic()
    answer = platform.http_get(url, timeout=180)
    if answer.status != 200:
        raise RuntimeError(f"probe answered {answer.status} during the batch: {answer.text()[:200]}")
    return time.monotonic() - started


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def report(rows: list[dict[str, Any]]) -> None:
    print()
    print("| Functions | apply, CRD alone (the floor) | apply | all Ready | 1/4 · 1/2 · 3/4 Ready | Ready per 100 "
          "| operator RSS (before → after) "
          "| gateway RSS (before → after) | /system/functions | kfn list | cold start settled · during · after "
          "| namespace delete |")
    print("|---:|---:|---:|---:|---|---:|---|---|---:|---:|---|---:|")
    for r in rows:
        q = r["quarters"]
        print(f"| {r['n']:,} | {r['floor']:.1f} s | {r['apply']:.1f} s | {r['ready']:.1f} s "
              f"| {q[0]:.1f} · {q[1]:.1f} · {q[2]:.1f} s "
              f"| {r['ready'] / r['n'] * 100:.1f} s | {r['operator rss before']:.0f} → {r['operator rss']:.0f} MiB "
              f"| {r['gateway rss before']:.0f} → {r['gateway rss']:.0f} MiB | {r['system functions'] * 1000:.0f} ms "
              f"| {r['kfn list'] * 1000:.0f} ms | {r['settled']:.2f} · {r['during']:.2f} · {r['after']:.2f} s "
              f"| {r['delete']:.0f} s |")
    print()
    by_n = {r["n"]: r for r in rows}
    if 1000 in by_n:
        big = by_n[1000]
        print(f"- 1,000 Functions all Ready {big['ready']:.1f} s (target <= {TARGET_READY_1000:.0f} s): "
              f"{verdict(big['ready'] <= TARGET_READY_1000)}; kubectl apply of them alone, the CRD without kfn: "
              f"{big['floor']:.1f} s")
        if 100 in by_n:
            ratio = (big["ready"] / 1000) / (by_n[100]["ready"] / 100)
            print(f"- per Function, 1,000 vs 100: {ratio:.2f}x (target: no faster than linear, <= 1.0x): "
                  f"{verdict(ratio <= 1.0)}")
        print(f"- operator RSS {big['operator rss']:.0f} MiB (<= {TARGET_OPERATOR_RSS_MIB}): "
              f"{verdict(big['operator rss'] <= TARGET_OPERATOR_RSS_MIB)}; gateway RSS {big['gateway rss']:.0f} MiB "
              f"(<= {TARGET_GATEWAY_RSS_MIB}): {verdict(big['gateway rss'] <= TARGET_GATEWAY_RSS_MIB)}")
        ratio = big["during"] / big["settled"]
        print(f"- cold start during the batch {ratio:.1f}x a settled one (<= {TARGET_COLD_DURING:.0f}x): "
              f"{verdict(ratio <= TARGET_COLD_DURING)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if platform.another_kfn("bench"):
        return 1
    release = platform.Release(f"kfn-scale-{platform.RUN_ID}", platform.create_namespace("kfn-scale"),
                               {"async": {"nats": {"persistence": {"enabled": False}}}})
    rows = []
    try:
        # The floor first: the CRD alone, nothing of kfn watching.
        platform.kubectl("apply", "--server-side", "-f", str(REPO / "charts/kfn/crds"), timeout=120)
        platform.kubectl("wait", "--for=condition=Established", f"crd/{platform.CRD_NAME}", "--timeout=60s",
                         timeout=90)
        floors = {n: apply_floor(n) for n in sizes}
        print("kubectl apply with the CRD alone: " + ", ".join(f"{n}: {s:.1f}s" for n, s in floors.items()),
              flush=True)
        release.install()
        probe_ns = platform.create_namespace("probe")
        hello = yaml.safe_load((platform.EXAMPLES / "hello.yaml").read_text())
        hello["metadata"]["name"] = PROBE
        hello["spec"]["scale"]["idleTimeout"] = "1s"
        release.deploy(hello, probe_ns)
        for n in sizes:
            row = run_size(release, probe_ns, n)
            row["floor"] = floors[n]
            rows.append(row)
            print(f"{n}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items() if k != "quarters"), flush=True)
        report(rows)
    finally:
        release.uninstall()
        platform.delete_namespaces()
        platform.delete_crd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
