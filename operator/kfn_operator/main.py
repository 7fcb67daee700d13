"""The kopf operator with the autoscaler, on its own registry and settings (`operate`)."""
from __future__ import annotations

import logging
from typing import Any

import kopf

from kfn.kube import connection_info, load_configuration
from kfn_operator import handlers
from kfn_operator.config import OperatorConfig

logger = logging.getLogger(__name__)


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
    """Run the operator until `stop_flag` is set (or a signal in the main thread).

    Failures in handlers are kopf's to retry; this returns only when the operator stops, and
    raises if kopf cannot start (no API, no credentials).
    """
    controller = controller or handlers.Controller(config)
    await kopf.operator(
        registry=build_registry(controller),
        settings=handlers.make_settings(config),
        standalone=config.standalone,
        # kopf would otherwise derive its peering identity from getpass.getuser(), which fails for
        # a uid without a passwd entry; the pod name is unique among replicas and says which pod
        # holds what.
        identity=config.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
