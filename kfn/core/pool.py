"""Warm pools of generic instances, as pure decisions: which functions a pool may serve, what a
gateway sends and writes when it claims a pool pod, which pools each namespace needs, and which
pooled pods must go.

A pool is a Deployment per namespace and runtime (`deployment_name`) of instances waiting to be
specialised (`kfn_runtime.specialize`). Claiming one is a conditional patch of its labels
(`claim_patch`: the pod's resourceVersion is the precondition, so of two gateways one wins and the
other gets 409); the pool's ReplicaSet then lets the pod go and starts another. Once specialised,
`promote_patch` makes the pod one of the function's (its selector's labels): from then on it is an
instance like a Deployment's pod for the gateway, the autoscaler and the logs, and it is deleted,
never returned, when the function scales down.

The operator keeps the pools (`wanted_pools`) and removes what nobody will finish or use
(`reap`); `kfn.kube.pool` claims and specialises. Nothing here does I/O.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kfn.core import naming
from kfn.core.functions import Function, FunctionRef
from kfn.core.instancespec import Archive, archive_env, plain_env, runtime_env
from kfn.core.scalespec import Resources

# A claimed pod not specialised this long after its claim was left by its claimer (a gateway that
# died, a specialisation that hung): the operator deletes it.
CLAIM_DEADLINE_SECONDS = 120.0
# The pool's class of instance: the chart's default resources, which spec.resources defaults to.
POOL_RESOURCES = Resources()


def deployment_name(runtime: str) -> str:
    """The pool Deployment of `runtime` in a namespace: `kfn-pool-python3-12`."""
    return naming.POOL_NAME_PREFIX + runtime.replace(".", "-")


def ineligible(fn: Function) -> str | None:
    """Why no pool instance can become `fn` (the Deployment path serves it), or None when one can.

    A pool instance is generic: the runtime's image, the pool's resources, no volume but its own
    code and requirements directories, and an environment the gateway can send as values (it
    never reads a function's Secrets: SECURITY.md)."""
    spec = fn.spec
    if spec.image is not None:
        return "a Lambda container image (spec.image) runs in its own container"
    if spec.source is None or spec.source.files is None:
        return "its code comes from a ConfigMap (spec.source.configMap)"
    if plain_env(fn) is None:
        return "an environment variable comes from a Secret, a ConfigMap or a field (valueFrom)"
    if spec.resources != POOL_RESOURCES:
        return "its resources differ from the pool's (spec.resources)"
    return None


def specialize_body(fn: Function, *, region: str, archive: Archive | None) -> bytes:
    """The body of the request that specialises a pool instance as `fn` (contract.PATH_SPECIALIZE):
    the variables a Deployment's pod of `fn` has, in the same order, and the inline code. `fn`
    must be eligible (`ineligible(fn) is None`); with requirements, `archive` names their archive."""
    env = {**runtime_env(fn, region=region), **(plain_env(fn) or {}), **(archive_env(archive) if archive else {})}
    files = dict(fn.spec.source.files or {}) if fn.spec.source else {}
    return json.dumps({"env": env, "files": files}, separators=(",", ":")).encode()


def specialized_hash(fn: Function, archive: Archive | None) -> str:
    """What a pod specialised as `fn` runs: its spec and its requirements' archive. A pod whose
    hash is no longer its function's is stale (`reap`)."""
    blob = json.dumps([fn.spec_hash(), archive.digest if archive else None])
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def claim_patch(fn: Function, *, resource_version: str, claimed_by: str, now: float) -> dict[str, Any]:
    """The merge patch that claims a pool pod seen at `resource_version` for `fn`: the pod leaves
    its pool (its ReplicaSet lets it go), names the function, and belongs to the Function (the
    garbage collector deletes it with the Function), all in one conditional write."""
    meta: dict[str, Any] = {
        "resourceVersion": resource_version,
        "labels": {naming.LABEL_POOL_STATE: naming.POOL_CLAIMED, naming.LABEL_FUNCTION: fn.name},
        "annotations": {naming.ANNOTATION_CLAIMED_AT: f"{now:.3f}", naming.ANNOTATION_CLAIMED_BY: claimed_by},
    }
    uid = (fn.metadata.model_extra or {}).get("uid")
    # A list in a merge patch replaces the whole list: the ReplicaSet's reference goes with it.
    meta["ownerReferences"] = ([{"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": fn.name, "uid": uid}]
                               if isinstance(uid, str) and uid else None)
    return {"metadata": meta}


def promote_patch(fn: Function, archive: Archive | None) -> dict[str, Any]:
    """The merge patch that makes a specialised pod one of `fn`'s instances."""
    return {"metadata": {
        "labels": {naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION, naming.LABEL_POOL_STATE: naming.POOL_SPECIALIZED},
        "annotations": {naming.ANNOTATION_SPECIALIZED_HASH: specialized_hash(fn, archive)},
    }}


def wanted_pools(functions: Iterable[Function], *, size: int, runtimes: Iterable[str]) -> dict[tuple[str, str], int]:
    """The pools to keep: (namespace, runtime) → `size` for every namespace with a Function a pool
    of that runtime could serve (requirements count: their archive comes), of the `runtimes` that
    have an image. Nothing when `size` is 0."""
    if size <= 0:
        return {}
    known = set(runtimes)
    return {(fn.namespace, fn.spec.runtime): size for fn in functions
            if fn.spec.runtime in known and ineligible(fn) is None}


@dataclass(frozen=True)
class PooledPod:
    """A pod that came from a pool, as a label selector and its status show it."""

    namespace: str
    name: str
    state: str                      # naming.POOL_IDLE, POOL_CLAIMED or POOL_SPECIALIZED
    runtime: str                    # the pool's (naming.LABEL_POOL)
    function: FunctionRef | None    # whom it was claimed for (claimed or specialised)
    claimed_at: float | None        # unix seconds (naming.ANNOTATION_CLAIMED_AT)
    specialized_hash: str | None
    restarts: int                   # of its instance's container
    terminating: bool


@dataclass(frozen=True)
class Reap:
    """Delete a pooled pod; `replace` asks for a Deployment replica in its place first (it served)."""

    namespace: str
    name: str
    function: FunctionRef | None
    reason: str
    replace: bool = False


def reap(pods: Iterable[PooledPod], expected: Mapping[FunctionRef, str], *, now: float,
         claim_deadline: float = CLAIM_DEADLINE_SECONDS) -> list[Reap]:
    """The pooled pods to delete: claimed and never specialised within `claim_deadline`, claimed
    for a function that is gone, specialised for an older spec or archive than `expected` (function
    → `specialized_hash`), or specialised and since restarted (its instance came back generic).
    Idle pods are their Deployment's business; pods being deleted are left alone."""
    out: list[Reap] = []
    for pod in pods:
        if pod.terminating or pod.state == naming.POOL_IDLE:
            continue
        if pod.function is None or pod.function not in expected:
            out.append(Reap(pod.namespace, pod.name, pod.function, "its function is gone"))
        elif pod.state == naming.POOL_CLAIMED:
            if pod.claimed_at is None or now - pod.claimed_at > claim_deadline:
                out.append(Reap(pod.namespace, pod.name, pod.function,
                                f"claimed and not specialised within {claim_deadline:.0f}s"))
        elif pod.restarts > 0:
            out.append(Reap(pod.namespace, pod.name, pod.function, "its instance restarted", replace=True))
        elif pod.specialized_hash != expected[pod.function]:
            out.append(Reap(pod.namespace, pod.name, pod.function, "its function changed", replace=True))
    return out
