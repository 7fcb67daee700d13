"""A real `kfn local`: removing a manifest removes its function's queued async events once the
function has been gone for `--async-discard-after`, counted on /metrics and logged once."""
from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kfn.core import naming
from kfn.core.orphans import REASON_FUNCTION_DELETED
from tests.support.localmode import FAST_ASYNC, LocalMode, http, lines, post_async, recording, write_manifest
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
EVENTS = 10
SLOW = {"function": "slow", "namespace": naming.DEFAULT_NAMESPACE}


def samples(local: LocalMode, name: str, **labels: str) -> list[float]:
    """The values of `name` with these labels on kfn local's /metrics."""
    text = http("GET", local.url + "/metrics", timeout=10).body.decode()
    return [float(sample.value) for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]


def test_removing_a_manifest_removes_its_queued_async_events_after_the_grace_and_counts_them(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "deliveries.log"
    # One at a time, a second each: most events are still queued when the manifest goes.
    manifest = write_manifest(directory, "slow", recording(log, before="time.sleep(1)"), concurrency=1,
                              scale={"maxReplicas": 1}, timeout="10s")
    local = LocalMode(directory, extra_args=[*FAST_ASYNC, "--async-discard-after", "1s"],
                      log_path=tmp_path / "kfn-local.log").start()
    try:
        for i in range(EVENTS):
            post_async(local, "slow", f"order-{i}")
        wait_until(lambda: lines(log, "start"), timeout=60, interval=0.05, what="the first delivery under way")
        manifest.unlink()
        wait_until(lambda: local.function("slow") is None, timeout=30, what="the function gone")

        def settled() -> bool:
            discarded = sum(samples(local, naming.METRIC_ASYNC_DISCARDED, **SLOW, reason=REASON_FUNCTION_DELETED))
            return discarded > 0 and discarded + len(set(lines(log, "done"))) >= EVENTS

        wait_until(settled, timeout=60, interval=0.2, what="every event delivered or removed")
        discarded = sum(samples(local, naming.METRIC_ASYNC_DISCARDED, **SLOW, reason=REASON_FUNCTION_DELETED))
        depth = samples(local, naming.METRIC_ASYNC_QUEUE_DEPTH, **SLOW)
        output = local.output()
    finally:
        local.stop()
    assert discarded + len(set(lines(log, "done"))) == EVENTS
    assert depth in ([], [0.0])                     # nothing left to wake the function for
    assert "function slow.default is gone" in output
