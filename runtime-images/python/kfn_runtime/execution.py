"""What an instance host keeps: its configuration, its execution environments and its invocations.

The records of Lambda's execution model as `kfn_runtime.host` runs it: an environment starts, polls
(idle), runs one invocation (busy), answers and polls again (returning, then idle), until it dies;
an invocation carries its event in and its outcome out. The host changes them; the Runtime API's
connections (`kfn_runtime.runtime_api`) and the spawners (`kfn_runtime.environments`) read them.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from kfn_runtime import awslambda, contract

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Connection(Protocol):
        """An environment's connection to its Runtime API (see `kfn_runtime.runtime_api`)."""

        def deliver(self, invocation: Invocation) -> None:
            """Hand `invocation` to the environment, as the answer to its poll."""

        def close(self) -> None:
            """Close the connection (the environment's client then ends)."""

LOG_TAIL_BYTES = 4096

LOADING, READY, DRAINING, CLOSED = "loading", "ready", "draining", "closed"
# An environment starts, polls (idle), runs an invocation (busy), answers and polls again
# (returning, then idle), until it dies.
STARTING, IDLE, BUSY, RETURNING, DEAD = "starting", "idle", "busy", "returning", "dead"


class InitFailed(Exception):
    """The function could not be initialised; `payload` is the Lambda error object (JSON bytes):
    the function's own init error, or Lambda's for a runtime that exited (`Runtime.ExitError`) or
    an init phase that timed out (`Sandbox.Timedout`). `platform` says the platform failed instead
    (no interpreter, no code directory): nothing of the function ran."""

    def __init__(self, message: str, payload: bytes | None = None, *, platform: bool = False) -> None:
        super().__init__(message)
        self.payload = payload or awslambda.error_payload(awslambda.ERROR_UNKNOWN, message)
        self.platform = platform


class Rejected(Exception):
    """The instance turned an invocation away without running it; `reason` is a contract.REJECTED_*."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Invocation:
    """One invocation as the host carries it: the event in, and the outcome out."""

    __slots__ = ("client_context", "deadline", "env", "error_type", "function_error", "future", "id", "init_ms",
                 "log", "payload", "result", "started", "timeout", "timer", "trace_id", "want_log")

    def __init__(self, payload: bytes, *, request_id: str | None = None, timeout: float,
                 client_context: str | None = None, trace_id: str | None = None, want_log: bool = False) -> None:
        self.id = request_id or str(uuid.uuid4())
        self.payload = payload
        self.timeout = timeout
        self.client_context = client_context      # JSON text (already decoded from base64)
        self.trace_id = trace_id
        self.want_log = want_log
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.env: Environment | None = None
        self.deadline = 0.0          # wall clock, set when an environment takes it
        self.started = 0.0           # monotonic, likewise
        self.result = b""
        self.function_error: str | None = None   # awslambda.UNHANDLED when the function failed
        self.error_type: str | None = None
        # Its log as Lambda returns it for LogType=Tail: START, what its environment printed, END, REPORT.
        self.log: bytearray | None = bytearray() if want_log else None
        self.timer: asyncio.TimerHandle | None = None   # the timeout, while an environment runs it
        self.init_ms: float | None = None   # the cold start it paid: its environment's init (first invocation)

    def log_tail(self) -> bytes:
        """The last LOG_TAIL_BYTES of its log (Lambda's LogResult, before base64)."""
        return bytes(self.log[-LOG_TAIL_BYTES:]) if self.log is not None else b""


class Environment:
    """One execution environment: its process, its Runtime API connection, what it runs."""

    __slots__ = ("id", "init_ms", "invocation", "last_used", "output", "peak_kib", "pid", "poll", "port", "process",
                 "server", "started", "state")

    def __init__(self, id: str) -> None:
        self.id = id
        self.state = STARTING
        self.port = 0
        self.server: asyncio.Server | None = None
        self.poll: Connection | None = None       # the connection waiting for its next invocation
        self.invocation: Invocation | None = None
        self.pid: int | None = None
        # The spawner's handle, if it has one: the read transport of the environment's output pipe
        # (what `InstanceHost.output` is fed from), which the host drains when an invocation ends.
        self.process: Any = None
        self.output = bytearray()                 # an unfinished output line
        self.started = time.monotonic()
        self.last_used = self.started
        self.init_ms: float | None = None         # from start to its first poll; its first invocation reports it
        # Its peak resident memory (KiB) as its own client reported it with the result being
        # handled (kfn's channel does); None: the host reads it from /proc instead.
        self.peak_kib: int | None = None


class HostConfig:
    """What an instance needs to know. Built by the pod's entry point or by kfn local."""

    def __init__(self, *, function_name: str, namespace: str = "", version: str = awslambda.LATEST,
                 timeout: float, concurrency: int, memory_mb: int, region: str, idle_timeout: float = 60.0,
                 max_payload: int = 16 * 1024 * 1024, account_id: str = awslambda.DEFAULT_ACCOUNT,
                 init_timeout: float = contract.DEFAULT_INIT_TIMEOUT, queue_limit: int | None = None) -> None:
        self.function_name = function_name
        self.namespace = namespace
        self.version = version
        self.timeout = timeout
        self.concurrency = concurrency
        self.memory_mb = memory_mb
        self.region = region
        self.idle_timeout = idle_timeout
        self.max_payload = max_payload
        self.init_timeout = init_timeout   # Lambda's limit on an environment's init phase
        # Invocations that may wait for a busy instance's environments (default: its concurrency).
        self.queue_limit = concurrency if queue_limit is None else queue_limit
        self.arn = awslambda.function_arn(function_name, region=region, account=account_id)
