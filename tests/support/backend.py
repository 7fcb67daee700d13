"""A fake InstanceBackend for tests: functions run by fake instances, or placeholder instances.

    backend = FakeBackend(make_function("hello"))            # instances run `echo`
    async with backend, running_gateway(backend) as gw:      # tests.support.gateway
        await backend.add_instance("hello")
        status, event, headers = await gw.json("GET", "/function/hello/x?y=1")

    backend = FakeBackend(make_function("hello"), replicas=2)  # the autoscaler's view: placeholders
    await backend.scale(ref("hello"), 3)                       # 3 ready at once, nothing started

A fake function is `fn(event, headers) -> result` (sync or async): `event` is the event the
gateway sent (a dict), `headers` the invocation's headers (X-Kfn-Request-Id, X-Amzn-Trace-Id,
...). Its result is JSON-serialised as the function's result. To act like the runtime in other
ways it raises `FunctionError` (a function error; `timed_out()` for Lambda's timeout),
`Rejected` (the instance turns the invocation away without running it) or `Die` (the
connection breaks mid-invocation). A backend takes `functions(instance_id) -> fn`, so a function
may know which instance runs it (`echo` does).

A `FakeInstance` serves the instance contract's invoke endpoint over HTTP on 127.0.0.1 (port 0),
or, with `in_process=True`, is reached in-process through `Instance.endpoint` (kfn local's way).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, Invocation, InvocationResult, Listener, NoBuild, StartProblem
from kfn_runtime import contract

Headers = Mapping[str, str]
Fn = Callable[[dict[str, Any], Headers], Any]   # returns the result, or an awaitable of it
FnFactory = Callable[[str], Fn]                  # instance id → the function that instance runs

TRANSPORTS = ["http", "in-process"]  # for @pytest.mark.parametrize("transport", TRANSPORTS)


def ref(name: str | FunctionRef) -> FunctionRef:
    """A function's ref from its name (in the default namespace), or the ref itself."""
    return name if isinstance(name, FunctionRef) else FunctionRef.parse(name)


# -- fake functions ---------------------------------------------------------------------------------

class FunctionError(Exception):
    """Raised by a fake function: the invocation ends with a function error (Lambda's error object)."""

    def __init__(self, error_type: str = "ValueError", message: str = "boom") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    def payload(self) -> bytes:
        return json.dumps({"errorType": self.error_type, "errorMessage": self.message,
                           "stackTrace": []}).encode()


def timed_out() -> FunctionError:
    """What the runtime reports for a function that ran past its timeout."""
    return FunctionError("Sandbox.Timedout", "Task timed out after 1.00 seconds")


class Rejected(Exception):
    """Raised by a fake function: the instance did not run the invocation (`reason`: concurrency,
    draining or loading), as a full, draining or loading runtime answers."""

    def __init__(self, reason: str = contract.REJECTED_CONCURRENCY) -> None:
        super().__init__(f"the instance is {reason}")
        self.reason = reason


class Die(Exception):
    """Raised by a fake function: the connection breaks without an answer (the function may have
    run). With `crash`, the instance also stops taking connections (its process died). Over HTTP
    only: an in-process instance whose environment dies answers Runtime.ExitError instead."""

    def __init__(self, *, crash: bool = False) -> None:
        super().__init__("the instance died")
        self.crash = crash


@dataclass(frozen=True)
class RawAnswer:
    """Returned by a fake function: the invoke endpoint answers exactly this (over HTTP only)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def echo(instance_id: str) -> Fn:
    """A function answering with a 2.0 response whose body is the JSON of the event it got; the
    instance's id in X-Instance and the invocation's id in X-Invocation-Id."""

    def handler(event: dict[str, Any], headers: Headers) -> dict[str, Any]:
        return {"statusCode": 200, "body": json.dumps(event),
                "headers": {"Content-Type": "application/json", "X-Instance": instance_id,
                            "X-Invocation-Id": headers.get(contract.HEADER_REQUEST_ID, "")}}

    return handler


def serving(fn: Fn) -> FnFactory:
    """A factory whose every instance runs `fn`."""
    return lambda _instance_id: fn


def returning(result: Any) -> FnFactory:
    """A factory whose every instance's function returns `result`."""
    return serving(lambda _event, _headers: result)


def raising(error: BaseException) -> FnFactory:
    """A factory whose every instance's function raises `error` (FunctionError, Rejected, Die)."""

    def fn(_event: dict[str, Any], _headers: Headers) -> Any:
        raise error

    return serving(fn)


def event_path(event: dict[str, Any]) -> str:
    """The path an event is for (2.0's rawPath, 1.0's path)."""
    return str(event.get("rawPath", event.get("path", "")))


class ControlledFunctions:
    """A factory of functions tests can hold: an invocation whose path is /hold/{key} waits until
    `release(key)`; any other answers at once with {"instance", "path"}. Every arrival is recorded
    in order, as are invocations cancelled (the gateway gave up on them), and the most
    invocations any one instance ran at once.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []      # (instance id, path)
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        self.finished: list[tuple[str, str]] = []
        self.cancelled: list[tuple[str, str]] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, key: str) -> asyncio.Event:
        return self._gates.setdefault(key, asyncio.Event())

    def release(self, *keys: str) -> None:
        for key in keys:
            self.gate(key).set()

    def held(self, instance_id: str | None = None) -> int:
        if instance_id is None:
            return sum(self.active.values())
        return self.active.get(instance_id, 0)

    def __call__(self, instance_id: str) -> Fn:
        async def handler(event: dict[str, Any], headers: Headers) -> dict[str, Any]:
            path = event_path(event)
            entry = (instance_id, path)
            self.arrivals.append(entry)
            self.active[instance_id] = self.active.get(instance_id, 0) + 1
            self.max_active[instance_id] = max(self.max_active.get(instance_id, 0), self.active[instance_id])
            try:
                if path.startswith("/hold/"):
                    await self.gate(path[len("/hold/"):]).wait()
                self.finished.append(entry)
                return {"instance": instance_id, "path": path}
            except asyncio.CancelledError:
                self.cancelled.append(entry)
                raise
            finally:
                self.active[instance_id] -= 1

        return handler


async def _call(fn: Fn, event: dict[str, Any], headers: Headers) -> Any:
    result = fn(event, headers)
    if inspect.isawaitable(result):
        result = await result
    return result


# -- fake instances ---------------------------------------------------------------------------------

class FakeInstance:
    """One fake instance of a function running `fn`: the invoke endpoint of the instance contract
    served on 127.0.0.1 (port picked by the OS), or an in-process endpoint (`in_process`)."""

    def __init__(self, function: FunctionRef, id: str, fn: Fn, *, capacity: int, in_process: bool = False) -> None:
        self.function = function
        self.id = id
        self.fn = fn
        self.capacity = capacity
        self.in_process = in_process
        self.instance: Instance | None = None
        self.invocations = 0             # invocations that reached the instance
        self.gone = False                # stopped: connections refused / ConnectionError in-process
        self._handler: web.Server | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> Instance:
        if self.in_process:
            self.instance = Instance(function=self.function, id=self.id, host="127.0.0.1", port=0,
                                     capacity=self.capacity, endpoint=self)
            return self.instance
        self._handler = web.Server(self._serve, handler_cancellation=True, access_log=None)
        self._server = await asyncio.get_running_loop().create_server(self._handler, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.instance = Instance(function=self.function, id=self.id, host="127.0.0.1", port=port,
                                 capacity=self.capacity)
        return self.instance

    def crash(self) -> None:
        """Stop taking connections and cut every open one, as a process that died."""
        self.gone = True
        if self._server is not None:
            self._server.close()
        if self._handler is not None:
            for connection in self._handler.connections:
                if connection.transport is not None:
                    connection.transport.abort()

    async def stop(self) -> None:
        self.crash()
        if self._handler is not None:
            await self._handler.shutdown(0.1)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # The Endpoint protocol, for an in-process instance.
    async def invoke(self, invocation: Invocation) -> InvocationResult:
        if self.gone:
            raise ConnectionError(f"instance {self.id} is gone")
        self.invocations += 1
        headers: CIMultiDict[str] = CIMultiDict({contract.HEADER_REQUEST_ID: invocation.request_id})
        if invocation.trace_id:
            headers[contract.HEADER_TRACE_ID] = invocation.trace_id
        if invocation.client_context:
            headers[contract.HEADER_CLIENT_CONTEXT] = invocation.client_context
        if invocation.want_log:
            headers[contract.HEADER_LOG_TYPE] = "Tail"
        try:
            result = await _call(self.fn, json.loads(invocation.payload), CIMultiDictProxy(headers))
        except FunctionError as e:
            return InvocationResult(payload=e.payload(), function_error="Unhandled", error_type=e.error_type)
        except Rejected as e:
            return InvocationResult(rejected=e.reason, rejection=str(e))
        except Die:
            error = FunctionError("Runtime.ExitError", "Runtime exited")
            return InvocationResult(payload=error.payload(), function_error="Unhandled", error_type=error.error_type)
        log = base64.b64encode(b"log line\n").decode() if invocation.want_log else None
        return InvocationResult(payload=json.dumps(result).encode(), log_result=log)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST" or request.path != contract.PATH_INVOKE:
            return web.json_response({"errorType": "NotFound", "errorMessage": request.path}, status=404)
        body = await request.content.read()
        self.invocations += 1
        out = {"Content-Type": "application/json", contract.HEADER_REQUEST_ID:
               request.headers.get(contract.HEADER_REQUEST_ID, "")}
        try:
            result = await _call(self.fn, json.loads(body), request.headers)
        except FunctionError as e:
            out[contract.HEADER_FUNCTION_ERROR] = "Unhandled"
            out[contract.HEADER_ERROR_TYPE] = e.error_type
            return web.Response(body=e.payload(), headers=out)
        except Rejected as e:
            full = e.reason == contract.REJECTED_CONCURRENCY
            out[contract.HEADER_REJECTED] = e.reason
            if not full:
                out["Connection"] = "close"  # as the runtime does when it is going away
            kind = "TooManyRequestsException" if full else "ServiceUnavailableException"
            return web.Response(status=429 if full else 503, headers=out,
                                body=json.dumps({"errorType": kind, "errorMessage": str(e)}).encode())
        except Die as e:
            assert request.transport is not None
            request.transport.abort()
            if e.crash:
                self.crash()
            await asyncio.sleep(60)  # cancelled at once: the connection is gone
            raise
        if isinstance(result, RawAnswer):
            return web.Response(status=result.status, body=result.body, headers=result.headers)
        if request.headers.get(contract.HEADER_LOG_TYPE) == "Tail":
            out[contract.HEADER_LOG_RESULT] = base64.b64encode(b"log line\n").decode()
        return web.Response(body=json.dumps(result).encode(), headers=out)


# -- the backend ------------------------------------------------------------------------------------

class ScaleCall(NamedTuple):
    """One call of `scale`; equal to the tuple (name, replicas, reason)."""

    name: str        # the function's name (its namespace is the default one unless the test says)
    replicas: int
    reason: str


class FakeBackend:
    """An InstanceBackend for tests; its test controls take a function's name or ref.

    By default instances are fakes (`FakeInstance`) running `fn(instance_id)`, over HTTP or
    in-process (`in_process`): `start` starts each function's minReplicas, and `scale` starts or
    stops them in the background (unless `start_on_scale` is False: then it only records the call
    and the desired count). With `replicas`, each function starts out desiring that many, and
    instances are placeholders ready the moment they are desired (nothing listens on their
    addresses; nothing is started): the autoscaler's view of a backend.

    Every `scale` call is recorded in `scale_calls`, then raises the function's `scale_errors`
    entry if it has one (the API said no). `replicas` holds the desired count per function; a test
    may set it (someone else scaled the function).
    """

    def __init__(self, *functions: Function, fn: FnFactory = echo, start_on_scale: bool = True,
                 in_process: bool = False, replicas: int | None = None) -> None:
        self._functions: dict[FunctionRef, Function] = {f.ref: f for f in functions}
        self.placeholders = replicas is not None
        self.replicas: dict[FunctionRef, int] = {
            f.ref: f.spec.scale.minReplicas if replicas is None else replicas for f in functions}
        self._instances: dict[FunctionRef, list[FakeInstance]] = {}
        self._fakes: dict[str, FakeInstance] = {}   # every fake ever started, by instance id
        self._ready: dict[FunctionRef, list[Instance]] = {}
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.fn = fn
        self.in_process = in_process
        self.start_on_scale = start_on_scale
        self.scale_calls: list[ScaleCall] = []
        self.scale_errors: dict[FunctionRef, Exception] = {}
        self.failures: list[tuple[Instance, str]] = []
        self.problems: dict[FunctionRef, StartProblem] = {}
        self.log_lines: dict[FunctionRef, list[str]] = {}
        self.build_lines: dict[FunctionRef, list[str]] = {}   # a function's latest build's output (none: no build)
        # When set, `scale` waits for this event before starting instances (cold starts in progress).
        self.scale_gate: asyncio.Event | None = None

    @classmethod
    def of(cls, transport: str, *functions: Function, **kwargs: Any) -> FakeBackend:
        """A backend whose instances use `transport` (one of TRANSPORTS)."""
        assert transport in TRANSPORTS
        return cls(*functions, in_process=transport == "in-process", **kwargs)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- InstanceBackend ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.placeholders:
            return
        for key, count in self.replicas.items():
            for _ in range(count):
                await self.add_instance(key)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for instances in self._instances.values():
            for instance in instances:
                await instance.stop()
        self._instances.clear()
        self._ready.clear()

    def function(self, name: FunctionRef) -> Function | None:
        return self._functions.get(ref(name))

    def functions(self) -> list[Function]:
        return list(self._functions.values())

    def ready(self, name: FunctionRef) -> list[Instance]:
        key = ref(name)
        if self.placeholders:
            return [Instance(key, f"{key.name}-{i}", "127.0.0.1", 9000 + i, 10) for i in range(self.desired(key))]
        return list(self._ready.get(key, ()))

    def desired(self, name: FunctionRef) -> int:
        return self.replicas.get(ref(name), 0)

    def problem(self, name: FunctionRef) -> StartProblem | None:
        return self.problems.get(ref(name))

    async def scale(self, name: FunctionRef, replicas: int, *, reason: str = "") -> None:
        key = ref(name)
        self.scale_calls.append(ScaleCall(key.name, replicas, reason))
        if key in self.scale_errors:
            raise self.scale_errors[key]
        self.replicas[key] = replicas
        if self.start_on_scale and not self.placeholders:
            task = asyncio.get_running_loop().create_task(self._converge(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def report_failure(self, instance: Instance, *, error: str) -> None:
        self.failures.append((instance, error))
        ready = self._ready.get(instance.function, [])
        if instance in ready:
            ready.remove(instance)
            self._notify(instance.function)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def logs(self, name: FunctionRef, *, tail: int, follow: bool,
                   build: bool = False) -> AsyncIterator[AsyncIterator[str]]:
        if build and ref(name) not in self.build_lines:
            raise NoBuild(f"{ref(name).name} has no build")
        lines = (self.build_lines if build else self.log_lines).get(ref(name), [])

        async def read() -> AsyncIterator[str]:
            for line in lines[-tail:] if tail else []:
                yield line

        yield read()

    # -- test controls -----------------------------------------------------------------------------

    def add_function(self, function: Function) -> None:
        """Add or replace a function (a new spec); a new one desires its minReplicas."""
        self._functions[function.ref] = function
        self.replicas.setdefault(function.ref, function.spec.scale.minReplicas)
        self._notify(function.ref)

    def remove_function(self, name: str | FunctionRef) -> None:
        self._functions.pop(ref(name), None)
        self._notify(ref(name))

    async def add_instance(self, name: str | FunctionRef, *, fn: Fn | None = None, capacity: int | None = None,
                           in_process: bool | None = None) -> Instance:
        """Start a fake instance of a function and mark it ready."""
        key = ref(name)
        function = self._functions[key]
        instance_id = f"{key.name}-{next(self._ids)}"
        fake = FakeInstance(key, instance_id, fn if fn is not None else self.fn(instance_id),
                            capacity=capacity if capacity is not None else function.spec.concurrency,
                            in_process=self.in_process if in_process is None else in_process)
        instance = await fake.start()
        self._instances.setdefault(key, []).append(fake)
        self._fakes[instance_id] = fake
        self._ready.setdefault(key, []).append(instance)
        self._notify(key)
        return instance

    def fake(self, instance: Instance) -> FakeInstance:
        """The fake behind an instance (stopped ones too)."""
        return self._fakes[instance.id]

    async def stop_instance(self, instance: Instance, *, unready: bool = True) -> None:
        """Stop an instance; with `unready=False` it stays listed as ready (a crash not yet noticed)."""
        fakes = self._instances.get(instance.function, [])
        for fake in list(fakes):
            if fake.id == instance.id:
                fakes.remove(fake)
                await fake.stop()
        if unready and instance in self._ready.get(instance.function, []):
            self._ready[instance.function].remove(instance)
            self._notify(instance.function)

    def mark_ready(self, instance: Instance) -> None:
        """List an instance as ready without starting anything (e.g. an address nobody listens on)."""
        self._ready.setdefault(instance.function, []).append(instance)
        self._notify(instance.function)

    def lose_desired(self, name: str | FunctionRef) -> None:
        """Tell the listeners that the function's desired count changed (a test set `replicas`): as
        a backend does when an instance it counted is gone before it was ready."""
        self._notify(ref(name))

    def _notify(self, key: FunctionRef) -> None:
        for listener in self._listeners:
            listener(key)

    async def _converge(self, key: FunctionRef) -> None:
        if self.scale_gate is not None:
            await self.scale_gate.wait()
        while len(self._instances.get(key, [])) < self.replicas.get(key, 0):
            await self.add_instance(key)
        while len(self._instances.get(key, [])) > self.replicas.get(key, 0):
            fake = self._instances[key][-1]
            assert fake.instance is not None
            await self.stop_instance(fake.instance)
