"""The Function resource: the one definition every component reads.

The operator builds Deployments from it, the gateway and the autoscaler read its concurrency and
scale settings, local mode starts runtime processes from it, `kfn validate` checks files against
it, and the CRD's schema is generated from it (see `kfn.crd`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kfn.core import naming, schedules, units
from kfn.core.routes import DEFAULT as DEFAULT_ROUTE
from kfn.core.routes import MAX_ROUTES, InvalidRoute, RouteTable, check_routes, parse_route

# The language runtimes, written once: the CRD's enum, the operator's default images and the
# chart's runtimeImages all derive from this.
Runtime = Literal["python3.11", "python3.12", "python3.13", "nodejs20", "nodejs22"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
DEFAULT_RUNTIME: Runtime = "python3.12"
# Every AWS Lambda base image's ENTRYPOINT (it runs the image's runtime interface client).
AWS_BASE_IMAGE_ENTRYPOINT = ("/lambda-entrypoint.sh",)
PayloadFormat = Literal["2.0", "1.0"]
AuthType = Literal["none", "key"]

# Kubernetes object names that also work as DNS labels (Services need that).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 63
MAX_TIMEOUT_SECONDS = 900.0  # AWS Lambda's limit
# A ConfigMap holds at most 1 MiB; inline code goes into one.
MAX_INLINE_SOURCE_BYTES = 1024 * 1024 - 16 * 1024


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("kfn", message)


def _duration(value: object) -> float:
    try:
        return units.parse_duration(value)
    except ValueError as e:
        raise _error(str(e)) from None


def _quantity(value: object) -> str:
    try:
        units.parse_quantity(value)
    except ValueError as e:
        raise _error(str(e)) from None
    return str(value)


# Durations are seconds inside kfn; manifests may say "30s" or 30. The CRD accepts both shapes
# and leaves the grammar to this model (see the operator's InvalidSpec condition).
Duration = Annotated[
    float,
    pydantic.BeforeValidator(_duration),
    pydantic.WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
Quantity = Annotated[
    str,
    pydantic.BeforeValidator(_quantity),
    pydantic.WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


class _Model(BaseModel):
    # Unknown fields are errors, so a typo such as `minReplica` is reported instead of ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class KeySelector(_Model):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    optional: bool | None = None


class FieldSelector(_Model):
    fieldPath: str = Field(min_length=1)
    apiVersion: str | None = None


class EnvVarSource(_Model):
    secretKeyRef: KeySelector | None = None
    configMapKeyRef: KeySelector | None = None
    fieldRef: FieldSelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        given = [k for k in ("secretKeyRef", "configMapKeyRef", "fieldRef") if getattr(self, k) is not None]
        if len(given) != 1:
            raise _error("must set exactly one of secretKeyRef, configMapKeyRef or fieldRef")
        return self


class EnvVar(_Model):
    """An environment variable, in the shape of a Kubernetes container's `env` entries."""

    name: str
    value: str | None = None
    valueFrom: EnvVarSource | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _ENV_NAME.match(name):
            raise _error(f"must be a valid environment variable name (got {name!r})")
        if name.startswith("KFN_"):
            raise _error(f"names starting with KFN_ are reserved for the platform (got {name!r})")
        return name

    @field_validator("value", mode="before")
    @classmethod
    def _stringify(cls, value: object) -> object:
        # YAML turns `value: 3` or `value: true` into non-strings; Kubernetes would reject them,
        # but the intent is obvious and Knative/OpenFaaS users expect it to work.
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return value

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise _error("must set value or valueFrom, not both")
        return self


class Source(_Model):
    """Where the function's code comes from when it is not baked into a custom image."""

    files: dict[str, str] | None = Field(
        default=None, min_length=1,
        description="Inline files: file name → content. Mounted as the code directory.")
    configMap: LocalObjectReference | None = Field(
        default=None, description="A ConfigMap in the function's namespace whose keys are file names.")

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        if files is None:
            return None
        for path in files:
            check_file_name(path)
        size = sum(len(k.encode()) + len(v.encode()) for k, v in files.items())
        if size > MAX_INLINE_SOURCE_BYTES:
            raise _error(f"inline files must total at most {MAX_INLINE_SOURCE_BYTES} bytes (got {size}); "
                         "use source.configMap or a custom image")
        return files

    @model_validator(mode="after")
    def _one_origin(self) -> Source:
        if (self.files is None) == (self.configMap is None):
            raise _error("must set exactly one of files or configMap")
        return self


def check_file_name(path: str) -> str:
    """Inline file names become ConfigMap keys and files in the code directory: no traversal."""
    if not path:
        raise _error("file names must not be empty")
    if "/" in path or "\\" in path:
        raise _error(f"file names must not contain '/' (got {path!r}); nested directories need "
                     "source.configMap or a custom image")
    if path in (".", "..") or path.startswith(".."):
        raise _error(f"file names must not be '.' or start with '..' (got {path!r})")
    if not re.match(r"^[-._a-zA-Z0-9]+$", path):
        raise _error(f"file names may contain only letters, digits, '-', '_' and '.' (got {path!r})")
    return path


# A host a function may claim: a DNS name of two labels or more whose last starts with a letter, so
# never an IP address (which would take every request sent to the gateway by its address: probes,
# scrapes, kfn local's 127.0.0.1) nor a bare name such as localhost or a Service's short name.
_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]([-a-z0-9]*[a-z0-9])?$")
# Handlers as the CRD checks them too (Python's keywords are the model's alone).
NODE_HANDLER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.[A-Za-z_$][A-Za-z0-9_$]*$"
PYTHON_HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
_NODE_HANDLER = re.compile(NODE_HANDLER_PATTERN)


class CorsSpec(_Model):
    """CORS answered by the gateway, with API Gateway HTTP APIs' settings."""

    allowOrigins: list[str] = Field(default_factory=list,
                                    description="Origins allowed, e.g. https://app.example.com, or *.")
    allowMethods: list[str] = Field(default_factory=list, description="Methods allowed in preflights, or *.")
    allowHeaders: list[str] = Field(default_factory=list, description="Request headers allowed, or *.")
    exposeHeaders: list[str] = Field(default_factory=list, description="Response headers scripts may read.")
    maxAge: int | None = Field(default=None, ge=-1, le=86400, description="Seconds a preflight may be cached.")
    allowCredentials: bool = False

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> CorsSpec:
        if not self.allowOrigins:
            raise _error("spec.http.cors.allowOrigins: must name at least one origin")
        return self


class HttpAuth(_Model):
    """Who may call the function over HTTP (checked by the gateway; see SECURITY.md)."""

    type: AuthType = Field(
        default="none",
        description="none: anyone may call it (public). key: only callers presenting an API key of the "
                    "function's namespace, or an admin key (Authorization: Bearer KEY, or X-Api-Key: KEY).")


def _route_key(key: str) -> str:
    try:
        parse_route(key)
    except InvalidRoute as e:
        raise _error(str(e)) from None
    return key


# One route key, checked on its own (so an error names its index: spec.http.routes[1]).
RouteKey = Annotated[str, pydantic.AfterValidator(_route_key)]


class HttpSpec(_Model):
    """How HTTP requests reach the function."""

    payloadFormat: PayloadFormat = Field(
        default="2.0", description="The API Gateway HTTP API event format: 2.0 (default) or 1.0.")
    hosts: list[str] = Field(
        default_factory=list,
        description="Serve the function at the root of these hosts (requests routed by their Host header).")
    cors: CorsSpec | None = Field(default=None, description="CORS answered by the gateway (preflights too).")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="Public, or only for callers with an API key.")
    routes: list[RouteKey] = Field(
        default_factory=lambda: [DEFAULT_ROUTE], min_length=1, max_length=MAX_ROUTES,
        description="Routes as API Gateway HTTP APIs write them: 'GET /users/{id}', 'ANY /{proxy+}', or "
                    "$default (the catch-all, the default). They fill the event's routeKey, resource and "
                    "pathParameters; a request that matches none is answered 404 when $default is not listed.")

    @field_validator("routes")
    @classmethod
    def _distinct_routes(cls, keys: list[str]) -> list[str]:
        try:
            return check_routes(keys)
        except InvalidRoute as e:
            raise _error(str(e)) from None

    @functools.cached_property
    def route_table(self) -> RouteTable:
        """The routes, ready to match requests (built once per Function)."""
        return RouteTable(self.routes)

    @field_validator("hosts")
    @classmethod
    def _hostnames(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if len(host) > 253 or not _HOSTNAME.match(host):
                raise _error(f"each host must be a lowercase DNS name of two labels or more such as fn.example.com, "
                             f"not an IP address (got {host!r})")
        if len(set(hosts)) != len(hosts):
            raise _error("hosts must not repeat")
        return hosts


class ImageConfig(_Model):
    """What a Lambda container image's ENTRYPOINT, CMD and WORKDIR are (Lambda's ImageConfig).

    kfn cannot read an image's own configuration (the cluster does not expose it), so a function
    whose image is not built on an AWS Lambda base image names its entrypoint here.
    """

    entryPoint: list[str] = Field(
        default_factory=lambda: list(AWS_BASE_IMAGE_ENTRYPOINT),
        description="The image's entrypoint: a runtime interface client (default: the AWS base images' "
                    "/lambda-entrypoint.sh).")
    command: list[str] | None = Field(
        default=None, description="Its arguments (the image's CMD); default: [spec.handler].")
    workingDirectory: str | None = Field(default=None, description="Default: the image's WORKDIR.")

    @field_validator("entryPoint")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value or not all(value):
            raise _error("must name a program (got an empty entry)")
        return value


class ScaleSpec(_Model):
    minReplicas: int = Field(default=0, ge=0, description="Instances kept even when idle; 0 allows scale to zero.")
    maxReplicas: int = Field(default=10, description="Upper bound on instances (at least 1).")
    targetConcurrency: float | None = Field(
        default=None, gt=0,
        description="In-flight requests per instance the autoscaler aims for; default 70% of concurrency.")
    idleTimeout: Duration = Field(
        default=60.0, description="Time with no requests before scaling to zero (when minReplicas is 0).")
    stableWindow: Duration = Field(
        default=60.0, description="Window over which average concurrency is taken for scaling decisions.")

    @field_validator("maxReplicas")
    @classmethod
    def _max_at_least_min(cls, value: int, info: pydantic.ValidationInfo) -> int:
        low = info.data.get("minReplicas")
        if low is not None and value < low:
            raise _error(f"must be >= minReplicas (got {value} < {low})")
        if value < 1:
            raise _error(f"must be >= 1 (got {value})")
        return value

    @field_validator("idleTimeout", "stableWindow")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            raise _error(f"must be a positive duration (got {units.format_duration(value)})")
        if value > 24 * 3600:
            raise _error(f"must be at most 24h (got {units.format_duration(value)})")
        return value


class Resources(_Model):
    """Compute resources of one instance, in the Kubernetes shape."""

    requests: dict[str, Quantity] = Field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: dict[str, Quantity] = Field(default_factory=lambda: {"memory": "256Mi"})

    @property
    def memory_limit_mb(self) -> int:
        memory = self.limits.get("memory") or self.requests.get("memory") or "256Mi"
        return max(1, units.quantity_to_mebibytes(memory))


# Lambda's asynchronous invocation settings (PutFunctionEventInvokeConfig) and their bounds.
MAX_RETRY_ATTEMPTS = 2
MIN_EVENT_AGE_SECONDS = 60
MAX_EVENT_AGE_SECONDS = 21600
# A function reference (NAME or NAME.NAMESPACE) and a destination URL, as the CRD checks them too.
FUNCTION_REF_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
DESTINATION_URL_PATTERN = r"^https?://[^\s/?#]+([/?#]\S*)?$"
# A NATS subject: dot-separated tokens without spaces; `*` a whole token, `>` only the last one.
NATS_SUBJECT_PATTERN = r"^([^\s.*>]+|\*)(\.([^\s.*>]+|\*))*(\.>)?$|^>$"
_FUNCTION_REF = re.compile(FUNCTION_REF_PATTERN)
_DESTINATION_URL = re.compile(DESTINATION_URL_PATTERN)
_NATS_SUBJECT = re.compile(NATS_SUBJECT_PATTERN)
# The first token of every subject kfn itself uses on NATS (kfn.events.jetstream: kfn.async, kfn.dlq,
# kfn.ids), which no trigger may subscribe to.
RESERVED_SUBJECT_ROOT = "kfn"


class Destination(_Model):
    """Where the record of an asynchronous invocation's outcome goes (Lambda's destinations):
    another function, invoked asynchronously with the record as its event, or an HTTP URL that
    receives the record as a JSON POST."""

    function: str | None = Field(
        default=None, description="A function: NAME (in this function's namespace) or NAME.NAMESPACE.")
    url: str | None = Field(default=None, description="An http:// or https:// URL, POSTed the record as JSON.")

    @field_validator("function")
    @classmethod
    def _function_ref(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 2 * MAX_NAME_LENGTH + 1 or not _FUNCTION_REF.match(value)):
            raise _error(f"must be a function name, NAME or NAME.NAMESPACE (got {value!r})")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not _DESTINATION_URL.match(value):
            raise _error(f"must be an http:// or https:// URL (got {value!r})")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        if (self.function is None) == (self.url is None):
            raise _error("must set exactly one of function or url")
        return self


class AsyncSpec(_Model):
    """How asynchronous invocations (Event, /async-function/) are retried and reported, with
    Lambda's settings and bounds. Every event that ends in failure is also kept in the
    dead-letter store (`kfn async list`, `kfn async replay`)."""

    maxRetryAttempts: int = Field(
        default=MAX_RETRY_ATTEMPTS, ge=0, le=MAX_RETRY_ATTEMPTS,
        description="Retries after a function error (0-2); Lambda waits 1 minute, then 2.")
    maximumEventAgeSeconds: int = Field(
        default=MAX_EVENT_AGE_SECONDS, ge=MIN_EVENT_AGE_SECONDS, le=MAX_EVENT_AGE_SECONDS,
        description="An event not processed within this many seconds of its arrival is given up (60-21600).")
    onSuccess: Destination | None = Field(default=None, description="Told of each successful invocation.")
    onFailure: Destination | None = Field(
        default=None, description="Told of each event given up (retries exhausted, or too old).")


class NatsTrigger(_Model):
    """Messages on a NATS subject, each one an asynchronous invocation with the message as its event."""

    subject: str = Field(description="The subject (wildcards * and > allowed), e.g. orders.created.")
    stream: str | None = Field(
        default=None,
        description="A JetStream stream holding the subject: messages are then consumed durably and acknowledged "
                    "only once stored. Without it, a core NATS subscription (a message is stored before it is "
                    "answered, but what is published while no trigger listens is not seen).")

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not _NATS_SUBJECT.match(value):
            raise _error(f"must be a NATS subject such as orders.created (got {value!r})")
        first = value.split(".", 1)[0]
        if first in ("*", ">", RESERVED_SUBJECT_ROOT) or first.startswith(("$", "_INBOX")):
            # The trigger listens on the platform's connection, which carries every namespace's
            # stored events (kfn.async.NAMESPACE.NAME, kfn.dlq..., kfn.ids...), NATS's API and
            # system subjects and request replies: none of it is a function's to read.
            raise _error(f"must start with a subject token of the application's own, not a wildcard, "
                         f"{RESERVED_SUBJECT_ROOT!r} (kfn's), '$...' (NATS's) or '_INBOX' (got {value!r})")
        return value


# The trigger kinds, written once: a new kind is a field of Trigger named here (and a source that
# turns its events into asynchronous invocations).
TRIGGER_KINDS: tuple[str, ...] = ("schedule", "nats")
MAX_TRIGGERS = 16


class Trigger(_Model):
    """An event source other than HTTP: exactly one kind per entry."""

    schedule: str | None = Field(
        default=None,
        description="rate(5 minutes), cron(0 12 * * ? *) (EventBridge) or a five-field cron line, in UTC; "
                    "each tick invokes the function asynchronously with EventBridge's Scheduled Event.")
    nats: NatsTrigger | None = Field(default=None, description="A NATS subject whose messages invoke the function.")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                schedules.parse(value)
            except schedules.InvalidSchedule as e:
                raise _error(str(e)) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [name for name in TRIGGER_KINDS if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise _error(f"must set exactly one of {', '.join(TRIGGER_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in TRIGGER_KINDS if getattr(self, name) is not None)


class FunctionSpec(_Model):
    runtime: Runtime = Field(
        default=DEFAULT_RUNTIME, description="The language runtime; selects the runtime image.")
    # image comes before handler: the handler's check depends on it.
    image: str | None = Field(
        default=None, description="A Lambda container image (its entrypoint a runtime interface client), "
                                  "instead of source and runtime.")
    imageConfig: ImageConfig | None = Field(
        default=None, description="The image's entrypoint, command and working directory (Lambda's ImageConfig).")
    handler: str | None = Field(
        default=None, validate_default=True,
        description="The entry point: module.function (Python, e.g. main.handler) or file.export "
                    "(Node.js, e.g. index.handler); for an image, its CMD (optional).")
    source: Source | None = Field(default=None, description="Code: inline files or a ConfigMap.")
    requirements: list[str] = Field(
        default_factory=list, description="pip requirement lines, installed at instance start.")
    env: list[EnvVar] = Field(default_factory=list)
    timeout: Duration = Field(default=30.0, description="Per-invocation timeout (e.g. 30s); at most 15m.")
    concurrency: int = Field(default=10, ge=1, le=1000, description="Max in-flight requests per instance.")
    scale: ScaleSpec = Field(default_factory=ScaleSpec)
    resources: Resources = Field(default_factory=Resources)
    http: HttpSpec = Field(default_factory=HttpSpec)
    async_: AsyncSpec = Field(
        default_factory=AsyncSpec, alias="async",
        description="Asynchronous invocations: retries, maximum event age, destinations.")
    triggers: list[Trigger] = Field(
        default_factory=list, max_length=MAX_TRIGGERS,
        description="Event sources besides HTTP: schedules and NATS subjects.")

    @field_validator("handler")
    @classmethod
    def _handler_of_the_runtime(cls, handler: str | None, info: pydantic.ValidationInfo) -> str | None:
        if info.data.get("image") is not None:
            # An image's CMD: anything its runtime interface client understands.
            if handler is not None and (not handler.strip() or any(c.isspace() for c in handler)):
                raise _error(f"must not be blank or contain spaces (got {handler!r})")
            return handler
        if handler is None:
            raise _error("is required")
        _check_handler(handler, info.data.get("runtime") or DEFAULT_RUNTIME)
        return handler

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, value: float) -> float:
        if not (0 < value <= MAX_TIMEOUT_SECONDS):
            raise _error(f"must be more than 0 and at most 15m (got {units.format_duration(value)})")
        return value

    @field_validator("requirements")
    @classmethod
    def _requirement_lines(cls, lines: list[str]) -> list[str]:
        for line in lines:
            # One requirement per entry: a newline would smuggle extra pip options in.
            if not line.strip() or "\n" in line or line.lstrip().startswith("-"):
                raise _error(f"each entry must be one pip requirement such as 'requests==2.32.3' (got {line!r})")
        return lines

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in seen:
                raise _error(f"duplicate variable {var.name!r}")
            seen.add(var.name)
        return env

    @model_validator(mode="after")
    def _code_and_scale(self) -> FunctionSpec:
        if self.source is None and self.image is None:
            raise _error("must set source.files, source.configMap or image")
        if self.image is not None:
            if self.source is not None:
                raise _error("spec.source: an image carries its own code; set source or image, not both")
            if self.requirements:
                raise _error("spec.requirements: install them in the image")
            config = self.imageConfig or ImageConfig()
            if config.command is None and self.handler is None:
                raise _error("spec.handler: an image needs the handler (its CMD) or imageConfig.command")
        elif self.imageConfig is not None:
            raise _error("spec.imageConfig: only for an image")
        target = self.scale.targetConcurrency
        if target is not None and target > self.concurrency:
            raise PydanticCustomError(
                "kfn", "spec.scale.targetConcurrency: must be <= concurrency (got {target} > {limit})",
                {"target": _num(target), "limit": self.concurrency})
        return self

    @property
    def image_command(self) -> list[str]:
        """An image's entrypoint and its arguments, as its environments run them."""
        config = self.imageConfig or ImageConfig()
        command = config.command if config.command is not None else [self.handler] if self.handler else []
        return [*config.entryPoint, *command]

    @property
    def target_concurrency(self) -> float:
        """In-flight requests per instance that the autoscaler aims for."""
        if self.scale.targetConcurrency is not None:
            return self.scale.targetConcurrency
        return max(1.0, 0.7 * self.concurrency)


def _check_handler(handler: str, runtime: str) -> None:
    module, dot, function = handler.rpartition(".")
    if runtime.startswith("nodejs"):
        # Node.js: a file (without its extension, maybe in a directory) and its export.
        if not dot or not module or not _NODE_HANDLER.match(handler) or ".." in module.split("/"):
            raise _error(f"must be file.export, e.g. index.handler (got {handler!r})")
        return
    if not dot or not module:
        raise _error(f"must be module.function, e.g. main.handler (got {handler!r})")
    for part in [*module.split("."), function]:
        if not _IDENTIFIER.match(part) or keyword.iskeyword(part):
            raise _error(f"must be module.function made of Python identifiers (got {handler!r})")


class ObjectMeta(BaseModel):
    # Kubernetes adds many fields (uid, managedFields, ...): keep them, check only the name.
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > MAX_NAME_LENGTH or not _DNS_LABEL.match(name):
            raise _error(f"must be a lowercase DNS label of at most {MAX_NAME_LENGTH} characters "
                         f"(letters, digits and '-') (got {name!r})")
        return name


class Function(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    apiVersion: Literal["kfn.dev/v1alpha1"]
    kind: Literal["Function"]
    metadata: ObjectMeta
    spec: FunctionSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or naming.DEFAULT_NAMESPACE

    @functools.cached_property
    def ref(self) -> FunctionRef:
        # Cached (every loop over the functions asks for it, each second): a Function is immutable.
        return FunctionRef(self.namespace, self.name)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Function:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("ref", None)   # an update may rename it
        return copy

    def code_hash(self) -> str:
        """A short digest of what the instances run: changes when code, handler or requirements do."""
        blob = json.dumps({
            "files": self.spec.source.files if self.spec.source else None,
            "configMap": self.spec.source.configMap.name if self.spec.source and self.spec.source.configMap else None,
            "image": self.spec.image,
            "handler": self.spec.handler,
            "requirements": self.spec.requirements,
            "runtime": self.spec.runtime,
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def spec_hash(self) -> str:
        """A digest of the spec: changes whenever instances must be rolled. Who may call the
        function (spec.http.auth), which routes it answers (spec.http.routes), how its async events
        are retried (spec.async) and what triggers it (spec.triggers) are the gateway's business
        alone: changing them rolls nothing."""
        blob = json.dumps(self.spec.model_dump(mode="json", exclude={"http": {"auth", "routes"}, "async_": True,
                                                                     "triggers": True}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


class FunctionRef(NamedTuple):
    """Which function: its namespace and name (names are unique within a namespace only).

    Written `name.namespace` where one string must say it (OpenFaaS's form, used in URLs such as
    /function/hello.team-a and in metric labels); both parts are DNS labels, so the first dot
    separates them.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}.{self.namespace}"

    @classmethod
    def parse(cls, text: str, *, default_namespace: str = naming.DEFAULT_NAMESPACE) -> FunctionRef:
        """`name` (in `default_namespace`) or `name.namespace`; ValueError if either is not a DNS label."""
        name, dot, namespace = text.partition(".")
        if not dot:
            namespace = default_namespace
        for part in (name, namespace):
            if len(part) > MAX_NAME_LENGTH or not _DNS_LABEL.match(part):
                raise ValueError(f"not a function name: {text!r} (expected NAME or NAME.NAMESPACE)")
        return cls(namespace, name)


@dataclass(frozen=True)
class FieldError:
    path: str       # e.g. "spec.scale.maxReplicas"
    message: str    # e.g. "must be >= minReplicas (got 0 < 1)"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidFunction(ValueError):
    """A manifest that is not a valid Function; `errors` name each field path and the reason."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def parse_function(manifest: object) -> Function:
    """A Function from a decoded manifest, or InvalidFunction listing every problem."""
    if not isinstance(manifest, Mapping):
        raise InvalidFunction([FieldError("", f"a Function manifest must be a mapping (got {_kind_of(manifest)})")])
    try:
        return Function.model_validate(dict(manifest))
    except pydantic.ValidationError as e:
        raise InvalidFunction(_field_errors(e)) from None


def _field_errors(error: pydantic.ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for item in error.errors(include_url=False):
        path = _path(item["loc"])
        message = _message(item)
        # A model-level check may name its own, more precise path ("spec.scale.targetConcurrency: ...").
        if message.startswith("spec.") and ": " in message:
            path, message = message.split(": ", 1)
        out.append(FieldError(path, message))
    return out


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts and not part.isidentifier() and part not in ("function-after", "function-before"):
            # A dict key such as a file name: spec.source.files["../x"]
            parts.append(f"[{part!r}]")
        elif part.startswith(("function-", "literal[")):
            continue
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


def _message(item: Any) -> str:
    kind = item["type"]
    ctx = item.get("ctx") or {}
    got = item.get("input")
    if kind == "kfn":
        return str(item["msg"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {got!r})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound} (got {got!r})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer (got {got!r})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {got!r})"
    if kind in ("string_type",):
        return f"must be a string (got {_kind_of(got)})"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping (got {_kind_of(got)})"
    if kind in ("list_type",):
        return f"must be a list (got {_kind_of(got)})"
    if kind == "bool_parsing":
        return f"must be true or false (got {got!r})"
    return str(item["msg"])


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list"}.get(
        type(value), type(value).__name__)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
