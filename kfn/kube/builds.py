"""What a Function's status says about the build of its requirements (written by the operator).

The operator builds a function's requirements once, in a Job, and reports it in the Function's
status: `status.build = {key, digest, job, state: Building | Stored | Failed, message}` and, while
it cannot serve because of it, the Ready condition False with reason `Building` or `BuildFailed`.
Pure functions over the parsed `Function`: read once per change, as `kfn.kube.pods` reads pods.
"""
from __future__ import annotations

from typing import Any

from kfn.core import naming
from kfn.core.functions import Function
from kfn.core.instances import StartProblem, StartReason


def _build(function: Function) -> dict[str, Any]:
    build = (function.status or {}).get("build")
    return build if isinstance(build, dict) else {}


def _condition(function: Function, kind: str) -> dict[str, Any] | None:
    conditions = (function.status or {}).get("conditions")
    if not isinstance(conditions, list):
        return None
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == kind), None)


def build_problem(function: Function) -> StartProblem | None:
    """Why the function's instances cannot start because of its build: its requirements could not
    be installed (the detail is the installer's last lines, for its owner only), when the build of
    what its spec asks for failed; None otherwise (no build, building, stored).

    The operator's word counts only for the spec it saw: a Ready condition of an older generation
    (the spec changed since, so a new build is on its way) is no problem yet."""
    build = _build(function)
    if build.get("state") != naming.BUILD_FAILED:
        return None
    ready = _condition(function, naming.CONDITION_READY)
    if ready is None or ready.get("reason") != naming.REASON_BUILD_FAILED:
        return None
    observed, generation = ready.get("observedGeneration"), function.metadata.generation
    if observed is not None and generation is not None and observed != generation:
        return None
    message = build.get("message")
    return StartProblem(StartReason.REQUIREMENTS, message if isinstance(message, str) else "")


def build_job(function: Function) -> str | None:
    """The name of the Job of the function's latest build, or None if it has had none."""
    job = _build(function).get("job")
    return job if isinstance(job, str) and job else None


def stored_build(function: Function) -> tuple[str, str] | None:
    """The key and digest of the stored archive of the function's requirements, when the build the
    status reports is of its current spec: state Stored with both set, and the Ready condition of
    this generation (when both generations are known). None otherwise (no requirements, building,
    failed, or a spec changed since)."""
    build = _build(function)
    key, digest = build.get("key"), build.get("digest")
    if build.get("state") != naming.BUILD_STORED or not isinstance(key, str) or not isinstance(digest, str):
        return None
    if not key or not digest:
        return None
    ready = _condition(function, naming.CONDITION_READY)
    observed = ready.get("observedGeneration") if ready is not None else None
    generation = function.metadata.generation
    if observed is not None and generation is not None and observed != generation:
        return None
    return key, digest
