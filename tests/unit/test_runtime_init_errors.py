"""The init error kfn's Python runtime reports (the zygote's `init-error`, which callers of the
Invoke API get as the function's error) is awslambdaric's: the same errorType and errorMessage
Lambda gives (`Unable to import module 'main': ...`, the exception's own message for anything else
the module raised), and stack frames of the function's code only — none of the runtime's own
(kfn's files, the interpreter's importlib: where the platform is installed is no caller's business)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kfn_runtime import zygote
from kfn_runtime.handlers import HandlerLoadError, load_handler
from tests.support.modules import write_module

RUNTIME_DIR = os.path.dirname(os.path.abspath(zygote.__file__))


def init_error(module: str, attr: str = "handler") -> dict[str, object]:
    spec = f"{module}.{attr}"
    with pytest.raises(HandlerLoadError) as info:
        load_handler(spec)
    error: dict[str, object] = json.loads(zygote._init_error(info.value))
    return error


def assert_no_platform_frames(error: dict[str, object]) -> None:
    for frame in error["stackTrace"]:  # type: ignore[attr-defined]
        assert RUNTIME_DIR not in frame and "importlib" not in frame, frame


def test_a_missing_dependency_is_lambdas_import_module_error(module_path: Path) -> None:
    module = write_module(module_path, "import kfn_no_such_dependency\ndef handler(e, c): pass\n")
    error = init_error(module)
    assert error == {"errorType": "Runtime.ImportModuleError", "stackTrace": [],
                     "errorMessage": f"Unable to import module '{module}': No module named 'kfn_no_such_dependency'"}


def test_a_missing_module_is_lambdas_import_module_error(module_path: Path) -> None:
    error = init_error("kfn_no_such_module")
    assert error == {"errorType": "Runtime.ImportModuleError", "stackTrace": [],
                     "errorMessage": "Unable to import module 'kfn_no_such_module': "
                                     "No module named 'kfn_no_such_module'"}


def test_a_syntax_error_is_lambdas_user_code_syntax_error_without_platform_frames(module_path: Path) -> None:
    module = write_module(module_path, "password = 'hunter2' +\ndef handler(e, c): pass\n")
    error = init_error(module)
    assert error["errorType"] == "Runtime.UserCodeSyntaxError"
    assert error["errorMessage"] == f"Syntax error in module '{module}': invalid syntax ({module}.py, line 1)"
    assert_no_platform_frames(error)


def test_an_exception_at_import_is_its_type_and_own_message_with_the_functions_frames(module_path: Path) -> None:
    module = write_module(module_path,
                          "def fail():\n    raise KeyError('DB_PASSWORD')\nfail()\ndef handler(e, c): pass\n")
    error = init_error(module)
    assert (error["errorType"], error["errorMessage"]) == ("KeyError", "'DB_PASSWORD'")
    trace = error["stackTrace"]
    assert len(trace) == 2 and f"{module}.py" in trace[0] and "in fail" in trace[1]  # type: ignore[arg-type]
    assert_no_platform_frames(error)


def test_a_missing_handler_is_lambdas_handler_not_found(module_path: Path) -> None:
    module = write_module(module_path, "def other(e, c): pass\n")
    error = init_error(module)
    assert error == {"errorType": "Runtime.HandlerNotFound", "stackTrace": [],
                     "errorMessage": f"Handler 'handler' missing on module '{module}'"}
