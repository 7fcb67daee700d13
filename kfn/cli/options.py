"""Each command's options, typed and checked once, from the parsed command line.

Commands take these dataclasses, never an `argparse.Namespace`: a misspelt option is a type
error, not a silent `getattr` default. A bad value is a `CommandError` with exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from kfn.core import naming, natsurl, units
from kfn.core.errors import CommandError
from kfn_runtime import awslambda, contract

# The NATS server of async events (kfn gateway) and of NATS triggers: --nats-url, else this.
ENV_NATS_URL = "KFN_NATS_URL"
# How many gateway replicas share the async queue (each delivers its share of a function's async
# concurrency): --replicas, else this (the chart sets it to the Deployment's replica count).
ENV_GATEWAY_REPLICAS = "KFN_GATEWAY_REPLICAS"
# A Service's name (RFC 1035 label).
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def _usage(message: str) -> CommandError:
    return CommandError(message, exit_code=2)


@dataclass(frozen=True)
class ValidateOptions:
    files: tuple[str, ...]
    output: str = "text"


@dataclass(frozen=True)
class ConnectionOptions:
    """Client connection limits (None: the gateway's defaults)."""

    header_timeout: float | None = None
    body_timeout: float | None = None
    idle_timeout: float | None = None
    send_timeout: float | None = None
    max_connections: int | None = None


@dataclass(frozen=True)
class LimitOptions:
    """What the gateway accepts and holds (None: the gateway's defaults)."""

    max_body_bytes: int | None = None
    queue_limit: int | None = None
    queue_timeout: float | None = None
    max_async_payload_bytes: int | None = None


@dataclass(frozen=True)
class LocalOptions:
    directory: Path
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    limits: LimitOptions = LimitOptions()
    work_dir: Path | None = None
    trusted_hops: int = 0
    keys: Path | None = None
    connections: ConnectionOptions = ConnectionOptions()
    cgroups: bool = True
    strict_runtimes: bool = False
    state_dir: Path | None = None
    nats_url: str | None = None
    async_retry_delays: tuple[float, ...] | None = None   # None: Lambda's (1 and 2 minutes)
    async_lease: float | None = None
    async_discard_after: float | None = None   # None: kfn.core.orphans.DEFAULT_GRACE
    init_timeout: float | None = None   # None: Lambda's 10 s


@dataclass(frozen=True)
class RemoteOptions:
    """What every command talking to a running gateway shares."""

    gateway: str
    output: str = "text"
    api_key: str | None = None


@dataclass(frozen=True)
class InvokeOptions:
    remote: RemoteOptions
    name: str
    data: str | None = None
    method: str | None = None
    path: str = ""
    headers: tuple[str, ...] = ()
    timeout: float = 60.0


@dataclass(frozen=True)
class LogsOptions:
    remote: RemoteOptions
    name: str
    follow: bool = False
    tail: int = 100
    build: bool = False   # the latest build's output (its requirements' installer) instead


@dataclass(frozen=True)
class AsyncListOptions:
    remote: RemoteOptions
    name: str
    limit: int = 100


@dataclass(frozen=True)
class AsyncReplayOptions:
    remote: RemoteOptions
    name: str
    ids: tuple[str, ...] = ()     # none: every dead letter of the function


@dataclass(frozen=True)
class GatewayOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    health_port: int | None = None   # GET /healthz alone, outside --max-connections (the liveness probe)
    namespaces: tuple[str, ...] = ()
    default_namespace: str = naming.DEFAULT_NAMESPACE
    shutdown_delay: float = 5.0
    log_level: str = "info"
    trusted_hops: int = 0
    system_auth: bool = True
    admin_namespace: str = "kfn-system"
    keys: Path | None = None
    connections: ConnectionOptions = ConnectionOptions()
    limits: LimitOptions = LimitOptions()
    nats_url: str | None = None   # async events in JetStream there (none: async requests are 503)
    replicas: int = 1             # gateway replicas sharing the async queue (until peers_service tells)
    peers_service: str | None = None   # the gateway's own Service: its ready endpoints are the replicas
    region: str = awslambda.DEFAULT_REGION   # the functions' region (functions.region): destination records say it
    sync_timeout: float = 30.0    # the Kubernetes API's first listing at start; past it, an error
    archive_key_file: Path | None = None   # the archive store's signing key (none: no archive store)
    archive_max_bytes: int | None = None   # the largest archive it takes (None: the gateway's default)
    archive_uploads: int | None = None     # archives received at once (None: the gateway's default)
    pool_key_file: Path | None = None      # the warm pools' key (none: no claims, Deployments only)
    archive_url: str | None = None         # the archive store as pods reach it (pooled functions' requirements)
    async_discard_after: float | None = None   # a deleted Function's queued events go after this (None: 60 s)


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()
    prometheus_url: str | None = None
    standalone: bool = False
    runtime_images: tuple[str, ...] = ()
    gateway_selector: str | None = None
    autoscale_interval: float = 2.0
    metrics_port: int | None = None
    health_port: int | None = None
    sync_timeout: float = 30.0    # the Kubernetes API's first listing, between warnings
    archive_url: str | None = None        # requirements built once: the store as pods reach it
    archive_key_file: str | None = None   # and its signing key
    build_timeout: int = 600              # seconds a build Job may run
    pool_size: int | None = None          # warm pools: instances per runtime per namespace
    pool_key_file: str | None = None      # and the platform's pool key


def _port(value: int, flag: str, *, allow_zero: bool = True) -> int:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise _usage(f"{flag} must be a TCP port (got {value})")
    return value


def gateway_url(flag: str | None) -> str:
    """--gateway, else $KFN_GATEWAY, else local mode's address; checked to look like a URL."""
    url = (flag or os.environ.get(naming.ENV_GATEWAY) or naming.DEFAULT_GATEWAY_URL).rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _usage(f"the gateway URL must look like http://HOST:PORT (got {url!r})")
    return url


def validate(args: argparse.Namespace) -> ValidateOptions:
    return ValidateOptions(files=tuple(args.files), output=args.output)


def local(args: argparse.Namespace) -> LocalOptions:
    directory = Path(args.directory)
    if not directory.exists():
        raise _usage(f"{directory}: no such directory (give the directory holding your Function manifests)")
    if not directory.is_dir():
        raise _usage(f"{directory}: not a directory (give the directory holding your Function manifests)")
    return LocalOptions(directory=directory, host=args.host, port=_port(args.port, "--port"),
                        log_level=args.log_level, limits=limits(args),
                        work_dir=Path(args.work_dir) if args.work_dir else None,
                        trusted_hops=_hops(args.trusted_hops), keys=_keys_file(args.keys),
                        connections=connections(args), cgroups=args.cgroups != "off",
                        strict_runtimes=args.strict_runtimes,
                        state_dir=Path(args.state_dir) if args.state_dir else None, nats_url=nats_url(args.nats_url),
                        async_retry_delays=_retry_delays(args.async_retry_delays),
                        async_lease=_timeout(args.async_lease, "--async-lease"),
                        async_discard_after=_timeout(args.async_discard_after, "--async-discard-after"),
                        init_timeout=_timeout(args.init_timeout, "--init-timeout"))


def nats_url(flag: str | None) -> str | None:
    """--nats-url, else $KFN_NATS_URL; None when neither says one. Checked to look like a NATS URL,
    with the credentials of $KFN_NATS_USER and $KFN_NATS_PASSWORD where it carries none."""
    url = flag if flag is not None else os.environ.get(ENV_NATS_URL)
    if url is None or not url.strip():
        return None
    url = url.strip()
    try:
        natsurl.servers(url)
    except ValueError as e:
        raise _usage(str(e)) from None
    return natsurl.in_environment(url, os.environ)


def _retry_delays(value: str | None) -> tuple[float, ...] | None:
    """--async-retry-delays 1m,2m: the waits before the 2nd and 3rd attempts of an async event."""
    if value is None:
        return None
    delays = []
    for part in value.split(","):
        try:
            seconds = units.parse_duration(part)
        except ValueError as e:
            raise _usage(f"--async-retry-delays {e}") from None
        if seconds < 0:
            raise _usage(f"--async-retry-delays must not be negative (got {part.strip()})")
        delays.append(seconds)
    if not 1 <= len(delays) <= 2:
        raise _usage(f"--async-retry-delays takes one or two durations, e.g. 1m,2m (got {value!r})")
    return tuple(delays)


def limits(args: argparse.Namespace) -> LimitOptions:
    if args.queue_limit is not None and args.queue_limit < 0:
        raise _usage(f"--queue-limit must be 0 or more (got {args.queue_limit})")
    queue_timeout: float | None = None
    if args.queue_timeout is not None:
        try:
            queue_timeout = units.parse_duration(args.queue_timeout)
        except ValueError as e:
            raise _usage(f"--queue-timeout {e}") from None
    return LimitOptions(max_body_bytes=_size(args.max_body_size, "--max-body-size"), queue_limit=args.queue_limit,
                        queue_timeout=queue_timeout,
                        max_async_payload_bytes=_size(args.max_async_payload_size, "--max-async-payload-size"))


def _positive(value: int | None, flag: str) -> int | None:
    """A positive count, None when the flag was not given."""
    if value is not None and value <= 0:
        raise _usage(f"{flag} {value}: must be at least 1")
    return value


def _size(value: str | None, flag: str) -> int | None:
    """A positive size in bytes (1Mi, 256Ki, 1000000), None when the flag was not given."""
    if value is None:
        return None
    try:
        size = int(units.parse_quantity(value))
    except ValueError as e:
        raise _usage(f"{flag} {e}") from None
    if size <= 0:
        raise _usage(f"{flag} must be positive (got {value})")
    return size


def connections(args: argparse.Namespace) -> ConnectionOptions:
    return ConnectionOptions(header_timeout=_timeout(args.header_timeout, "--header-timeout"),
                             body_timeout=_timeout(args.body_timeout, "--body-timeout"),
                             idle_timeout=_timeout(args.idle_timeout, "--idle-timeout"),
                             send_timeout=_timeout(args.send_timeout, "--send-timeout"),
                             max_connections=_max_connections(args.max_connections))


def _max_connections(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise _usage(f"--max-connections must be 1 or more (got {value})")
    return value


def _timeout(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = units.parse_duration(value)
    except ValueError as e:
        raise _usage(f"{flag} {e}") from None
    if not seconds > 0:
        raise _usage(f"{flag} must be positive (got {value})")
    return seconds


def _keys_file(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise _usage(f"--keys {value}: no such file (see SECURITY.md for its format)")
    return path


def api_key(flag: str | None) -> str | None:
    """--api-key, else $KFN_API_KEY; None when neither says one."""
    key = flag if flag is not None else os.environ.get(naming.ENV_API_KEY)
    if key is None or not key.strip():
        return None
    key = key.strip()
    if any(c.isspace() or not c.isprintable() for c in key):
        raise _usage("the API key must not contain spaces or control characters")
    return key


def remote(args: argparse.Namespace) -> RemoteOptions:
    return RemoteOptions(gateway=gateway_url(args.gateway), output=args.output, api_key=api_key(args.api_key))


def invoke(args: argparse.Namespace) -> InvokeOptions:
    if not args.timeout > 0:
        raise _usage(f"--timeout must be positive (got {args.timeout:g})")
    return InvokeOptions(remote=remote(args), name=args.name, data=args.data, method=args.method, path=args.path,
                         headers=tuple(args.header), timeout=args.timeout)


def async_list(args: argparse.Namespace) -> AsyncListOptions:
    if not 1 <= args.limit <= 1000:
        raise _usage(f"--limit must be from 1 to 1000 (got {args.limit})")
    return AsyncListOptions(remote=remote(args), name=args.name, limit=args.limit)


def async_replay(args: argparse.Namespace) -> AsyncReplayOptions:
    return AsyncReplayOptions(remote=remote(args), name=args.name, ids=tuple(args.ids))


def logs(args: argparse.Namespace) -> LogsOptions:
    if args.tail < 0:
        raise _usage(f"--tail must be 0 or more (got {args.tail})")
    return LogsOptions(remote=remote(args), name=args.name, follow=args.follow, tail=args.tail, build=args.build)


def gateway(args: argparse.Namespace) -> GatewayOptions:
    if args.shutdown_delay < 0:
        raise _usage(f"--shutdown-delay must be 0 or more (got {args.shutdown_delay:g})")
    admin_namespace = args.admin_namespace or os.environ.get("POD_NAMESPACE") or "kfn-system"
    port = _port(args.port, "--port")
    health_port = args.health_port
    if health_port is not None:
        _port(health_port, "--health-port", allow_zero=False)
        if health_port == port:
            raise _usage(f"--health-port must differ from --port (both {port})")
    return GatewayOptions(host=args.host, port=port, health_port=health_port, namespaces=tuple(args.namespace),
                          default_namespace=args.default_namespace, shutdown_delay=args.shutdown_delay,
                          log_level=args.log_level, trusted_hops=_hops(args.trusted_hops),
                          system_auth=not args.no_system_auth, admin_namespace=admin_namespace,
                          keys=_keys_file(args.keys), connections=connections(args), limits=limits(args),
                          nats_url=nats_url(args.nats_url), replicas=_replicas(args.replicas),
                          peers_service=_service_name(getattr(args, "peers_service", None)),
                          region=_region(args.region), sync_timeout=_sync_timeout(args.sync_timeout),
                          archive_key_file=_archive_key_file(args.archive_key_file),
                          archive_max_bytes=_size(args.archive_max_bytes, "--archive-max-bytes"),
                          archive_uploads=_positive(args.archive_uploads, "--archive-uploads"),
                          pool_key_file=_archive_key_file(getattr(args, "pool_key_file", None)),
                          archive_url=_url(getattr(args, "archive_url", None), "--archive-url"),
                          async_discard_after=_timeout(getattr(args, "async_discard_after", None),
                                                       "--async-discard-after"))


def _url(value: str | None, flag: str) -> str | None:
    """An http(s)://HOST[:PORT][/PATH] URL without its trailing slash, or None when not given."""
    if value is None or not value.strip():
        return None
    url = value.strip().rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _usage(f"{flag} must look like http://HOST:PORT (got {value!r})")
    return url


def _archive_key_file(value: str | None) -> Path | None:
    # Read (and refused if missing or short) when the gateway starts: a mounted Secret's path need
    # not exist where the command line is only parsed.
    return None if value is None else Path(value)


def _sync_timeout(value: float) -> float:
    if not value > 0:
        raise _usage(f"--sync-timeout must be positive (got {value:g})")
    return value


def _region(flag: str | None) -> str:
    """--region, else $KFN_REGION (what the operator gives the functions), else us-east-1."""
    value = (flag if flag is not None else os.environ.get(contract.ENV_REGION, "")).strip()
    return value or awslambda.DEFAULT_REGION


def _service_name(value: str | None) -> str | None:
    """--peers-service: a Service name (a DNS label), or None when not given."""
    if value is None or not value.strip():
        return None
    name = value.strip()
    if not _DNS_LABEL.fullmatch(name):
        raise _usage(f"--peers-service must be a Service name (up to 63 lower-case letters, digits and '-', "
                     f"starting with a letter; got {value!r})")
    return name


def _replicas(flag: int | None) -> int:
    """--replicas, else $KFN_GATEWAY_REPLICAS, else 1."""
    if flag is not None:
        value, source = flag, "--replicas"
    else:
        raw = os.environ.get(ENV_GATEWAY_REPLICAS, "").strip()
        if not raw:
            return 1
        try:
            value, source = int(raw), f"${ENV_GATEWAY_REPLICAS}"
        except ValueError:
            raise _usage(f"${ENV_GATEWAY_REPLICAS} must be a whole number (got {raw!r})") from None
    if value < 1:
        raise _usage(f"{source} must be 1 or more (got {value})")
    return value


def _hops(value: int) -> int:
    if value < 0:
        raise _usage(f"--trusted-hops must be 0 or more (got {value})")
    return value


def operator(args: argparse.Namespace) -> OperatorOptions:
    if not args.autoscale_interval > 0:
        raise _usage(f"--autoscale-interval must be positive (got {args.autoscale_interval:g})")
    for flag, port in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        if port is not None:
            _port(port, flag, allow_zero=False)
    return OperatorOptions(namespaces=tuple(args.namespace), prometheus_url=args.prometheus_url,
                           standalone=args.standalone, runtime_images=tuple(args.runtime_image),
                           gateway_selector=args.gateway_selector, autoscale_interval=args.autoscale_interval,
                           metrics_port=args.metrics_port, health_port=args.health_port,
                           sync_timeout=_sync_timeout(args.sync_timeout), archive_url=args.archive_url,
                           archive_key_file=args.archive_key_file, build_timeout=args.build_timeout,
                           pool_size=args.pool_size, pool_key_file=args.pool_key_file)


# -- kfn secrets ensure --------------------------------------------------------------------------------

# What `kfn secrets ensure` may generate for an entry: FORMAT → (what it is, its size).
SECRET_FORMATS = {
    "alnum": "40 ASCII letters and digits",
    # A NATS password: nats-server reads $VAR references of its configuration as values, so a
    # password of digits first ("1e5...") would become a number; letters never do.
    "letters": "40 ASCII letters",
    "bytes": "32 random bytes",
}


@dataclass(frozen=True)
class SecretEntry:
    """One entry `kfn secrets ensure` generates: Secret `name`, data key `key`, value `format`."""

    name: str
    key: str
    format: str = "alnum"


@dataclass(frozen=True)
class SecretsEnsureOptions:
    namespace: str
    entries: tuple[SecretEntry, ...]
    labels: tuple[tuple[str, str], ...] = ()
    attempts: int = 5
    annotations: tuple[tuple[str, str], ...] = ()


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def secrets_ensure(args: argparse.Namespace) -> SecretsEnsureOptions:
    """--secret NAME:KEY[:FORMAT] (repeated), --label and --annotation KEY=VALUE, --namespace, --attempts."""
    if not _DNS_SUBDOMAIN.fullmatch(args.namespace or ""):
        raise _usage(f"--namespace must be a namespace name (got {args.namespace!r})")
    entries = []
    for spec in args.secret:
        name, _, rest = spec.partition(":")
        key, _, format_ = rest.partition(":")
        format_ = format_ or "alnum"
        if not _DNS_SUBDOMAIN.fullmatch(name) or not _DATA_KEY.fullmatch(key):
            raise _usage(f"--secret must be NAME:KEY[:FORMAT], a Secret's name and a data key (got {spec!r})")
        if format_ not in SECRET_FORMATS:
            raise _usage(f"--secret {spec}: FORMAT must be one of {', '.join(SECRET_FORMATS)} (got {format_!r})")
        entries.append(SecretEntry(name, key, format_))
    labels = []
    for label in args.label:
        key, equals, value = label.partition("=")
        if not equals or not key:
            raise _usage(f"--label must be KEY=VALUE (got {label!r})")
        labels.append((key, value))
    annotations = []
    for annotation in getattr(args, "annotation", None) or ():
        key, equals, value = annotation.partition("=")
        if not equals or not key:
            raise _usage(f"--annotation must be KEY=VALUE (got {annotation!r})")
        annotations.append((key, value))
    if args.attempts < 1:
        raise _usage(f"--attempts must be 1 or more (got {args.attempts})")
    return SecretsEnsureOptions(namespace=args.namespace, entries=tuple(entries), labels=tuple(labels),
                                attempts=args.attempts, annotations=tuple(annotations))
