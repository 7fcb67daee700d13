"""The gateway's one wiring module: its parts, every route, its lifecycle, and `serve`.

    ANY /function/{name}[/{path}]        `http_api`: a function behind a URL (API Gateway's event)
    ANY (Host in spec.http.hosts)        `http_api`: the same, the function at the host's root
    ANY /async-function/{name}[/{path}]  `http_api`: the same event, stored: 202 once durable
    POST /2015-03-31/functions/{name}/invocations   `lambda_api`: AWS Lambda's Invoke API
    GET /system/functions[/{name}], /system/logs/{name}, /system/async/{name},
    POST /system/async/{name}/replay     `system_api`: the gateway's own API (admin key with system_auth)
    PUT, GET, HEAD /system/archives/{namespace}/{key}   `archives_api`: build archives (a token each)
    GET /healthz, GET /metrics           `system_api`

Every front-end runs invocations through one `Dispatcher` (`kfn_gateway.dispatch`), which
answers typed outcomes (`kfn_gateway.outcomes`); each front maps them to its protocol. Clients
get bounded time for each request's head, body and the idle time between requests, and a bounded
number of connections (`kfn_gateway.connections`). `serve_health` serves GET /healthz alone on a
port of its own, outside the connection cap: the kubelet's liveness probe (`kfn gateway
--health-port`), answered while clients hold every connection the cap allows.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from kfn.archives.store import ArchiveStore
from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.instances import InstanceBackend
from kfn.core.keys import KeySource, StaticKeys
from kfn.core.scaling import MetricsSource
from kfn.events.store import EventStore
from kfn_gateway.archives_api import ARCHIVES_PATH, ROUTE_NAME, ArchivesApi
from kfn_gateway.connections import GuardedAppRunner
from kfn_gateway.dispatch import Dispatcher
from kfn_gateway.http_api import HttpApi
from kfn_gateway.lambda_api import LambdaApi
from kfn_gateway.metrics import FunctionStats, GatewayMetrics, StateCollector
from kfn_gateway.settings import GatewaySettings
from kfn_gateway.system_api import SystemApi


class Gateway:
    """The gateway's parts over one backend: the dispatch core and its three front-ends, and the
    archive store's routes (over `archives`, tokens signed with `archive_key`; without both, 404).

    `make_app()` is the application with every route; it starts the gateway with it and closes it
    after (the archive store is its owner's to close). `drain()` starts a gentle shutdown.
    """

    def __init__(self, backend: InstanceBackend, *, settings: GatewaySettings = GatewaySettings(),
                 registry: CollectorRegistry | None = None, keys: KeySource | None = None,
                 events: EventStore | None = None,
                 details: Callable[[FunctionRef], Mapping[str, Any]] | None = None,
                 archives: ArchiveStore | None = None, archive_key: bytes | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.keys: KeySource = keys if keys is not None else StaticKeys()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.dispatcher = Dispatcher(backend, settings, GatewayMetrics(self.registry), events=events)
        self.registry.register(StateCollector(backend, self.dispatcher.routes))
        self._closing = asyncio.Event()
        self._draining = False
        self.http = HttpApi(self.dispatcher, self.keys)
        self.lambda_api = LambdaApi(self.dispatcher, self.keys)
        self.system = SystemApi(self.dispatcher, keys=self.keys, registry=self.registry, closing=self._closing,
                                draining=lambda: self._draining, details=details)
        self.archives = ArchivesApi(archives, archive_key, settings)

    @property
    def events(self) -> EventStore | None:
        return self.dispatcher.events

    @property
    def metrics_source(self) -> MetricsSource:
        """The autoscaler's view of this gateway's load, computed in-process."""
        return self.dispatcher.metrics_source

    def stats(self, ref: FunctionRef) -> FunctionStats:
        """What this gateway has seen of a function (`Dispatcher.stats`)."""
        return self.dispatcher.stats(ref)

    def make_app(self) -> web.Application:
        """An application with every route of the gateway; it starts and closes the gateway with it."""
        http, system, invoke_api, archives = self.http, self.system, self.lambda_api, self.archives
        # Each middleware is a layer every request goes through: the admin key check only when asked for.
        middlewares = [http.hosts_middleware, *([system.auth_middleware] if self.settings.system_auth else [])]
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=middlewares)
        add, expect = app.router.add_route, http.expect_continue
        for prefix, handler in ((naming.FUNCTION_PATH_PREFIX, http.invoke_path),
                                (naming.ASYNC_FUNCTION_PATH_PREFIX, http.invoke_async_path)):
            add("*", prefix + "{name}", handler, expect_handler=expect)
            add("*", prefix + "{name}/{path:.*}", handler, expect_handler=expect)
        add("*", naming.LAMBDA_INVOKE_PATH, invoke_api.invoke, expect_handler=invoke_api.expect_continue)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH, system.list_functions)
        app.router.add_get(naming.SYSTEM_FUNCTIONS_PATH + "/{name}", system.get_function)
        app.router.add_get(naming.SYSTEM_LOGS_PATH + "/{name}", system.logs)
        app.router.add_get(naming.SYSTEM_ASYNC_PATH + "/{name}", system.async_queue)
        app.router.add_post(f"{naming.SYSTEM_ASYNC_PATH}/{{name}}/{naming.SYSTEM_ASYNC_REPLAY}", system.async_replay)
        add("*", ARCHIVES_PATH + "/{namespace}/{key}", archives.handle, name=ROUTE_NAME,
            expect_handler=archives.expect_continue)
        app.router.add_get("/healthz", system.healthz)
        app.router.add_get("/metrics", system.scrape)
        # Checked after every other resource, whatever the order they were added in.
        add("*", "/{tail:.*}", system.not_found, expect_handler=expect)

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
        app.router.add_get("/healthz", self.system.healthz)
        return app

    async def start(self) -> None:
        """Open the connection pool to instances and follow the backend's changes; idempotent."""
        await self.dispatcher.start()

    def drain(self) -> None:
        """Start shutting down gently: keep serving, but close each client connection after its
        answer (so clients reconnect, to another replica) and fail the health check."""
        self._draining = True

    async def close(self) -> None:
        """Turn waiting requests away and close connections to instances; returns at once."""
        await self.dispatcher.close()


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
