"""The operator's settings: from `kfn operator` flags and the environment, validated once."""
from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from kfn_operator.builders import RuntimeImages, parse_image_map

DEFAULT_GATEWAY_SELECTOR = "app.kubernetes.io/name=kfn-gateway"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_POD_NAME = "POD_NAME"


@dataclass(frozen=True)
class OperatorConfig:
    images: RuntimeImages = field(default_factory=RuntimeImages)
    namespaces: tuple[str, ...] = ()            # empty: every namespace
    standalone: bool = False                    # no peering, no Lease: the only replica
    prometheus_url: str | None = None           # PromQL instead of scraping the gateways
    gateway_selector: str = DEFAULT_GATEWAY_SELECTOR
    gateway_port_name: str = "http"             # the port of the gateway's EndpointSlices to scrape
    gateway_namespace: str | None = None        # where the gateway runs; None: the watched namespaces
    gateway_metrics_path: str = "/metrics"
    autoscale_interval: float = 2.0
    autoscaler: bool = True
    lease_name: str = "kfn-autoscaler"
    lease_namespace: str = "default"
    lease_duration: int = 15                    # seconds (the Lease API counts whole seconds)
    identity: str = field(default_factory=socket.gethostname)
    metrics_port: int | None = None             # serve the autoscaler's metrics on 0.0.0.0:PORT
    health_port: int | None = None              # kopf's liveness endpoint on 0.0.0.0:PORT/healthz

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        interval = float(getattr(args, "autoscale_interval", None) or 2.0)
        if not interval > 0:
            raise ValueError(f"--autoscale-interval must be positive (got {interval:g})")
        for flag in ("metrics_port", "health_port"):
            port = getattr(args, flag, None)
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"--{flag.replace('_', '-')} must be a TCP port (got {port})")
        overrides: dict[str, str] = {}
        for item in getattr(args, "runtime_image", None) or ():
            overrides.update(parse_image_map(item))
        return cls(
            images=RuntimeImages.from_environment(env, overrides=overrides),
            namespaces=tuple(getattr(args, "namespace", None) or ()),
            standalone=bool(getattr(args, "standalone", False)),
            prometheus_url=getattr(args, "prometheus_url", None),
            gateway_selector=getattr(args, "gateway_selector", None) or DEFAULT_GATEWAY_SELECTOR,
            autoscale_interval=interval,
            autoscaler=not getattr(args, "no_autoscaler", False),
            lease_namespace=env.get(ENV_POD_NAMESPACE) or "default",
            # The gateway is installed next to the operator (one chart release).
            gateway_namespace=env.get(ENV_POD_NAMESPACE) or None,
            identity=env.get(ENV_POD_NAME) or socket.gethostname(),
            metrics_port=getattr(args, "metrics_port", None),
            health_port=getattr(args, "health_port", None),
        )
