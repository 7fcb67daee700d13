"""Names that more than one component must agree on, defined once.

The operator writes these labels, the gateway's Kubernetes backend selects on them, the autoscaler
reads these metrics, and dashboards built for OpenFaaS keep working because the gateway also
exports the OpenFaaS metric names.
"""
from __future__ import annotations

from typing import Final

# The Function custom resource.
GROUP: Final = "kfn.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "Function"
PLURAL: Final = "functions"
SINGULAR: Final = "function"
SHORT_NAMES: Final = ("fn", "kfn")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Labels on everything that belongs to a function (Deployment, pods, Service, ConfigMap).
LABEL_FUNCTION: Final = f"{GROUP}/function"
LABEL_COMPONENT: Final = f"{GROUP}/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "kfn"
# On a build Job and its pods: the key of the archive it builds (kfn_runtime.archive.deps_key).
LABEL_ARCHIVE: Final = f"{GROUP}/archive"

# A warm pool (kfn.core.pool): per namespace and runtime, a Deployment of generic instances
# (LABEL_COMPONENT = COMPONENT_POOL, LABEL_POOL = the runtime, LABEL_POOL_STATE = POOL_IDLE). A
# gateway claims one by one conditional patch (POOL_CLAIMED, LABEL_FUNCTION = the function, its
# ReplicaSet lets it go and makes another), specialises it, then makes it one of the function's pods
# (LABEL_COMPONENT = COMPONENT_FUNCTION, POOL_SPECIALIZED).
LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_POOL_STATE: Final = f"{GROUP}/pool-state"
COMPONENT_FUNCTION: Final = "function"
COMPONENT_POOL: Final = "pool"
POOL_IDLE: Final = "idle"
POOL_CLAIMED: Final = "claimed"
POOL_SPECIALIZED: Final = "specialized"
ANNOTATION_CLAIMED_AT: Final = f"{GROUP}/claimed-at"          # unix seconds, when a gateway claimed it
ANNOTATION_CLAIMED_BY: Final = f"{GROUP}/claimed-by"          # which gateway (its pod name)
ANNOTATION_SPECIALIZED_HASH: Final = f"{GROUP}/specialized-hash"   # kfn.core.pool.specialized_hash
# Pool Deployments are named this and the runtime: no Function may be (its Deployment would clash).
POOL_NAME_PREFIX: Final = "kfn-pool-"

# A Function's status, as the operator writes it (kfn_operator.status) and the gateway's backend
# reads the part about its build (kfn.kube.builds): the Ready condition, the reasons it gives while
# requirements are built, and status.build.state.
CONDITION_READY: Final = "Ready"
REASON_BUILDING: Final = "Building"
REASON_BUILD_FAILED: Final = "BuildFailed"
BUILD_BUILDING: Final = "Building"
BUILD_STORED: Final = "Stored"
BUILD_FAILED: Final = "Failed"

# Annotations.
ANNOTATION_CODE_HASH: Final = f"{GROUP}/code-hash"          # on the pod template: rolls pods on a code change
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"

# Functions whose manifest names no namespace live here; /function/NAME means NAME in the
# gateway's default namespace, which is this unless configured.
DEFAULT_NAMESPACE: Final = "default"

# Where the CLI finds a gateway: --gateway, else $KFN_GATEWAY, else local mode's address.
ENV_GATEWAY: Final = "KFN_GATEWAY"
DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:8080"
# The API key the CLI sends: --api-key, else $KFN_API_KEY.
ENV_API_KEY: Final = "KFN_API_KEY"

# The port every runtime listens on inside a pod (the gateway reaches each pod at its IP: a
# function has no Service).
RUNTIME_PORT: Final = 8080

# Gateway URL layout (OpenFaaS-compatible).
FUNCTION_PATH_PREFIX: Final = "/function/"
# An asynchronous invocation of the same HTTP request: stored, answered 202, delivered later.
ASYNC_FUNCTION_PATH_PREFIX: Final = "/async-function/"
SYSTEM_FUNCTIONS_PATH: Final = "/system/functions"
# A function's async queue and dead letters (GET), and their replay (POST .../replay).
SYSTEM_ASYNC_PATH: Final = "/system/async"
SYSTEM_ASYNC_REPLAY: Final = "replay"
# Local mode only: instance logs, manifest and instance problems, instance addresses.
SYSTEM_LOGS_PATH: Final = "/system/logs"
SYSTEM_ERRORS_PATH: Final = "/system/errors"
SYSTEM_INSTANCES_PATH: Final = "/system/instances"
LAMBDA_INVOKE_PATH: Final = "/2015-03-31/functions/{name}/invocations"   # the AWS Lambda Invoke API

# Gateway metrics: kfn's own names ...
METRIC_INVOCATIONS: Final = "kfn_gateway_invocations_total"
METRIC_DURATION: Final = "kfn_gateway_request_duration_seconds"
METRIC_IN_FLIGHT: Final = "kfn_gateway_in_flight_requests"
METRIC_QUEUE_DEPTH: Final = "kfn_gateway_queue_depth"
METRIC_COLD_STARTS: Final = "kfn_gateway_cold_starts_total"
METRIC_COLD_START_WAIT: Final = "kfn_gateway_cold_start_wait_seconds"
# The integral over time of requests the gateway holds for a function (queued + in flight), in
# request-seconds. Its rate is the average concurrency, which is what the autoscaler scales on;
# summing it over gateway replicas gives the function's total concurrency.
METRIC_LOAD_SECONDS: Final = "kfn_gateway_load_seconds_total"
METRIC_REPLICAS_DESIRED: Final = "kfn_function_replicas_desired"
METRIC_REPLICAS_READY: Final = "kfn_function_replicas_ready"
# ... and OpenFaaS's, so existing dashboards work.
METRIC_OPENFAAS_INVOCATIONS: Final = "gateway_function_invocation_total"
METRIC_OPENFAAS_SECONDS: Final = "gateway_functions_seconds"

# Label names on gateway metrics.
METRIC_LABEL_FUNCTION: Final = "function"
METRIC_LABEL_NAMESPACE: Final = "namespace"
METRIC_LABEL_CODE: Final = "code"
METRIC_LABEL_OPENFAAS_FUNCTION: Final = "function_name"   # NAME.NAMESPACE, as faas-netes labels it

# Asynchronous invocations (kfn.events): the queue per function, and what the delivery engine did.
METRIC_ASYNC_QUEUE_DEPTH: Final = "kfn_async_queue_depth"
METRIC_ASYNC_OLDEST_AGE: Final = "kfn_async_oldest_event_age_seconds"
METRIC_ASYNC_IN_FLIGHT: Final = "kfn_async_in_flight"
METRIC_ASYNC_EVENTS: Final = "kfn_async_events_total"
METRIC_LABEL_OUTCOME: Final = "outcome"
# Events removed unrun, by reason (`kfn.core.orphans.REASON_FUNCTION_DELETED`: their function is gone).
METRIC_ASYNC_DISCARDED: Final = "kfn_async_events_discarded_total"
METRIC_LABEL_REASON: Final = "reason"

# Autoscaler metrics.
METRIC_AUTOSCALER_DESIRED: Final = "kfn_autoscaler_desired_replicas"
METRIC_AUTOSCALER_DECISIONS: Final = "kfn_autoscaler_decisions_total"
METRIC_AUTOSCALER_SOURCE_AVAILABLE: Final = "kfn_autoscaler_metrics_available"
METRIC_AUTOSCALER_UNOBSERVED: Final = "kfn_autoscaler_unobserved_functions"


def function_labels(name: str) -> dict[str, str]:
    """The labels that mark an object as belonging to the function `name`."""
    return {LABEL_FUNCTION: name, LABEL_MANAGED_BY: MANAGED_BY}


def function_url_path(name: str, namespace: str | None = None) -> str:
    """/function/NAME, or /function/NAME.NAMESPACE when a namespace is given."""
    return f"{FUNCTION_PATH_PREFIX}{name}" if namespace is None else f"{FUNCTION_PATH_PREFIX}{name}.{namespace}"
