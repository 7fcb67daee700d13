"""The kopf operator with the autoscaler, on its own registry and settings (`operate`).

Exactly one replica acts. `--standalone` (the chart's `operator.replicas: 1`): kopf runs at once.
Otherwise the replicas elect one with the Lease `kfn-operator` (`kfn.kube.lease.LeaseElection`)
and only its holder runs kopf: the Function handlers, the Deployment watch and, started by them,
the autoscaler and the scheduler. The others only campaign and answer /healthz. A leader that
cannot renew the Lease stops kopf (kopf's stop flag: its watches end at once, handlers in flight
get kopf's 2 s) and stands by again; the next leader's kopf resumes every Function (kopf's resume
handlers, the first listing of Deployments), so what the old one left half done is finished.

kopf's own peering is not used (kopf always runs standalone): it pauses only peers of a lower
priority and lets replicas of equal priority act side by side, so it cannot elect one. Nor are its
liveness endpoint and signal handlers: in both modes the process answers /healthz itself from its
start, and SIGTERM/SIGINT stay kfn's while kopf runs (kopf's, which fail on a second signal, are
replaced as soon as kopf installs them), stopping kopf through its stop flag.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import kopf
from aiohttp import web

from kfn._cogs.lifecycle import Parts
from kfn.core.errors import CommandError
from kfn.kube import connect, connection_info, load_configuration
from kfn.kube.lease import LeaseElection
from kfn_operator import handlers
from kfn_operator.config import OperatorConfig
from kfn_operator.endpoints import serve_get

logger = logging.getLogger(__name__)

# Stopping the election: kopf's own stop (watches at once, handlers 2 s), the election's wait for
# it (at most 30 s) and handing the Lease back (5 s), with room to spare.
ELECTION_STOP_TIMEOUT = 60.0


def build_registry(controller: handlers.Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # The credentials every other part of kfn uses (kfn.kube.connection), not a second loader.
        return kopf.ConnectionInfo(**await connection_info(await load_configuration()))

    handlers.register(registry, controller)
    return registry


async def operate(config: OperatorConfig, *, stop_flag: Any = None, ready_flag: Any = None,
                  controller: handlers.Controller | None = None) -> None:
    """Run the operator until `stop_flag` (an asyncio or threading Event) is set, or SIGTERM/SIGINT
    when running in the main thread (kfn's handlers throughout: kopf is stopped by its stop flag).

    `ready_flag` is set once kopf runs (on a standby: once it leads). Failures in handlers are
    kopf's to retry; this raises if kopf cannot start (no API, no credentials), and CommandError
    if the liveness endpoint's port cannot be had (before anything else starts).
    """
    if stop_flag is not None and not isinstance(stop_flag, asyncio.Event | threading.Event):
        raise TypeError(f"a stop flag is an asyncio.Event or a threading.Event, not {type(stop_flag).__name__}")
    controller = controller or handlers.Controller(config)
    stopping = asyncio.Event()
    _on_signals(stopping.set)
    async with Parts("kfn operator") as parts:
        parts.task("kfn-operator-stop-flag", lambda: _wait_flag(stop_flag, stopping))
        if config.health_port:
            # The liveness endpoint is the process's, leading or not, kopf running or not.
            health = await _serve_health(config.health_port)
            parts.add("liveness endpoint", health.cleanup)
        if config.standalone:
            await _kopf(config, controller, stop_flag=stopping, ready_flag=ready_flag, on_signal=stopping.set)
        else:
            await _operate_elected(config, controller, stopping=stopping, ready_flag=ready_flag)


async def _kopf(config: OperatorConfig, controller: handlers.Controller, *, stop_flag: asyncio.Event,
                ready_flag: Any, on_signal: Callable[[], None]) -> None:
    """Run kopf until `stop_flag` is set (its watches end at once, handlers in flight get 2 s) or
    it fails (raised). SIGTERM and SIGINT call `on_signal` meanwhile: kopf installs handlers of its
    own as it starts (which fail on a second signal), and kfn's are put back at once."""
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(
        registry=build_registry(controller),
        settings=handlers.make_settings(config),
        # Never kopf's peering: one replica runs kopf at all (see the module docstring).
        standalone=True,
        # kopf would otherwise derive its identity from getpass.getuser(), which fails for a uid
        # without a passwd entry; the pod name is unique among replicas.
        identity=config.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
    _on_signals(on_signal)
    await kopf.run_tasks(tasks, ignored=existing)


async def _operate_elected(config: OperatorConfig, controller: handlers.Controller, *, stopping: asyncio.Event,
                           ready_flag: Any) -> None:
    """Campaign for the operator's Lease and run kopf while holding it, until `stopping` is set."""
    failures: list[BaseException] = []
    standing_by = asyncio.Event()   # no kopf running
    standing_by.set()

    async def lead() -> None:
        """Run kopf until it ends or this task is cancelled (the Lease lost, or stopping)."""
        kopf_stop = asyncio.Event()
        logger.info("operator active (%s): starting kopf", config.identity)
        standing_by.clear()
        run = asyncio.create_task(_kopf(config, controller, stop_flag=kopf_stop, ready_flag=ready_flag,
                                        on_signal=stopping.set), name="kopf")
        relay = asyncio.create_task(_relay(stopping, kopf_stop), name="kfn-operator-stop-relay")
        try:
            await asyncio.shield(run)
        except asyncio.CancelledError:
            if not run.done():
                # Lost the Lease: kopf must stop before another replica may lead; wait for it even
                # if cancelled again (kopf's own stop is bounded: watches at once, workers in 2 s).
                kopf_stop.set()
                if not stopping.is_set():
                    logger.warning("operator (%s) lost the Lease: stopping kopf, then standing by", config.identity)
                while not run.done():
                    try:
                        await asyncio.wait({run})
                    except asyncio.CancelledError:
                        continue
            raise
        except Exception as e:  # noqa: BLE001 - kopf could not run: the process ends with the error
            failures.append(e)
        finally:
            relay.cancel()
            standing_by.set()
        # kopf ended without being asked by the election (stopping, or it failed): the process stops.
        stopping.set()

    async with Parts("kfn operator election") as parts:
        stopped = parts.task("kfn-operator-stopping", stopping.wait)
        api = await connect()
        parts.add("Kubernetes API client", api.close)
        election = LeaseElection(api, name=config.operator_lease_name, namespace=config.lease_namespace,
                                 identity=config.identity, duration=config.lease_duration, what="operator")
        campaign = asyncio.create_task(election.run(lead), name="kfn-operator-election")
        parts.add("operator election", lambda: _cancel_once(campaign), timeout=ELECTION_STOP_TIMEOUT)
        done, _ = await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if campaign in done:
            campaign.result()   # the election never ends on its own: raise what ended it
        # Stopping: kopf stops at once (the relay). It must end before the parts stop: ending, it
        # cancels every task started while it ran, and each part is stopped in a task of its own.
        await standing_by.wait()
    if failures:
        raise failures[0]


async def _cancel_once(campaign: asyncio.Task[None]) -> None:
    """Cancel the election once (not stop_tasks' repeated cancels) and wait: it stops kopf, waits
    for it, then hands the Lease back."""
    campaign.cancel()
    await asyncio.wait({campaign})


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _wait_flag(flag: Any, then: asyncio.Event) -> None:
    """Set `then` once `flag` (an asyncio.Event, a threading.Event, or None: never) is set."""
    if flag is None:
        return
    if isinstance(flag, asyncio.Event):
        await flag.wait()
    else:
        # Waited for in short slices: a thread blocked on it for good would hold up the loop's shutdown.
        while not await asyncio.to_thread(flag.wait, 0.5):
            pass
    then.set()


def _on_signals(callback: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `callback` (in the main thread only: elsewhere the caller's stop flag stops)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


async def _serve_health(port: int) -> web.AppRunner:
    """/healthz on 0.0.0.0:port; CommandError if the port cannot be had."""
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({})

    try:
        return await serve_get(port, "/healthz", healthz)
    except OSError as e:
        raise CommandError(f"--health-port {port}: {e}") from None
