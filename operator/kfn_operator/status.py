"""A Function's status: pure functions from what was observed to the status to write.

Conditions follow the Kubernetes convention (type/status/reason/message/lastTransitionTime, the
time changing only when the status does). `Ready` is the one condition kfn sets:
- True/Ready: at least one instance serves; True/ScaledToZero: none run, the first request starts one;
- False/Deploying: instances are asked for and none is ready yet;
- False/DeploymentFailed: the Deployment reports a failure (image pull, quota, progress deadline);
- False/InvalidSpec: the spec cannot be turned into instances (the message names the fields);
- False/Building: the requirements are being built once (the message names the build Job); the
  instances of the previous spec, if any, keep serving meanwhile;
- False/BuildFailed: that build failed (the message is the installer's last lines).

`status.build` says where the requirements' archive is: {key, digest (once stored), job, state
Building | Stored | Failed, message (Failed)}.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kfn.core import naming
from kfn.core.functions import InvalidFunction

Condition = dict[str, Any]

READY = naming.CONDITION_READY
REASON_READY = "Ready"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_DEPLOYING = "Deploying"
REASON_DEPLOYMENT_FAILED = "DeploymentFailed"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_BUILDING = naming.REASON_BUILDING
REASON_BUILD_FAILED = naming.REASON_BUILD_FAILED

# status.build.state
BUILD_BUILDING = naming.BUILD_BUILDING
BUILD_STORED = naming.BUILD_STORED
BUILD_FAILED = naming.BUILD_FAILED


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ReadyState:
    status: bool
    reason: str
    message: str


def set_condition(conditions: Sequence[Mapping[str, Any]] | None, *, type: str, status: bool, reason: str,
                  message: str, observed_generation: int | None, now: str) -> list[Condition]:
    """`conditions` with `type` replaced; lastTransitionTime kept unless the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions or () if c.get("type") == type), None)
    changed = previous is None or previous.get("status") != value
    new: Condition = {
        "type": type,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now if previous is None or changed or not previous.get("lastTransitionTime")
                               else previous["lastTransitionTime"]),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    return [*(dict(c) for c in conditions or () if c.get("type") != type), new]


def ready_from_deployment(deployment: Mapping[str, Any] | None) -> ReadyState:
    """What the Deployment says about the function being able to serve."""
    if deployment is None:
        return ReadyState(False, REASON_DEPLOYING, "the Deployment does not exist yet")
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    for condition in status.get("conditions") or ():
        kind, value = condition.get("type"), condition.get("status")
        if (kind == "ReplicaFailure" and value == "True") or (kind == "Progressing" and value == "False"):
            return ReadyState(False, REASON_DEPLOYMENT_FAILED,
                              condition.get("message") or condition.get("reason") or kind)
    if ready > 0:
        return ReadyState(True, REASON_READY, f"{ready}/{wanted} instances ready")
    if wanted == 0:
        return ReadyState(True, REASON_SCALED_TO_ZERO, "no instances run; the next request starts one")
    return ReadyState(False, REASON_DEPLOYING, f"0/{wanted} instances ready")


def build_record(*, key: str, state: str, job: str | None = None, digest: str | None = None,
                 message: str | None = None) -> dict[str, Any]:
    """status.build: archive `key`, its `state` and what is known of it (absent fields left out)."""
    record: dict[str, Any] = {"key": key}
    if digest:
        record["digest"] = digest
    if job:
        record["job"] = job
    record["state"] = state
    if message:
        record["message"] = message
    return record


def ready_from_build(build: Mapping[str, Any] | None) -> ReadyState | None:
    """What a build in progress or failed says about the function (None: the Deployment says it)."""
    build = build or {}
    job = build.get("job") or "?"
    if build.get("state") == BUILD_BUILDING:
        return ReadyState(False, REASON_BUILDING, f"building the requirements in Job {job}")
    if build.get("state") == BUILD_FAILED:
        return ReadyState(False, REASON_BUILD_FAILED, build.get("message") or f"the build Job {job} failed")
    return None


def deployment_status(fn_body: Mapping[str, Any], deployment: Mapping[str, Any] | None, *,
                      build: Mapping[str, Any] | None = None, now: str | None = None) -> dict[str, Any]:
    """The status fields that follow the Deployment: replicas, readyReplicas, Ready (Building or
    BuildFailed instead, while `build`, the Function's status.build, says so)."""
    old = fn_body.get("status") or {}
    ready = ready_from_build(build) or ready_from_deployment(deployment)
    dep_spec = (deployment or {}).get("spec") or {}
    dep_status = (deployment or {}).get("status") or {}
    generation = (fn_body.get("metadata") or {}).get("generation")
    return {
        "replicas": int(dep_spec.get("replicas") or 0),
        "readyReplicas": int(dep_status.get("readyReplicas") or 0),
        "url": naming.function_url_path(fn_body["metadata"]["name"]),
        "conditions": set_condition(old.get("conditions"), type=READY, status=ready.status, reason=ready.reason,
                                    message=ready.message, observed_generation=generation,
                                    now=now or now_rfc3339()),
    }


def build_status(fn_body: Mapping[str, Any], build: Mapping[str, Any], *, now: str | None = None) -> dict[str, Any]:
    """The status of a Function waiting for its build (or whose build failed): `build`, Ready from
    it, url and observedGeneration; the replicas stay what the Deployment of the previous spec has."""
    old = fn_body.get("status") or {}
    generation = (fn_body.get("metadata") or {}).get("generation")
    ready = ready_from_build(build) or ReadyState(False, REASON_BUILDING, "building the requirements")
    out: dict[str, Any] = {
        "build": dict(build),
        "url": naming.function_url_path(fn_body["metadata"]["name"]),
        "conditions": set_condition(old.get("conditions"), type=READY, status=ready.status, reason=ready.reason,
                                    message=ready.message, observed_generation=generation,
                                    now=now or now_rfc3339()),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def invalid_status(fn_body: Mapping[str, Any], error: InvalidFunction, *, now: str | None = None) -> dict[str, Any]:
    old = fn_body.get("status") or {}
    generation = (fn_body.get("metadata") or {}).get("generation")
    status: dict[str, Any] = {
        "conditions": set_condition(old.get("conditions"), type=READY, status=False, reason=REASON_INVALID_SPEC,
                                    message=str(error), observed_generation=generation,
                                    now=now or now_rfc3339()),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


# An Event's message is cut to this many characters (its start and end kept), as kopf cuts its own.
EVENT_MESSAGE_LIMIT = 1024
# Who posts the operator's Events (`kubectl describe` shows it as "From").
EVENT_SOURCE = "kfn-operator"


def warning_event(fn_body: Mapping[str, Any], *, reason: str, message: str, now: str | None = None) -> dict[str, Any]:
    """A core/v1 Warning Event about the Function `fn_body`, as the operator posts it."""
    meta = fn_body.get("metadata") or {}
    if len(message) > EVENT_MESSAGE_LIMIT:
        half = (EVENT_MESSAGE_LIMIT - 3) // 2
        message = f"{message[:half]}...{message[-(EVENT_MESSAGE_LIMIT - 3 - half):]}"
    when = now or now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": meta.get("namespace"), "generateName": "kfn-event-"},
        "involvedObject": {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": naming.KIND,
                           "namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid")},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


def decision_status(*, replicas: int, reason: str, now: str | None = None) -> dict[str, Any]:
    """The autoscaler's last decision, as written to the Function's status."""
    return {"desiredReplicas": replicas, "lastScaleReason": reason, "lastScaleTime": now or now_rfc3339()}
