"""The instance's Prometheus metrics (`kfn_runtime.metrics`) and requirements parsing
(`kfn_runtime.requirements`)."""
from __future__ import annotations

import pytest

from kfn_runtime import contract
from kfn_runtime.metrics import Metrics
from kfn_runtime.requirements import RequirementsError, parse_requirements, pip_command


def test_invocations_are_counted_by_outcome_and_durations_bucketed() -> None:
    m = Metrics(concurrency=4, in_flight=lambda: 3, environments=lambda: 2, buckets=(0.1, 1.0))
    m.observe("ok", 0.05)
    m.observe("ok", 0.5)
    m.observe("error", 5.0)
    m.observe("429", 0.001)
    snap = m.snapshot()
    assert snap["by_outcome"] == {"ok": 2, "error": 1, "429": 1}
    assert snap["buckets"] == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert snap["count"] == 4
    assert snap["sum"] == pytest.approx(5.551)
    assert (snap["in_flight"], snap["environments"], snap["concurrency"]) == (3, 2, 4)


def test_a_duration_on_a_bucket_bound_falls_in_that_bucket() -> None:
    m = Metrics(concurrency=1, in_flight=lambda: 0, environments=lambda: 0, buckets=(0.1, 1.0))
    m.observe("ok", 0.1)
    assert m.snapshot()["buckets"][0] == (0.1, 1)


def test_metrics_render_in_the_prometheus_text_format() -> None:
    m = Metrics(concurrency=4, in_flight=lambda: 1, environments=lambda: 2)
    m.observe("timeout", 0.25)
    body, content_type = m.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert f'{contract.METRIC_INVOCATIONS}{{outcome="timeout"}} 1.0' in text
    assert f"{contract.METRIC_DURATION}_count 1.0" in text
    assert f'{contract.METRIC_DURATION}_bucket{{le="0.25"}} 1.0' in text
    assert f"{contract.METRIC_IN_FLIGHT} 1.0" in text
    assert f"{contract.METRIC_CONCURRENCY_LIMIT} 4.0" in text
    assert f"{contract.METRIC_ENVIRONMENTS} 2.0" in text


def test_requirements_skip_blanks_and_comments() -> None:
    text = "requests==2.32.3\n\n# a comment\nattrs>=23  # inline\n  six ; python_version >= '3'\n"
    assert parse_requirements(text) == ["requests==2.32.3", "attrs>=23", "six ; python_version >= '3'"]


def test_requirements_refuse_pip_options() -> None:
    with pytest.raises(RequirementsError, match="options are not allowed"):
        parse_requirements("requests\n--index-url http://evil.test/simple\n")


def test_pip_installs_into_the_target_without_a_cache() -> None:
    cmd = pip_command(["requests==2.32.3"], "/opt/kfn/deps", python="python")
    assert cmd[:4] == ["python", "-m", "pip", "install"]
    assert "--no-cache-dir" in cmd
    assert cmd[cmd.index("--target") + 1] == "/opt/kfn/deps"
    assert cmd[-1] == "requests==2.32.3"
