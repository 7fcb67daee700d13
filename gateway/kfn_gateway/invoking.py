"""Sending one invocation to one instance, and sorting out what came back.

An instance is reached over HTTP at its invoke endpoint (`kfn_runtime.contract.PATH_INVOKE`: the
event as the body in, the result as the body out), through the keep-alive pool of `upstream`,
or in-process through its `endpoint` (kfn local). Failures are sorted by what the instance may
have done: `NotSent` (nothing reached it: the invocation may go to another instance),
`InstanceFailed` (it may have run: never sent again) and `InstanceTimeout`. An instance that
turned the invocation away without running it answers an `InvocationResult` with `rejected` set.
"""
from __future__ import annotations

import contextlib

from kfn.core.instances import Instance, Invocation, InvocationResult
from kfn_gateway.upstream import ConnectFailed, ConnectionBroken, Pool, ReadTimeout, StaleConnection
from kfn_runtime import contract

CONNECT_TIMEOUT = 10.0
# Idle keep-alive connections to instances are closed after this long; instances announce a
# longer keep-alive than this, so the gateway is the one that closes them.
KEEPALIVE_TIMEOUT = 15.0
_REJECTIONS = frozenset({contract.REJECTED_CONCURRENCY, contract.REJECTED_DRAINING, contract.REJECTED_LOADING})
_HEAD = (f"POST {contract.PATH_INVOKE} HTTP/1.1\r\nHost: instance\r\nContent-Type: application/json\r\n"
         f"{contract.HEADER_REQUEST_ID}: %s\r\nContent-Length: %d\r\n").encode()


class NotSent(Exception):
    """The instance could not be reached; nothing of the invocation was sent to it."""


class InstanceFailed(Exception):
    """The instance failed after the invocation may have reached it (it may have run).

    `instance_failed` is False when the instance is known to be fine (it took a new connection at
    once): the gateway then answers 502 without taking it out of rotation.
    """

    def __init__(self, message: str, *, instance_failed: bool = True) -> None:
        super().__init__(message)
        self.instance_failed = instance_failed


class InstanceTimeout(InstanceFailed):
    """The instance did not answer within the gateway's deadline (the function's timeout plus a margin)."""


class InstanceClient:
    """Invokes instances: over one pool of keep-alive connections, or in-process."""

    def __init__(self, *, max_head_bytes: int = 64 * 1024) -> None:
        self._max_head_bytes = max_head_bytes
        self._pool: Pool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = Pool(connect_timeout=CONNECT_TIMEOUT, keepalive_timeout=KEEPALIVE_TIMEOUT,
                              max_head_bytes=self._max_head_bytes)

    async def close(self) -> None:
        """Close idle connections to instances; returns at once."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def close_idle(self, instance: Instance) -> None:
        """Close the idle connections to an instance that left rotation."""
        if self._pool is not None and instance.endpoint is None:
            self._pool.close_idle(instance.host, instance.port)

    async def invoke(self, instance: Instance, invocation: Invocation, *, timeout: float) -> InvocationResult:
        """Run `invocation` on `instance`; returns its result (perhaps a rejection).

        Runs until the instance answers, at most `timeout` seconds. Raises NotSent,
        InstanceFailed or InstanceTimeout (see the module docstring).
        """
        if instance.endpoint is not None:
            # No deadline of the gateway's own here: an in-process host ends every invocation it
            # takes, at the function's timeout at the latest, and bounds its queue wait likewise.
            try:
                return await instance.endpoint.invoke(invocation)
            except ConnectionError as e:
                raise NotSent(f"instance {instance.id} is gone: {e}") from e
        return await self._invoke_http(instance, invocation, timeout)

    async def _invoke_http(self, instance: Instance, invocation: Invocation, timeout: float) -> InvocationResult:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the gateway's instance client is not started")
        head = [_HEAD % (invocation.request_id.encode("ascii", "replace"), len(invocation.payload))]
        if invocation.client_context:
            head.append(b"%s: %s\r\n" % (contract.HEADER_CLIENT_CONTEXT.encode(), invocation.client_context.encode()))
        if invocation.trace_id:
            head.append(b"%s: %s\r\n" % (contract.HEADER_TRACE_ID.encode(), invocation.trace_id.encode()))
        if invocation.want_log:
            head.append(b"%s: Tail\r\n" % contract.HEADER_LOG_TYPE.encode())
        head.append(b"\r\n")
        request = b"".join(head)
        try:
            try:
                return await self._exchange(pool, instance, request, invocation.payload, timeout, fresh=False)
            except StaleConnection:
                # A reused connection closed before any byte of the answer: the instance closed it
                # while idle and never read the invocation (the instance contract closes connections
                # only between requests), so it goes once more on a new connection.
                return await self._exchange(pool, instance, request, invocation.payload, timeout, fresh=True)
        except ConnectFailed as e:
            raise NotSent(f"could not connect to instance {instance.id}: {e}") from e
        except ReadTimeout as e:
            raise InstanceTimeout(f"instance {instance.id} did not answer within {timeout:g}s") from e
        except (ConnectionBroken, OSError) as e:
            alive = await pool.reachable(instance.host, instance.port)
            raise InstanceFailed(f"instance {instance.id} failed: {e}", instance_failed=not alive) from e

    @staticmethod
    async def _exchange(pool: Pool, instance: Instance, head: bytes, body: bytes, timeout: float, *,
                        fresh: bool) -> InvocationResult:
        connection = await pool.connect(instance.host, instance.port, fresh=fresh)
        answer = await connection.send(head, body, chunked=False, timeout=timeout)
        try:
            parts = [answer.buffered()]
            while not answer.complete:
                chunk = await answer.read_chunk(timeout)
                if not chunk:
                    break
                parts.append(chunk)
        finally:
            answer.release()
        payload = b"".join(parts)
        headers = {name.lower(): value for name, value in answer.headers}
        rejected = headers.get(contract.HEADER_REJECTED.lower())
        if answer.status in (429, 503) and rejected in _REJECTIONS:
            return InvocationResult(rejected=rejected, rejection=_message(payload))
        if answer.status != 200:
            raise ConnectionBroken(f"the instance answered HTTP {answer.status}: {_message(payload)}")
        return InvocationResult(
            payload=payload,
            function_error=headers.get(contract.HEADER_FUNCTION_ERROR.lower()),
            error_type=headers.get(contract.HEADER_ERROR_TYPE.lower()),
            log_result=headers.get(contract.HEADER_LOG_RESULT.lower()))


def _message(payload: bytes) -> str:
    import json

    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(payload).get("errorMessage") or "")
    return payload[:200].decode(errors="replace")
