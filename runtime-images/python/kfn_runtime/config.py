"""An instance's settings, read once from the environment the platform prepared (see `contract`)."""
from __future__ import annotations

import json
import math
import os
import sys

from kfn_runtime import awslambda, contract

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Mapping

# Where each runtime's environments come from, unless KFN_COMMAND names a command.
NODE_CLIENT = "node/ric.mjs"   # below the runtime directory: kfn's Runtime API client for Node.js


class ConfigError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


class Config:
    """Immutable settings; build with Config.from_env() (tests may pass every field by keyword)."""

    __slots__ = ("code_dir", "command", "concurrency", "deps_dir", "drain_timeout", "environments_dir",
                 "function_name", "function_version", "handler", "host", "idle_timeout", "init_timeout",
                 "max_body_bytes", "memory_mb", "namespace", "port", "queue_limit", "region", "runtime", "runtime_dir",
                 "timeout", "user_env")

    handler: str
    runtime: str
    command: list[str] | None
    code_dir: str
    deps_dir: str
    runtime_dir: str
    function_name: str
    function_version: str
    namespace: str
    region: str
    timeout: float
    concurrency: int
    memory_mb: int
    host: str
    port: int
    drain_timeout: float
    idle_timeout: float
    max_body_bytes: int
    user_env: dict[str, str]
    environments_dir: str           # KFN_RUNTIME=image only: the FIFOs shared with the launcher
    queue_limit: int | None         # None: as many as the concurrency
    init_timeout: float             # seconds an environment's init phase may take

    _OPTIONAL = {"environments_dir": "", "queue_limit": None, "init_timeout": contract.DEFAULT_INIT_TIMEOUT}

    def __init__(self, **values: object) -> None:
        # A plain class rather than a dataclass: importing dataclasses (and inspect) slows every cold start.
        values = {**self._OPTIONAL, **values}
        if set(values) != set(self.__slots__):
            raise TypeError(f"Config needs exactly {self.__slots__}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable")

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if n != "user_env") + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        handler = environ.get(contract.ENV_HANDLER, "").strip()
        runtime = environ.get(contract.ENV_RUNTIME, "").strip() or f"python{sys.version_info[0]}.{sys.version_info[1]}"
        command: list[str] | None = None
        if environ.get(contract.ENV_COMMAND):
            try:
                command = json.loads(environ[contract.ENV_COMMAND])
            except ValueError:
                command = None
            if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
                raise ConfigError(f"{contract.ENV_COMMAND} must be a JSON list of strings "
                                  f"(got {environ[contract.ENV_COMMAND]!r})")
        elif runtime == contract.RUNTIME_IMAGE:
            if not environ.get(contract.ENV_ENVIRONMENTS_DIR, "").strip():
                raise ConfigError(f"{contract.ENV_ENVIRONMENTS_DIR} must name the directory shared with the "
                                  f"launcher when {contract.ENV_RUNTIME} is {contract.RUNTIME_IMAGE!r}")
        elif runtime.startswith(("python", "nodejs")):
            # Both name the handler as Lambda does: "module.function" (Python), "file.function" (Node.js).
            module, dot, attr = handler.rpartition(".")
            if not dot or not module or not attr:
                raise ConfigError(f"{contract.ENV_HANDLER} must be module.function, e.g. main.handler "
                                  f"(got {handler!r})")
        else:
            raise ConfigError(f"{contract.ENV_RUNTIME} must be python3.X, nodejs20, nodejs22 or "
                              f"{contract.RUNTIME_IMAGE!r} (got {runtime!r}), or {contract.ENV_COMMAND} must name a "
                              f"command")
        timeout = _number(environ, contract.ENV_TIMEOUT, contract.DEFAULT_TIMEOUT, low=0.0)
        drain = environ.get(contract.ENV_DRAIN_TIMEOUT, "").strip()   # blank, like unset: the default
        return cls(
            handler=handler,
            runtime=runtime,
            command=command,
            code_dir=os.path.abspath(environ.get(contract.ENV_CODE_DIR) or contract.DEFAULT_CODE_DIR),
            deps_dir=os.path.abspath(environ.get(contract.ENV_DEPS_DIR) or contract.DEFAULT_DEPS_DIR),
            runtime_dir=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            function_name=environ.get(contract.ENV_FUNCTION_NAME) or handler.split(".")[0] or "function",
            function_version=environ.get(contract.ENV_FUNCTION_VERSION) or "$LATEST",
            namespace=environ.get(contract.ENV_NAMESPACE) or "",
            region=environ.get(contract.ENV_REGION) or awslambda.DEFAULT_REGION,
            timeout=timeout,
            concurrency=int(_number(environ, contract.ENV_CONCURRENCY, contract.DEFAULT_CONCURRENCY,
                                    low=1, integer=True, inclusive=True)),
            memory_mb=int(_number(environ, contract.ENV_MEMORY_MB, contract.DEFAULT_MEMORY_MB, low=1, integer=True,
                                  inclusive=True)),
            host=environ.get(contract.ENV_HOST) or contract.DEFAULT_HOST,
            port=int(_number(environ, contract.ENV_PORT, contract.DEFAULT_PORT, low=0, high=65535,
                             integer=True, inclusive=True)),
            drain_timeout=(_number(environ, contract.ENV_DRAIN_TIMEOUT, 0.0, low=0.0, inclusive=True)
                           if drain else timeout + contract.DEFAULT_DRAIN_EXTRA),
            idle_timeout=_number(environ, contract.ENV_IDLE_TIMEOUT, contract.DEFAULT_IDLE_TIMEOUT, low=0.0),
            max_body_bytes=int(_number(environ, contract.ENV_MAX_BODY_BYTES, contract.DEFAULT_MAX_BODY_BYTES,
                                       low=0, integer=True, inclusive=True)),
            # What the function's own environment holds (spec.env): everything but the platform's.
            user_env={k: v for k, v in environ.items() if not k.startswith("KFN_")},
            environments_dir=environ.get(contract.ENV_ENVIRONMENTS_DIR, "").strip(),
            queue_limit=(int(_number(environ, contract.ENV_QUEUE_LIMIT, 0, low=0, integer=True, inclusive=True))
                         if environ.get(contract.ENV_QUEUE_LIMIT, "").strip() else None),
            init_timeout=_number(environ, contract.ENV_INIT_TIMEOUT, contract.DEFAULT_INIT_TIMEOUT, low=0.0),
        )


def _number(environ: Mapping[str, str], name: str, default: float, *, low: float, high: float | None = None,
            integer: bool = False, inclusive: bool = False) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} (got {raw!r})") from None
    if not math.isfinite(value) or (value < low if inclusive else value <= low) or (high is not None and value > high):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        if high is not None:
            bound += f" and <= {high:g}"
        raise ConfigError(f"{name} must be {bound} (got {raw!r})")
    return value
