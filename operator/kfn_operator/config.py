"""The operator's settings: from `kfn operator` flags and the environment, validated once."""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from kfn_operator.builders import PipSettings, RuntimeImages, parse_image_map
from kfn_runtime import awslambda, contract

DEFAULT_GATEWAY_SELECTOR = "app.kubernetes.io/name=kfn-gateway"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_POD_NAME = "POD_NAME"
# The NATS server (JetStream) of asynchronous invocations, as the chart gives it to the gateway and
# the operator (the operator's leader stores schedule ticks there).
ENV_NATS_URL = "KFN_NATS_URL"


@dataclass(frozen=True)
class OperatorConfig:
    images: RuntimeImages = field(default_factory=RuntimeImages)
    pip: PipSettings = field(default_factory=lambda: PipSettings())   # where init containers install from
    region: str = awslambda.DEFAULT_REGION      # AWS_REGION of every function (the chart's functions.region)
    namespaces: tuple[str, ...] = ()            # empty: every namespace
    standalone: bool = False                    # no Lease: the only replica
    prometheus_url: str | None = None           # PromQL instead of scraping the gateways
    gateway_selector: str = DEFAULT_GATEWAY_SELECTOR
    gateway_port_name: str = "http"             # the port of the gateway's EndpointSlices to scrape
    gateway_namespace: str | None = None        # where the gateway runs; None: the watched namespaces
    gateway_metrics_path: str = "/metrics"
    autoscale_interval: float = 2.0
    autoscaler: bool = True
    lease_name: str = "kfn-autoscaler"
    operator_lease_name: str = "kfn-operator"   # held by the one replica that runs kopf (see kfn_operator.main)
    lease_namespace: str = "default"
    lease_duration: int = 15                    # seconds (the Lease API counts whole seconds)
    scheduler: bool = True                      # fire schedule triggers (needs nats_url)
    scheduler_lease_name: str = "kfn-scheduler"
    nats_url: str | None = None                 # $KFN_NATS_URL: where async events (and tick records) are stored
    identity: str = field(default_factory=socket.gethostname)
    metrics_port: int | None = None             # serve the autoscaler's metrics on 0.0.0.0:PORT
    health_port: int | None = None              # the liveness endpoint on 0.0.0.0:PORT/healthz
    sync_timeout: float = 30.0                  # the backend's first listing, between warnings

    @classmethod
    def build(cls, *, namespaces: tuple[str, ...] = (), standalone: bool = False, prometheus_url: str | None = None,
              runtime_images: tuple[str, ...] = (), gateway_selector: str | None = None,
              autoscale_interval: float = 2.0, metrics_port: int | None = None, health_port: int | None = None,
              sync_timeout: float = 30.0, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The configuration from `kfn operator`'s options and the environment the chart sets.

        Raises ValueError naming what is wrong.
        """
        env = os.environ if env is None else env
        if not autoscale_interval > 0:
            raise ValueError(f"--autoscale-interval must be positive (got {autoscale_interval:g})")
        overrides: dict[str, str] = {}
        for item in runtime_images:
            overrides.update(parse_image_map(item))
        return cls(
            images=RuntimeImages.from_environment(env, overrides=overrides),
            pip=PipSettings.from_environment(env),
            region=env.get(contract.ENV_REGION, "").strip() or awslambda.DEFAULT_REGION,
            namespaces=namespaces,
            standalone=standalone,
            prometheus_url=prometheus_url,
            gateway_selector=gateway_selector or DEFAULT_GATEWAY_SELECTOR,
            autoscale_interval=autoscale_interval,
            lease_namespace=env.get(ENV_POD_NAMESPACE) or "default",
            # The gateway is installed next to the operator (one chart release).
            gateway_namespace=env.get(ENV_POD_NAMESPACE) or None,
            identity=env.get(ENV_POD_NAME) or socket.gethostname(),
            nats_url=env.get(ENV_NATS_URL, "").strip() or None,
            metrics_port=metrics_port,
            health_port=health_port,
            sync_timeout=sync_timeout,
        )
