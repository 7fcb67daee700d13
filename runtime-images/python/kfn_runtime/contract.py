"""What a platform tells an instance, and how it talks to one: the one definition of that contract.

An instance (`python -m kfn_runtime`, or an `InstanceHost` inside kfn local) serves:

- the invoke endpoint, which follows the Lambda Runtime Interface Emulator's: `POST PATH_INVOKE`
  with the event as the body answers with the function's result as the body; a function error is
  a 200 whose `X-Amz-Function-Error` header says so, with Lambda's error object as the body. The
  gateway's hop is the same for every runtime;
- probes (`PATH_HEALTH`, `PATH_READY`) and Prometheus metrics (`PATH_METRICS`);
- to its execution environments, the AWS Lambda Runtime API.

It is standard-library only, because it ships inside every runtime image.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds on every cold start; Final is for type checkers only
if TYPE_CHECKING:
    from typing import Final

# Environment variables the platform sets for an instance (`python -m kfn_runtime`).
ENV_HANDLER: Final = "KFN_HANDLER"                  # "module.function", e.g. "main.handler"
ENV_RUNTIME: Final = "KFN_RUNTIME"                  # python3.12, nodejs20, ... or "command" (ENV_COMMAND)
ENV_COMMAND: Final = "KFN_COMMAND"                  # JSON list: the command every environment runs
ENV_CODE_DIR: Final = "KFN_CODE_DIR"                # the function's code (LAMBDA_TASK_ROOT)
ENV_DEPS_DIR: Final = "KFN_DEPS_DIR"                # pip-installed requirements; second on sys.path
ENV_FUNCTION_NAME: Final = "KFN_FUNCTION_NAME"
ENV_FUNCTION_VERSION: Final = "KFN_FUNCTION_VERSION"
ENV_NAMESPACE: Final = "KFN_NAMESPACE"
ENV_REGION: Final = "KFN_REGION"                    # AWS_REGION / AWS_DEFAULT_REGION of the environments
ENV_TIMEOUT: Final = "KFN_TIMEOUT"                  # seconds per invocation, a float
ENV_CONCURRENCY: Final = "KFN_CONCURRENCY"          # execution environments at most, one invocation each
ENV_QUEUE_LIMIT: Final = "KFN_QUEUE_LIMIT"          # invocations that may wait (default: the concurrency)
ENV_MEMORY_MB: Final = "KFN_MEMORY_MB"              # AWS_LAMBDA_FUNCTION_MEMORY_SIZE
ENV_HOST: Final = "KFN_HOST"
ENV_PORT: Final = "KFN_PORT"
ENV_DRAIN_TIMEOUT: Final = "KFN_DRAIN_TIMEOUT"      # seconds to wait for in-flight work on SIGTERM
ENV_IDLE_TIMEOUT: Final = "KFN_ENVIRONMENT_IDLE_TIMEOUT"  # an extra environment idle this long is stopped
ENV_MAX_BODY_BYTES: Final = "KFN_MAX_BODY_BYTES"    # largest event accepted on the invoke endpoint
ENV_INIT_TIMEOUT: Final = "KFN_INIT_TIMEOUT"        # seconds an environment's init phase may take (Lambda's: 10)
ENV_REQUIREMENTS: Final = "KFN_REQUIREMENTS"        # pip requirement lines, newline-separated (REQUIREMENTS_MODULE)
# Requirements built once (kfn_runtime.archive): the instance fetches them into ENV_DEPS_DIR before
# it initialises the function (kfn_runtime.fetch); a build Job stores them (kfn_runtime.build).
ENV_ARCHIVE_URL: Final = "KFN_ARCHIVE_URL"          # .../system/archives/NAMESPACE/KEY in the archive store
ENV_ARCHIVE_TOKEN: Final = "KFN_ARCHIVE_TOKEN"      # its token: get (an instance), put (a build)
ENV_ARCHIVE_DIGEST: Final = "KFN_ARCHIVE_DIGEST"    # sha256:..., what the store gave when it was stored

# A warm pool's generic instance (kfn_runtime.specialize): it listens, answers its probes ready
# ({"status": "pool"}), and waits for one POST PATH_SPECIALIZE from the platform naming the function it
# becomes: signed with the key of its namespace's pools, bound to this pod's uid; one only.
ENV_POOL: Final = "KFN_POOL"                        # "1": this instance starts generic, in a pool
ENV_POOL_KEY: Final = "KFN_POOL_KEY"                # hex: the namespace's pool key (specialize.namespace_key)
ENV_POD_UID: Final = "KFN_POD_UID"                  # the pod's metadata.uid (the downward API)

ENV_ENVIRONMENTS_DIR: Final = "KFN_ENVIRONMENTS_DIR"  # RUNTIME_IMAGE: the directory shared with the launcher

# KFN_RUNTIME of an instance whose environments run in a Lambda container image (spec.image): the
# image runs in a container of its own beside the instance's, under LAUNCHER (below).
RUNTIME_IMAGE: Final = "image"

# Defaults, matching AWS Lambda's layout where one exists (its region and account: awslambda).
DEFAULT_CODE_DIR: Final = "/var/task"
DEFAULT_DEPS_DIR: Final = "/opt/kfn/deps"
DEFAULT_HOST: Final = "0.0.0.0"
DEFAULT_PORT: Final = 8080
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CONCURRENCY: Final = 10
DEFAULT_MEMORY_MB: Final = 256
DEFAULT_IDLE_TIMEOUT: Final = 60.0
DEFAULT_INIT_TIMEOUT: Final = 10.0                  # Lambda's limit on the init phase
DEFAULT_DRAIN_EXTRA: Final = 5.0                    # the drain timeout defaults to the invocation timeout plus this
# Lambda's synchronous payload limit is 6 MB; an HTTP body of that size grows by a third in base64.
DEFAULT_MAX_BODY_BYTES: Final = 12 * 1024 * 1024

# Paths of the instance's own HTTP server. The invoke path is the Runtime Interface Emulator's.
PATH_INVOKE: Final = "/2015-03-31/functions/function/invocations"
PATH_HEALTH: Final = "/_/health"    # liveness: the process serves HTTP
PATH_READY: Final = "/_/ready"      # readiness: an environment is initialised and the instance is not draining
PATH_METRICS: Final = "/_/metrics"  # Prometheus text format
# A pool instance only: POST, JSON {"env": {NAME: VALUE}, "files": {NAME: CONTENT}} (the KFN_* variables
# and spec.env a Deployment's pod would have; the inline code), HEADER_SIGNATURE set. Answers 200
# {"status": "ready", "startupMs": ...} once the function is initialised (its archive fetched first);
# 401 for a wrong signature, 409 once specialised or specialising, 400 for a body it cannot use,
# 502 with Lambda's error object when the function's init failed (the instance then exits).
PATH_SPECIALIZE: Final = "/_/specialize"
HEADER_SIGNATURE: Final = "X-Kfn-Signature"        # kfn_runtime.specialize.signature of the body
STATUS_POOL: Final = "pool"                         # /_/ready's status of a pool instance not yet specialised

# Headers on the invoke endpoint. Request: the invocation's id (the gateway's), the caller's
# client context (base64 JSON, as Lambda's Invoke API takes it), a trace id, and a request for the
# tail of the invocation's log. Response: Lambda's function-error flag, the error's type, the log
# tail (base64), the version that ran.
HEADER_REQUEST_ID: Final = "X-Kfn-Request-Id"
HEADER_CLIENT_CONTEXT: Final = "X-Amz-Client-Context"
HEADER_TRACE_ID: Final = "X-Amzn-Trace-Id"
HEADER_LOG_TYPE: Final = "X-Amz-Log-Type"           # "Tail" asks for HEADER_LOG_RESULT
HEADER_FUNCTION_ERROR: Final = "X-Amz-Function-Error"   # awslambda.UNHANDLED when the function failed
HEADER_ERROR_TYPE: Final = "X-Kfn-Error-Type"       # errorType of the function's error (awslambda.ERROR_*)
HEADER_LOG_RESULT: Final = "X-Amz-Log-Result"       # base64 of the last 4 KB of the invocation's log (START..REPORT)
HEADER_EXECUTED_VERSION: Final = "X-Amz-Executed-Version"

# Where a pod's instance writes why its init failed before it exits EXIT_LOAD_FAILED (the
# kubelet's default terminationMessagePath): one JSON object, TERMINATION_MARK set, with Lambda's
# errorType and errorMessage, and "platform": true when nothing of the function ran. The gateway
# reads it from the pod's status (kfn.kube.pods) to answer callers as Lambda answers an init error.
TERMINATION_LOG: Final = "/dev/termination-log"
ENV_TERMINATION_LOG: Final = "KFN_TERMINATION_LOG"   # another place for it (a container's terminationMessagePath)
TERMINATION_MARK: Final = "kfnInitError"

# Set on answers the instance gave without running the function (429 when every environment is
# busy, 503 while draining or loading): the caller may safely send the invocation elsewhere.
# Functions cannot produce it: their results travel in bodies, never in these headers.
HEADER_REJECTED: Final = "X-Kfn-Rejected"
REJECTED_CONCURRENCY: Final = "concurrency"
REJECTED_DRAINING: Final = "draining"
REJECTED_LOADING: Final = "loading"

# The Runtime API's answer to a posted result, byte for byte as the host writes it: kfn's own
# client recognises it without parsing.
RUNTIME_API_ACCEPTED: Final = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 15\r\n\r\n{\"status\":\"OK\"}")

# The environment launcher of a Lambda container image: POSIX sh, run as the image's container's
# command (`sh -c LAUNCHER kfn-environments DIR SLOTS ENTRYPOINT... COMMAND...`), so the image
# itself stays unchanged. It keeps SLOTS loops; loop I waits for a line "PORT LOG_STREAM" in the
# FIFO DIR/start-I (the instance's ExternalSpawner writes it when it wants environment I), runs
# the image's entrypoint with AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT and its output into the FIFO
# DIR/out-I, and reports "started I PID" and "exited I CODE" into the FIFO DIR/events. The
# instance kills an environment by PID (the pod shares one process namespace), and ends the
# launcher by writing "stop" into every start FIFO. FIFOs are opened read-write (`<>`), which
# never blocks: a launcher outliving its instance must not hang on a FIFO nobody reads.
LAUNCHER: Final = """\
dir=$1; slots=$2; shift 2
# The pod's SIGTERM is for the instance, which drains and then says "stop"; environments still
# running an invocation must not die first.
trap '' TERM
n=0
while [ ! -p "$dir/events" ]; do
  n=$((n + 1)); [ "$n" -gt 600 ] && { echo "kfn: no instance host in $dir" >&2; exit 1; }; sleep 0.1
done
i=0
while [ "$i" -lt "$slots" ]; do
  (
    # Held open for the loop's life: a line written while nobody else has it open is kept.
    exec 3<>"$dir/start-$i"
    while read -r port stream <&3 && [ "$port" != stop ]; do
      (trap - TERM; exec 3<&-; AWS_LAMBDA_RUNTIME_API="127.0.0.1:$port" AWS_LAMBDA_LOG_STREAM_NAME="$stream" \\
        exec "$@") 1<>"$dir/out-$i" 2>&1 &
      pid=$!
      echo "started $i $pid" 1<>"$dir/events"
      wait "$pid"
      echo "exited $i $?" 1<>"$dir/events"
    done
  ) &
  i=$((i + 1))
done
wait
"""

# The install-requirements entry point for an init container: `python -m kfn_runtime.requirements`.
REQUIREMENTS_MODULE: Final = "kfn_runtime.requirements"

# Exit codes of `python -m kfn_runtime`.
EXIT_OK: Final = 0                  # stopped on SIGTERM/SIGINT after in-flight invocations finished
EXIT_LOAD_FAILED: Final = 1         # the function could not be initialised, or the port not bound
EXIT_BAD_CONFIG: Final = 2          # an environment variable had an invalid value
EXIT_DRAIN_TIMEOUT: Final = 4       # stopped with invocations still running after the drain timeout

# Prometheus metrics on PATH_METRICS. One function per instance, so no function label: the
# scraper's target labels say which instance it is.
METRIC_INVOCATIONS: Final = "kfn_runtime_invocations_total"              # counter, label "outcome"
METRIC_DURATION: Final = "kfn_runtime_invocation_duration_seconds"       # histogram
METRIC_IN_FLIGHT: Final = "kfn_runtime_in_flight"                        # gauge
METRIC_CONCURRENCY_LIMIT: Final = "kfn_runtime_concurrency_limit"        # gauge, KFN_CONCURRENCY
METRIC_ENVIRONMENTS: Final = "kfn_runtime_environments"                  # gauge: execution environments alive
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
