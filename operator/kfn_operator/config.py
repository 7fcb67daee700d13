"""The operator's settings: from `kfn operator` flags and the environment, validated once."""
from __future__ import annotations

import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kfn.core import natsurl
from kfn_operator.builders import FunctionIngress, PipSettings, RuntimeImages, parse_image_map
from kfn_runtime import archive, awslambda, contract, specialize

DEFAULT_GATEWAY_SELECTOR = "app.kubernetes.io/name=kfn-gateway"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_POD_NAME = "POD_NAME"
# The NATS server (JetStream) of asynchronous invocations, as the chart gives it to the gateway and
# the operator (the operator's leader stores schedule ticks there).
ENV_NATS_URL = "KFN_NATS_URL"
# Requirements built once: the archive store's base URL as function pods reach it (the gateway's),
# the file with the signing key the store shares, and the build Jobs' resources (a JSON object
# with requests and limits, as the chart's build.resources gives it).
ENV_ARCHIVE_URL = "KFN_ARCHIVE_URL"
ENV_ARCHIVE_KEY_FILE = "KFN_ARCHIVE_KEY_FILE"
ENV_BUILD_RESOURCES = "KFN_BUILD_RESOURCES"
DEFAULT_BUILD_TIMEOUT = 600
# Warm pools (kfn_operator.pools): instances per runtime per namespace with eligible Functions
# (0: none), and the file with the platform's pool key, the one the gateway reads (none: no pools).
ENV_POOL_SIZE = "KFN_POOL_SIZE"
ENV_POOL_KEY_FILE = "KFN_POOL_KEY_FILE"
DEFAULT_POOL_SIZE = 1
MAX_POOL_SIZE = 100
DEFAULT_POOL_INTERVAL = 5.0
MAX_POOL_KEY_BYTES = 4096   # a key file larger than this is a mistake (the chart's holds 32 bytes)
# Who may reach function pods (a JSON object: gatewayNamespace, gatewayLabels, extraFrom), for the
# NetworkPolicy the operator keeps in each function namespace; unset: it makes none.
ENV_NETWORK_POLICY = "KFN_NETWORK_POLICY"
DEFAULT_BUILD_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


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
    archive_url: str | None = None              # the archive store (the gateway) as pods reach it
    archive_key: bytes | None = field(default=None, repr=False)   # the store's signing key
    build_timeout: int = DEFAULT_BUILD_TIMEOUT  # seconds a build Job may run (activeDeadlineSeconds)
    build_resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_BUILD_RESOURCES))
    pool_size: int = DEFAULT_POOL_SIZE          # warm instances per runtime per namespace (0: no pools)
    pool_key: bytes | None = field(default=None, repr=False)   # the platform's pool key (None: no pools)
    pool_interval: float = DEFAULT_POOL_INTERVAL   # seconds between passes over the pools
    function_ingress: FunctionIngress | None = None   # a NetworkPolicy per function namespace (None: none)

    @property
    def pools(self) -> bool:
        """Whether warm pools are kept (a size and a key): else any found are deleted."""
        return self.pool_size > 0 and self.pool_key is not None

    @property
    def builds(self) -> bool:
        """Whether requirements are built once (a store and its key): else each pod runs pip."""
        return bool(self.archive_url and self.archive_key)

    @classmethod
    def build(cls, *, namespaces: tuple[str, ...] = (), standalone: bool = False, prometheus_url: str | None = None,
              runtime_images: tuple[str, ...] = (), gateway_selector: str | None = None,
              autoscale_interval: float = 2.0, metrics_port: int | None = None, health_port: int | None = None,
              sync_timeout: float = 30.0, archive_url: str | None = None, archive_key_file: str | None = None,
              build_timeout: int = DEFAULT_BUILD_TIMEOUT, pool_size: int | None = None,
              pool_key_file: str | None = None, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The configuration from `kfn operator`'s options and the environment the chart sets.

        Raises ValueError naming what is wrong.
        """
        env = os.environ if env is None else env
        if not autoscale_interval > 0:
            raise ValueError(f"--autoscale-interval must be positive (got {autoscale_interval:g})")
        if build_timeout < 1:
            raise ValueError(f"--build-timeout must be a positive number of seconds (got {build_timeout})")
        overrides: dict[str, str] = {}
        for item in runtime_images:
            overrides.update(parse_image_map(item))
        url = _archive_url(archive_url if archive_url is not None else env.get(ENV_ARCHIVE_URL, ""))
        key_file = archive_key_file if archive_key_file is not None else env.get(ENV_ARCHIVE_KEY_FILE, "").strip()
        pool_file = pool_key_file if pool_key_file is not None else env.get(ENV_POOL_KEY_FILE, "").strip()
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
            nats_url=natsurl.in_environment(env.get(ENV_NATS_URL, "").strip(), env) or None,
            metrics_port=metrics_port,
            health_port=health_port,
            sync_timeout=sync_timeout,
            archive_url=url,
            archive_key=archive.read_secret(key_file) if key_file else None,
            build_timeout=build_timeout,
            build_resources=_resources(env.get(ENV_BUILD_RESOURCES, "")),
            pool_size=_pool_size(pool_size, env.get(ENV_POOL_SIZE, "")),
            pool_key=read_pool_key(pool_file) if pool_file else None,
            function_ingress=_function_ingress(env.get(ENV_NETWORK_POLICY, "")),
        )


def _function_ingress(text: str) -> FunctionIngress | None:
    """$KFN_NETWORK_POLICY (a JSON object: gatewayNamespace, gatewayLabels, extraFrom), or None
    when unset; ValueError naming what is malformed."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"${ENV_NETWORK_POLICY} must be a JSON object (got {text[:200]!r})")
    namespace, labels, extra = value.get("gatewayNamespace"), value.get("gatewayLabels"), value.get("extraFrom") or []
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"${ENV_NETWORK_POLICY}: gatewayNamespace must be a namespace's name")
    if (not isinstance(labels, dict) or not labels
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise ValueError(f"${ENV_NETWORK_POLICY}: gatewayLabels must be an object of label → value, not empty")
    if not isinstance(extra, list) or not all(isinstance(peer, dict) for peer in extra):
        raise ValueError(f"${ENV_NETWORK_POLICY}: extraFrom must be a list of NetworkPolicyPeer objects")
    return FunctionIngress(gateway_namespace=namespace, gateway_labels=labels, extra_from=tuple(extra))


def _pool_size(flag: int | None, text: str) -> int:
    """--pool-size, else $KFN_POOL_SIZE, else the default; ValueError outside 0..MAX_POOL_SIZE."""
    if flag is not None:
        value, source = flag, "--pool-size"
    elif text.strip():
        try:
            value, source = int(text.strip()), f"${ENV_POOL_SIZE}"
        except ValueError:
            raise ValueError(f"${ENV_POOL_SIZE} must be a whole number (got {text!r})") from None
    else:
        return DEFAULT_POOL_SIZE
    if not 0 <= value <= MAX_POOL_SIZE:
        raise ValueError(f"{source} must be between 0 and {MAX_POOL_SIZE} (got {value})")
    return value


def read_pool_key(path: str) -> bytes:
    """The platform's pool key: the raw bytes of the file at `path`; ValueError, naming the flag,
    if it cannot be read or is shorter than `specialize.MIN_KEY_BYTES`."""
    try:
        with open(path, "rb") as f:
            secret = f.read(MAX_POOL_KEY_BYTES + 1)
    except OSError as e:
        raise ValueError(f"--pool-key-file {path}: {e.strerror or e}") from None
    if len(secret) > MAX_POOL_KEY_BYTES:
        raise ValueError(f"--pool-key-file {path}: more than {MAX_POOL_KEY_BYTES} bytes; a pool key is a short "
                         "random secret")
    if len(secret) < specialize.MIN_KEY_BYTES:
        raise ValueError(f"--pool-key-file {path}: {len(secret)} bytes; a pool key needs "
                         f"{specialize.MIN_KEY_BYTES} at least")
    return secret


def _archive_url(value: str) -> str | None:
    """The archive store's base URL without a trailing slash, or None; ValueError if not http(s)://HOST."""
    value = value.strip().rstrip("/")
    if not value:
        return None
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--archive-url must look like http://HOST:PORT (got {value!r})")
    return value


def _resources(text: str) -> dict[str, Any]:
    """$KFN_BUILD_RESOURCES (a JSON object of requests and limits), or the defaults; ValueError if malformed."""
    if not text.strip():
        return {kind: dict(values) for kind, values in DEFAULT_BUILD_RESOURCES.items()}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if (not isinstance(value, dict) or not set(value) <= {"requests", "limits"}
            or not all(isinstance(v, dict) and all(isinstance(q, str | int) for q in v.values())
                       for v in value.values())):
        raise ValueError(f"${ENV_BUILD_RESOURCES} must be a JSON object of requests and limits (got {text!r})")
    return {kind: {name: str(q) for name, q in values.items()} for kind, values in value.items()}
