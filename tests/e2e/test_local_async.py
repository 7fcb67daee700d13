"""Asynchronous invocations through a real `kfn local`: /async-function/ → 202 → the function runs;
callbacks and destinations; retries, timeouts and dead letters (`kfn async list` / `replay`); the
maximum event age; scaling from zero on queued events; and `kfn local` SIGKILLed with events
accepted and not yet delivered, started again on the same state directory: nothing lost.

Functions record what they do in files of the test's temporary directory; every wait is a bounded
poll. The fault scenarios add their counts to the fault ledger (`asyncstores.record`).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http import server as httpserver
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.asyncstores import record
from tests.support.localmode import (
    FAST_ASYNC,
    LocalMode,
    ReplicaWatcher,
    http,
    kfn,
    lines,
    post_async,
    recording,
    write_manifest,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)



# -- helpers ---------------------------------------------------------------------------------------------

def async_spec(**settings: Any) -> dict[str, Any]:
    """spec.async, as keyword arguments of write_manifest."""
    return {"async": settings}


def async_view(local: LocalMode, name: str) -> dict[str, Any]:
    result = http("GET", f"{local.url}/system/async/{name}", timeout=10)
    assert result.status == 200, result.body
    return dict(result.json())


def counters(local: LocalMode) -> dict[str, float]:
    """kfn_async_events_total by outcome, from kfn local's /metrics."""
    out: dict[str, float] = {}
    for line in http("GET", local.url + "/metrics", timeout=10).body.decode().splitlines():
        if line.startswith('kfn_async_events_total{outcome="'):
            outcome = line.split('"')[1]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread, recording every POST (headers, body); `start` and
    `stop` can be called more than once (a destination that is down, then up, on one port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server: httpserver.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        received = self.received

        class Handler(httpserver.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = httpserver.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serving(directory: Path, *extra: str) -> Iterator[LocalMode]:
    local = LocalMode(directory, extra_args=[*FAST_ASYNC, *extra])
    try:
        yield local.start()
    finally:
        local.stop()


def sigkill(local: LocalMode) -> None:
    """SIGKILL kfn local (no shutdown at all), then its instances, which would outlive it."""
    assert local.process is not None
    os.kill(local.process.pid, signal.SIGKILL)
    local.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(local.process.pid, signal.SIGKILL)


# -- the happy path ----------------------------------------------------------------------------------------

def test_an_async_request_is_answered_202_then_the_function_runs_and_the_callback_gets_its_result(
        tmp_path: Path, receiver: Receiver) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "ran.log"
    write_manifest(directory, "hello", recording(log, result='{"hello": key}'))
    receiver.start()
    with serving(directory) as local:
        request_id = post_async(local, "hello", "world", headers={"X-Callback-Url": receiver.url})
        wait_until(lambda: lines(log, "done") == ["world"], timeout=30, what="the function to run")
        wait_until(lambda: receiver.received, timeout=30, what="the callback")
        headers, body = receiver.received[0]
        assert json.loads(body) == {"hello": "world"}
        assert headers["X-Call-Id"] == request_id
        assert headers["X-Function-Status"] == "200"
        wait_until(lambda: async_view(local, "hello")["queue"]["depth"] == 0, timeout=10, what="an empty queue")
    assert (directory / ".kfn" / "async-events.sqlite3").exists()   # the default state directory


# -- faults, counted ---------------------------------------------------------------------------------------

def test_kfn_local_sigkilled_with_events_pending_delivers_every_one_after_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "deliveries.log"
    # One at a time, half a second each: most events are still queued when kfn local dies.
    write_manifest(directory, "slow", recording(log, before="time.sleep(0.5)"), concurrency=1,
                   scale={"maxReplicas": 1}, timeout="10s")
    keys = [f"order-{i}" for i in range(20)]
    first = LocalMode(directory, extra_args=FAST_ASYNC, log_path=tmp_path / "first.log").start()
    try:
        for key in keys:
            post_async(first, "slow", key, headers={"X-Call-Id": key})

        def mid_delivery() -> bool:
            done = lines(log, "done")
            return len(done) >= 3 and bool(set(lines(log, "start")) - set(done))

        wait_until(mid_delivery, timeout=60, interval=0.02, what="3 deliveries and one in progress")
    finally:
        sigkill(first)
    done_before = set(lines(log, "done"))
    interrupted = len(set(lines(log, "start")) - done_before)
    second = LocalMode(directory, extra_args=FAST_ASYNC, log_path=tmp_path / "second.log").start()
    try:
        wait_until(lambda: set(keys) <= set(lines(log, "done")), timeout=90, what="every event delivered")
        wait_until(lambda: async_view(second, "slow")["queue"]["depth"] == 0, timeout=30, what="an empty queue")
    finally:
        second.stop()
    done = Counter(lines(log, "done"))
    lost = len(set(keys) - set(done))
    record("kfn local SIGKILLed with events pending", "sqlite (kfn local)", accepted=len(keys),
           delivered=len(set(done) & set(keys)), retried=0, dead_lettered=0, lost=lost,
           duplicates=sum(done.values()) - len(done), interrupted=interrupted,
           delivered_before_kill=len(done_before))
    assert lost == 0
    assert len(done_before) < len(keys)   # the kill did leave events undelivered
    assert interrupted >= 1               # and one in the middle of its delivery


def test_a_function_that_always_fails_is_tried_1_plus_max_retry_attempts_times_then_dead_lettered(
        tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "attempts.log"
    fixed = tmp_path / "fixed"
    write_manifest(directory, "flaky", recording(log, after=f"""
        if not os.path.exists({json.dumps(str(fixed))}):
            raise RuntimeError("not fixed yet")
    """), **async_spec(maxRetryAttempts=2))
    keys = ["a", "b", "c"]
    with serving(directory, "--state-dir", str(tmp_path / "state")) as local:
        ids = {key: post_async(local, "flaky", key) for key in keys}
        wait_until(lambda: len(async_view(local, "flaky")["deadLetters"]) == len(keys), timeout=60,
                   what="three dead letters")
        attempts = Counter(lines(log, "done"))
        assert attempts == {key: 3 for key in keys}
        letters = {letter["id"]: letter for letter in async_view(local, "flaky")["deadLetters"]}
        assert set(letters) == set(ids.values())
        assert {(letter["condition"], letter["attempts"], letter["error"]) for letter in letters.values()} == {
            ("RetriesExhausted", 3, "RuntimeError")}
        failed = counters(local)

        listed = kfn("async", "list", "flaky", gateway=local.url)
        assert listed.returncode == 0, listed.stderr
        assert all(request_id in listed.stdout for request_id in ids.values())
        assert "RetriesExhausted" in listed.stdout
        as_json = json.loads(kfn("async", "list", "flaky", "--json", gateway=local.url).stdout)
        assert len(as_json["deadLetters"]) == 3

        # The bug fixed, one replayed by id, then the rest.
        fixed.touch()
        one = kfn("async", "replay", "flaky", ids["a"], gateway=local.url)
        assert one.returncode == 0, one.stderr
        assert ids["a"] in one.stdout
        wait_until(lambda: Counter(lines(log, "done"))["a"] == 4, timeout=30, what="a delivered again")
        rest = kfn("async", "replay", "flaky", gateway=local.url)
        assert rest.returncode == 0 and ids["b"] in rest.stdout and ids["c"] in rest.stdout
        wait_until(lambda: counters(local).get("delivered") == 3, timeout=30, what="all three delivered")
        assert async_view(local, "flaky")["deadLetters"] == []
        again = kfn("async", "replay", "flaky", "no-such-id", gateway=local.url)
        assert again.returncode == 1 and "no-such-id" in again.stderr
    record("function always fails (then fixed and replayed)", "sqlite (kfn local)", accepted=len(keys),
           delivered=0, retried=int(failed["retried"]), dead_lettered=int(failed["dead_lettered"]),
           lost=len(keys) - int(failed["dead_lettered"]), replayed_and_delivered=3)
    assert failed["retried"] == 6 and failed["dead_lettered"] == 3


def test_a_function_slower_than_its_timeout_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "attempts.log"
    write_manifest(directory, "sleepy", recording(log, before="time.sleep(5)"), timeout="1s",
                   **async_spec(maxRetryAttempts=1))
    with serving(directory) as local:
        request_id = post_async(local, "sleepy", "nap")
        wait_until(lambda: async_view(local, "sleepy")["deadLetters"], timeout=60, what="a dead letter")
        letter = async_view(local, "sleepy")["deadLetters"][0]
        seen = counters(local)
    assert (letter["id"], letter["condition"], letter["attempts"], letter["error"]) == (
        request_id, "RetriesExhausted", 2, "Sandbox.Timedout")
    assert lines(log, "start") == ["nap", "nap"] and lines(log, "done") == []
    record("function slower than its timeout", "sqlite (kfn local)", accepted=1, delivered=0,
           retried=int(seen["retried"]), dead_lettered=int(seen["dead_lettered"]), lost=0)
    assert seen["retried"] == 1 and seen["dead_lettered"] == 1


def test_on_success_a_destination_function_gets_lambdas_invocation_record(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    records = tmp_path / "records.log"
    write_manifest(directory, "ok", recording(tmp_path / "ok.log", result='{"ok": key}'),
                   **async_spec(onSuccess={"function": "sink"}))
    write_manifest(directory, "sink", f"""
        import json
        def handler(event, context):
            with open({json.dumps(str(records))}, "a") as f:
                f.write(json.dumps(event) + "\\n")
    """)
    with serving(directory) as local:
        request_id = post_async(local, "ok", "fine")
        wait_until(lambda: records.exists() and records.read_text().strip(), timeout=30, what="the record")
    record_ = json.loads(records.read_text().splitlines()[0])
    assert record_["requestContext"]["requestId"] == request_id
    assert record_["requestContext"]["condition"] == "Success"
    assert record_["requestContext"]["functionArn"].endswith(":function:ok:$LATEST")
    assert record_["responsePayload"] == {"ok": "fine"}
    assert record_["requestPayload"]["body"] == "fine"


def test_on_failure_a_destination_url_that_is_down_gets_the_record_once_it_comes_up(
        tmp_path: Path, receiver: Receiver) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    write_manifest(directory, "bad", recording(tmp_path / "bad.log", after='raise ValueError("bad")'),
                   **async_spec(maxRetryAttempts=0, onFailure={"url": receiver.url}))
    with serving(directory) as local:
        request_id = post_async(local, "bad", "doomed")
        wait_until(lambda: counters(local).get("destination_errors", 0) >= 1, timeout=30,
                   what="the destination to be found down")
        receiver.start()
        wait_until(lambda: receiver.received, timeout=30, what="the record at the destination")
        wait_until(lambda: async_view(local, "bad")["deadLetters"], timeout=30, what="the dead letter")
        seen = counters(local)
    record_ = receiver.records()[0]
    assert record_["requestContext"]["requestId"] == request_id
    assert record_["requestContext"]["condition"] == "RetriesExhausted"
    assert record_["responseContext"]["functionError"] == "Unhandled"
    assert record_["responsePayload"]["errorType"] == "ValueError"
    record("destination URL down, then up", "sqlite (kfn local)", accepted=1, delivered=0,
           retried=int(seen["retried"]), dead_lettered=int(seen["dead_lettered"]), lost=0,
           destination_errors=int(seen["destination_errors"]), destinations=int(seen["destinations"]))
    assert len(receiver.received) == 1


def test_an_event_older_than_its_maximum_age_when_delivery_resumes_is_dead_lettered_not_run(
        tmp_path: Path) -> None:
    import asyncio

    from kfn.core.functions import FunctionRef
    from kfn.events.sqlite import FILE_NAME, SqliteStore

    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "ran.log"
    write_manifest(directory, "aging", recording(log), **async_spec(maximumEventAgeSeconds=60))
    ref = FunctionRef("default", "aging")

    async def accept(invocation_id: str, body: str, accepted_at: float) -> None:
        # As if kfn local had accepted it then, and been down since.
        store = SqliteStore(directory / ".kfn" / FILE_NAME, clock=lambda: accepted_at)
        await store.start()
        try:
            await store.accept(ref, json.dumps({"body": body}).encode(), invocation_id)
        finally:
            await store.close()

    asyncio.run(accept("stale", "stale", time.time() - 120))
    asyncio.run(accept("fresh", "fresh", time.time() - 10))
    with serving(directory) as local:
        wait_until(lambda: lines(log, "done") == ["fresh"], timeout=30, what="the fresh event to run")
        wait_until(lambda: async_view(local, "aging")["deadLetters"], timeout=30, what="the stale dead letter")
        letter = async_view(local, "aging")["deadLetters"][0]
        seen = counters(local)
    assert (letter["id"], letter["condition"], letter["attempts"]) == ("stale", "EventAgeExceeded", 0)
    assert "stale" not in lines(log, "start")
    record("event older than maximumEventAgeSeconds", "sqlite (kfn local)", accepted=2, delivered=1,
           retried=0, dead_lettered=int(seen["dead_lettered"]), lost=0, expired=int(seen["expired"]))


def test_a_function_at_zero_with_queued_events_is_scaled_up(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "ran.log"
    write_manifest(directory, "backlog", recording(log, before="time.sleep(1)"), concurrency=1,
                   scale={"maxReplicas": 3})
    keys = [f"job-{i}" for i in range(9)]
    with serving(directory) as local:
        assert local.ready("backlog") == 0
        with ReplicaWatcher(local, "backlog") as watcher:
            for key in keys:
                post_async(local, "backlog", key)
            wait_until(lambda: set(keys) <= set(lines(log, "done")), timeout=60, what="every job done")
        wait_until(lambda: local.ready("backlog") == 0, timeout=30, what="back to zero once the queue is empty")
    assert watcher.peak > 1


def test_kfn_async_names_an_unknown_function_or_an_unreachable_gateway_with_a_non_zero_exit(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    with serving(directory) as local:
        unknown = kfn("async", "list", "nope", gateway=local.url)
        replay = kfn("async", "replay", "nope", gateway=local.url)
    assert unknown.returncode == 1 and "no function named 'nope'" in unknown.stderr
    assert replay.returncode == 1 and "no function named 'nope'" in replay.stderr
    gone = kfn("async", "list", "nope", gateway=f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "cannot reach the kfn gateway" in gone.stderr


def test_kfn_local_fires_a_schedule_tick_missed_while_it_was_down_once_at_its_start(tmp_path: Path) -> None:
    import asyncio
    import datetime as dt

    from kfn.events.sqlite import FILE_NAME
    from kfn.triggers.ticks import SqliteTicks, TickRecord

    directory = tmp_path / "functions"
    directory.mkdir()
    events = tmp_path / "events.log"
    write_manifest(directory, "tick", f"""
        import json
        def handler(event, context):
            with open({json.dumps(str(events))}, "a") as f:
                f.write(json.dumps(event) + "\\n")
    """, triggers=[{"schedule": "rate(1 minute)"}])

    async def fired_through(when: dt.datetime) -> None:
        # As if an earlier kfn local had fired every tick up to `when`, then stopped.
        ticks = SqliteTicks(directory / ".kfn" / FILE_NAME)
        await ticks.start()
        try:
            await ticks.put("default.tick.0", TickRecord("rate(1 minute)", when))
        finally:
            await ticks.close()

    started = dt.datetime.now(dt.UTC)
    asyncio.run(fired_through(started - dt.timedelta(minutes=3)))
    with serving(directory):
        wait_until(lambda: events.exists() and events.read_text().strip(), timeout=30, what="the missed tick")
    fired = [json.loads(line) for line in events.read_text().splitlines()]
    assert {(e["source"], e["detail-type"]) for e in fired} == {("aws.events", "Scheduled Event")}
    # Three ticks were missed: the latest one is fired, once (any other is a regular tick since).
    missed = [e for e in fired if dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")) <= started]
    assert len(missed) == 1
    assert started - dt.datetime.fromisoformat(missed[0]["time"].replace("Z", "+00:00")) <= dt.timedelta(minutes=1)


def test_kfn_local_with_a_nats_url_turns_each_message_on_a_subject_into_an_invocation(tmp_path: Path) -> None:
    import asyncio

    import nats

    from tests.support.nats import NatsServer, nats_server_binary

    nats_server_binary()
    server = NatsServer(tmp_path)
    server.start()
    try:
        directory = tmp_path / "functions"
        directory.mkdir()
        events = tmp_path / "events.log"
        write_manifest(directory, "orders", f"""
            import json
            def handler(event, context):
                with open({json.dumps(str(events))}, "a") as f:
                    f.write(json.dumps(event) + "\\n")
        """, triggers=[{"nats": {"subject": "orders.created"}}])
        with serving(directory, "--nats-url", server.url):

            async def publish() -> dict[str, Any]:
                client = await nats.connect(server.url)
                try:
                    # A request is answered once the event is stored; the trigger may still be subscribing.
                    for _ in range(100):
                        try:
                            reply = await client.request("orders.created", b'{"order": 7}', timeout=1.0)
                        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                            await asyncio.sleep(0.1)
                            continue
                        return dict(json.loads(reply.data))
                    raise AssertionError("no trigger answered on orders.created")
                finally:
                    await client.close()

            answer = asyncio.run(publish())
            wait_until(lambda: events.exists() and events.read_text().strip(), timeout=30, what="the invocation")
        assert "invocationId" in answer
        assert [json.loads(line) for line in events.read_text().splitlines()] == [{"order": 7}]
    finally:
        server.stop()


def test_without_a_nats_url_a_functions_nats_trigger_is_reported_as_not_running(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    write_manifest(directory, "orders", "def handler(event, context):\n    return None\n",
                   triggers=[{"nats": {"subject": "orders.created"}}])
    with serving(directory) as local:
        problems = wait_until(lambda: local.errors()["functions"], timeout=10, what="the trigger's problem")
        listed = kfn("list", gateway=local.url)
    assert [(p["function"], "nats triggers do not run" in p["error"]) for p in problems] == [("orders", True)]
    assert "nats triggers do not run" in listed.stdout
