"""Which queues of deleted functions are removed, and when (`kfn.core.orphans.decide`, pure)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kfn.cli import build_parser, options
from kfn.cli.gateway import orphan_settings
from kfn.cli.local import settings as local_settings
from kfn.core.errors import CommandError
from kfn.core.functions import FunctionRef
from kfn.core.orphans import DEFAULT_GRACE, decide
from kfn.events.orphans import MIN_PERIOD, OrphanSettings

GONE = FunctionRef("default", "gone")
KEPT = FunctionRef("default", "kept")
OTHER_TEAM = FunctionRef("team-b", "gone")
GRACE = 60.0


def test_a_function_just_found_gone_starts_its_grace_and_keeps_its_queue() -> None:
    decision = decide(known=[KEPT], in_flight={GONE: 0, KEPT: 0}, missing_since={}, now=100.0, grace=GRACE)
    assert decision.remove == frozenset()
    assert decision.missing_since == {GONE: 100.0}


def test_a_queue_whose_function_has_been_gone_for_the_grace_is_removed() -> None:
    decision = decide(known=[KEPT], in_flight={GONE: 0, KEPT: 0}, missing_since={GONE: 100.0}, now=160.0,
                      grace=GRACE)
    assert decision.remove == {GONE}


def test_a_queue_whose_function_has_been_gone_for_less_than_the_grace_stays() -> None:
    decision = decide(known=[], in_flight={GONE: 0}, missing_since={GONE: 100.0}, now=159.9, grace=GRACE)
    assert decision.remove == frozenset()
    assert decision.missing_since == {GONE: 100.0}


def test_a_function_known_again_within_the_grace_keeps_its_queue_and_its_grace_starts_afresh() -> None:
    back = decide(known=[GONE], in_flight={GONE: 0}, missing_since={GONE: 100.0}, now=130.0, grace=GRACE)
    gone_again = decide(known=[], in_flight={GONE: 0}, missing_since=back.missing_since, now=170.0, grace=GRACE)
    assert (back.remove, back.missing_since) == (frozenset(), {})
    assert gone_again.remove == frozenset()
    assert gone_again.missing_since == {GONE: 170.0}


def test_a_queue_with_an_event_in_flight_is_not_removed_until_none_is() -> None:
    flying = decide(known=[], in_flight={GONE: 1}, missing_since={GONE: 0.0}, now=500.0, grace=GRACE)
    landed = decide(known=[], in_flight={GONE: 0}, missing_since=flying.missing_since, now=501.0, grace=GRACE)
    assert flying.remove == frozenset()
    assert landed.remove == {GONE}


def test_the_queues_of_known_functions_are_never_removed() -> None:
    decision = decide(known=[KEPT], in_flight={KEPT: 0}, missing_since={KEPT: 0.0}, now=10_000.0, grace=GRACE)
    assert decision.remove == frozenset()
    assert decision.missing_since == {}


def test_a_queue_in_a_namespace_the_process_does_not_serve_is_left_alone() -> None:
    decision = decide(known=[], in_flight={GONE: 0, OTHER_TEAM: 0}, missing_since={GONE: 0.0, OTHER_TEAM: 0.0},
                      now=10_000.0, grace=GRACE, namespaces=["default"])
    assert decision.remove == {GONE}
    assert OTHER_TEAM not in decision.missing_since


def test_a_function_whose_queue_is_gone_is_forgotten() -> None:
    decision = decide(known=[], in_flight={}, missing_since={GONE: 0.0}, now=10.0, grace=GRACE)
    assert decision.missing_since == {}


def test_a_grace_of_zero_removes_a_queue_at_the_first_look() -> None:
    decision = decide(known=[], in_flight={GONE: 0}, missing_since={}, now=5.0, grace=0.0)
    assert decision.remove == {GONE}


def test_the_queues_are_looked_at_every_half_grace_when_that_is_shorter_than_the_interval() -> None:
    assert OrphanSettings(grace=60.0, interval=15.0).period == 15.0
    assert OrphanSettings(grace=10.0, interval=15.0).period == 5.0
    assert OrphanSettings(grace=0.5, interval=15.0).period == MIN_PERIOD


# -- the setting, at the edge -------------------------------------------------------------------------------

def test_kfn_gateway_takes_the_grace_from_async_discard_after_and_looks_only_at_its_namespaces() -> None:
    gateway = options.gateway(build_parser().parse_args(
        ["gateway", "--namespace", "team-a", "--async-discard-after", "5m"]))
    settings = orphan_settings(gateway)
    assert (settings.grace, settings.namespaces) == (300.0, ("team-a",))
    assert orphan_settings(options.gateway(build_parser().parse_args(["gateway"]))).grace == DEFAULT_GRACE


def test_kfn_local_takes_the_grace_from_async_discard_after(tmp_path: Path) -> None:
    def grace(*args: str) -> float:
        return local_settings(options.local(build_parser().parse_args(["local", str(tmp_path), *args]))) \
            .async_discard_after

    assert (grace(), grace("--async-discard-after", "2s")) == (DEFAULT_GRACE, 2.0)


def test_a_grace_that_is_not_a_positive_duration_is_refused() -> None:
    with pytest.raises(CommandError, match="--async-discard-after"):
        options.gateway(build_parser().parse_args(["gateway", "--async-discard-after", "0s"]))
