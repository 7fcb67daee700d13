"""What a function pod says about serving: its address, readiness, and why it cannot start; and
what a pod of a warm pool (`kfn.core.pool`) says about where it is between idle and specialised.

Pure functions over the official client's `V1Pod` model: read once, as typed objects.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.instances import InitError, StartProblem, StartReason
from kfn.core.pool import PooledPod
from kfn_runtime import awslambda, contract

# Container states that will not heal by waiting a second: worth telling a waiting caller.
_FAILING_WAITING_REASONS = frozenset({
    "CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
_IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
_MESSAGE_LIMIT = 600
# The container a pool pod's instance runs in, as a function pod's (its restarts count: `kfn.core.pool.reap`).
_INSTANCE_CONTAINER = "function"


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    function: FunctionRef | None     # from the kfn.dev/function label, on the function's pods only
    ip: str | None
    port: int
    ready: bool                      # the kubelet's Ready condition
    terminating: bool                # being deleted, or its containers have ended for good
    problem: StartProblem | None     # why it cannot start or serve, when that will not pass by itself
    pooled: PooledPod | None = None  # a pod from a warm pool (it has a kfn.dev/pool-state label)
    uid: str | None = None
    resource_version: str | None = None   # as last seen: the precondition of a claim

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def view(pod: Any) -> PodView:
    """The serving view of a `V1Pod`."""
    """The serving view of a `V1Pod`. Only a pod labelled as one of a function's
    (kfn.dev/component=function) names its function: a pool pod, idle or claimed, is nobody's
    instance until it is promoted (`kfn.core.pool.promote_patch`)."""
    meta = pod.metadata
    status = pod.status
    labels = meta.labels or {}
    namespace = meta.namespace or naming.DEFAULT_NAMESPACE
    function_name = labels.get(naming.LABEL_FUNCTION)
    phase = status.phase if status is not None else None
    conditions = (status.conditions or ()) if status is not None else ()
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    terminating = meta.deletion_timestamp is not None or phase in ("Succeeded", "Failed")
    is_function = bool(function_name) and labels.get(naming.LABEL_COMPONENT) == naming.COMPONENT_FUNCTION
    return PodView(
        namespace=namespace,
        name=meta.name or "",
        function=FunctionRef(namespace, function_name) if is_function and function_name else None,
        ip=(status.pod_ip or None) if status is not None else None,
        port=_port(pod),
        ready=ready,
        terminating=terminating,
        problem=_problem(pod),
        pooled=_pooled(pod, terminating),
        uid=meta.uid or None,
        resource_version=meta.resource_version or None,
    )


def _pooled(pod: Any, terminating: bool) -> PooledPod | None:
    """The pool's view of a pod with a kfn.dev/pool-state label, or None for any other pod."""
    meta = pod.metadata
    labels = meta.labels or {}
    state = labels.get(naming.LABEL_POOL_STATE)
    if not state:
        return None
    annotations = meta.annotations or {}
    namespace = meta.namespace or naming.DEFAULT_NAMESPACE
    function_name = labels.get(naming.LABEL_FUNCTION)
    statuses = (pod.status.container_statuses if pod.status is not None else None) or ()
    restarts = sum(int(c.restart_count or 0) for c in statuses if c.name == _INSTANCE_CONTAINER)
    return PooledPod(
        namespace=namespace,
        name=meta.name or "",
        state=state,
        runtime=labels.get(naming.LABEL_POOL, ""),
        function=FunctionRef(namespace, function_name) if function_name else None,
        claimed_at=_seconds(annotations.get(naming.ANNOTATION_CLAIMED_AT)),
        specialized_hash=annotations.get(naming.ANNOTATION_SPECIALIZED_HASH) or None,
        restarts=restarts,
        terminating=terminating,
    )


def _seconds(text: str | None) -> float | None:
    """Unix seconds as an annotation says them, or None when absent or not a finite number."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _port(pod: Any) -> int:
    for container in (pod.spec.containers if pod.spec is not None else ()) or ():
        for port in container.ports or ():
            if port.name == "http" or len(container.ports) == 1:
                return int(port.container_port)
    return naming.RUNTIME_PORT


def _problem(pod: Any) -> StartProblem | None:
    """Why the pod cannot start or serve, when that will not pass by itself: the class of it a
    caller may learn, the pod's own words (termination messages: the function's output) for its
    owner only, and the function's init error when its runtime reported one (see
    `kfn_runtime.contract.TERMINATION_LOG`). Requirements that cannot be installed (pip in the init
    container) or fetched (the instance's own fetch, which says so) are the REQUIREMENTS class."""
    status = pod.status
    if status is None:
        return None
    name = pod.metadata.name
    if status.phase == "Failed":
        return StartProblem(StartReason.PLATFORM,
                            _clip(f"pod {name} failed: {status.reason or ''} {status.message or ''}".strip()))
    for condition in status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            if _only_taints(condition.message or ""):
                # Nodes tainted by their own conditions (not-ready, unreachable, disk or memory
                # pressure: after an API server outage, say) are untainted by the cluster, and
                # the scheduler tries again: waiting callers wait, they are not failed fast.
                continue
            return StartProblem(StartReason.CAPACITY,
                                _clip(f"pod {name} cannot be scheduled: {condition.message or condition.reason}"))
    for kind, statuses in (("init container", status.init_container_statuses),
                           ("container", status.container_statuses)):
        for container in statuses or ():
            waiting = container.state.waiting if container.state is not None else None
            if waiting is None or waiting.reason not in _FAILING_WAITING_REASONS:
                continue
            detail = waiting.message or ""
            last = container.last_state.terminated if container.last_state is not None else None
            init_error = None
            if last is not None:
                # With terminationMessagePolicy FallbackToLogsOnError, the message is the end of
                # the container's output (a traceback), unless the runtime wrote why its init failed.
                detail = f"exited with code {last.exit_code}" + (f": {last.message.strip()}" if last.message else "")
                init_error = _init_error(last.message or "")
            text = _clip(f"pod {name}: {kind} {container.name} {waiting.reason}" + (f" ({detail})" if detail else ""))
            if waiting.reason in _IMAGE_REASONS:
                return StartProblem(StartReason.IMAGE, text)
            if kind == "init container":
                return StartProblem(StartReason.REQUIREMENTS, text)   # kfn's one init container installs them
            if waiting.reason == "CrashLoopBackOff" and init_error is not None:
                error, reason = init_error
                return StartProblem(reason, text, error if reason == StartReason.INIT else None)
            reason = StartReason.CONFIGURATION if waiting.reason.startswith("CreateContainer") else StartReason.PLATFORM
            return StartProblem(reason, text)
    return None


def _init_error(message: str) -> tuple[InitError, StartReason] | None:
    """The init error a function's runtime left as its termination message, and its class: INIT
    when the function's own, REQUIREMENTS when the archive of its requirements could not be
    fetched, PLATFORM for anything else of the platform's; None if the message is not one (the
    output's end)."""
    try:
        found = json.loads(message)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get(contract.TERMINATION_MARK) is not True:
        return None
    error = InitError.of_payload(message.encode(), default_type=awslambda.ERROR_UNKNOWN,
                                 default_message="the function failed to initialize")
    if found.get("requirements") is True:
        return error, StartReason.REQUIREMENTS
    return error, StartReason.PLATFORM if found.get("platform") is True else StartReason.INIT


def _only_taints(message: str) -> bool:
    """Whether the scheduler's reason names taints and nothing else a node lacks (resources,
    affinity, ports, volumes): "0/1 nodes are available: 1 node(s) had untolerated taint(s)."."""
    reasons = message.split(":", 1)[1] if ":" in message else ""
    found = [r.strip() for r in reasons.split(". ")[0].split(",") if r.strip()]
    return bool(found) and all("taint" in r for r in found)


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else "…" + text[-_MESSAGE_LIMIT:]
