"""The environment variables of an execution environment: Lambda's reserved ones over the function's own."""
from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from kfn_runtime.execution import HostConfig


def reserved_variables(*, function_name: str, version: str, memory_mb: int, region: str, handler: str | None,
                       task_root: str, runtime_dir: str, execution_env: str | None = None) -> dict[str, str]:
    """The variables Lambda reserves, in its names and formats, except the per-environment log
    stream (`AWS_LAMBDA_LOG_STREAM_NAME`): the same for every environment of a function version."""
    out = {
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "LAMBDA_TASK_ROOT": task_root,
        "LAMBDA_RUNTIME_DIR": runtime_dir,
        "TZ": ":UTC",
    }
    if execution_env:
        out["AWS_EXECUTION_ENV"] = execution_env   # set for managed runtimes only, as on Lambda
    if handler:
        out["_HANDLER"] = handler
    return out


def log_stream_name(version: str) -> str:
    """A new environment's AWS_LAMBDA_LOG_STREAM_NAME, in Lambda's format."""
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{version}]{os.urandom(16).hex()}"


def lambda_environment(config: HostConfig, *, handler: str, task_root: str, runtime_dir: str, execution_env: str,
                       user_env: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of an execution environment the host starts: Lambda's reserved
    variables over the function's own (spec.env); nothing else of the host's environment."""
    env = dict(user_env or {})
    env.update(reserved_variables(function_name=config.function_name, version=config.version,
                                  memory_mb=config.memory_mb, region=config.region, handler=handler,
                                  task_root=task_root, runtime_dir=runtime_dir, execution_env=execution_env))
    env.update({
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(config.version),
        "LANG": "C.UTF-8",
        "PATH": env.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
    })
    return env
