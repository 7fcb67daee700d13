"""`kfn gateway`: the gateway on the Kubernetes backend, with a gentle shutdown.

On SIGTERM the gateway first keeps serving for `--shutdown-delay` seconds while closing each
connection after its answer and failing its health check: kube-proxy and load balancers stop
sending it new connections meanwhile, and clients holding keep-alive connections reconnect to
another replica. Then it stops listening and waits for the requests in flight.

API keys come from Secrets (`kfn.kube.SecretKeys`: `kfn-api-keys` in each served namespace,
`kfn-admin-keys` in `--admin-namespace`) or, with `--keys FILE`, from a file; /system/* needs an
admin key unless `--no-system-auth`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from kfn.cli.local import with_options
from kfn.cli.options import GatewayOptions
from kfn.core.errors import CommandError
from kfn.core.keys import InvalidKeys, KeySource
from kfn.keyfile import KeyFile
from kfn.kube import KubernetesBackend, SecretKeys, connect
from kfn_gateway import Gateway, GatewaySettings, serve

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
            gateway = Gateway(backend, settings=settings, keys=keys)
            # serve() starts the gateway, and runner.cleanup() closes it.
            runner = await serve(gateway, host=options.host, port=options.port)
            logger.info("kfn gateway listening on %s:%d", options.host, options.port)
            try:
                await stop.wait()
                logger.info("shutting down: serving %gs more while clients move to other replicas",
                            options.shutdown_delay)
                gateway.drain()
                stop.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(options.shutdown_delay):
                        await stop.wait()  # a second signal skips the delay
            finally:
                await runner.cleanup()
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if secrets is not None:
                await secrets.close()
            await backend.close()
