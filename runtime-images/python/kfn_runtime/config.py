"""The runtime's settings, read once from the environment the platform prepared (see `contract`)."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

from kfn_runtime import contract


class ConfigError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


class Config:
    """Immutable settings; build with Config.from_env() (tests may pass every field by keyword)."""

    handler: str
    code_dir: str
    deps_dir: str
    function_name: str
    function_version: str
    namespace: str
    timeout: float
    concurrency: int
    memory_mb: int
    host: str
    port: int
    ready_fd: int | None
    drain_timeout: float
    stuck_grace: float
    max_body_bytes: int

    __slots__ = ("handler", "code_dir", "deps_dir", "function_name", "function_version", "namespace", "timeout",
                 "concurrency", "memory_mb", "host", "port", "ready_fd", "drain_timeout", "stuck_grace",
                 "max_body_bytes")

    def __init__(self, **values: object) -> None:
        # A plain class rather than a dataclass: importing dataclasses (and inspect) slows every cold start.
        if set(values) != set(self.__slots__):
            raise TypeError(f"Config needs exactly {self.__slots__}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable")

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        handler = environ.get(contract.ENV_HANDLER, "").strip()
        module, dot, attr = handler.rpartition(".")
        if not dot or not module or not attr:
            raise ConfigError(f"{contract.ENV_HANDLER} must be module.function, e.g. main.handler (got {handler!r})")
        timeout = _number(environ, contract.ENV_TIMEOUT, contract.DEFAULT_TIMEOUT, low=0.0)
        drain = environ.get(contract.ENV_DRAIN_TIMEOUT)
        ready_fd = environ.get(contract.ENV_READY_FD, "").strip()
        if ready_fd and not ready_fd.isdigit():
            raise ConfigError(f"{contract.ENV_READY_FD} must be a file descriptor number (got {ready_fd!r})")
        return cls(
            handler=handler,
            code_dir=os.path.abspath(environ.get(contract.ENV_CODE_DIR) or contract.DEFAULT_CODE_DIR),
            deps_dir=os.path.abspath(environ.get(contract.ENV_DEPS_DIR) or contract.DEFAULT_DEPS_DIR),
            function_name=environ.get(contract.ENV_FUNCTION_NAME) or module.split(".")[0],
            function_version=environ.get(contract.ENV_FUNCTION_VERSION) or "$LATEST",
            namespace=environ.get(contract.ENV_NAMESPACE) or "",
            timeout=timeout,
            concurrency=int(_number(environ, contract.ENV_CONCURRENCY, contract.DEFAULT_CONCURRENCY,
                                    low=1, integer=True, inclusive=True)),
            memory_mb=int(_number(environ, contract.ENV_MEMORY_MB, contract.DEFAULT_MEMORY_MB, low=1, integer=True,
                                    inclusive=True)),
            host=environ.get(contract.ENV_HOST) or contract.DEFAULT_HOST,
            port=int(_number(environ, contract.ENV_PORT, contract.DEFAULT_PORT, low=0, high=65535,
                             integer=True, inclusive=True)),
            ready_fd=int(ready_fd) if ready_fd else None,
            drain_timeout=(_number(environ, contract.ENV_DRAIN_TIMEOUT, 0.0, low=0.0, inclusive=True)
                           if drain else timeout + contract.DEFAULT_DRAIN_EXTRA),
            stuck_grace=_number(environ, contract.ENV_STUCK_GRACE, contract.DEFAULT_STUCK_GRACE,
                                low=0.0, inclusive=True),
            max_body_bytes=int(_number(environ, contract.ENV_MAX_BODY_BYTES, contract.DEFAULT_MAX_BODY_BYTES,
                                       low=0, integer=True, inclusive=True)),
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
