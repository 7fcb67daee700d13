"""The POSTs the delivery engine sends to URLs an invocation's caller or config chose (X-Callback-Url,
destinations): only the status of their answer counts, and only a bounded part of the answer is
read (issue 15, item 6), against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kfn.core.asyncpolicy import AsyncConfig, Target
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings
from kfn.events.sqlite import SqliteStore
from kfn.events.store import AcceptOptions
from tests.support.waiting import eventually

FN = FunctionRef("default", "worker")
ENDLESS = 32 << 20           # what the URL would send: far more than anyone should read
CHUNK = 64 << 10


class Talkative:
    """An HTTP server on 127.0.0.1 whose every POST is answered 200 with `size` bytes, streamed
    (with `stall`, the first 64 KiB, then nothing until it stops); counts what it managed to send
    before the client went away."""

    def __init__(self, size: int, *, stall: bool = False) -> None:
        self.size = size
        self.stall = stall
        self._stopping = asyncio.Event()
        self.posts = 0
        self.sent: list[int] = []          # per answer, bytes written to the connection
        self.cut_off: list[bool] = []      # per answer, whether the client closed before its end
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.posts += 1
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:   # no deep kernel buffer on this side: what is sent is what was taken
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        sent = 0
        try:
            await response.prepare(request)
            chunk = b"x" * CHUNK
            while sent < self.size:
                await response.write(chunk)
                sent += len(chunk)
                if self.stall:
                    await self._stopping.wait()
                    break
            await response.write_eof()
            self.cut_off.append(False)
        except (ConnectionError, asyncio.CancelledError):
            self.cut_off.append(True)
            raise
        finally:
            self.sent.append(sent)
        return response


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "events.sqlite3")
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


def engine(store: SqliteStore, config: AsyncConfig, timeout: float) -> DeliveryEngine:
    async def succeed(_ref: FunctionRef, _payload: bytes, _id: str) -> InvocationResult:
        return InvocationResult(payload=b'{"ok": true}')

    settings = DeliverySettings(poll=0.1, destination_timeout=timeout)
    return DeliveryEngine(store, succeed, lambda: {FN: config}, settings=settings)


async def deliver(store: SqliteStore, server: Talkative, config: AsyncConfig, options: AcceptOptions, *,
                  timeout: float = 30.0) -> DeliveryEngine:
    await store.accept(FN, b"{}", "talked-to", options)
    delivery = engine(store, config, timeout)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.destinations == 1 and (len(server.sent) == 1 or server.stall),
                         timeout=60)
    finally:
        await delivery.close()
    return delivery


async def test_a_callback_url_answering_endlessly_is_read_only_up_to_the_bound(store: SqliteStore) -> None:
    server = Talkative(ENDLESS)
    await server.start()
    try:
        await deliver(store, server, AsyncConfig(FN, timeout=1.0), AcceptOptions(callback_url=server.url))
    finally:
        await server.stop()
    # The engine took 64 KiB and closed the connection: what reached it is that plus what the
    # sockets between buffer, nowhere near the answer; and the 200 counted as told.
    assert server.cut_off == [True]
    assert server.sent[0] < 4 << 20


async def test_a_destination_url_answering_endlessly_is_read_only_up_to_the_bound(store: SqliteStore) -> None:
    server = Talkative(ENDLESS)
    await server.start()
    try:
        config = AsyncConfig(FN, timeout=1.0, on_success=Target(url=server.url))
        await deliver(store, server, config, AcceptOptions())
    finally:
        await server.stop()
    assert server.cut_off == [True]
    assert server.sent[0] < 4 << 20


async def test_an_answer_of_the_bound_is_read_whole(store: SqliteStore) -> None:
    server = Talkative(CHUNK)   # 64 KiB, the default bound
    await server.start()
    try:
        await deliver(store, server, AsyncConfig(FN, timeout=1.0), AcceptOptions(callback_url=server.url))
    finally:
        await server.stop()
    assert (server.cut_off, server.sent) == ([False], [CHUNK])


async def test_an_answer_that_stalls_after_its_status_counts_by_its_status_and_is_not_sent_again(
        store: SqliteStore) -> None:
    server = Talkative(ENDLESS, stall=True)
    await server.start()
    try:
        delivery = await deliver(store, server, AsyncConfig(FN, timeout=1.0), AcceptOptions(callback_url=server.url),
                                 timeout=1.0)
    finally:
        await server.stop()
    assert (server.posts, delivery.counters.destination_errors) == (1, 0)


class Recorder:
    """An HTTP server on 127.0.0.1 answering every POST with `status` (and `headers`), or, with
    `stall`, never answering until it stops; counts the requests it got."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, *, stall: bool = False) -> None:
        self.status = status
        self.headers = headers or {}
        self.stall = stall
        self.requests: list[str] = []
        self.port = 0
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        if self.stall:
            await self._stopping.wait()
        return web.Response(status=self.status, headers=self.headers)


async def test_a_callback_url_whose_host_cannot_be_looked_up_fails_its_post_and_the_function_runs_once(
        store: SqliteStore) -> None:
    # An empty label: aiohttp takes the URL, the name lookup raises UnicodeError (a ValueError).
    invoked: list[str] = []

    async def succeed(_ref: FunctionRef, _payload: bytes, event_id: str) -> InvocationResult:
        invoked.append(event_id)
        return InvocationResult(payload=b'{"ok": true}')

    await store.accept(FN, b"{}", "bad-host", AcceptOptions(callback_url="http://a..b/hook"))
    delivery = DeliveryEngine(store, succeed, lambda: {FN: AsyncConfig(FN, timeout=1.0)},
                              settings=DeliverySettings(poll=0.1, destination_timeout=5.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.destination_errors == 1, timeout=10)
    finally:
        await delivery.close()
    assert invoked == ["bad-host"]


async def test_a_redirect_from_a_callback_url_is_not_followed_and_counts_as_not_told(store: SqliteStore) -> None:
    async with Recorder() as elsewhere, Recorder(307, {"Location": "http://127.0.0.1:1/"}) as hook:
        hook.headers["Location"] = elsewhere.url
        await store.accept(FN, b"{}", "redirected", AcceptOptions(callback_url=hook.url))
        delivery = engine(store, AsyncConfig(FN, timeout=1.0), 5.0)
        await delivery.start()
        try:
            await eventually(lambda: delivery.counters.destination_errors == 1, timeout=10)
        finally:
            await delivery.close()
    # As a Lambda destination: a redirect is an answer, not an instruction to POST elsewhere.
    assert (hook.requests, elsewhere.requests) == (["POST /hook"], [])


async def test_callback_urls_that_never_answer_do_not_hold_up_another_functions_destination(
        store: SqliteStore) -> None:
    other = FunctionRef("tenant-b", "worker")
    stalled = 100   # aiohttp's default pool of connections, all taken
    async with Recorder(stall=True) as slow, Recorder() as fast:
        for i in range(stalled):
            await store.accept(FN, b"{}", f"slow-{i}", AcceptOptions(callback_url=slow.url))
        configs = {FN: AsyncConfig(FN, timeout=1.0, concurrency=stalled),
                   other: AsyncConfig(other, timeout=1.0, on_success=Target(url=fast.url))}

        async def succeed(_ref: FunctionRef, _payload: bytes, _id: str) -> InvocationResult:
            return InvocationResult(payload=b'{"ok": true}')

        delivery = DeliveryEngine(store, succeed, lambda: configs,
                                  settings=DeliverySettings(poll=0.1, destination_timeout=300.0))
        await delivery.start()
        try:
            await eventually(lambda: len(slow.requests) == stalled, timeout=30)
            await store.accept(other, b"{}", "other-tenant", AcceptOptions())
            # Told while every one of the other function's POSTs still waits for its answer.
            await eventually(lambda: fast.requests == ["POST /hook"], timeout=30)
            assert delivery.counters.destinations == 1   # that one only
        finally:
            await delivery.close()


async def test_callback_hosts_whose_name_lookup_hangs_leave_the_process_threads_free(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A caller's host names whose DNS never answers (a name server of its own): each lookup holds a
    # thread. The engine's lookups must not take the event loop's default threads, which the rest of
    # the process needs (kfn local starts and stops functions with them, the key file is read in one).
    release = threading.Event()
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".hangs.test"):
            looked_up.append(host)
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hanging = 40   # more than the default thread pool has (at most 32)
    for i in range(hanging):
        await store.accept(FN, b"{}", f"lookup-{i}", AcceptOptions(callback_url=f"http://h{i}.hangs.test/hook"))
    delivery = engine(store, AsyncConfig(FN, timeout=1.0, concurrency=hanging), 300.0)
    await delivery.start()
    try:
        await eventually(lambda: len(looked_up) >= 4, timeout=30)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=10) == "free"
    finally:
        release.set()
        await delivery.close()


async def test_the_credentials_of_a_callback_url_reach_neither_the_log_nor_the_dead_letter(
        store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as unused:   # a port nobody listens on: the POST is refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    await store.accept(FN, b"{}", "with-credentials",
                       AcceptOptions(callback_url=f"http://hook-user:s3cret@127.0.0.1:{port}/hook"))

    async def succeed(_ref: FunctionRef, _payload: bytes, _id: str) -> InvocationResult:
        return InvocationResult(payload=b'{"ok": true}')

    delivery = DeliveryEngine(store, succeed, lambda: {FN: AsyncConfig(FN, timeout=1.0)},
                              settings=DeliverySettings(poll=0.1, destination_retry_for=0.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, timeout=10)
    finally:
        await delivery.close()
    [letter] = await store.dead_letters(FN)
    assert f"127.0.0.1:{port}/hook" in (letter.error or "")
    assert "s3cret" not in (letter.error or "")
    assert "s3cret" not in caplog.text


async def test_outcomes_waiting_on_a_callback_url_leave_the_function_free_for_its_other_events(
        store: SqliteStore) -> None:
    # One caller's callback URL that never answers must not hold the function's async concurrency
    # (1 here) from the other callers' events: Lambda's destinations take none of it.
    invoked: list[str] = []

    async def succeed(_ref: FunctionRef, _payload: bytes, event_id: str) -> InvocationResult:
        invoked.append(event_id)
        return InvocationResult(payload=b'{"ok": true}')

    async with Recorder(stall=True) as slow:
        for i in range(3):
            await store.accept(FN, b"{}", f"slow-callback-{i}", AcceptOptions(callback_url=slow.url))
        await store.accept(FN, b"{}", "another-caller", AcceptOptions())
        delivery = DeliveryEngine(store, succeed, lambda: {FN: AsyncConfig(FN, timeout=1.0, concurrency=1)},
                                  settings=DeliverySettings(poll=0.1, destination_timeout=300.0))
        await delivery.start()
        try:
            await eventually(lambda: "another-caller" in invoked, timeout=30)
            assert delivery.counters.destinations == 0 and len(slow.requests) >= 1   # still waiting
        finally:
            await delivery.close()
