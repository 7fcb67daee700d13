"""What a function runs: its runtime, handler, code (inline files, a ConfigMap or a Lambda container
image and its ImageConfig) and environment variables."""
from __future__ import annotations

import keyword
import re
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from kfn.core.fields import StrictModel, invalid

# The language runtimes, written once: the CRD's enum, the operator's default images and the
# chart's runtimeImages all derive from this.
Runtime = Literal["python3.11", "python3.12", "python3.13", "nodejs20", "nodejs22"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
DEFAULT_RUNTIME: Runtime = "python3.12"
# Every AWS Lambda base image's ENTRYPOINT (it runs the image's runtime interface client).
AWS_BASE_IMAGE_ENTRYPOINT = ("/lambda-entrypoint.sh",)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A ConfigMap holds at most 1 MiB; inline code goes into one.
MAX_INLINE_SOURCE_BYTES = 1024 * 1024 - 16 * 1024
# Handlers as the CRD checks them too (Python's keywords are the model's alone).
NODE_HANDLER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.[A-Za-z_$][A-Za-z0-9_$]*$"
PYTHON_HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
_NODE_HANDLER = re.compile(NODE_HANDLER_PATTERN)


class LocalObjectReference(StrictModel):
    name: str = Field(min_length=1)


class KeySelector(StrictModel):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    optional: bool | None = None


class FieldSelector(StrictModel):
    fieldPath: str = Field(min_length=1)
    apiVersion: str | None = None


class EnvVarSource(StrictModel):
    secretKeyRef: KeySelector | None = None
    configMapKeyRef: KeySelector | None = None
    fieldRef: FieldSelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        given = [k for k in ("secretKeyRef", "configMapKeyRef", "fieldRef") if getattr(self, k) is not None]
        if len(given) != 1:
            raise invalid("must set exactly one of secretKeyRef, configMapKeyRef or fieldRef")
        return self


class EnvVar(StrictModel):
    """An environment variable, in the shape of a Kubernetes container's `env` entries."""

    name: str
    value: str | None = None
    valueFrom: EnvVarSource | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _ENV_NAME.fullmatch(name):
            raise invalid(f"must be a valid environment variable name (got {name!r})")
        if name.startswith("KFN_"):
            raise invalid(f"names starting with KFN_ are reserved for the platform (got {name!r})")
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
            raise invalid("must set value or valueFrom, not both")
        return self


class Source(StrictModel):
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
            raise invalid(f"inline files must total at most {MAX_INLINE_SOURCE_BYTES} bytes (got {size}); "
                         "use source.configMap or a custom image")
        return files

    @model_validator(mode="after")
    def _one_origin(self) -> Source:
        if (self.files is None) == (self.configMap is None):
            raise invalid("must set exactly one of files or configMap")
        return self


def check_file_name(path: str) -> str:
    """Inline file names become ConfigMap keys and files in the code directory: no traversal."""
    if not path:
        raise invalid("file names must not be empty")
    if "/" in path or "\\" in path:
        raise invalid(f"file names must not contain '/' (got {path!r}); nested directories need "
                     "source.configMap or a custom image")
    if path in (".", "..") or path.startswith(".."):
        raise invalid(f"file names must not be '.' or start with '..' (got {path!r})")
    if not re.fullmatch(r"[-._a-zA-Z0-9]+", path):
        raise invalid(f"file names may contain only letters, digits, '-', '_' and '.' (got {path!r})")
    return path


class ImageConfig(StrictModel):
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
            raise invalid("must name a program (got an empty entry)")
        return value


def check_handler(handler: str, runtime: str) -> None:
    """Raises the model's error unless `handler` names an entry point the way `runtime` writes one."""
    module, dot, function = handler.rpartition(".")
    if runtime.startswith("nodejs"):
        # Node.js: a file (without its extension, maybe in a directory) and its export.
        if not dot or not module or not _NODE_HANDLER.fullmatch(handler) or ".." in module.split("/"):
            raise invalid(f"must be file.export, e.g. index.handler (got {handler!r})")
        return
    if not dot or not module:
        raise invalid(f"must be module.function, e.g. main.handler (got {handler!r})")
    for part in [*module.split("."), function]:
        if not _IDENTIFIER.fullmatch(part) or keyword.iskeyword(part):
            raise invalid(f"must be module.function made of Python identifiers (got {handler!r})")
