"""The gateway's own API, as OpenFaaS's gateway has one:

    GET /system/functions[/{name}]   functions with replicas and traffic
    GET /system/logs/{name}          instance output: ?tail=N (default 100), &follow=1 to stream,
                                     &build=1 the latest build's output instead
    GET /system/async/{name}         the async queue and dead letters (?limit=N, default 100)
    POST /system/async/{name}/replay dead letters stored again (all, or {"ids": [...]})
    GET /healthz                     the gateway itself is up (503 once draining)
    GET /metrics                     Prometheus metrics of this gateway

With `system_auth`, every /system/* path needs an admin key (`auth_middleware`), except the
archive store's (`kfn_gateway.archives_api`), whose requests each carry a token of their own.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kfn.core import naming
from kfn.core.asyncpolicy import iso_millis, json_value
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import NoBuild
from kfn.core.keys import KeySource
from kfn.events.store import EventStore, StoreUnavailable
from kfn_gateway.archives_api import ROUTE_NAME as ARCHIVES_ROUTE
from kfn_gateway.auth import Scope, authorize
from kfn_gateway.connections import read_body
from kfn_gateway.dispatch import Dispatcher
from kfn_gateway.errors import REFUSED_STATUS, json_error
from kfn_gateway.outcomes import Refused

SYSTEM_PREFIX = "/system/"
MAX_DEAD_LETTERS = 1000       # listed in one answer at most
MAX_REPLAY_BODY = 1024 * 1024


class SystemApi:
    """/system/*, /healthz and /metrics over one dispatch core.

    `closing` is set when the server shuts down (log followers then end); `draining()` says
    whether the gateway is draining (its health check fails).
    """

    def __init__(self, dispatcher: Dispatcher, *, keys: KeySource, registry: CollectorRegistry,
                 closing: asyncio.Event, draining: Callable[[], bool],
                 details: Callable[[FunctionRef], Mapping[str, Any]] | None = None) -> None:
        self._dispatcher = dispatcher
        self._settings = dispatcher.settings
        self._keys = keys
        self._registry = registry
        self._closing = closing
        self._draining = draining
        # More fields for /system/functions from the platform (kfn local: the Python that really runs).
        self._details = details

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """/system/* needs an admin key (the gateway adds this middleware with `system_auth` only),
        except the archive routes: their tokens are their authentication."""
        if ((request.path.startswith(SYSTEM_PREFIX) or request.path == "/system")
                and request.match_info.route.name != ARCHIVES_ROUTE):
            outcome = authorize(request, Scope.system(), self._keys)
            if isinstance(outcome, web.Response):
                return outcome
        return await handler(request)

    def _function_or_404(self, request: web.Request) -> Function | web.Response:
        name = request.match_info["name"]
        function = self._dispatcher.function(name)
        return function if function is not None else json_error(404, f"no function named {name!r}", name)

    async def list_functions(self, request: web.Request) -> web.Response:
        items = [self._describe(function, request) for function in self._dispatcher.backend.functions()]
        items.sort(key=lambda item: (item["namespace"], item["name"]))
        return web.json_response(items)

    async def get_function(self, request: web.Request) -> web.Response:
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        return web.json_response(self._describe(function, request))

    def _describe(self, function: Function, request: web.Request) -> dict[str, Any]:
        ref = function.ref
        backend = self._dispatcher.backend
        stats = self._dispatcher.stats(ref)
        last_used = None
        if stats.last_used is not None:
            last_used = datetime.datetime.fromtimestamp(stats.last_used, datetime.UTC).isoformat().replace(
                "+00:00", "Z")
        path = naming.function_url_path(
            ref.name, None if ref.namespace == self._settings.default_namespace else ref.namespace)
        return {
            "name": ref.name,
            "namespace": ref.namespace,
            "runtime": function.spec.runtime,
            "image": function.spec.image,
            "replicas": backend.desired(ref),
            "availableReplicas": len(backend.ready(ref)),
            "invocationCount": stats.invocations,
            "lastUsed": last_used,
            "inFlight": stats.in_flight,
            "queued": stats.queued,
            "error": str(problem) if (problem := backend.problem(ref)) is not None else None,   # admin's view
            "url": f"{request.scheme}://{request.host}{path}",
            **(self._details(ref) if self._details is not None else {}),
        }

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """Recent instance output as text; with follow=1, streams new lines until the client leaves
        or the server shuts down (or the output ends: a build's). With build=1, the output of the
        function's latest build instead (404 if it has none)."""
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
        follow = _flag(request, "follow")
        async with contextlib.AsyncExitStack() as stack:
            try:
                lines = await stack.enter_async_context(self._dispatcher.backend.logs(
                    function.ref, tail=tail, follow=follow, build=_flag(request, "build")))
            except NoBuild:
                return json_error(404, f"{request.match_info['name']} has no build")
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

    async def async_queue(self, request: web.Request) -> web.Response:
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
            return json_error(400, f"limit must be an integer from 1 to {MAX_DEAD_LETTERS} (got {raw_limit[:50]!r})",
                              function.name)
        store = self._store_or_503(function)
        if isinstance(store, web.Response):
            return store
        ref = function.ref
        try:
            stats = (await store.stats([ref])).get(ref)
            letters = await store.dead_letters(ref, limit=limit)
        except StoreUnavailable as e:
            return json_error(503, f"could not read the event store: {e}", function.name,
                              retry_after=self._settings.retry_after)
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

    async def async_replay(self, request: web.Request) -> web.Response:
        """Store a function's dead letters again (all, or those of {"ids": [...]}) as fresh events;
        answers the ids replayed. An id that is not a dead letter of the function is skipped."""
        function = self._function_or_404(request)
        if isinstance(function, web.Response):
            return function
        try:
            raw = await read_body(request, MAX_REPLAY_BODY, self._settings.body_timeout)
        except Refused as e:
            return json_error(REFUSED_STATUS[e.refusal], str(e), function.name)
        ids: list[str] | None = None
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return json_error(400, 'the body must be JSON: {"ids": ["ID", ...]} (or empty for every dead letter)',
                                  function.name)
            wanted = body.get("ids") if isinstance(body, dict) else None
            if not isinstance(wanted, list) or not all(isinstance(i, str) for i in wanted):
                return json_error(400, '"ids" must be a list of invocation ids', function.name)
            ids = wanted
        store = self._store_or_503(function)
        if isinstance(store, web.Response):
            return store
        try:
            replayed = await store.replay(function.ref, ids)
        except StoreUnavailable as e:
            return json_error(503, f"could not replay: {e}", function.name, retry_after=self._settings.retry_after)
        return web.json_response({"replayed": replayed})

    def _store_or_503(self, function: Function) -> EventStore | web.Response:
        store = self._dispatcher.events
        if store is None:
            return json_error(503, "this gateway has no event store for asynchronous invocations "
                                   "(kfn gateway: --nats-url or $KFN_NATS_URL)", function.name)
        return store

    async def healthz(self, request: web.Request) -> web.Response:
        if self._draining():
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def scrape(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """What no route takes: 405 on a known path, else 404."""
        path = request.path
        known = ("/healthz", "/metrics", naming.SYSTEM_FUNCTIONS_PATH)
        if path in known or path.startswith((naming.SYSTEM_FUNCTIONS_PATH + "/", naming.SYSTEM_LOGS_PATH + "/",
                                             naming.SYSTEM_ASYNC_PATH + "/")):
            return web.json_response({"error": f"method {request.method} is not allowed on {path}"}, status=405)
        return web.json_response({"error": f"no route for {path}"}, status=404)


def _flag(request: web.Request, name: str) -> bool:
    """Whether the query sets the flag `name` (1, true or yes)."""
    return request.query.get(name, "").lower() in ("1", "true", "yes")
