"""The gateway's composition on Kubernetes, against a real nats-server: gateway replicas storing
async invocations in JetStream and delivering them through their own dispatch, sharing one queue
(`kfn gateway --nats-url ... --replicas N`, with in-process fake instances instead of pods)."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from kfn.cli.gateway import AsyncService
from kfn.cli.options import GatewayOptions
from kfn.core.functions import FunctionRef
from kfn.events.delivery import DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn_gateway.asyncinvoke import AsyncDelivery
from tests.e2e.asyncstores import record
from tests.support.backend import FakeBackend, Headers
from tests.support.functions import make_function
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.nats import NatsServer, nats_server_binary
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)
WORKER = FunctionRef("default", "worker")
QUICK = DeliverySettings(poll=0.1, stats_interval=0.2, heartbeat=1.0)
TEXT = {"Content-Type": "text/plain"}   # the event's body as text, not base64


class Worker:
    """The function, run by every replica's instances: records which replica ran which event, and
    how many ran at once across all replicas."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []   # (replica, event body)
        self.running = 0
        self.most_running = 0

    def for_replica(self, replica: str) -> Any:
        async def handler(event: dict[str, Any], _headers: Headers) -> str:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await asyncio.sleep(0.05)
                self.runs.append((replica, str(event.get("body"))))
                return "ok"
            finally:
                self.running -= 1

        return lambda _instance_id: handler


async def replica(stack: AsyncExitStack, name: str, url: str, worker: Worker, *,
                  replicas: int) -> tuple[RunningGateway, AsyncDelivery]:
    """One gateway replica as `kfn gateway --nats-url URL --replicas N` composes it."""
    store = JetStreamStore(url, connect_attempts=5)
    await store.start()
    stack.push_async_callback(store.close)
    backend = FakeBackend(make_function("worker", concurrency=2, scale={"maxReplicas": 2}), fn=worker.for_replica(name),
                          in_process=True)
    await stack.enter_async_context(backend)
    gw = await stack.enter_async_context(running_gateway(backend, events=store))
    delivery = AsyncDelivery(gw.gateway, store, settings=DeliverySettings(**{**QUICK.__dict__, "replicas": replicas}))
    await delivery.start()
    stack.push_async_callback(delivery.close)
    return gw, delivery


@pytest.fixture
async def replicas(nats_server: NatsServer) -> AsyncIterator[tuple[Worker, list[tuple[RunningGateway, AsyncDelivery]]]]:
    worker = Worker()
    async with AsyncExitStack() as stack:
        both = [await replica(stack, name, nats_server.url, worker, replicas=2) for name in ("a", "b")]
        yield worker, both


async def test_replicas_sharing_jetstream_deliver_each_async_event_once_within_the_functions_concurrency(
        replicas: tuple[Worker, list[tuple[RunningGateway, AsyncDelivery]]]) -> None:
    worker, both = replicas
    bodies = [f"event-{i}" for i in range(60)]
    for i, body in enumerate(bodies):
        gw, _ = both[i % 2]   # accepted at either replica, as a Service spreads requests
        status, answer, _ = await gw.json("POST", "/async-function/worker", data=body.encode(), headers=TEXT)
        assert status == 202, answer
    await eventually(lambda: len(worker.runs) >= len(bodies), timeout=60)
    await eventually(lambda: all(d.engine.queue_stats().get(WORKER) is not None
                                 and d.engine.queue_stats()[WORKER].depth == 0 for _, d in both), timeout=30)
    runs = Counter(body for _, body in worker.runs)
    by_replica = Counter(name for name, _ in worker.runs)
    record("two gateway replicas on one JetStream queue", "jetstream (gateway)", accepted=len(bodies),
           delivered=len(runs), retried=0, dead_lettered=0, lost=len(set(bodies) - set(runs)),
           duplicates=sum(runs.values()) - len(runs), by_a=by_replica["a"], by_b=by_replica["b"])
    assert set(runs) == set(bodies) and max(runs.values()) == 1
    assert by_replica["a"] > 0 and by_replica["b"] > 0
    # maxReplicas × concurrency = 4 across the replicas, 2 each.
    assert worker.most_running <= 4


async def test_a_gateway_replica_answers_async_requests_503_while_nats_is_down_and_202_once_it_is_back(
        nats_server: NatsServer, tmp_path: Path) -> None:
    worker = Worker()
    async with AsyncExitStack() as stack:
        gw, delivery = await replica(stack, "a", nats_server.url, worker, replicas=1)
        status, _, _ = await gw.json("POST", "/async-function/worker", data=b"before", headers=TEXT)
        assert status == 202
        await eventually(lambda: [body for _, body in worker.runs] == ["before"], timeout=30)
        nats_server.kill()
        status, body, headers = await gw.json("POST", "/async-function/worker", data=b"while-down", headers=TEXT)
        assert status == 503 and "could not store" in body["error"] and "Retry-After" in headers
        nats_server.start()   # the same port and store directory
        answers: list[int] = []

        async def accepted_again() -> bool:
            status, _, _ = await gw.json("POST", "/async-function/worker", data=b"after", headers=TEXT)
            answers.append(status)
            return status == 202

        deadline = asyncio.get_running_loop().time() + 30
        while not await accepted_again():
            assert asyncio.get_running_loop().time() < deadline, answers
            await asyncio.sleep(0.2)
        await eventually(lambda: "after" in [body for _, body in worker.runs], timeout=30)
    ran = {body for _, body in worker.runs}
    # A 503 means "not confirmed", not "not stored": nats-py may still flush the publish it
    # buffered while disconnected (a caller retrying with the same X-Call-Id stores it once).
    record("nats-server SIGKILLed under the gateway", "jetstream (gateway)", accepted=2,
           delivered=len(ran & {"before", "after"}), retried=0, dead_lettered=0,
           lost=len({"before", "after"} - ran), refused_while_down=answers.count(503) + 1,
           refused_but_stored=int("while-down" in ran))
    assert {"before", "after"} <= ran


async def test_kfn_gateway_started_while_nats_is_down_takes_async_requests_once_it_is_up(tmp_path: Path) -> None:
    nats_server_binary()
    nats_server = NatsServer(tmp_path)   # not started yet
    worker = Worker()
    backend = FakeBackend(make_function("worker"), fn=worker.for_replica("a"), in_process=True)
    options = GatewayOptions(nats_url=nats_server.url, replicas=1)
    store = JetStreamStore(nats_server.url)
    try:
        async with backend, running_gateway(backend, events=store) as gw:
            service = AsyncService(gw.gateway, store, options)
            service.start()
            try:
                status, body, _ = await gw.json("POST", "/async-function/worker", data=b"early", headers=TEXT)
                assert status == 503 and "could not store" in body["error"]
                nats_server.start()

                async def accepted() -> int:
                    return (await gw.json("POST", "/async-function/worker", data=b"late", headers=TEXT))[0]

                deadline = asyncio.get_running_loop().time() + 30
                while await accepted() != 202:
                    assert asyncio.get_running_loop().time() < deadline, "still refused 30 s after NATS came up"
                    await asyncio.sleep(0.2)
                await eventually(lambda: "late" in [body for _, body in worker.runs], timeout=30)
            finally:
                await service.close()
                await store.close()
    finally:
        nats_server.stop()
