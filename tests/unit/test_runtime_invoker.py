"""Running handlers in-process: concurrency slots, timeouts, errors, async handlers, stuck handlers."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kfn_runtime.handlers import Handler, is_coroutine_function
from kfn_runtime.invoker import ERROR, OK, TIMEOUT, Invoker
from kfn_runtime.logs import current_request_id


@pytest.fixture
def stuck_calls() -> list[str]:
    return []


@pytest.fixture
def make_invoker(stuck_calls: list[str]) -> Iterator[Callable[..., Invoker]]:
    made: list[Invoker] = []

    def make(function: Callable, *, concurrency: int = 2, stuck_grace: float = 60.0) -> Invoker:
        invoker = Invoker(Handler(function, is_coroutine_function(function), "t.handler"),
                          concurrency=concurrency, stuck_grace=stuck_grace,
                          on_stuck=lambda request_id, overrun: stuck_calls.append(request_id))
        invoker.start()
        made.append(invoker)
        return invoker

    yield make
    for invoker in made:
        invoker.close()


def run(invoker: Invoker, *, timeout: float = 5.0, request_id: str = "r") -> object:
    assert invoker.try_acquire()
    return invoker.invoke({"n": 1}, None, request_id=request_id, deadline=time.monotonic() + timeout)


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_sync_handler_result_is_returned(make_invoker: Callable[..., Invoker]) -> None:
    outcome = run(make_invoker(lambda event, context: {"got": event["n"]}))
    assert (outcome.kind, outcome.value) == (OK, {"got": 1})


def test_async_handler_result_is_returned(make_invoker: Callable[..., Invoker]) -> None:
    async def handler(event: dict, context: object) -> str:
        await asyncio.sleep(0)
        return "async ok"

    outcome = run(make_invoker(handler))
    assert (outcome.kind, outcome.value) == (OK, "async ok")


def test_handler_exception_is_an_error_outcome(make_invoker: Callable[..., Invoker]) -> None:
    def handler(event: dict, context: object) -> None:
        raise KeyError("missing")

    outcome = run(make_invoker(handler))
    assert outcome.kind == ERROR
    assert isinstance(outcome.error, KeyError)


def test_handler_raising_timeout_error_is_an_error_not_a_timeout(make_invoker: Callable[..., Invoker]) -> None:
    def handler(event: dict, context: object) -> None:
        raise TimeoutError("upstream timed out")

    outcome = run(make_invoker(handler))
    assert outcome.kind == ERROR
    assert str(outcome.error) == "upstream timed out"


def test_request_id_is_visible_to_the_handler(make_invoker: Callable[..., Invoker]) -> None:
    outcome = run(make_invoker(lambda event, context: current_request_id.get()), request_id="abc-1")
    assert outcome.value == "abc-1"


def test_slot_is_freed_when_the_handler_returns(make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(lambda event, context: None, concurrency=1)
    run(invoker)
    assert wait_until(lambda: invoker.in_flight == 0)
    assert invoker.try_acquire()


def test_no_slot_beyond_the_concurrency_limit(make_invoker: Callable[..., Invoker]) -> None:
    invoker = make_invoker(lambda event, context: None, concurrency=2)
    assert invoker.try_acquire()
    assert invoker.try_acquire()
    assert not invoker.try_acquire()


def test_slow_sync_handler_times_out_and_keeps_its_slot_until_it_returns(
        make_invoker: Callable[..., Invoker]) -> None:
    release = threading.Event()
    invoker = make_invoker(lambda event, context: release.wait(10), concurrency=1)
    outcome = run(invoker, timeout=0.05)
    assert outcome.kind == TIMEOUT
    assert invoker.in_flight == 1
    assert invoker.overdue == 1
    assert not invoker.try_acquire()
    release.set()
    assert wait_until(lambda: invoker.in_flight == 0)
    assert invoker.overdue == 0


def test_async_handler_is_cancelled_on_timeout(make_invoker: Callable[..., Invoker]) -> None:
    cancelled = threading.Event()

    async def handler(event: dict, context: object) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    invoker = make_invoker(handler)
    assert run(invoker, timeout=0.05).kind == TIMEOUT
    assert cancelled.wait(5)
    assert wait_until(lambda: invoker.in_flight == 0)


def test_handler_still_running_after_the_grace_period_is_reported_stuck(
        make_invoker: Callable[..., Invoker], stuck_calls: list[str]) -> None:
    release = threading.Event()
    invoker = make_invoker(lambda event, context: release.wait(10), stuck_grace=0.05)
    try:
        assert run(invoker, timeout=0.01, request_id="slow-1").kind == TIMEOUT
        assert wait_until(lambda: stuck_calls == ["slow-1"])
    finally:
        release.set()


def test_handler_that_returns_within_the_grace_period_is_not_stuck(
        make_invoker: Callable[..., Invoker], stuck_calls: list[str]) -> None:
    release = threading.Event()
    invoker = make_invoker(lambda event, context: release.wait(10), stuck_grace=0.3)
    assert run(invoker, timeout=0.01).kind == TIMEOUT
    release.set()
    assert wait_until(lambda: invoker.in_flight == 0)
    time.sleep(0.4)  # past the grace period: the check has run and found the handler finished
    assert stuck_calls == []


def test_plain_function_returning_a_coroutine_is_awaited(make_invoker: Callable[..., Invoker]) -> None:
    async def work() -> str:
        return "awaited"

    outcome = run(make_invoker(lambda event, context: work()))
    assert (outcome.kind, outcome.value) == (OK, "awaited")


def test_coroutine_functions_are_recognised() -> None:
    async def f(event: dict, context: object) -> None: ...

    class Callable_:
        async def __call__(self, event: dict, context: object) -> None: ...

    class Method:
        async def handle(self, event: dict, context: object) -> None: ...

    assert is_coroutine_function(f)
    assert is_coroutine_function(Callable_())
    assert is_coroutine_function(Method().handle)
    assert not is_coroutine_function(lambda event, context: None)
    assert not is_coroutine_function(print)
