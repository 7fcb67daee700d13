"""`kfn gateway`: the gateway on the Kubernetes backend, with a gentle shutdown.

On SIGTERM the gateway first keeps serving for `--shutdown-delay` seconds while closing each
connection after its answer and failing its health check: kube-proxy and load balancers stop
sending it new connections meanwhile, and clients holding keep-alive connections reconnect to
another replica. Then it stops listening and waits for the requests in flight.

With `--health-port`, GET /healthz is also served alone on a port of its own, outside
`--max-connections` (`kfn_gateway.serve_health`): the liveness probe, which clients holding every
connection the cap allows would otherwise fail, getting the replica restarted. It answers as the
main port's /healthz does (503 once draining) until the main listener is closed.

API keys come from Secrets (`kfn.kube.SecretKeys`: `kfn-api-keys` in each served namespace,
`kfn-admin-keys` in `--admin-namespace`) or, with `--keys FILE`, from a file; /system/* needs an
admin key unless `--no-system-auth`.

Asynchronous invocations (`--nats-url` / $KFN_NATS_URL): events are stored in NATS JetStream
(`kfn.events.jetstream.JetStreamStore`) and every replica runs a delivery engine on the shared
queue (each taking 1/`--replicas` of a function's async concurrency) and the NATS triggers
(JetStream consumers and queue groups shared by the replicas); schedules are fired by the
operator. A NATS server that cannot be reached at start is retried in the background meanwhile
(async requests are 503 until it answers). Without a NATS URL, async requests are 503.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from kfn.cli.local import with_options
from kfn.cli.options import GatewayOptions
from kfn.core.aiotasks import stop_tasks
from kfn.core.errors import CommandError
from kfn.core.keys import InvalidKeys, KeySource
from kfn.events.delivery import DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn.events.store import StoreUnavailable
from kfn.keyfile import KeyFile
from kfn.kube import KubernetesBackend, SecretKeys, connect
from kfn.triggers.registry import TriggerSettings
from kfn.triggers.service import TriggerService
from kfn_gateway import Gateway, GatewaySettings, serve, serve_health
from kfn_gateway.asyncinvoke import AsyncDelivery

# Between attempts to reach a NATS server that did not answer at start.
NATS_RETRY = 5.0

logger = logging.getLogger(__name__)


def run_gateway(options: GatewayOptions) -> int:
    """Serves until SIGTERM/SIGINT; returns 0."""
    logging.basicConfig(level=getattr(logging, options.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(options))
        return 0
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(options))
    return 0


async def _serve(options: GatewayOptions) -> None:
    try:
        api = await connect()
    except Exception as e:  # noqa: BLE001 - missing files, bad YAML, bad certificates: all one message
        raise CommandError(f"cannot configure the Kubernetes client: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    key_file: KeyFile | None = None
    if options.keys is not None:
        key_file = KeyFile(options.keys)
        try:
            key_file.load()
        except InvalidKeys as e:
            raise CommandError(f"--keys: {e}", exit_code=2) from None
    if not options.system_auth:
        logger.warning("--no-system-auth: anyone who reaches the gateway can list functions and read their logs")
    async with api:
        backend = KubernetesBackend(api, namespaces=options.namespaces, probe=True)
        secrets: SecretKeys | None = None
        keys: KeySource
        if key_file is not None:
            keys = key_file
        else:
            keys = secrets = SecretKeys(api, namespaces=options.namespaces, admin_namespace=options.admin_namespace)
        await backend.start()
        if secrets is not None:
            await secrets.start()
        poll = asyncio.create_task(key_file.run()) if key_file is not None else None
        try:
            settings = GatewaySettings(default_namespace=options.default_namespace, trusted_hops=options.trusted_hops,
                                       system_auth=options.system_auth)
            settings = with_options(settings, options.connections, options.limits)
            store = JetStreamStore(options.nats_url) if options.nats_url else None
            gateway = Gateway(backend, settings=settings, keys=keys, events=store)
            asynchronous = AsyncService(gateway, store, options) if store is not None else None
            if asynchronous is None:
                logger.warning("no NATS server (--nats-url, $KFN_NATS_URL): asynchronous invocations are answered "
                               "503 and NATS triggers do not run")
            # serve() starts the gateway, and runner.cleanup() closes it.
            runner = await serve(gateway, host=options.host, port=options.port)
            logger.info("kfn gateway listening on %s:%d", options.host, options.port)
            health: web.AppRunner | None = None
            try:
                if options.health_port is not None:
                    health = await _serve_health(gateway, options.host, options.health_port)
                if asynchronous is not None:
                    asynchronous.start()
                await stop.wait()
                logger.info("shutting down: serving %gs more while clients move to other replicas",
                            options.shutdown_delay)
                gateway.drain()
                stop.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(options.shutdown_delay):
                        await stop.wait()  # a second signal skips the delay
            finally:
                if asynchronous is not None:
                    for site in list(runner.sites):
                        await site.stop()         # no more requests (those in flight go on)
                    await asynchronous.close()    # triggers, then deliveries in progress (bounded)
                await runner.cleanup()
                if health is not None:
                    await health.cleanup()        # last: the liveness probe is answered to the end
                if store is not None:
                    await store.close()
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if secrets is not None:
                await secrets.close()
            await backend.close()


async def _serve_health(gateway: Gateway, host: str, port: int) -> web.AppRunner:
    """The liveness listener (--health-port); CommandError if its port cannot be bound."""
    try:
        health = await serve_health(gateway, host=host, port=port)
    except OSError as e:
        raise CommandError(f"--health-port {port}: {e}") from None
    logger.info("liveness probe (GET /healthz) on %s:%d, outside --max-connections", host, port)
    return health


class AsyncService:
    """The store's connection, the delivery engine and the NATS triggers of one gateway replica,
    started in the background (a NATS server down at start is retried) and closed in order."""

    def __init__(self, gateway: Gateway, store: JetStreamStore, options: GatewayOptions) -> None:
        self._store = store
        self.delivery = AsyncDelivery(gateway, store, settings=DeliverySettings(replicas=options.replicas),
                                      region=options.region)
        self.triggers = TriggerService(gateway.backend, store.accept, TriggerSettings(nats_url=options.nats_url),
                                       everywhere=("nats",))
        self._task: asyncio.Task[None] | None = None
        self._started: list[AsyncDelivery | TriggerService] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kfn-gateway-async")

    async def _run(self) -> None:
        while True:
            try:
                await self._store.start()
                break
            except StoreUnavailable as e:
                logger.warning("asynchronous invocations wait for NATS: %s; trying again in %gs", e, NATS_RETRY)
            await asyncio.sleep(NATS_RETRY)
        logger.info("asynchronous invocations stored in JetStream at %s", self._store.url)
        for part in (self.delivery, self.triggers):
            await part.start()
            self._started.append(part)

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], what="the async start")
        for part in reversed(self._started):   # triggers first: no new events while deliveries finish
            try:
                await part.close()
            except Exception:
                logger.exception("closing %s failed", type(part).__name__)
