"""The gateway's HTTP server: routes, lifecycle and the `serve` helper.

    ANY /function/{name}[/{path}]    invoke a function (the runtime sees "/" or "/{path}")
    GET /system/functions[/{name}]   functions with replicas and traffic (OpenFaaS-style)
    GET /system/logs/{name}          instance output: ?tail=N (default 100), &follow=1 to stream
    GET /healthz                     the gateway itself is up
    GET /metrics                     Prometheus metrics of this gateway

{name} is NAME (in the gateway's default namespace) or NAME.NAMESPACE, as in OpenFaaS.

Every answer the gateway makes up itself (errors included) is JSON: {"error": ..., "function": ...}.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kfn.core import naming
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, InstanceBackend
from kfn.core.scaling import MetricsSource
from kfn_gateway.metrics import FunctionStats, GatewayMetrics, LoadSource, StateCollector
from kfn_gateway.proxying import (
    BodyTooLarge,
    BodyUnreadable,
    NotSent,
    Proxy,
    Rejected,
    RequestBody,
    UpstreamFailed,
    UpstreamTimeout,
    upstream_path,
)
from kfn_gateway.routing import Route, Unavailable

logger = logging.getLogger(__name__)

# How often a request whose instance could not be reached is tried on another one.
MAX_ATTEMPTS = 3
# Status recorded for a request whose client went away before it was answered (nginx's choice).
CLIENT_CLOSED = 499


class _Aborted(Exception):
    """The answer was cut off after its headers went out; `status` is what metrics record."""

    def __init__(self, response: web.StreamResponse, status: int) -> None:
        super().__init__(status)
        self.response = response
        self.status = status


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 32 * 1024 * 1024
    queue_limit: int = 100          # per function: requests waiting for a free instance slot
    queue_timeout: float = 30.0     # seconds a request may wait for a slot / a cold start before 503
    retry_after: int = 1
    upstream_timeout_margin: float = 5.0  # added to spec.timeout, so the runtime's own 504 comes first
    default_namespace: str = naming.DEFAULT_NAMESPACE  # what /function/NAME means


class Gateway:
    """Routes invocations to a backend's instances; see the module docstring for the URLs."""

    def __init__(self, backend: InstanceBackend, *, settings: GatewaySettings = GatewaySettings(),
                 registry: CollectorRegistry | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = GatewayMetrics(self.registry)
        self._routes: dict[FunctionRef, Route] = {}
        self._closing = asyncio.Event()
        self._draining = False
        self._proxy = Proxy()
        self._listening = False
        self._prefix_length = len(naming.FUNCTION_PATH_PREFIX)
        self._source = LoadSource(backend, self._routes.get)
        self.registry.register(StateCollector(backend, lambda: list(self._routes.values())))

    # -- lifecycle -------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """An application with every route of the gateway; it starts and closes the gateway with it."""
        # The body limit is enforced while proxying (streamed bodies included); aiohttp's own
        # limit only guards request.read(), which the gateway does not use.
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1)
        prefix = naming.FUNCTION_PATH_PREFIX
        app.router.add_route("*", prefix + "{name}", self._invoke)
        app.router.add_route("*", prefix + "{name}/{path:.*}", self._invoke)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH, self._list_functions)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH + "/{name}", self._get_function)
        app.router.add_get(naming.SYSTEM_LOGS_PATH + "/{name}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._scrape)
        # Checked after every other resource, whatever the order they were added in.
        app.router.add_route("*", "/{tail:.*}", self._not_found)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.close()

        async def on_shutdown(_: web.Application) -> None:
            # Log followers would otherwise hold the server's graceful shutdown for its whole timeout.
            self._closing.set()

        async def on_response_prepare(_: web.Request, response: web.StreamResponse) -> None:
            if self._draining:
                response.force_close()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        app.on_response_prepare.append(on_response_prepare)
        app.on_cleanup.append(on_cleanup)
        return app

    async def start(self) -> None:
        """Open the connection pool to instances and follow the backend's changes; idempotent."""
        await self._proxy.start()
        if not self._listening:
            self.backend.add_listener(self._on_change)
            self._listening = True

    def drain(self) -> None:
        """Start shutting down gently: keep serving, but close each client connection after its
        answer (so clients reconnect, to another replica) and fail the health check."""
        self._draining = True

    async def close(self) -> None:
        """Turn waiting requests away and close connections to instances; returns at once."""
        for route in list(self._routes.values()):
            await route.close()
        await self._proxy.close()

    # -- what others read ------------------------------------------------------------------------

    @property
    def metrics_source(self) -> MetricsSource:
        """The autoscaler's view of this gateway's load, computed in-process."""
        return self._source

    def stats(self, ref: FunctionRef) -> FunctionStats:
        route = self._routes.get(ref)
        if route is None:
            return FunctionStats(invocations=0, last_used=None, in_flight=0, queued=0)
        metrics = route.metrics
        queued = route.queued
        return FunctionStats(invocations=metrics.invocations, last_used=metrics.last_used,
                             in_flight=metrics.held - queued, queued=queued)

    # -- invocations -----------------------------------------------------------------------------

    def ref(self, text: str) -> FunctionRef | None:
        """The function a URL names (NAME or NAME.NAMESPACE), or None if it cannot name one."""
        try:
            return FunctionRef.parse(text, default_namespace=self.settings.default_namespace)
        except ValueError:
            return None

    def _route(self, ref: FunctionRef) -> Route:
        route = self._routes.get(ref)
        if route is None:
            route = self._routes[ref] = Route(ref, self.backend, self._metrics.for_function(ref),
                                              queue_limit=self.settings.queue_limit)
        return route

    def _on_change(self, ref: FunctionRef) -> None:
        route = self._routes.get(ref)
        if route is None:
            return
        try:
            gone = route.refresh()
        except Exception:
            logger.exception("could not refresh instances of function %s", ref)
        else:
            for instance in gone:
                # Idle connections to an instance that is draining or gone would only go stale.
                self._proxy.close_idle(instance)
        if route.metrics.held == 0 and self.backend.function(ref) is None:
            del self._routes[ref]

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        """Answer one invocation; runs as long as the queueing and the instance take.

        Never raises for a failure of an instance or of the gateway: those answer JSON. Only
        the client going away ends it early (cancelled, or its answer dropped).
        """
        name = request.match_info["name"]
        ref = self.ref(name)
        function = self.backend.function(ref) if ref is not None else None
        if function is None:
            return _error(404, f"no function named {name!r}", name)
        route = self._route(function.ref)
        metrics = route.metrics
        started = metrics.arrive()
        status = 500
        try:
            response = await self._serve(request, function, route)
            status = response.status
            return response
        except _Aborted as e:
            status = e.status
            return e.response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except ConnectionError:
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client went away; aiohttp drops this answer quietly.
                status = CLIENT_CLOSED
                return web.Response(status=CLIENT_CLOSED)
            logger.exception("invoking function %s failed", name)
            return _error(500, f"the gateway failed to invoke function {name!r}", name)
        except Exception:
            logger.exception("invoking function %s failed", name)
            return _error(500, f"the gateway failed to invoke function {name!r}", name)
        finally:
            metrics.finish(status, started)

    async def _serve(self, request: web.Request, function: Function, route: Route) -> web.StreamResponse:
        settings = self.settings
        name = request.match_info["name"]  # as the caller wrote it, for the errors it gets
        try:
            body = await RequestBody.read(request, limit=settings.max_body_bytes)
        except BodyTooLarge as e:
            return _error(413, str(e), name)
        except (asyncio.IncompleteReadError, ConnectionError, aiohttp.ClientError, HttpProcessingError) as e:
            return _error(400, f"could not read the request body: {e}", name)
        path = upstream_path(request.raw_path, self._prefix_length)
        timeout = function.spec.timeout + settings.upstream_timeout_margin
        attempts = 0
        while True:
            try:
                instance = await route.acquire(timeout=settings.queue_timeout)
            except Unavailable as e:
                return _error(e.status, str(e), name, retry_after=settings.retry_after if e.retry else None)
            try:
                return await self._proxy.forward(request, instance, path, body, timeout=timeout)
            except Rejected as e:
                # Nothing ran: try again. A draining or loading instance is skipped from now on,
                # without reporting a failure (the backend stops a draining instance itself and
                # must not kill its in-flight requests); a full one stays in rotation.
                if e.unavailable:
                    route.drop(instance)
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    return _error(503 if e.unavailable else 429, str(e), name, retry_after=settings.retry_after)
            except NotSent as e:
                self._report(route, instance, str(e))
                attempts += 1
                if attempts >= MAX_ATTEMPTS or (body is not None and not body.resendable):
                    return _error(502, str(e), name)
                # Nothing reached the instance: try another one (or wait for one).
            except UpstreamTimeout as e:
                if e.response is not None:
                    logger.warning("function %s: %s; cut the client off", name, e)
                    raise _Aborted(e.response, 504) from None
                return _error(504, f"function {name!r} did not answer within {timeout:g}s", name)
            except UpstreamFailed as e:
                if e.instance_failed:
                    self._report(route, instance, str(e))
                if e.response is not None:
                    logger.warning("function %s: %s; cut the client off", name, e)
                    raise _Aborted(e.response, 502) from None
                return _error(502, str(e), name)
            except BodyTooLarge as e:
                return _error(413, str(e), name)
            except BodyUnreadable as e:
                return _error(400, str(e), name)
            finally:
                route.release(instance)

    def _report(self, route: Route, instance: Instance, error: str) -> None:
        route.drop(instance)
        try:
            self.backend.report_failure(instance, error=error)
        except Exception:
            logger.exception("reporting a failure of instance %s failed", instance.id)

    # -- system routes ---------------------------------------------------------------------------

    async def _list_functions(self, request: web.Request) -> web.Response:
        items = [self._describe(function, request) for function in self.backend.functions()]
        items.sort(key=lambda item: (item["namespace"], item["name"]))
        return web.json_response(items)

    def _function_or_404(self, request: web.Request) -> Function | web.Response:
        name = request.match_info["name"]
        ref = self.ref(name)
        function = self.backend.function(ref) if ref is not None else None
        if function is None:
            return _error(404, f"no function named {name!r}", name)
        return function

    async def _get_function(self, request: web.Request) -> web.Response:
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        return web.json_response(self._describe(function, request))

    def _describe(self, function: Function, request: web.Request) -> dict[str, Any]:
        ref = function.ref
        stats = self.stats(ref)
        last_used = None
        if stats.last_used is not None:
            last_used = datetime.datetime.fromtimestamp(stats.last_used, datetime.UTC).isoformat().replace(
                "+00:00", "Z")
        path = naming.function_url_path(
            ref.name, None if ref.namespace == self.settings.default_namespace else ref.namespace)
        return {
            "name": ref.name,
            "namespace": ref.namespace,
            "runtime": function.spec.runtime,
            "image": function.spec.image,
            "replicas": self.backend.desired(ref),
            "availableReplicas": len(self.backend.ready(ref)),
            "invocationCount": stats.invocations,
            "lastUsed": last_used,
            "inFlight": stats.in_flight,
            "queued": stats.queued,
            "error": self.backend.problem(ref),
            "url": f"{request.scheme}://{request.host}{path}",
        }

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        """Recent instance output as text; with follow=1, streams new lines until the client leaves."""
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        try:
            tail = int(request.query.get("tail", "100"))
            if tail < 0:
                raise ValueError
        except ValueError:
            return web.json_response({"error": f"tail must be a non-negative integer (got {request.query['tail']!r})"},
                                     status=400)
        follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
        async with self.backend.logs(function.ref, tail=tail, follow=follow) as lines:
            if not follow:
                text = "".join([line + "\n" async for line in lines])
                return web.Response(text=text, content_type="text/plain")
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                                   "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            await response.prepare(request)
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                iterator = aiter(lines)
                while True:
                    nxt = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({nxt, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        break
                    try:
                        line = nxt.result()
                    except StopAsyncIteration:
                        break
                    await response.write((line + "\n").encode())
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            finally:
                closing.cancel()
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def _scrape(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _not_found(self, request: web.Request) -> web.Response:
        path = request.path
        known = ("/healthz", "/metrics", naming.SYSTEM_FUNCTIONS_PATH)
        if path in known or path.startswith((naming.SYSTEM_FUNCTIONS_PATH + "/", naming.SYSTEM_LOGS_PATH + "/")):
            return web.json_response({"error": f"method {request.method} is not allowed on {path}"}, status=405)
        return web.json_response({"error": f"no route for {path}"}, status=404)


def _error(status: int, message: str, function: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps({"error": message, "function": function}))


async def serve(gateway: Gateway, *, host: str, port: int) -> web.AppRunner:
    """Serve `gateway` on host:port (0 picks a free port; see `runner.addresses`).

    Returns once listening; the caller must `await runner.cleanup()`, which also closes the
    gateway. A client that disconnects cancels its request, which frees its slot at once.
    """
    runner = web.AppRunner(gateway.make_app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
