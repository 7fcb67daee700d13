"""The async queue as Prometheus metrics: depth, oldest age and in-flight per function, outcomes counted."""
from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine
from kfn.events.metrics import AsyncCollector
from kfn.events.store import QueueStats

FN = FunctionRef("default", "worker")


class StatsOnly:
    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        return {FN: QueueStats(depth=7, in_flight=2, oldest_accepted_at=1000.0)}


async def never(ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
    raise AssertionError("not invoked")


async def test_queue_depth_oldest_age_and_outcomes_are_exported() -> None:
    engine = DeliveryEngine(StatsOnly(), never, lambda: {FN: AsyncConfig(FN)})  # type: ignore[arg-type]
    await engine.refresh_stats()
    engine.counters.dead_lettered = 3
    registry = CollectorRegistry()
    registry.register(AsyncCollector(engine, clock=lambda: 1012.5))
    text = generate_latest(registry).decode()
    assert 'kfn_async_queue_depth{function="worker",namespace="default"} 7.0' in text
    assert 'kfn_async_oldest_event_age_seconds{function="worker",namespace="default"} 12.5' in text
    assert 'kfn_async_in_flight{function="worker",namespace="default"} 2.0' in text
    assert 'kfn_async_events_total{outcome="dead_lettered"} 3.0' in text
