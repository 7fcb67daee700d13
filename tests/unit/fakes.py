"""Test doubles shared by unit tests: an in-memory InstanceBackend whose instances are tiny
aiohttp servers on 127.0.0.1 (port 0), and helpers to run a gateway in-process.

    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gateway:
        await backend.add_instance("hello")
        async with gateway.session.get(gateway.url("/function/hello")) as response: ...

`app_factory(instance_id)` builds each instance's application (default: `echo_app`, which
answers with a JSON description of the request it got).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import yarl
from aiohttp import web

from kfn.core.functions import Function, FunctionRef, parse_function
from kfn.core.instances import Instance, Listener

AppFactory = Callable[[str], web.Application]

MAX_BODY = 64 * 1024 * 1024


def make_function(name: str = "hello", *, concurrency: int = 10, timeout: float = 30.0,
                  min_replicas: int = 0, max_replicas: int = 10, image: str | None = None,
                  namespace: str = "default") -> Function:
    spec: dict[str, Any] = {
        "handler": "main.handler",
        "timeout": timeout,
        "concurrency": concurrency,
        "scale": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
    }
    if image is not None:
        spec["image"] = image
    else:
        spec["source"] = {"files": {"main.py": "def handler(event, context):\n    return event\n"}}
    return parse_function({"apiVersion": "kfn.dev/v1alpha1", "kind": "Function",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


async def echo(request: web.Request, instance_id: str) -> web.Response:
    """JSON describing the request: method, path (with query), headers, body size."""
    body = await request.read()
    return web.json_response({
        "instance": instance_id,
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": len(body),
        "body": body[:1024].decode("utf-8", "replace"),
    })


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def app_of(handler: Handler) -> web.Application:
    """An instance's app: `handler` answers every method and path."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def serving(handler: Handler) -> AppFactory:
    """An app factory whose every instance answers with `handler`."""
    return lambda _instance_id: app_of(handler)


def echo_app(instance_id: str) -> web.Application:
    """Answers every request with `echo`."""
    async def handle(request: web.Request) -> web.Response:
        return await echo(request, instance_id)

    return app_of(handle)


def ref(name: str | FunctionRef) -> FunctionRef:
    """A function's ref from its name (in the default namespace), or the ref itself."""
    return name if isinstance(name, FunctionRef) else FunctionRef.parse(name)


class FakeInstance:
    """One fake runtime: an aiohttp app served on 127.0.0.1, port picked by the OS."""

    def __init__(self, function: FunctionRef, id: str, app: web.Application, *, capacity: int) -> None:
        self.function = function
        self.id = id
        self.capacity = capacity
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self.instance: Instance | None = None

    async def start(self) -> Instance:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.instance = Instance(function=self.function, id=self.id, host="127.0.0.1", port=port,
                                 capacity=self.capacity)
        return self.instance

    async def stop(self) -> None:
        """Stop serving; connections in progress are cut (like a process that died)."""
        await self._runner.cleanup()


@dataclass(frozen=True)
class ScaleCall:
    name: str        # the function's name (its namespace is the default one unless the test says)
    replicas: int
    reason: str


class FakeBackend:
    """An InstanceBackend for tests. `scale` starts or stops fake instances in the background
    (unless `start_on_scale` is False: then it only records the call and the desired count).
    Its test controls take a function's name or ref.
    """

    def __init__(self, *functions: Function, app_factory: AppFactory = echo_app,
                 start_on_scale: bool = True) -> None:
        self._functions: dict[FunctionRef, Function] = {f.ref: f for f in functions}
        self._desired: dict[FunctionRef, int] = {f.ref: f.spec.scale.minReplicas for f in functions}
        self._servers: dict[FunctionRef, list[FakeInstance]] = {}
        self._ready: dict[FunctionRef, list[Instance]] = {}
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.app_factory = app_factory
        self.start_on_scale = start_on_scale
        self.scale_calls: list[ScaleCall] = []
        self.failures: list[tuple[Instance, str]] = []
        self.problems: dict[FunctionRef, str] = {}
        self.log_lines: dict[FunctionRef, list[str]] = {}
        # When set, `scale` waits for this event before starting instances (cold starts in progress).
        self.scale_gate: asyncio.Event | None = None
        self.scale_error: Exception | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- InstanceBackend ---------------------------------------------------------------------------

    async def start(self) -> None:
        for key, count in self._desired.items():
            for _ in range(count):
                await self.add_instance(key)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for servers in self._servers.values():
            for server in servers:
                await server.stop()
        self._servers.clear()
        self._ready.clear()

    def function(self, name: FunctionRef) -> Function | None:
        return self._functions.get(ref(name))

    def functions(self) -> list[Function]:
        return list(self._functions.values())

    def ready(self, name: FunctionRef) -> list[Instance]:
        return list(self._ready.get(ref(name), ()))

    def desired(self, name: FunctionRef) -> int:
        return self._desired.get(ref(name), 0)

    def problem(self, name: FunctionRef) -> str | None:
        return self.problems.get(ref(name))

    async def scale(self, name: FunctionRef, replicas: int, *, reason: str = "") -> None:
        key = ref(name)
        self.scale_calls.append(ScaleCall(key.name, replicas, reason))
        if self.scale_error is not None:
            raise self.scale_error
        self._desired[key] = replicas
        if self.start_on_scale:
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
    async def logs(self, name: FunctionRef, *, tail: int, follow: bool) -> AsyncIterator[AsyncIterator[str]]:
        lines = self.log_lines.get(ref(name), [])

        async def read() -> AsyncIterator[str]:
            for line in lines[-tail:] if tail else []:
                yield line

        yield read()

    # -- test controls -----------------------------------------------------------------------------

    def add_function(self, function: Function) -> None:
        self._functions[function.ref] = function
        self._desired.setdefault(function.ref, function.spec.scale.minReplicas)
        self._notify(function.ref)

    def remove_function(self, name: str | FunctionRef) -> None:
        self._functions.pop(ref(name), None)
        self._notify(ref(name))

    async def add_instance(self, name: str | FunctionRef, *, app: web.Application | None = None,
                           capacity: int | None = None) -> Instance:
        """Start a fake instance of a function and mark it ready."""
        key = ref(name)
        function = self._functions[key]
        instance_id = f"{key.name}-{next(self._ids)}"
        server = FakeInstance(key, instance_id, app if app is not None else self.app_factory(instance_id),
                              capacity=capacity if capacity is not None else function.spec.concurrency)
        instance = await server.start()
        self._servers.setdefault(key, []).append(server)
        self._ready.setdefault(key, []).append(instance)
        self._notify(key)
        return instance

    async def stop_instance(self, instance: Instance, *, unready: bool = True) -> None:
        """Stop an instance's server; with `unready=False` it stays listed as ready (a crash not yet noticed)."""
        servers = self._servers.get(instance.function, [])
        for server in list(servers):
            if server.instance == instance:
                servers.remove(server)
                await server.stop()
        if unready and instance in self._ready.get(instance.function, []):
            self._ready[instance.function].remove(instance)
            self._notify(instance.function)

    def mark_ready(self, instance: Instance) -> None:
        """List an instance as ready without starting anything (e.g. an address nobody listens on)."""
        self._ready.setdefault(instance.function, []).append(instance)
        self._notify(instance.function)

    def _notify(self, key: FunctionRef) -> None:
        for listener in self._listeners:
            listener(key)

    async def _converge(self, key: FunctionRef) -> None:
        if self.scale_gate is not None:
            await self.scale_gate.wait()
        while len(self._servers.get(key, [])) < self._desired.get(key, 0):
            await self.add_instance(key)
        while len(self._servers.get(key, [])) > self._desired.get(key, 0):
            server = self._servers[key][-1]
            assert server.instance is not None
            await self.stop_instance(server.instance)


class RunningGateway:
    """A gateway served on 127.0.0.1 with a client session to call it."""

    def __init__(self, gateway: Any, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.runner = runner
        self.session = session
        host, port = runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        self.port = port

    def url(self, path: str) -> yarl.URL:
        # encoded=True: the path goes out byte for byte, as a test wrote it.
        return yarl.URL(self.base + path, encoded=True)

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        async with self.session.request(method, self.url(path), **kwargs) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return response.status, data, response.headers


@contextlib.asynccontextmanager
async def running_gateway(backend: FakeBackend, **gateway_kwargs: Any) -> AsyncIterator[RunningGateway]:
    from kfn_gateway.server import Gateway, serve

    gateway = Gateway(backend, **gateway_kwargs)
    runner = await serve(gateway, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            yield RunningGateway(gateway, runner, session)
    finally:
        await runner.cleanup()


async def eventually(condition: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll `condition` until true; fails the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class ControlledApps:
    """An `app_factory` whose instances tests can hold: a request to /hold/{key} waits until
    `release(key)`; any other path answers at once with {"instance", "path"}. Every arrival is
    recorded in order, and the most requests any one instance ever served at once is kept.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []      # (instance id, path with query)
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        self.finished: list[tuple[str, str]] = []
        self.cancelled: list[tuple[str, str]] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, key: str) -> asyncio.Event:
        return self._gates.setdefault(key, asyncio.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()

    def held(self, instance_id: str | None = None) -> int:
        if instance_id is None:
            return sum(self.active.values())
        return self.active.get(instance_id, 0)

    def __call__(self, instance_id: str) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            entry = (instance_id, request.raw_path)
            self.arrivals.append(entry)
            self.active[instance_id] = self.active.get(instance_id, 0) + 1
            self.max_active[instance_id] = max(self.max_active.get(instance_id, 0), self.active[instance_id])
            try:
                if request.path.startswith("/hold/"):
                    await self.gate(request.path[len("/hold/"):]).wait()
                self.finished.append(entry)
                return web.json_response({"instance": instance_id, "path": request.raw_path})
            except asyncio.CancelledError:
                self.cancelled.append(entry)
                raise
            finally:
                self.active[instance_id] -= 1

        return app_of(handle)
