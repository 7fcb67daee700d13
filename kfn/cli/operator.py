"""`kfn operator`: the kopf operator with the autoscaler, configured from the command line."""
from __future__ import annotations

import asyncio
import logging
import signal

from kfn.cli.options import OperatorOptions
from kfn.core.errors import CommandError
from kfn.kube import configuration_problem
from kfn_operator.config import OperatorConfig
from kfn_operator.main import operate


def run_operator(options: OperatorOptions) -> int:
    """Runs until SIGTERM/SIGINT; returns 0. CommandError for a bad option, a Kubernetes client that
    cannot be configured or a --health-port that cannot be had."""
    try:
        config = OperatorConfig.build(
            namespaces=options.namespaces, standalone=options.standalone, prometheus_url=options.prometheus_url,
            runtime_images=options.runtime_images, gateway_selector=options.gateway_selector,
            autoscale_interval=options.autoscale_interval, metrics_port=options.metrics_port,
            health_port=options.health_port, sync_timeout=options.sync_timeout, archive_url=options.archive_url,
            archive_key_file=options.archive_key_file, build_timeout=options.build_timeout,
            pool_size=options.pool_size, pool_key_file=options.pool_key_file)
    except ValueError as e:
        raise CommandError(str(e), exit_code=2) from None
    if (problem := configuration_problem()) is not None:
        raise CommandError(f"cannot configure the Kubernetes client: {problem}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The leader election logs every renewal at INFO.
    logging.getLogger("kubernetes.aio").setLevel(logging.WARNING)
    try:
        asyncio.run(_operate(config))
    except KeyboardInterrupt:
        pass
    return 0


async def _operate(config: OperatorConfig) -> None:
    """`operate`, then SIGTERM and SIGINT held back until the process exits: once the operator
    has stopped, a further signal (a second one sent while it stopped) must not kill it on its way
    out (closing the event loop restores their default action)."""
    try:
        await operate(config)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
