"""What an instance of a function is told, wherever it runs on Kubernetes: the `KFN_*` variables of
the runtime's contract (`kfn_runtime.contract`), spec.env, the archive of its requirements, how
long it may drain.

The operator puts this into a Deployment's pods (`kfn_operator.builders`); a gateway sends the
same to a warm pool's instance it specialises (`kfn.core.pool`). One definition, so a pooled
instance is the Deployment's pod in all but where it came from.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from kfn.core import naming
from kfn.core.functions import Function
from kfn_runtime import contract

# After SIGTERM the runtime drains for spec.timeout + DEFAULT_DRAIN_EXTRA; the kubelet waits this
# much longer before SIGKILL, so the runtime's own deadline always comes first.
TERMINATION_MARGIN_SECONDS = 5
# Functions are unpublished: their environments say "$LATEST", as Lambda's do (the code's hash is
# on the pods' annotations).
FUNCTION_VERSION = "$LATEST"
# Where an image function's instance and the launcher in its image share their FIFOs.
ENVIRONMENTS_DIR = "/kfn/environments"


class Archive(NamedTuple):
    """A function's built requirements in the archive store, as its instances fetch them."""

    url: str      # this archive's URL (`archive_url`)
    token: str    # its get token (kfn_runtime.archive.token with VERB_GET)
    digest: str   # sha256:..., what the store answered


def archive_url(base_url: str, namespace: str, key: str) -> str:
    """Archive `key` of `namespace` in the store at `base_url` (the gateway's, as pods reach it)."""
    return f"{base_url.rstrip('/')}/system/archives/{namespace}/{key}"


def drain_seconds(fn: Function) -> float:
    return fn.spec.timeout + contract.DEFAULT_DRAIN_EXTRA


def termination_grace_seconds(fn: Function) -> int:
    return math.ceil(drain_seconds(fn)) + TERMINATION_MARGIN_SECONDS


def number(value: float) -> str:
    """A number as an environment variable says it: `30`, `2.5`."""
    return str(int(value)) if float(value).is_integer() else str(value)


def runtime_env(fn: Function, *, region: str) -> dict[str, str]:
    """The runtime's own variables (`contract.ENV_*`) for an instance of `fn`, in a fixed order."""
    values = {
        contract.ENV_RUNTIME: contract.RUNTIME_IMAGE if fn.spec.image else fn.spec.runtime,
        contract.ENV_HANDLER: fn.spec.handler or "",
        contract.ENV_CODE_DIR: contract.DEFAULT_CODE_DIR,
        contract.ENV_DEPS_DIR: contract.DEFAULT_DEPS_DIR,
        contract.ENV_FUNCTION_NAME: fn.name,
        contract.ENV_FUNCTION_VERSION: FUNCTION_VERSION,
        contract.ENV_NAMESPACE: fn.namespace,
        contract.ENV_REGION: region,
        contract.ENV_TIMEOUT: number(fn.spec.timeout),
        contract.ENV_CONCURRENCY: str(fn.spec.concurrency),
        contract.ENV_MEMORY_MB: str(fn.spec.resources.memory_limit_mb),
        contract.ENV_HOST: "0.0.0.0",
        contract.ENV_PORT: str(naming.RUNTIME_PORT),
        contract.ENV_DRAIN_TIMEOUT: number(drain_seconds(fn)),
    }
    if fn.spec.image:
        values[contract.ENV_ENVIRONMENTS_DIR] = ENVIRONMENTS_DIR
    return values


def archive_env(archive: Archive) -> dict[str, str]:
    """Where the instance fetches its requirements built once (`kfn_runtime.fetch`)."""
    return {contract.ENV_ARCHIVE_URL: archive.url, contract.ENV_ARCHIVE_TOKEN: archive.token,
            contract.ENV_ARCHIVE_DIGEST: archive.digest}


def plain_env(fn: Function) -> dict[str, str] | None:
    """spec.env as values, or None when an entry comes from elsewhere (`valueFrom`: a Secret, a
    ConfigMap, a field), which only the kubelet resolves."""
    out: dict[str, str] = {}
    for var in fn.spec.env:
        if var.valueFrom is not None:
            return None
        out[var.name] = var.value or ""
    return out
