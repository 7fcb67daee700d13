"""The gateway's HTTP server: routes, lifecycle and the `serve` helper.

    ANY /function/{name}[/{path}]    invoke a function through an API Gateway HTTP API event
    ANY (Host in spec.http.hosts)    the same, with the function at the root of that host
    ANY /async-function/{name}[/{path}]  the same event stored as an asynchronous invocation: 202
                                     {"requestId": ...} once stored; X-Callback-Url gets the result
    GET /system/functions[/{name}]   functions with replicas and traffic (OpenFaaS-style)
    GET /system/logs/{name}          instance output: ?tail=N (default 100), &follow=1 to stream
    GET /system/async/{name}         the async queue and dead letters (?limit=N, default 100)
    POST /system/async/{name}/replay dead letters stored again (all, or {"ids": [...]})
    GET /healthz                     the gateway itself is up
    GET /metrics                     Prometheus metrics of this gateway

`serve_health` serves GET /healthz alone on a port of its own, outside the connection cap: the
kubelet's liveness probe (`kfn gateway --health-port`), answered while clients hold every
connection the cap allows.

{name} is NAME (in the gateway's default namespace) or NAME.NAMESPACE, as in OpenFaaS.

With `system_auth`, every /system/* path needs an admin key; a function whose spec.http.auth is
`key` needs a key of its namespace (`kfn_gateway.auth`, SECURITY.md). Clients get bounded time
for each request's head, body and the idle time between requests (`kfn_gateway.connections`).

An HTTP request to a function becomes an event (`kfn_gateway.apigateway`), the event goes to a
free slot of an instance (`kfn_gateway.routing`, `kfn_gateway.invoking`), and the function's
result becomes the response. What the gateway answers itself, when no function answered, is JSON
{"error": ..., "function": ...}; what API Gateway would answer for a function's failure has its
shape, {"message": ...}.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import HttpVersion, HttpVersion11, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kfn.core import naming
from kfn.core.asyncpolicy import iso_millis, json_value
from kfn.core.functions import CorsSpec, Function, FunctionRef
from kfn.core.instances import Instance, InstanceBackend, Invocation, InvocationResult
from kfn.core.keys import ApiKey, KeySource, StaticKeys
from kfn.core.scaling import MetricsSource
from kfn.events.store import AcceptOptions, EventStore, StoreUnavailable
from kfn_gateway import apigateway, cors, lambda_api
from kfn_gateway.auth import AuthError, Scope, authenticate, credential_headers, key_headers
from kfn_gateway.connections import GuardedAppRunner, close_after, read_body
from kfn_gateway.errors import GatewayError
from kfn_gateway.invoking import InstanceClient, InstanceFailed, InstanceTimeout, NotSent
from kfn_gateway.metrics import FunctionStats, GatewayMetrics, LoadSource, StateCollector
from kfn_gateway.routing import Route, StartFailed, Unavailable
from kfn_gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

# How often an invocation no instance ran is tried on another one.
MAX_ATTEMPTS = 3
# Status recorded for a request whose client went away before it was answered (nginx's choice).
CLIENT_CLOSED = 499
# Refs by the name in a URL, so the hot path parses each name once (bounded: names come from clients).
_REF_CACHE_SIZE = 4096
# Pause before sending an invocation a full instance turned away to the next try (times the attempt).
REJECTED_BACKOFF = 0.02
SYSTEM_PREFIX = "/system/"
# An id a client gives its asynchronous invocation (X-Call-Id), so that a retry stores it once.
_CALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_CALLBACK_URL = 2048
MAX_DEAD_LETTERS = 1000       # listed in one answer at most
MAX_REPLAY_BODY = 1024 * 1024


class Gateway:
    """Routes invocations to a backend's instances; see the module docstring for the URLs."""

    def __init__(self, backend: InstanceBackend, *, settings: GatewaySettings = GatewaySettings(),
                 registry: CollectorRegistry | None = None, keys: KeySource | None = None,
                 events: EventStore | None = None,
                 details: Callable[[FunctionRef], Mapping[str, Any]] | None = None) -> None:
        self.backend = backend
        self.settings = settings
        # More fields for /system/functions from the platform (kfn local: the Python that really runs).
        self._details = details
        # Where asynchronous invocations are stored (kfn.events); None: this gateway takes none (503).
        self.events = events
        self.keys: KeySource = keys if keys is not None else StaticKeys()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = GatewayMetrics(self.registry)
        self._routes: dict[FunctionRef, Route] = {}
        self._refs: dict[str, FunctionRef | None] = {}
        self._hosts: dict[str, FunctionRef] | None = None
        self._closing = asyncio.Event()
        self._draining = False
        self._client = InstanceClient()
        self._listening = False
        self._prefix_length = len(naming.FUNCTION_PATH_PREFIX)
        self._source = LoadSource(backend, self._routes.get)
        self.registry.register(StateCollector(backend, lambda: list(self._routes.values())))

    # -- lifecycle -------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """An application with every route of the gateway; it starts and closes the gateway with it."""
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[self._hosts_middleware, self._system_middleware])
        prefix = naming.FUNCTION_PATH_PREFIX
        expect = self.expect_continue
        app.router.add_route("*", prefix + "{name}", self._invoke_path, expect_handler=expect)
        app.router.add_route("*", prefix + "{name}/{path:.*}", self._invoke_path, expect_handler=expect)
        async_prefix = naming.ASYNC_FUNCTION_PATH_PREFIX
        app.router.add_route("*", async_prefix + "{name}", self._invoke_async_path, expect_handler=expect)
        app.router.add_route("*", async_prefix + "{name}/{path:.*}", self._invoke_async_path, expect_handler=expect)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH, self._list_functions)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH + "/{name}", self._get_function)
        app.router.add_get(naming.SYSTEM_LOGS_PATH + "/{name}", self._logs)
        app.router.add_get(naming.SYSTEM_ASYNC_PATH + "/{name}", self._async_queue)
        app.router.add_post(f"{naming.SYSTEM_ASYNC_PATH}/{{name}}/{naming.SYSTEM_ASYNC_REPLAY}", self._async_replay)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._scrape)
        lambda_api.add_routes(app, self)   # POST /2015-03-31/functions/{name}/invocations
        # Checked after every other resource, whatever the order they were added in.
        app.router.add_route("*", "/{tail:.*}", self._not_found, expect_handler=expect)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.close()

        async def on_shutdown(_: web.Application) -> None:
            # Log followers would otherwise hold the server's graceful shutdown for its whole timeout.
            self._closing.set()

        async def on_response_prepare(_: web.Request, response: web.StreamResponse) -> None:
            if self._draining:
                # Said in the answer, so the client does not send its next request on this connection.
                response.headers["Connection"] = "close"
                response.force_close()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        app.on_response_prepare.append(on_response_prepare)
        app.on_cleanup.append(on_cleanup)
        return app

    def make_health_app(self) -> web.Application:
        """An application serving GET /healthz alone, with the answer of the gateway's own app
        (503 once draining); it neither starts nor closes the gateway."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> None:
        """Open the connection pool to instances and follow the backend's changes; idempotent."""
        await self._client.start()
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
        await self._client.close()

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
        cache = self._refs
        if text in cache:
            return cache[text]
        try:
            ref: FunctionRef | None = FunctionRef.parse(text, default_namespace=self.settings.default_namespace)
        except ValueError:
            ref = None
        if len(cache) >= _REF_CACHE_SIZE:
            cache.clear()
        cache[text] = ref
        return ref

    def route(self, ref: FunctionRef) -> Route:
        """The function's route (its instances, queue and metrics), made on first use."""
        route = self._routes.get(ref)
        if route is None:
            route = self._routes[ref] = Route(ref, self.backend, self._metrics.for_function(ref),
                                              queue_limit=self.settings.queue_limit)
        return route

    def _on_change(self, ref: FunctionRef) -> None:
        self._hosts = None   # rebuilt on the next request
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
                self._client.close_idle(instance)
        if route.metrics.held == 0 and self.backend.function(ref) is None:
            del self._routes[ref]

    # -- asynchronous invocations ----------------------------------------------------------------

    async def accept_event(self, function: Function, payload: bytes, *, invocation_id: str,
                           callback_url: str | None = None, caller_chosen: bool = False) -> str:
        """Store an asynchronous invocation of `function` durably; returns its invocation id.

        Returns only once the event store holds the event (the caller may then answer 202), as
        long as the store takes (JetStream: its publish timeout and retries). An id already
        stored is accepted again without storing anything new, with the same answer, so a caller
        retrying after a failure or a timeout gets one event. Counts nothing: the caller answers.
        `caller_chosen`: the caller named the id (X-Call-Id), de-duplicated apart from kfn's own.

        Raises GatewayError: 503 when this gateway has no event store or the store did not
        confirm (the event may or may not be stored: retry with the same id), 413 when the
        payload is over `settings.max_async_payload_bytes`.
        """
        store = self.events
        if store is None:
            raise GatewayError(503, "this gateway takes no asynchronous invocations: it has no event store "
                                    "(kfn gateway: --nats-url or $KFN_NATS_URL)")
        limit = self.settings.max_async_payload_bytes
        if len(payload) > limit:
            raise GatewayError(413, f"the event is {len(payload)} bytes; an asynchronous invocation's limit is {limit}")
        options = AcceptOptions(callback_url=callback_url, caller_chosen=caller_chosen)
        try:
            accepted = await store.accept(function.ref, payload, invocation_id, options)
        except StoreUnavailable as e:
            raise GatewayError(503, f"could not store the event: {e}", retry_after=self.settings.retry_after) from None
        return accepted.invocation_id

    # -- what every request goes through -------------------------------------------------------

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a body the gateway would refuse is refused before it is sent
        (413 instead of 100 Continue); otherwise the client is told to go on."""
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return _error(417, f"cannot meet the expectation {expect[:100]!r}", "", close=True, now=True)
        length = request.content_length
        limit = self._body_limit(request)
        if length is not None and length > limit:
            return _error(413, f"the request body is {length} bytes; the limit is {limit}", "", close=True, now=True)
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0   # the answer proper has not started
        return None

    def _body_limit(self, request: web.BaseRequest) -> int:
        if request.path.startswith(naming.ASYNC_FUNCTION_PATH_PREFIX):
            return self.settings.max_async_payload_bytes
        return self.settings.max_body_bytes

    def authorize(self, request: web.BaseRequest, scope: Scope, *, body: bytes | None = None) -> ApiKey | web.Response:
        """The key `request` presents for `scope`, or the 401/403 answer to give instead.

        The Invoke API (and any route needing a key) calls this; `body` lets it check an AWS
        Signature V4, which signs the body.
        """
        try:
            return authenticate(request, scope, self.keys.keys(), body=body)
        except AuthError as e:
            logger.debug("refused %s %s from %s: %s", request.method, request.path, request.remote, e.reason)
            return e.response()

    @web.middleware
    async def _system_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """/system/* needs an admin key when the gateway is configured so."""
        if self.settings.system_auth and (request.path.startswith(SYSTEM_PREFIX) or request.path == "/system"):
            outcome = self.authorize(request, Scope.system())
            if isinstance(outcome, web.Response):
                return outcome
        return await handler(request)

    @web.middleware
    async def _hosts_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request to a host in some function's spec.http.hosts is that function's, whatever its path."""
        if self._hosts is None:
            self._hosts = self._host_index()
        if self._hosts:
            function = self._by_host(request.host or "")
            if function is not None:
                raw = _origin_form(request.raw_path)
                path, _, query = raw.partition("?")
                return await self.invoke_http(request, function, label=function.name, path=path or "/",
                                              query=query, prefix="")
        return await handler(request)

    def _host_index(self) -> dict[str, FunctionRef]:
        """Host (or *.domain) → the function served at its root; rebuilt after the backend changes."""
        index: dict[str, FunctionRef] = {}
        for function in sorted(self.backend.functions(), key=_claim_order):
            for host in function.spec.http.hosts:
                index.setdefault(host, function.ref)   # two claiming one host: the first claim wins
        return index

    def _by_host(self, host_header: str) -> Function | None:
        """The function served at the root of a Host header's name (spec.http.hosts), if one is."""
        assert self._hosts is not None
        host = host_header.lower()
        if host.startswith("["):
            return None   # an IP literal names no function
        host = host.rsplit(":", 1)[0] if ":" in host else host
        if host.rpartition(".")[2].isdigit():
            return None   # nor an IPv4 address: what is sent to the gateway's address stays its own
        ref = self._hosts.get(host)
        if ref is None and "." in host:
            ref = self._hosts.get("*." + host.split(".", 1)[1])
        return self.backend.function(ref) if ref is not None else None

    async def _invoke_path(self, request: web.Request) -> web.StreamResponse:
        """/function/NAME[.NAMESPACE][/path]: the function sees the path below its mount."""
        name = request.match_info["name"]
        ref = self.ref(name)
        function = self.backend.function(ref) if ref is not None else None
        if function is None:
            return _error(404, f"no function named {name!r}", name)
        path, query = _below_mount(request, naming.FUNCTION_PATH_PREFIX)
        return await self.invoke_http(request, function, label=name, path=path, query=query,
                                      prefix=naming.FUNCTION_PATH_PREFIX + name)

    async def _invoke_async_path(self, request: web.Request) -> web.StreamResponse:
        """/async-function/NAME[.NAMESPACE][/path]: the event /function/ would send, stored as an
        asynchronous invocation; 202 {"requestId": ID} (also in X-Call-Id) once it is durable.

        The caller may name the invocation (X-Call-Id: a retry with the same id stores one event)
        and ask for the result (X-Callback-Url: POSTed the function's answer when it is known, as
        OpenFaaS's queue worker does). Runs as long as the store takes to confirm.
        """
        name = request.match_info["name"]
        ref = self.ref(name)
        function = self.backend.function(ref) if ref is not None else None
        if function is None:
            return _error(404, f"no function named {name!r}", name)
        route = self.route(function.ref)
        strip = self._credentials(request, function)
        if isinstance(strip, web.Response):
            return self._count(route, strip)
        headers_in = request.headers
        callback_url = headers_in.get("X-Callback-Url")
        if callback_url is not None and not _is_http_url(callback_url):
            return self._count(route, _error(400, "X-Callback-Url must be an http:// or https:// URL", name))
        invocation_id = headers_in.get("X-Call-Id") or apigateway.invocation_id()
        if not _CALL_ID.fullmatch(invocation_id):
            return self._count(route, _error(
                400, "X-Call-Id must be 1-128 letters, digits and . _ : - (starting with a letter or digit)", name))
        try:
            body = await read_body(request, self.settings.max_async_payload_bytes, self.settings.body_timeout)
        except GatewayError as e:
            return self._count(route, _error(e.status, str(e), name, close=True, now=e.status in (400, 408)))
        path, query = _below_mount(request, naming.ASYNC_FUNCTION_PATH_PREFIX)
        try:
            event, _ = self._http_event(request, function, body, path=path, query=query,
                                        prefix=naming.ASYNC_FUNCTION_PATH_PREFIX + name, strip=strip)
        except apigateway.NoRoute:
            return self._count(route, _not_found())
        try:
            stored = await self.accept_event(function, orjson.dumps(event), invocation_id=invocation_id,
                                             callback_url=callback_url, caller_chosen="X-Call-Id" in headers_in)
        except GatewayError as e:
            return self._count(route, _error(e.status, str(e), name, retry_after=e.retry_after))
        return self._count(route, web.json_response({"requestId": stored}, status=202,
                                                    headers={"X-Call-Id": stored, "X-Kfn-Request-Id": stored}))

    def _credentials(self, request: web.Request, function: Function) -> frozenset[str] | web.Response:
        """For a key-protected function (spec.http.auth key): the 401/403 answer, or the headers
        that carried the key (kept from the function). For a public function, the headers that
        carry a kfn key anyway (`key_headers`): no function sees a caller's key."""
        if function.spec.http.auth.type != "key":
            if not credential_headers(request.headers):
                return frozenset()   # the common case costs no key lookup
            return key_headers(request.headers, self.keys.keys())
        outcome = self.authorize(request, Scope.of_namespace(function.namespace))
        if isinstance(outcome, web.Response):
            return outcome
        return frozenset(credential_headers(request.headers))

    async def invoke_http(self, request: web.Request, function: Function, *, label: str, path: str, query: str,
                          prefix: str) -> web.StreamResponse:
        """Answer one HTTP request with the function's result; runs as long as the invocation.

        Never raises for a failure of an instance or of the function: those answer with an error
        response. Only the client going away ends it early (cancelled, or its answer dropped).
        A request counts as held (the load the autoscaler sees) from when its body has arrived.
        """
        route = self.route(function.ref)
        http = function.spec.http
        headers_in = request.headers
        if http.cors is not None and cors.is_preflight(request.method, headers_in):
            # Browsers send preflights without credentials; API Gateway answers them unauthenticated.
            return self._count(route, web.Response(status=204, headers=cors.preflight(http.cors, headers_in)))
        strip = self._credentials(request, function)   # a key is never the function's to see
        if isinstance(strip, web.Response):
            return self._count(route, _with_cors(strip, http.cors, headers_in))
        try:
            body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout)
        except GatewayError as e:
            refused = _error(e.status, str(e), label, close=True, now=e.status in (400, 408))
            return self._count(route, _with_cors(refused, http.cors, headers_in))
        return await self.held(
            route, self._answer(request, function, route, body, label=label, path=path, query=query, prefix=prefix,
                                strip=strip),
            failed=lambda: _error(500, f"the gateway failed to invoke function {label!r}", label))

    async def held(self, route: Route, answer: Awaitable[web.StreamResponse], *,
                   failed: Callable[[], web.StreamResponse]) -> web.StreamResponse:
        """`answer`, awaited as a request held for `route`'s function: counted in its metrics (the
        load the autoscaler sees) from now until answered. Runs as long as `answer`. A client that
        went away counts as 499 (cancelled: re-raised); any other failure of the gateway itself is
        logged and answered `failed()`, so one broken request never takes down another.
        """
        metrics = route.metrics
        started = metrics.arrive()
        status = 500
        try:
            response = await answer
            status = response.status
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except ConnectionError:
            status = CLIENT_CLOSED
            return web.Response(status=CLIENT_CLOSED)
        except Exception:
            logger.exception("invoking function %s failed", route.ref)
            return failed()
        finally:
            metrics.finish(status, started)

    @staticmethod
    def _count(route: Route, response: web.Response) -> web.Response:
        """Count an answer the gateway gave without holding the request for an instance."""
        route.metrics.finish(response.status, route.metrics.arrive())
        return response

    def _http_event(self, request: web.Request, function: Function, body: bytes, *, path: str, query: str,
                    prefix: str, strip: frozenset[str]) -> tuple[dict[str, Any], str]:
        """The API Gateway event of an HTTP request to `function` (the path below its mount, the
        headers in `strip` left out), and the API request id it carries; for /function/ and
        /async-function/ alike."""
        headers_in = request.headers
        source_ip, forwarded_for = apigateway.trusted_client(
            request.remote or "", headers_in.getall("X-Forwarded-For", ()), trusted_hops=self.settings.trusted_hops)
        host = request.host or ""
        _, colon, port = host.rpartition(":")
        headers = headers_in.items()
        if strip:
            headers = [(name, value) for name, value in headers if name.lower() not in strip]  # type: ignore[assignment]
        http_request = apigateway.HttpRequest(
            method=request.method, path=path, raw_query=query, headers=headers,
            body=body, source_ip=source_ip, forwarded_for=forwarded_for, scheme=request.scheme,
            port=int(port) if colon and port.isdigit() else (443 if request.scheme == "https" else 80),
            protocol=_protocol(request.version),
            prefix=prefix)
        api_request_id = apigateway.request_id()
        event = apigateway.event(http_request, payload_format=function.spec.http.payloadFormat,
                                 api_request_id=api_request_id, routes=function.spec.http.route_table)
        return event, api_request_id

    async def _answer(self, request: web.Request, function: Function, route: Route, body: bytes, *, label: str,
                      path: str, query: str, prefix: str, strip: frozenset[str]) -> web.StreamResponse:
        http = function.spec.http
        headers_in = request.headers
        try:
            event, api_request_id = self._http_event(request, function, body, path=path, query=query, prefix=prefix,
                                                     strip=strip)
        except apigateway.NoRoute:
            return _with_cors(_not_found(), http.cors, headers_in)
        invocation = Invocation(payload=orjson.dumps(event), request_id=apigateway.invocation_id(),
                                trace_id=event["headers"].get("x-amzn-trace-id"))
        try:
            result = await self.dispatch(function, route, invocation)
        except GatewayError as e:
            response = _error(e.status, str(e), label, retry_after=e.retry_after, request_id=invocation.request_id)
            response.headers["X-Kfn-Request-Id"] = invocation.request_id
            return _with_cors(response, http.cors, headers_in)
        if result.function_error:
            if result.error_type == "Sandbox.Timedout":
                out = apigateway.timed_out(api_request_id)
            else:
                out = apigateway.internal_error(api_request_id)
            headers_out = [*out.headers, ("X-Amz-Function-Error", result.function_error)]
            if result.error_type:
                headers_out.append(("X-Kfn-Error-Type", result.error_type))
            logger.info("function %s failed (%s): %s", function.ref, result.error_type, result.payload[:500])
        else:
            try:
                out = apigateway.response(result.payload, payload_format=http.payloadFormat,
                                          api_request_id=api_request_id)
            except apigateway.InvalidResult as e:
                logger.warning("function %s returned a result API Gateway would reject: %s", function.ref, e)
                out = apigateway.internal_error(api_request_id)
                headers_out = [*out.headers, ("X-Kfn-Error-Type", "Runtime.InvalidResponse")]
            else:
                headers_out = out.headers
        headers_out.append(("X-Kfn-Request-Id", invocation.request_id))
        if http.cors is not None:
            headers_out = cors.apply(http.cors, headers_in, headers_out)
        return web.Response(status=out.status, body=out.body or None, headers=CIMultiDict(headers_out))

    async def invoke_event(self, function: Function, invocation: Invocation) -> InvocationResult:
        """Run an invocation no HTTP request carries (a stored asynchronous event) as an HTTP one
        runs: through `dispatch` (a slot, scale from zero, the queue), counted in the function's
        metrics, so its load is what the autoscaler sees. Runs as long as `dispatch`; raises its
        GatewayError when no function answered."""
        route = self.route(function.ref)
        metrics = route.metrics
        started = metrics.arrive()
        status = 500
        try:
            result = await self.dispatch(function, route, invocation)
            if result.function_error is None:
                status = 200
            else:
                status = 504 if result.error_type == "Sandbox.Timedout" else 500
            return result
        except GatewayError as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            metrics.finish(status, started)

    async def dispatch(self, function: Function, route: Route, invocation: Invocation) -> InvocationResult:
        """Run one invocation on some instance of `function`: a slot, the instance, the result.

        Waits for a slot (a cold start included) at most the queue timeout, and for the instance
        at most the function's timeout plus a margin. An invocation no instance ran goes to
        another (at most MAX_ATTEMPTS in all). Raises GatewayError when no function answered.
        """
        settings = self.settings
        timeout = function.spec.timeout + settings.upstream_timeout_margin
        attempts = 0
        last_rejection = ""
        while True:
            try:
                instance = await route.acquire(timeout=settings.queue_timeout)
            except StartFailed as e:
                init_error = e.problem.init_error
                if init_error is None:   # the platform's failure: its public reason, nothing ran
                    raise GatewayError(e.status, str(e), retry_after=settings.retry_after, nothing_ran=True) from None
                # The function's own init failed: that is its error, as Lambda answers an invocation
                # whose environment could not initialize (its output stays in its logs).
                return InvocationResult(payload=init_error.payload(invocation.request_id), function_error="Unhandled",
                                        error_type=init_error.error_type)
            except Unavailable as e:
                raise GatewayError(e.status, str(e), retry_after=settings.retry_after if e.retry else None,
                                   nothing_ran=True) from None
            try:
                result = await self._call(route, instance, invocation, timeout)
            except NotSent as e:
                self._report(route, instance, str(e))
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    raise GatewayError(502, str(e), nothing_ran=True) from None
                continue
            except InstanceTimeout as e:
                raise GatewayError(504, f"function {str(route.ref)!r} did not answer within {timeout:g}s") from e
            except InstanceFailed as e:
                if e.instance_failed:
                    self._report(route, instance, str(e))
                raise GatewayError(502, str(e)) from None
            if result.rejected is None:
                return result
            # Nothing ran: try again. A draining or loading instance is skipped from now on, without
            # reporting a failure (its backend stops it, and it finishes what it has); a full one
            # stays in rotation (several gateways share it) and is given a moment to free a slot.
            last_rejection = result.rejection or result.rejected
            if result.rejected != "concurrency":
                route.drop(instance)
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                status = 429 if result.rejected == "concurrency" else 503
                raise GatewayError(status, f"instance {instance.id} turned the invocation away ({last_rejection})",
                                   retry_after=settings.retry_after, nothing_ran=True)
            if result.rejected == "concurrency":
                await asyncio.sleep(REJECTED_BACKOFF * attempts)

    async def _call(self, route: Route, instance: Instance, invocation: Invocation, timeout: float) -> InvocationResult:
        """`invocation` on `instance`, holding its slot until the instance is done with it.

        If the caller goes away first (the client disconnected), the instance still runs the
        invocation to its end (as Lambda does), so the slot is given back only then: another
        request must not be sent to an instance that is still busy with this one.
        """
        call = asyncio.ensure_future(self._client.invoke(instance, invocation, timeout=timeout))
        try:
            result = await asyncio.shield(call)
        except asyncio.CancelledError:
            if call.done():
                route.release(instance)
            else:
                call.add_done_callback(lambda done: _release_when_done(done, route, instance))
            raise
        except BaseException:
            route.release(instance)
            raise
        route.release(instance)
        return result

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
            "error": str(problem) if (problem := self.backend.problem(ref)) is not None else None,   # admin's view
            "url": f"{request.scheme}://{request.host}{path}",
            **(self._details(ref) if self._details is not None else {}),
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

    async def _async_queue(self, request: web.Request) -> web.Response:
        """A function's async queue (events stored, in flight, the oldest's age) and its dead
        letters, oldest first; as long as the store takes to answer."""
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        raw_limit = request.query.get("limit", "100")
        try:
            limit = int(raw_limit)
            if not 1 <= limit <= MAX_DEAD_LETTERS:
                raise ValueError
        except ValueError:
            return _error(400, f"limit must be an integer from 1 to {MAX_DEAD_LETTERS} (got {raw_limit[:50]!r})",
                          function.name)
        store = self._store_or_503(function)
        if isinstance(store, web.Response):
            return store
        ref = function.ref
        try:
            stats = (await store.stats([ref])).get(ref)
            letters = await store.dead_letters(ref, limit=limit)
        except StoreUnavailable as e:
            return _error(503, f"could not read the event store: {e}", function.name,
                          retry_after=self.settings.retry_after)
        now = time.time()
        queue = {"depth": 0, "inFlight": 0, "oldestAgeSeconds": 0.0}
        if stats is not None:
            queue = {"depth": stats.depth, "inFlight": stats.in_flight,
                     "oldestAgeSeconds": round(stats.oldest_age(now), 3)}
        return web.json_response({
            "name": ref.name, "namespace": ref.namespace, "queue": queue,
            "deadLetters": [{
                "id": letter.id, "condition": letter.condition, "attempts": letter.attempts, "error": letter.error,
                "acceptedAt": iso_millis(letter.accepted_at), "failedAt": iso_millis(letter.failed_at),
                "payload": json_value(letter.payload),
                "response": None if letter.response is None else json_value(letter.response),
            } for letter in letters],
        })

    async def _async_replay(self, request: web.Request) -> web.Response:
        """Store a function's dead letters again (all, or those of {"ids": [...]}) as fresh events;
        answers the ids replayed. An id that is not a dead letter of the function is skipped."""
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        try:
            raw = await read_body(request, MAX_REPLAY_BODY, self.settings.body_timeout)
        except GatewayError as e:
            return _error(e.status, str(e), function.name)
        ids: list[str] | None = None
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _error(400, 'the body must be JSON: {"ids": ["ID", ...]} (or empty for every dead letter)',
                              function.name)
            wanted = body.get("ids") if isinstance(body, dict) else None
            if not isinstance(wanted, list) or not all(isinstance(i, str) for i in wanted):
                return _error(400, '"ids" must be a list of invocation ids', function.name)
            ids = wanted
        store = self._store_or_503(function)
        if isinstance(store, web.Response):
            return store
        try:
            replayed = await store.replay(function.ref, ids)
        except StoreUnavailable as e:
            return _error(503, f"could not replay: {e}", function.name, retry_after=self.settings.retry_after)
        return web.json_response({"replayed": replayed})

    def _store_or_503(self, function: Function) -> EventStore | web.Response:
        if self.events is None:
            return _error(503, "this gateway has no event store for asynchronous invocations "
                               "(kfn gateway: --nats-url or $KFN_NATS_URL)", function.name)
        return self.events

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def _scrape(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        known = ("/healthz", "/metrics", naming.SYSTEM_FUNCTIONS_PATH)
        if path in known or path.startswith((naming.SYSTEM_FUNCTIONS_PATH + "/", naming.SYSTEM_LOGS_PATH + "/",
                                             naming.SYSTEM_ASYNC_PATH + "/")):
            return web.json_response({"error": f"method {request.method} is not allowed on {path}"}, status=405)
        return web.json_response({"error": f"no route for {path}"}, status=404)


def _claim_order(function: Function) -> tuple[str, FunctionRef]:
    """Which of the functions claiming one host serves it, as the Gateway API resolves conflicting
    routes: the oldest (its Kubernetes creationTimestamp, RFC 3339 in UTC, which sorts by time),
    then the first by namespace and name (local mode has no timestamps). A function of another
    namespace claiming a host later takes nothing from the function that has it."""
    created = (function.metadata.model_extra or {}).get("creationTimestamp")
    return (str(created) if created else "", function.ref)


def _release_when_done(call: asyncio.Future[InvocationResult], route: Route, instance: Instance) -> None:
    if not call.cancelled():
        call.exception()   # retrieved: nobody waits for it any more
    route.release(instance)


def _below_mount(request: web.Request, prefix: str) -> tuple[str, str]:
    """The path below PREFIX{name} (at least "/") and the query of a request's raw target, cut by
    position: the name itself may have come percent-encoded."""
    raw = _origin_form(request.raw_path)
    start = len(prefix)
    end = min((i for i in (raw.find("/", start), raw.find("?", start)) if i >= 0), default=len(raw))
    path, _, query = raw[end:].partition("?")
    return path or "/", query


def _is_http_url(text: str) -> bool:
    if len(text) > MAX_CALLBACK_URL or any(c.isspace() for c in text):
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        # A name the lookup would refuse (an empty label, one over 63 characters) fails now, not
        # at delivery, where it could only be retried until it is given up.
        host = parts.hostname
        if host:
            host.encode("idna")
    except (ValueError, UnicodeError):
        return False
    return parts.scheme in ("http", "https") and bool(host)


def _origin_form(target: str) -> str:
    """The path and query of a request target: an absolute-form target (`GET http://host/p`, which
    proxies send and servers must accept) loses its scheme and authority."""
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isalpha():
        slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        rest = rest[slash:]
        return rest if rest.startswith("/") else "/" + rest
    return "/"   # the asterisk form (OPTIONS *) or nonsense


def _with_cors(response: web.Response, config: CorsSpec | None, request_headers: Mapping[str, str]) -> web.Response:
    """The gateway's own answer with the function's CORS headers, so a browser can read the error."""
    if config is not None:
        for name, value in cors.apply(config, request_headers, ()):
            response.headers.add(name, value)
    return response


def _not_found() -> web.Response:
    """API Gateway's answer to a request that none of the function's routes takes."""
    out = apigateway.not_found(apigateway.request_id())
    return web.Response(status=out.status, body=out.body, headers=CIMultiDict(out.headers))


def _protocol(version: HttpVersion) -> str:
    return "HTTP/1.1" if version == HttpVersion11 else f"HTTP/{version.major}.{version.minor}"


def _error(status: int, message: str, function: str, *, retry_after: int | None = None,
           close: bool = False, now: bool = False, request_id: str | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body: dict[str, str] = {"error": message}
    if function:
        body["function"] = function
    if request_id is not None:
        body["requestId"] = request_id   # the answer's id, for the caller to quote
    response = web.Response(status=status, headers=headers, content_type="application/json", text=json.dumps(body))
    if close:
        response.force_close()   # the client must not send its next request on this connection
    if now:
        close_after(response)   # and the rest of this one is not worth reading
    return response


def make_runner(gateway: Gateway, app: web.Application | None = None, **kwargs: Any) -> web.AppRunner:
    """A runner serving `app` (default: the gateway's own) with the gateway's connection limits;
    a client that disconnects cancels its request."""
    return GuardedAppRunner(app if app is not None else gateway.make_app(),
                            limits=gateway.settings.connection_limits(), handler_cancellation=True,
                            access_log=None, **kwargs)


async def serve(gateway: Gateway, *, host: str, port: int) -> web.AppRunner:
    """Serve `gateway` on host:port (0 picks a free port; see `runner.addresses`).

    Returns once listening; the caller must `await runner.cleanup()`, which also closes the
    gateway.
    """
    return await _listen(make_runner(gateway), host, port)


# The kubelet opens a connection per probe; one kept open longer is someone else's.
HEALTH_IDLE_TIMEOUT = 5.0


async def serve_health(gateway: Gateway, *, host: str, port: int) -> web.AppRunner:
    """Serve the gateway's GET /healthz alone on host:port (0 picks a free port), with no cap on
    connections: a liveness probe still answered when clients hold every connection that
    `max_connections` allows on the main port (which would otherwise get the replica restarted).

    Start it after `serve` and `await runner.cleanup()` it after the main runner's: it does not
    start or close the gateway. OSError if the port cannot be bound (nothing left listening)."""
    return await _listen(web.AppRunner(gateway.make_health_app(), keepalive_timeout=HEALTH_IDLE_TIMEOUT,
                                       access_log=None), host, port)


async def _listen(runner: web.AppRunner, host: str, port: int) -> web.AppRunner:
    """`runner` set up and listening on host:port; cleaned up again if it cannot listen."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
