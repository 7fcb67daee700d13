"""`kfn local [DIR]`: local mode, configured from the command line."""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace

from kfn.cli.options import LocalOptions
from kfn.local import LocalMode, LocalSettings
from kfn_gateway import GatewaySettings


def settings(options: LocalOptions) -> LocalSettings:
    gateway = GatewaySettings(trusted_hops=options.trusted_hops)
    if options.max_body_bytes is not None:
        gateway = replace(gateway, max_body_bytes=options.max_body_bytes)
    if options.queue_limit is not None:
        gateway = replace(gateway, queue_limit=options.queue_limit)
    if options.queue_timeout is not None:
        gateway = replace(gateway, queue_timeout=options.queue_timeout)
    return LocalSettings(directory=options.directory, host=options.host, port=options.port, gateway=gateway,
                         work_dir=options.work_dir)


def run_local(options: LocalOptions) -> int:
    """Serves until SIGINT/SIGTERM, then drains and returns 0."""
    logging.basicConfig(level=getattr(logging, options.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    local = LocalMode(settings(options))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(local.run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(local.run())
