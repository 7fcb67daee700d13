"""How a local instance is set up before it starts: its function's code written, its requirements
installed, the configuration its instance host gets and how that host is built.

`InstanceSetup` is made once the backend has its work directory (`ProcessBackend.start`); every
instance's supervisor calls `prepare` through the `Prepare` it was given.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import kfn_runtime
from kfn.core.functions import Function
from kfn.processes import nodejs
from kfn.processes.code import CodeStore, Unsupported, unsupported
from kfn.processes.interpreters import Choice
from kfn.processes.supervisor import LOCAL_HOST
from kfn_runtime.config import Config
from kfn_runtime.host import InstanceHost
from kfn_runtime.launch import build_host

# The directory holding the kfn_runtime package: the one entry instances get on sys.path.
RUNTIME_PATH = str(Path(kfn_runtime.__file__).resolve().parent.parent)
# kfn's Runtime API client for Node.js (runtime-images/nodejs), for local Node.js instances.
NODE_CLIENT = str(Path(RUNTIME_PATH).parent / "nodejs" / "ric.mjs")
# PATH in local instances: the usual system directories, as in a Lambda environment.
LOCAL_PATH = "/usr/local/bin:/usr/bin:/bin"
# The largest event the gateway sends (a 6 MiB body in base64, plus the rest of the event).
MAX_EVENT_BYTES = 12 * 1024 * 1024

HostBuilder = Callable[[Callable[[str, str], None]], InstanceHost]


class InstanceSetup:
    """Prepares local instances of any function in one work directory."""

    def __init__(self, *, code: CodeStore, work_dir: Path, python: str, region: str,
                 environment_idle_timeout: float, init_timeout: float) -> None:
        self._code = code
        self._work_dir = work_dir
        self._python = python
        self._region = region
        self._environment_idle_timeout = environment_idle_timeout
        self._init_timeout = init_timeout   # each environment's init phase (Lambda's 10 s)

    async def prepare(self, function: Function, choice: Choice | None, preexec: Callable[[], None],
                      adopt: Callable[[int], None], *, log: Callable[[str], None]) -> tuple[Config, HostBuilder]:
        """The instance's configuration (code written, requirements installed, installer output to
        `log`) and its host builder. Runs as long as the install (bounded by the pip timeout); raises
        `Unsupported` for a function local mode cannot run, and what the code store raises."""
        problem = unsupported(function)
        if problem:
            raise Unsupported(problem)
        code_dir = self._code.code_dir(function)
        spec = function.spec
        node: str | None = None
        if spec.runtime.startswith("nodejs"):
            node = await asyncio.to_thread(nodejs.find_node, spec.runtime)
        deps_dir = str(self._work_dir / "no-deps")
        if spec.requirements:
            deps_dir = str(await self._code.dependencies(function, log=log,
                                                         npm=nodejs.npm(node) if node else None, python=choice))
        # The function's own variables and nothing of kfn local's environment: instances see
        # what a pod would show them (the Lambda variables come from the instance host).
        user_env = {var.name: var.value or "" for var in spec.env}
        config = Config(
            handler=spec.handler, runtime=spec.runtime, command=None, code_dir=str(code_dir), deps_dir=deps_dir,
            runtime_dir=RUNTIME_PATH, function_name=function.name, function_version="$LATEST",
            namespace=function.namespace, region=self._region, timeout=float(spec.timeout),
            concurrency=spec.concurrency, memory_mb=spec.resources.memory_limit_mb, host=LOCAL_HOST, port=0,
            drain_timeout=float(spec.timeout) + 1.0, idle_timeout=self._environment_idle_timeout,
            max_body_bytes=MAX_EVENT_BYTES, user_env=user_env, init_timeout=self._init_timeout)
        python, path = self._python, LOCAL_PATH
        python_version = None
        if choice is not None:
            python, python_version = choice.python, choice.version
        if node is not None:   # as on Lambda, the runtime's node is the one on PATH
            path = os.pathsep.join([os.path.dirname(node), LOCAL_PATH])

        def build(log: Callable[[str, str], None]) -> InstanceHost:
            return build_host(config, log=log, python=python, python_version=python_version, node=node or "node",
                              path=path, node_client=NODE_CLIENT, preexec=preexec, adopt=adopt)

        return config, build
