"""The Function resource: the one definition every component reads.

The operator builds Deployments from it, the gateway and the autoscaler read its concurrency and
scale settings, local mode starts runtime processes from it, `kfn validate` checks files against
it, and the CRD's schema is generated from it (see `kfn.core.crd`).

This module holds the resource and its spec, which function a reference names (`FunctionRef`) and
how a manifest is parsed (`parse_function`, whose `InvalidFunction` names each field in error). The
spec's parts live beside it, one module each: `codespec` (runtime, handler, code, environment),
`httpspec` (routes, hosts, CORS, auth), `scalespec` (scaling, resources), `asyncspec` (retries,
destinations) and `triggerspec` (schedules, NATS); `fields` holds what they share.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kfn.core import naming, units
from kfn.core.asyncspec import AsyncSpec
from kfn.core.codespec import DEFAULT_RUNTIME, EnvVar, ImageConfig, Runtime, Source, check_handler
from kfn.core.fields import DNS_LABEL, MAX_NAME_LENGTH, Duration, StrictModel, invalid
from kfn.core.httpspec import HttpSpec
from kfn.core.scalespec import Resources, ScaleSpec
from kfn.core.triggerspec import MAX_TRIGGERS, Trigger

MAX_TIMEOUT_SECONDS = 900.0  # AWS Lambda's limit


class FunctionSpec(StrictModel):
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
                raise invalid(f"must not be blank or contain spaces (got {handler!r})")
            return handler
        if handler is None:
            raise invalid("is required")
        check_handler(handler, info.data.get("runtime") or DEFAULT_RUNTIME)
        return handler

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, value: float) -> float:
        if not (0 < value <= MAX_TIMEOUT_SECONDS):
            raise invalid(f"must be more than 0 and at most 15m (got {units.format_duration(value)})")
        return value

    @field_validator("requirements")
    @classmethod
    def _requirement_lines(cls, lines: list[str]) -> list[str]:
        for line in lines:
            # One requirement per entry: a newline would smuggle extra pip options in.
            if not line.strip() or "\n" in line or line.lstrip().startswith("-"):
                raise invalid(f"each entry must be one pip requirement such as 'requests==2.32.3' (got {line!r})")
        return lines

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in seen:
                raise invalid(f"duplicate variable {var.name!r}")
            seen.add(var.name)
        return env

    @model_validator(mode="after")
    def _code_and_scale(self) -> FunctionSpec:
        if self.source is None and self.image is None:
            raise invalid("must set source.files, source.configMap or image")
        if self.image is not None:
            if self.source is not None:
                raise invalid("spec.source: an image carries its own code; set source or image, not both")
            if self.requirements:
                raise invalid("spec.requirements: install them in the image")
            config = self.imageConfig or ImageConfig()
            if config.command is None and self.handler is None:
                raise invalid("spec.handler: an image needs the handler (its CMD) or imageConfig.command")
        elif self.imageConfig is not None:
            raise invalid("spec.imageConfig: only for an image")
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


class ObjectMeta(BaseModel):
    # Kubernetes adds many fields (uid, managedFields, ...): keep them, check only the name and the
    # namespace (kfn local reads them from files: both name directories of its work dir).
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns_label(cls, name: str | None) -> str | None:
        if name is not None and (len(name) > MAX_NAME_LENGTH or not DNS_LABEL.fullmatch(name)):
            raise invalid(f"must be a lowercase DNS label of at most {MAX_NAME_LENGTH} characters "
                         f"(letters, digits and '-') (got {name!r})")
        return name

    @field_validator("name")
    @classmethod
    def _not_a_pool(cls, name: str) -> str:
        if name.startswith(naming.POOL_NAME_PREFIX):
            raise invalid(f"must not start with {naming.POOL_NAME_PREFIX!r}: warm pools are named so (got {name!r})")
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
            if len(part) > MAX_NAME_LENGTH or not DNS_LABEL.fullmatch(part):
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
