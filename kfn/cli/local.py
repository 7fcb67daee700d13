"""`kfn local [DIR]`: local mode, configured from the command line."""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace

from kfn.cli.options import ConnectionOptions, LimitOptions, LocalOptions
from kfn.events.delivery import DeliverySettings
from kfn.local import LocalMode, LocalSettings
from kfn_gateway import GatewaySettings


def with_options(gateway: GatewaySettings, *options: ConnectionOptions | LimitOptions) -> GatewaySettings:
    """`gateway` with every option that was given (None: keep the gateway's default)."""
    for given in options:
        for name in given.__dataclass_fields__:
            value = getattr(given, name)
            if value is not None:
                gateway = replace(gateway, **{name: value})
    return gateway


def settings(options: LocalOptions) -> LocalSettings:
    # With a keys file, /system/* is for admin keys only; without one, local mode is a developer's
    # own on 127.0.0.1 (and a function with spec.http.auth key answers 401 to everyone).
    gateway = GatewaySettings(trusted_hops=options.trusted_hops, system_auth=options.keys is not None)
    gateway = with_options(gateway, options.connections, options.limits)
    delivery = DeliverySettings()
    if options.async_retry_delays is not None:
        delivery = replace(delivery, delays=replace(delivery.delays, function_errors=options.async_retry_delays))
    local = LocalSettings(directory=options.directory, host=options.host, port=options.port, gateway=gateway,
                          work_dir=options.work_dir, keys=options.keys, cgroups=options.cgroups,
                          strict_runtimes=options.strict_runtimes,
                          state_dir=options.state_dir, nats_url=options.nats_url, delivery=delivery)
    if options.async_lease is not None:
        local = replace(local, async_lease=options.async_lease)
    if options.async_discard_after is not None:
        local = replace(local, async_discard_after=options.async_discard_after)
    if options.init_timeout is not None:
        local = replace(local, init_timeout=options.init_timeout)
    return local


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
