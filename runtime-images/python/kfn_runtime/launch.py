"""An instance host for a configuration: the right spawner, the Lambda environment, the limits.

Used by a pod's entry point (`python -m kfn_runtime`) and by kfn local, so both run a function's
environments the same way.
"""
from __future__ import annotations

import os
import sys

from kfn_runtime import contract
from kfn_runtime.config import NODE_CLIENT, Config
from kfn_runtime.environments import CommandSpawner, ExternalSpawner, ZygoteSpawner
from kfn_runtime.execution import HostConfig
from kfn_runtime.host import InstanceHost
from kfn_runtime.variables import lambda_environment

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable


def running_runtime(config: Config, python_version: str | None = None) -> str:
    """The runtime that really runs: for a Python runtime, the version of the interpreter
    (`python_version`, else this process's), whatever the configuration declares."""
    if not config.runtime.startswith("python"):
        return config.runtime
    return "python" + (python_version or f"{sys.version_info.major}.{sys.version_info.minor}")


def build_host(config: Config, *, log: Callable[[str, str], None] | None = None, python: str = sys.executable,
               python_version: str | None = None, node: str = "node", path: str | None = None,
               node_client: str | None = None, preexec: Callable[[], None] | None = None,
               adopt: Callable[[int], None] | None = None) -> InstanceHost:
    """An InstanceHost for `config` (not started yet). Where the platform confines what it starts,
    `preexec` runs in every process a command starts (before exec), and `adopt(pid)` on a Python
    function's zygote before it loads the function (see `kfn_runtime.environments`). `python_version`
    ("3.13") is what `python` really is (default: this process's interpreter, which `python` is by
    default)."""
    host_config = HostConfig(function_name=config.function_name, namespace=config.namespace,
                             version=config.function_version, timeout=config.timeout, concurrency=config.concurrency,
                             memory_mb=config.memory_mb, region=config.region, idle_timeout=config.idle_timeout,
                             max_payload=config.max_body_bytes, queue_limit=config.queue_limit,
                             init_timeout=config.init_timeout)
    user_env = dict(config.user_env)
    if path is not None:
        user_env["PATH"] = path
    # Lambda's names: AWS_Lambda_python3.12, AWS_Lambda_nodejs20.x (SDKs and tools read it). For
    # Python, the version that really runs: an image or a machine without the declared one says so.
    runtime = running_runtime(config, python_version)
    execution_env = f"AWS_Lambda_{runtime}" + (".x" if runtime.startswith("nodejs") else "")
    env = lambda_environment(host_config, handler=config.handler, task_root=config.code_dir,
                             runtime_dir=config.runtime_dir, execution_env=execution_env, user_env=user_env)
    if config.runtime == contract.RUNTIME_IMAGE:
        # The image's container has its own environment (set by the operator); the launcher there
        # starts each environment when this host asks.
        spawner: object = ExternalSpawner(config.environments_dir, slots=config.concurrency,
                                          function_version=config.function_version)
    elif config.command is not None:
        spawner = CommandSpawner(config.command, env=env, cwd=config.code_dir, preexec=preexec)
    elif config.runtime.startswith("nodejs"):
        # Requirements for Node.js are node_modules beside the code or in the deps directory.
        env["NODE_PATH"] = os.path.join(config.deps_dir, "node_modules")
        client = node_client or os.path.join(config.runtime_dir, NODE_CLIENT)
        spawner = CommandSpawner([node, client], env=env, cwd=config.code_dir, preexec=preexec)
    else:
        env[contract.ENV_DEPS_DIR] = config.deps_dir
        env["PYTHONPATH"] = config.runtime_dir
        spawner = ZygoteSpawner(python=python, env=env, cwd=config.code_dir, adopt=adopt)
    return InstanceHost(host_config, spawner, log=log)  # type: ignore[arg-type]
