"""What a platform tells a runtime process, and where the runtime answers.

This module is the one definition of the contract between kfn's platform side (the local process
backend, the operator's Deployment builder) and the runtime. It is stdlib-only because it ships
inside every runtime image, where the rest of kfn is not installed.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds on every cold start; Final is for type checkers only
if TYPE_CHECKING:
    from typing import Final

# Environment variables the platform sets for a runtime process.
ENV_HANDLER: Final = "KFN_HANDLER"                  # "module.function", e.g. "main.handler"
ENV_CODE_DIR: Final = "KFN_CODE_DIR"                # the function's code; first on sys.path
ENV_DEPS_DIR: Final = "KFN_DEPS_DIR"                # pip-installed requirements; second on sys.path
ENV_FUNCTION_NAME: Final = "KFN_FUNCTION_NAME"
ENV_FUNCTION_VERSION: Final = "KFN_FUNCTION_VERSION"
ENV_NAMESPACE: Final = "KFN_NAMESPACE"
ENV_TIMEOUT: Final = "KFN_TIMEOUT"                  # seconds per invocation, a float
ENV_CONCURRENCY: Final = "KFN_CONCURRENCY"          # max in-flight invocations per instance
ENV_MEMORY_MB: Final = "KFN_MEMORY_MB"              # reported to handlers as memory_limit_in_mb
ENV_HOST: Final = "KFN_HOST"
ENV_PORT: Final = "KFN_PORT"                        # 0 picks a free port (reported through KFN_READY_FD)
ENV_READY_FD: Final = "KFN_READY_FD"                # optional: a pipe fd; "ready <port>\n" is written once ready
ENV_DRAIN_TIMEOUT: Final = "KFN_DRAIN_TIMEOUT"      # seconds to wait for in-flight work on SIGTERM

# Defaults, matching AWS Lambda's layout where one exists.
DEFAULT_CODE_DIR: Final = "/var/task"
DEFAULT_DEPS_DIR: Final = "/opt/kfn/deps"
DEFAULT_HOST: Final = "0.0.0.0"
DEFAULT_PORT: Final = 8080
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CONCURRENCY: Final = 10
DEFAULT_MEMORY_MB: Final = 256

# Reserved paths: everything else is an invocation. The "/_/" prefix follows OpenFaaS's watchdog,
# so user paths such as /healthz still reach the handler.
PATH_HEALTH: Final = "/_/health"    # liveness: the process serves HTTP
PATH_READY: Final = "/_/ready"      # readiness: the handler is loaded and the runtime is not draining
PATH_METRICS: Final = "/_/metrics"  # Prometheus text format

# Response header naming the invocation, like Lambda's x-amzn-RequestId.
HEADER_REQUEST_ID: Final = "X-Kfn-Request-Id"

# --- Added by the runtime: more of the contract the platform may rely on. ---

# A request that already carries HEADER_REQUEST_ID (set by the gateway, at most 128 characters of
# [A-Za-z0-9-_.:]) keeps that id: it becomes context.aws_request_id and appears in the logs.

# Optional tuning the platform may set; the runtime has sensible defaults.
ENV_STUCK_GRACE: Final = "KFN_STUCK_GRACE"          # seconds a timed-out handler may overrun before a restart
ENV_REQUIREMENTS: Final = "KFN_REQUIREMENTS"        # pip requirement lines, newline-separated (REQUIREMENTS_MODULE)
ENV_MAX_BODY_BYTES: Final = "KFN_MAX_BODY_BYTES"    # largest request body accepted (413 above)

DEFAULT_STUCK_GRACE: Final = 5.0
DEFAULT_MAX_BODY_BYTES: Final = 6 * 1024 * 1024     # AWS Lambda's synchronous payload limit
DEFAULT_DRAIN_EXTRA: Final = 5.0                    # the drain timeout defaults to the invocation timeout plus this

# The install-requirements entry point for an init container: `python -m kfn_runtime.requirements`.
REQUIREMENTS_MODULE: Final = "kfn_runtime.requirements"

# Exit codes of `python -m kfn_runtime`.
EXIT_OK: Final = 0                  # stopped on SIGTERM/SIGINT after in-flight invocations finished
EXIT_LOAD_FAILED: Final = 1         # the handler could not be imported (traceback on stderr), or the port not bound
EXIT_BAD_CONFIG: Final = 2          # an environment variable had an invalid value
EXIT_STUCK: Final = 3               # a timed-out handler never returned; restart the instance
EXIT_DRAIN_TIMEOUT: Final = 4       # stopped with invocations still running after the drain timeout

# Set on responses the runtime produced without running the handler (429 over the concurrency
# limit, 503 while draining or loading): the caller may safely retry them on another instance.
HEADER_REJECTED: Final = "X-Kfn-Rejected"
REJECTED_CONCURRENCY: Final = "concurrency"
REJECTED_DRAINING: Final = "draining"
REJECTED_LOADING: Final = "loading"

# errorType values of the runtime's own JSON error bodies ({"errorType": ..., "errorMessage": ...}).
ERROR_TIMEOUT: Final = "TimeoutError"
ERROR_TOO_MANY_REQUESTS: Final = "TooManyRequestsException"
ERROR_UNAVAILABLE: Final = "ServiceUnavailableException"
ERROR_MARSHAL: Final = "Runtime.MarshalError"           # the handler returned something not JSON-serialisable
ERROR_INVALID_RESPONSE: Final = "Runtime.InvalidResponse"  # a statusCode dict API Gateway would reject
ERROR_BAD_REQUEST: Final = "BadRequest"
ERROR_TOO_LARGE: Final = "RequestEntityTooLarge"

# Prometheus metrics on PATH_METRICS. The runtime is one function per process, so no function label:
# the scraper's target labels say which instance it is.
METRIC_INVOCATIONS: Final = "kfn_runtime_invocations_total"              # counter, label "code"
METRIC_DURATION: Final = "kfn_runtime_invocation_duration_seconds"       # histogram
METRIC_IN_FLIGHT: Final = "kfn_runtime_in_flight"                        # gauge
METRIC_CONCURRENCY_LIMIT: Final = "kfn_runtime_concurrency_limit"        # gauge, KFN_CONCURRENCY
METRIC_TIMEOUTS: Final = "kfn_runtime_timeouts_total"                    # counter
METRIC_ERRORS: Final = "kfn_runtime_errors_total"                        # counter: raised or unmappable result
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
