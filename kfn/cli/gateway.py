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
queue (each taking its share of a function's async concurrency, `kfn.events.delivery.delivery_share`)
and the NATS triggers (JetStream consumers and queue groups shared by the replicas); schedules are
fired by the operator. The replicas sharing the queue: with `--peers-service NAME`, the ready
endpoints of this gateway's own Service (its EndpointSlices in --admin-namespace, followed by
`kfn.kube.peers.GatewayPeers`), this replica included, as an autoscaler or `kubectl scale` changes
them; `--replicas` until they are first listed, and throughout when they cannot be (no RBAC for
EndpointSlices there) or without --peers-service. On shutdown, deliveries still running when the
drain time runs out are released to the other replicas at once (`DeliveryEngine.close`). A NATS
server that cannot be reached at start is retried in the background meanwhile (async requests are
503 until it answers). Without a NATS URL, async requests are 503.

Requirements built once (`--archive-key-file FILE` and `--nats-url`): the gateway serves the archive
store, `PUT/GET/HEAD /system/archives/NAMESPACE/KEY` (`kfn_gateway.archives_api`), keeping build
archives in the JetStream object store `kfn-archives` (`kfn.archives.jetstream.JetStreamArchives`,
connected on first use, so a NATS server down at start only makes archive requests 503). Each
request carries a token signed with the key in FILE (its raw bytes, read once at start: the
operator's `--archive-key-file` must hold the same). `--archive-max-bytes` bounds an archive
stored (default 256Mi; it is spooled to $TMPDIR while it arrives). Without both flags, the archive
routes answer 404.

Warm pools (`--pool-key-file FILE`): a request for a function at zero replicas claims an idle pod
of its namespace's pool and specialises it (`kfn.kube.pool.PoolClaimer`), signing with the key in
FILE (raw bytes, the operator's pool key); a function with requirements is served so only with
`--archive-url` (the archive store as pods reach it) and `--archive-key-file`. Claims are named
after this pod ($HOSTNAME) or host. Without a key, every instance comes from its Deployment.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from aiohttp import web
from kubernetes.aio import client

from kfn._cogs.lifecycle import Parts
from kfn.archives.jetstream import JetStreamArchives
from kfn.cli.local import with_options
from kfn.cli.options import GatewayOptions
from kfn.core import natsurl
from kfn.core.aiotasks import stop_tasks
from kfn.core.errors import CommandError
from kfn.core.keys import KeySource
from kfn.events.delivery import DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn.events.orphans import OrphanSettings
from kfn.events.store import StoreUnavailable
from kfn.keyfile import open_key_file
from kfn.kube import KubernetesBackend, SecretKeys, connect
from kfn.kube.peers import GatewayPeers
from kfn.kube.pool import PoolClaimer
from kfn.triggers.registry import TriggerSettings
from kfn.triggers.service import TriggerService
from kfn_gateway import Gateway, GatewaySettings, serve, serve_health
from kfn_gateway.asyncinvoke import AsyncDelivery
from kfn_runtime import archive, specialize

# Between attempts to reach a NATS server that did not answer at start.
NATS_RETRY = 5.0
# Past a part's own bound on stopping (the deliveries' drain), before it is left behind.
STOP_MARGIN = 5.0
# Closing the listeners: aiohttp's 60 s for the requests in flight, then the gateway.
LISTENERS_STOP_TIMEOUT = 60.0 + 15.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    """The gateway process: its parts started in order, served until SIGTERM/SIGINT, drained
    gently (see the module docstring), then stopped last first. CommandError if a part cannot start;
    a signal while starting stops what started and returns."""
    stop = _stop_on_signals()
    async with Parts("kfn gateway") as parts:
        gateway = await _unless_stopped(_start(parts, options), stop)
        if gateway is None:
            logger.info("stopped while starting")
            return
        await stop.wait()
        logger.info("shutting down: serving %gs more while clients move to other replicas", options.shutdown_delay)
        gateway.drain()
        stop.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(options.shutdown_delay):
                await stop.wait()  # a second signal skips the delay


async def _start(parts: Parts, options: GatewayOptions) -> Gateway:
    """Start the gateway's parts in order, each registered in `parts` to be stopped; runs until the
    gateway listens (the asynchronous invocations go on starting in the background). CommandError
    if a part cannot start (the API server not listing within --sync-timeout, a port in use)."""
    api = await _connect()
    parts.add("Kubernetes API client", api.close)
    key_file = open_key_file(options.keys) if options.keys is not None else None
    archive_key = _archive_key(options)
    pool_key = _pool_key(options)
    if not options.system_auth:
        logger.warning("--no-system-auth: anyone who reaches the gateway can list functions and read their logs")
    pool = None
    if pool_key is not None:
        pool = functools.partial(PoolClaimer, api, secret=pool_key, region=options.region,
                                 claimed_by=os.environ.get("HOSTNAME") or socket.gethostname(),
                                 archive_url=options.archive_url, archive_secret=archive_key)
        logger.info("warm pools: scales from zero claim idle pool pods")
    backend = KubernetesBackend(api, namespaces=options.namespaces, probe=True, sync_timeout=options.sync_timeout,
                                pool=pool)
    parts.add("Kubernetes backend", backend.close)   # before its start: informers retry until closed
    try:
        await backend.start()
    except TimeoutError:
        raise CommandError(f"the Kubernetes API at {api.configuration.host} did not list the functions, "
                           f"deployments and pods within {options.sync_timeout:g}s (--sync-timeout)") from None
    keys: KeySource
    if key_file is not None:
        keys = key_file
        parts.task("keys file", key_file.run)
    else:
        keys = secrets = SecretKeys(api, namespaces=options.namespaces, admin_namespace=options.admin_namespace)
        parts.add("API key Secrets", secrets.close)
        await secrets.start()
    settings = GatewaySettings(default_namespace=options.default_namespace, trusted_hops=options.trusted_hops,
                               system_auth=options.system_auth, region=options.region)
    settings = with_options(settings, options.connections, options.limits)
    if options.archive_max_bytes is not None:
        settings = replace(settings, archive_max_bytes=options.archive_max_bytes)
    if options.archive_uploads is not None:
        settings = replace(settings, archive_uploads=options.archive_uploads)
    # One attempt per start: AsyncService retries (and says so) every NATS_RETRY.
    store = JetStreamStore(options.nats_url, connect_attempts=1) if options.nats_url else None
    if store is not None:
        parts.add("async event store", store.close)   # everything accepted is in JetStream already
    archives = JetStreamArchives(options.nats_url) if archive_key is not None and options.nats_url else None
    if archives is not None:
        parts.add("archive store", archives.close)
    elif archive_key is not None:
        logger.warning("--archive-key-file without a NATS server (--nats-url, $KFN_NATS_URL): no archive store, "
                       "/system/archives/ answers 404")
    gateway = Gateway(backend, settings=settings, keys=keys, events=store, archives=archives, archive_key=archive_key)
    listeners = await _listen(gateway, options)
    parts.add("listeners", listeners.close, timeout=LISTENERS_STOP_TIMEOUT)
    if store is not None:
        asynchronous = AsyncService(gateway, store, options)
        asynchronous.start()
        parts.add("asynchronous invocations", asynchronous.close, timeout=asynchronous.stop_timeout)
        if options.peers_service is not None:
            peers = GatewayPeers(api, namespace=options.admin_namespace, service=options.peers_service,
                                 on_change=asynchronous.delivery.engine.set_replicas,
                                 own_pod=os.environ.get("HOSTNAME") or socket.gethostname())
            peers.start()
            parts.add("gateway peers", peers.close)
            logger.info("async delivery shared among the ready endpoints of Service %s/%s (--replicas %d until "
                        "they are listed)", options.admin_namespace, options.peers_service, options.replicas)
    else:
        logger.warning("no NATS server (--nats-url, $KFN_NATS_URL): asynchronous invocations are answered "
                       "503 and NATS triggers do not run")
    parts.add("listening", listeners.stop_listening)   # no more requests (those in flight go on)
    return gateway


def _archive_key(options: GatewayOptions) -> bytes | None:
    """The archive store's signing key: the raw bytes of --archive-key-file (None without it).
    CommandError if it cannot be read or is shorter than `archive.MIN_SECRET_BYTES` (the chart makes 32
    random bytes)."""
    if options.archive_key_file is None:
        return None
    try:
        return archive.read_secret(str(options.archive_key_file))
    except ValueError as e:
        raise CommandError(str(e)) from None


def _pool_key(options: GatewayOptions) -> bytes | None:
    """The warm pools' key: the raw bytes of --pool-key-file (None without it). CommandError if it
    cannot be read or is shorter than `specialize.MIN_KEY_BYTES`."""
    if options.pool_key_file is None:
        return None
    path = options.pool_key_file
    try:
        key = path.read_bytes()
    except OSError as e:
        raise CommandError(f"--pool-key-file {path}: {e.strerror or e}") from None
    if len(key) < specialize.MIN_KEY_BYTES:
        raise CommandError(f"--pool-key-file {path}: {len(key)} bytes; a pool key needs "
                           f"{specialize.MIN_KEY_BYTES} at least")
    return key


async def _unless_stopped(start: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """What `start` returns, or None if `stop` is set first: then `start` is cancelled and waited
    for (what it started is the caller's to stop). Its exception propagates."""
    starting = asyncio.ensure_future(start)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
    return None if starting.cancelled() else starting.result()


async def _connect() -> client.ApiClient:
    try:
        return await connect()
    except Exception as e:  # noqa: BLE001 - missing files, bad YAML, bad certificates: all one message
        raise CommandError(f"cannot configure the Kubernetes client: {e}") from None


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (each time they come)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@dataclass(frozen=True)
class Listeners:
    """The gateway's port and, with --health-port, its liveness port."""

    main: web.AppRunner
    health: web.AppRunner | None

    async def stop_listening(self) -> None:
        """Close the main port to new connections; requests in flight go on."""
        for site in list(self.main.sites):
            await site.stop()

    async def close(self) -> None:
        """Wait for the requests in flight and close the gateway, then the liveness port: the
        probe is answered to the end."""
        await self.main.cleanup()
        if self.health is not None:
            await self.health.cleanup()


async def _listen(gateway: Gateway, options: GatewayOptions) -> Listeners:
    """Serve the gateway (serve() starts it, and cleaning up its runner closes it), then the liveness
    port if asked for; CommandError if a port cannot be bound (nothing left listening)."""
    try:
        main = await serve(gateway, host=options.host, port=options.port)
    except OSError as e:
        raise CommandError(f"--port {options.port}: {e}") from None
    logger.info("kfn gateway listening on %s:%d", options.host, options.port)
    if options.health_port is None:
        return Listeners(main, None)
    try:
        health = await serve_health(gateway, host=options.host, port=options.health_port)
    except OSError as e:
        await main.cleanup()
        raise CommandError(f"--health-port {options.health_port}: {e}") from None
    except BaseException:
        await main.cleanup()
        raise
    logger.info("liveness probe (GET /healthz) on %s:%d, outside --max-connections", options.host,
                options.health_port)
    return Listeners(main, health)


def orphan_settings(options: GatewayOptions) -> OrphanSettings:
    """When the queued events of a deleted Function go (`kfn.events.orphans`): only the
    namespaces this gateway watches are its to look at."""
    settings = OrphanSettings(namespaces=options.namespaces)
    if options.async_discard_after is not None:
        settings = replace(settings, grace=options.async_discard_after)
    return settings


class AsyncService:
    """The store's connection, the delivery engine and the NATS triggers of one gateway replica,
    started in the background (a NATS server down at start is retried) and closed in order."""

    def __init__(self, gateway: Gateway, store: JetStreamStore, options: GatewayOptions) -> None:
        self._store = store
        self.delivery = AsyncDelivery(gateway, store, settings=DeliverySettings(replicas=options.replicas),
                                      orphans=orphan_settings(options))
        triggers = TriggerSettings(region=options.region, nats_url=options.nats_url)
        self.triggers = TriggerService(gateway.backend, store.accept, triggers, everywhere=("nats",))
        self._task: asyncio.Task[None] | None = None
        self._parts = Parts("asynchronous invocations")

    @property
    def stop_timeout(self) -> float:
        """How long `close` may take: the deliveries' drain, and margins for stopping the rest."""
        return self.delivery.engine.settings.drain_timeout + 3 * STOP_MARGIN

    def start(self) -> None:
        """Connect to the store, then start the delivery and the triggers, in the background."""
        self._task = asyncio.create_task(self._run(), name="kfn-gateway-async")

    async def _run(self) -> None:
        while True:
            try:
                await self._store.start()
                break
            except StoreUnavailable as e:
                logger.warning("asynchronous invocations wait for NATS: %s; trying again in %gs", e, NATS_RETRY)
            await asyncio.sleep(NATS_RETRY)
        logger.info("asynchronous invocations stored in JetStream at %s", natsurl.masked(self._store.url))
        await self._parts.start("delivery", self.delivery.start, self.delivery.close,
                                timeout=self.delivery.engine.settings.drain_timeout + STOP_MARGIN)
        await self._parts.start("NATS triggers", self.triggers.start, self.triggers.close)

    async def close(self) -> None:
        """Stop starting, then the triggers first (no new events while deliveries finish), then
        the deliveries in progress (bounded); failures are logged."""
        if self._task is not None:
            await stop_tasks([self._task], what="the async start")
        await self._parts.stop()
