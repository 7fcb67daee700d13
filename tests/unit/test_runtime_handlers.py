"""Finding a function's handler: `kfn_runtime.handlers` ("module.function", imported once)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kfn_runtime.handlers import HandlerLoadError, is_coroutine_function, load_handler, prepare_path
from tests.support.modules import write_module


def test_sync_and_async_handlers_are_told_apart(module_path: Path) -> None:
    module = write_module(module_path, "def handler(e, c): return 1\nasync def ahandler(e, c): return 2\n")
    sync, coroutine = load_handler(f"{module}.handler"), load_handler(f"{module}.ahandler")
    assert (sync.is_async, coroutine.is_async) == (False, True)
    assert sync.function(None, None) == 1
    assert sync.name == f"{module}.handler"


def test_handler_in_a_package_module_is_found(module_path: Path) -> None:
    package = module_path
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "api.py").write_text("def handler(e, c): return 'nested'\n")
    assert load_handler(f"{package.name}.api.handler").function(None, None) == "nested"


def test_missing_module_is_reported(module_path: Path) -> None:
    with pytest.raises(HandlerLoadError, match="cannot import module") as info:
        load_handler(f"{module_path.name}_absent.handler")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_missing_dependency_inside_the_module_is_reported_by_name(module_path: Path) -> None:
    module = write_module(module_path, "import kfn_no_such_dependency\ndef handler(e, c): pass\n")
    with pytest.raises(HandlerLoadError, match="No module named 'kfn_no_such_dependency'") as info:
        load_handler(f"{module}.handler")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_syntax_error_is_reported_with_its_cause(module_path: Path) -> None:
    module = write_module(module_path, "def handler(e, c)\n    pass\n")
    with pytest.raises(HandlerLoadError, match="SyntaxError") as info:
        load_handler(f"{module}.handler")
    assert isinstance(info.value.__cause__, SyntaxError)


def test_exception_at_import_is_reported_with_its_cause(module_path: Path) -> None:
    module = write_module(module_path, "raise RuntimeError('boom at import')\n")
    with pytest.raises(HandlerLoadError, match="RuntimeError: boom at import") as info:
        load_handler(f"{module}.handler")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_sys_exit_at_import_is_reported_not_raised(module_path: Path) -> None:
    module = write_module(module_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(HandlerLoadError, match="SystemExit"):
        load_handler(f"{module}.handler")


def test_missing_attribute_is_reported(module_path: Path) -> None:
    module = write_module(module_path, "def other(e, c): pass\n")
    with pytest.raises(HandlerLoadError, match="has no attribute 'handler'"):
        load_handler(f"{module}.handler")


def test_non_callable_is_refused(module_path: Path) -> None:
    module = write_module(module_path, "handler = 42\n")
    with pytest.raises(HandlerLoadError, match="not callable"):
        load_handler(f"{module}.handler")


@pytest.mark.parametrize("spec", ["nodot", ".handler", "main.", ""])
def test_malformed_handler_name_is_refused(spec: str) -> None:
    with pytest.raises(HandlerLoadError, match="module.function"):
        load_handler(spec)


def test_coroutine_detection_covers_methods_and_callable_objects() -> None:
    class Handler:
        async def __call__(self, event: object, context: object) -> None: ...

        async def method(self, event: object, context: object) -> None: ...

    class SyncHandler:
        def __call__(self, event: object, context: object) -> None: ...

    assert is_coroutine_function(Handler())
    assert is_coroutine_function(Handler().method)
    assert not is_coroutine_function(SyncHandler())
    assert not is_coroutine_function(len)


def test_code_dir_comes_first_and_deps_second_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, deps = tmp_path / "code", tmp_path / "deps"
    code.mkdir()
    deps.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), "/usr/lib/python3", str(deps)])
    prepare_path(str(code), str(deps))
    # The working directory `python -m` put first is gone: it must not shadow the function's modules.
    assert sys.path == [str(code), str(deps), "/usr/lib/python3"]


def test_missing_deps_dir_is_left_off_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/usr/lib/python3"])
    prepare_path(str(tmp_path), os.path.join(str(tmp_path), "absent"))
    assert sys.path == [str(tmp_path), "/usr/lib/python3"]
