"""Finding the user's handler: the code directory on sys.path, then "module.function" imported once."""
from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# co_flags bits (see the `inspect` module, which is too slow to import on every cold start).
_CO_COROUTINE = 0x0080
_CO_ITERABLE_COROUTINE = 0x0100


class HandlerLoadError(RuntimeError):
    """The handler cannot be used; the message says why, the cause carries the original traceback.
    `module` and `attribute` are the handler's two parts ("" when it has no such parts)."""

    def __init__(self, message: str, *, module: str = "", attribute: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.attribute = attribute


class Handler:
    """The loaded entry point and whether it is a coroutine function."""

    __slots__ = ("function", "is_async", "name")

    def __init__(self, function: Callable[..., Any], is_async: bool, name: str) -> None:
        self.function = function
        self.is_async = is_async
        self.name = name


def prepare_path(code_dir: str, deps_dir: str) -> None:
    """Put the code directory first and the dependencies second on sys.path, like Lambda's /var/task.

    `python -m` puts the working directory first; it is dropped so that modules next to wherever the
    runtime was started cannot shadow the function's own.
    """
    cwd = os.getcwd()
    rest = [p for i, p in enumerate(sys.path) if not (i == 0 and p in ("", cwd)) and p not in (code_dir, deps_dir)]
    front = [code_dir]
    if os.path.isdir(deps_dir):
        front.append(deps_dir)
    sys.path[:] = front + rest


def load_handler(spec: str) -> Handler:
    """Import "pkg.module.function" and check it can be called; HandlerLoadError if not.

    Runs the module's top-level code, so it takes as long as that does; any exception from it is
    wrapped (chained) in HandlerLoadError.
    """
    module_name, dot, attr = spec.rpartition(".")
    if not dot or not module_name or not attr:
        raise HandlerLoadError(f"handler must be module.function (got {spec!r})")
    parts = {"module": module_name, "attribute": attr}
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise HandlerLoadError(f"cannot import module {module_name!r} for handler {spec!r}: "
                                   f"no such module on {sys.path[0]!r}", **parts) from e
        raise HandlerLoadError(f"importing module {module_name!r} failed: {type(e).__name__}: {e}", **parts) from e
    except BaseException as e:  # SyntaxError, SystemExit in module code, anything
        raise HandlerLoadError(f"importing module {module_name!r} failed: {type(e).__name__}: {e}", **parts) from e
    try:
        function = getattr(module, attr)
    except AttributeError:
        raise HandlerLoadError(f"module {module_name!r} has no attribute {attr!r} (handler {spec!r})",
                               **parts) from None
    if not callable(function):
        raise HandlerLoadError(f"handler {spec!r} is not callable (it is a {type(function).__name__})", **parts)
    return Handler(function=function, is_async=is_coroutine_function(function), name=spec)


def is_coroutine_function(function: Callable[..., Any]) -> bool:
    """True for `async def` functions and objects whose __call__ is one."""
    target = getattr(function, "__func__", function)
    code = getattr(target, "__code__", None)
    if code is None:
        call = getattr(type(function), "__call__", None)  # noqa: B004 - the method itself, for its code object
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    if code is None:
        return False
    return bool(code.co_flags & (_CO_COROUTINE | _CO_ITERABLE_COROUTINE))
