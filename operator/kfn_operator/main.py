"""`kfn operator`: the kopf operator with the autoscaler, on its own registry and settings."""
from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import kopf

from kfn_operator import handlers
from kfn_operator.config import OperatorConfig

logger = logging.getLogger(__name__)


def build_registry(controller: handlers.Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

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
        # a uid without a passwd entry (any non-root user an image does not name); the pod name
        # is unique among replicas and says which pod holds what.
        identity=config.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(args: argparse.Namespace) -> int:
    from kfn_gateway.kubernetes import configuration_problem

    from kfn.cli import CommandError

    try:
        config = OperatorConfig.from_args(args)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if (problem := configuration_problem()) is not None:
        raise CommandError(f"cannot configure the Kubernetes client: {problem}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kubernetes-asyncio logs every leader-election renewal at INFO.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
    try:
        asyncio.run(operate(config))
    except KeyboardInterrupt:
        pass
    return 0
