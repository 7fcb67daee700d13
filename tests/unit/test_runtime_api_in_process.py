"""The host's Runtime API driven in-process by the test, to make certain what real environments
do only by chance or only when hostile.

- Which invocation's log tail (`LogType=Tail`) an environment's output goes to when the host
  handles a result before it has read what the handler printed ahead of it: the Runtime API
  connection and the output pipe are read by one event loop in no set order, and the test makes
  the unlucky order certain (it writes the output into a real pipe and hands the host the result
  at once, before the loop has had a chance to read the pipe).
- What the connection answers to a request no real client sends."""
from __future__ import annotations

import asyncio
import os
from typing import Any

from kfn_runtime.environments import _read_output
from kfn_runtime.execution import Environment, HostConfig, Invocation
from kfn_runtime.host import InstanceHost
from kfn_runtime.runtime_api import NEXT_PATH

NEXT = f"GET {NEXT_PATH} HTTP/1.1\r\nHost: runtime\r\n\r\n".encode()


class _Connection(asyncio.Transport):
    """The host's side of an environment's Runtime API connection: what it answers is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _TestDrivenSpawner:
    """Environments that are only an output pipe and a Runtime API connection, both driven by the
    test: it writes what the "handler" prints into `writers[env.id]` and feeds `apis[env.id]`."""

    def __init__(self) -> None:
        self.writers: dict[str, int] = {}
        self.apis: dict[str, asyncio.Protocol] = {}
        self.connections: dict[str, _Connection] = {}

    async def start(self, host: InstanceHost) -> None:
        return None

    async def spawn(self, host: InstanceHost, env: Environment) -> None:
        read_fd, write_fd = os.pipe()
        self.writers[env.id] = write_fd
        env.process = await _read_output(host, env, read_fd)
        api = self.apis[env.id] = host.runtime_api(env)
        api.connection_made(self.connections.setdefault(env.id, _Connection()))
        asyncio.get_running_loop().call_soon(api.data_received, NEXT)   # it asks for work

    def kill(self, env: Environment) -> None:
        return None

    async def close(self) -> None:
        for fd in self.writers.values():
            os.close(fd)


def _result(request_id: str, body: bytes = b'"ok"') -> bytes:
    """A posted result followed by the next poll, in one write (as kfn's own client sends them)."""
    return (f"POST /2018-06-01/runtime/invocation/{request_id}/response HTTP/1.1\r\nHost: runtime\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body + NEXT


def _running(host: InstanceHost) -> str | None:
    """The id of the invocation the host's one environment runs."""
    (env,) = host.environments
    return None if env.invocation is None else env.invocation.id


async def test_output_written_before_the_result_is_in_its_own_tail_and_not_in_the_next_invocations() -> None:
    spawner = _TestDrivenSpawner()
    host = InstanceHost(HostConfig(function_name="fn", timeout=5.0, concurrency=1, memory_mb=128, queue_limit=2,
                                   region="us-east-1"),
                        spawner)
    await host.start(timeout=5)
    try:
        (env_id,) = spawner.writers
        first = Invocation(b"{}", request_id="first", timeout=5.0, want_log=True)
        second = Invocation(b"{}", request_id="second", timeout=5.0, want_log=True)
        first_done = asyncio.create_task(host.invoke(first))
        await asyncio.sleep(0)   # the environment is idle: the invocation is sent to it at once
        assert _running(host) == "first"
        second_done = asyncio.create_task(host.invoke(second))
        await asyncio.sleep(0)   # queued behind the first
        # The handler prints, then posts its result and polls; the host handles the post (and
        # starts the second invocation) before its loop has read the pipe.
        os.write(spawner.writers[env_id], b"printed by the first\n")
        spawner.apis[env_id].data_received(_result("first"))
        async with asyncio.timeout(5):
            await first_done
        assert _running(host) == "second"   # sent with the answer to the poll that came with the result
        spawner.apis[env_id].data_received(_result("second"))
        async with asyncio.timeout(5):
            await second_done
    finally:
        await host.close()
    assert b"printed by the first" in first.log_tail()
    assert b"printed by the first" not in second.log_tail()
    assert second.log_tail().startswith(b"START RequestId: second ")


async def test_a_pipelined_result_with_a_content_length_of_thousands_of_digits_is_a_400_not_a_crash() -> None:
    # The fast path for kfn's own client read the length with int(), which raises ValueError for
    # more than 4,300 digits: out of data_received, past the BadRequest handler.
    spawner = _TestDrivenSpawner()
    host = InstanceHost(HostConfig(function_name="fn", timeout=5.0, concurrency=1, memory_mb=128, region="us-east-1"),
                        spawner)
    await host.start(timeout=5)
    try:
        (env_id,) = spawner.apis
        spawner.apis[env_id].data_received(
            b"POST /2018-06-01/runtime/invocation/any/response HTTP/1.1\r\nHost: runtime\r\n"
            b"Content-Length: " + b"1" * 5000 + b"\r\n\r\nok" + NEXT)
    finally:
        await host.close()
    connection = spawner.connections[env_id]
    assert connection.sent.startswith(b"HTTP/1.1 400 ") and connection.closed
