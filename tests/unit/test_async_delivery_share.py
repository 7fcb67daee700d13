"""Each delivery engine's share of a function's async concurrency, as the engines sharing the
store (the gateway replicas) come and go."""
from __future__ import annotations

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings, delivery_share, live_replicas

FN = FunctionRef("default", "worker")


async def never(ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
    raise AssertionError("not invoked")


def idle_engine(replicas: int = 1) -> DeliveryEngine:
    return DeliveryEngine(object(), never, lambda: {FN: AsyncConfig(FN)},  # type: ignore[arg-type]
                          settings=DeliverySettings(replicas=replicas))


@pytest.mark.parametrize(("concurrency", "replicas", "share"), [
    (10, 1, 10), (10, 2, 5), (10, 3, 4), (10, 4, 3), (10, 10, 1), (1, 3, 1), (2, 5, 1)])
def test_the_concurrency_is_divided_among_the_replicas_rounded_up(concurrency: int, replicas: int,
                                                                  share: int) -> None:
    assert delivery_share(concurrency, replicas) == share


@pytest.mark.parametrize("replicas", [0, -1])
def test_a_share_is_never_zero_even_for_no_replicas(replicas: int) -> None:
    assert delivery_share(10, replicas) == 10


@pytest.mark.parametrize("replicas", [1, 2, 7, 50])
def test_the_shares_of_all_replicas_cover_the_concurrency(replicas: int) -> None:
    assert delivery_share(10, replicas) * replicas >= 10


def test_a_live_count_replaces_the_last_known() -> None:
    assert live_replicas(3, 2) == 3


@pytest.mark.parametrize("seen", [None, 0])
def test_without_a_live_count_the_last_known_stays(seen: int | None) -> None:
    assert live_replicas(seen, 2) == 2


def test_without_any_count_one_replica_is_assumed() -> None:
    assert live_replicas(None, 0) == 1


def test_an_engine_starts_from_the_replicas_of_its_settings() -> None:
    assert idle_engine(replicas=3).replicas == 3


def test_an_engine_takes_a_new_live_count() -> None:
    engine = idle_engine(replicas=2)
    engine.set_replicas(3)
    engine.set_replicas(1)
    assert engine.replicas == 1


def test_an_engine_told_of_no_replicas_keeps_its_last_count() -> None:
    engine = idle_engine(replicas=2)
    engine.set_replicas(3)
    engine.set_replicas(0)
    engine.set_replicas(None)
    assert engine.replicas == 3
