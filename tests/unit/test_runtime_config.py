"""The runtime's configuration, handler loading, metrics and requirements parsing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kfn_runtime import contract
from kfn_runtime.config import Config, ConfigError
from kfn_runtime.handlers import HandlerLoadError, load_handler
from kfn_runtime.metrics import Metrics
from kfn_runtime.requirements import RequirementsError, parse_requirements, pip_command


def test_config_defaults() -> None:
    c = Config.from_env({contract.ENV_HANDLER: "main.handler"})
    assert c.handler == "main.handler"
    assert c.code_dir == contract.DEFAULT_CODE_DIR
    assert c.deps_dir == contract.DEFAULT_DEPS_DIR
    assert c.port == contract.DEFAULT_PORT
    assert c.timeout == contract.DEFAULT_TIMEOUT
    assert c.concurrency == contract.DEFAULT_CONCURRENCY
    assert c.drain_timeout == contract.DEFAULT_TIMEOUT + contract.DEFAULT_DRAIN_EXTRA
    assert c.function_version == "$LATEST"
    assert c.ready_fd is None


def test_config_reads_every_variable() -> None:
    c = Config.from_env({
        contract.ENV_HANDLER: "pkg.mod.fn", contract.ENV_CODE_DIR: "/code", contract.ENV_DEPS_DIR: "/deps",
        contract.ENV_FUNCTION_NAME: "orders", contract.ENV_FUNCTION_VERSION: "7", contract.ENV_TIMEOUT: "2.5",
        contract.ENV_CONCURRENCY: "1", contract.ENV_MEMORY_MB: "128", contract.ENV_HOST: "127.0.0.1",
        contract.ENV_PORT: "0", contract.ENV_READY_FD: "5", contract.ENV_DRAIN_TIMEOUT: "0",
    })
    assert (c.handler, c.code_dir, c.deps_dir) == ("pkg.mod.fn", "/code", "/deps")
    assert (c.function_name, c.function_version) == ("orders", "7")
    assert (c.timeout, c.concurrency, c.memory_mb) == (2.5, 1, 128)
    assert (c.host, c.port, c.ready_fd, c.drain_timeout) == ("127.0.0.1", 0, 5, 0.0)


@pytest.mark.parametrize(("env", "names"), [
    ({}, contract.ENV_HANDLER),
    ({contract.ENV_HANDLER: "nodot"}, contract.ENV_HANDLER),
    ({contract.ENV_TIMEOUT: "soon"}, contract.ENV_TIMEOUT),
    ({contract.ENV_TIMEOUT: "0"}, contract.ENV_TIMEOUT),
    ({contract.ENV_CONCURRENCY: "0"}, contract.ENV_CONCURRENCY),
    ({contract.ENV_CONCURRENCY: "2.5"}, contract.ENV_CONCURRENCY),
    ({contract.ENV_PORT: "70000"}, contract.ENV_PORT),
    ({contract.ENV_READY_FD: "stdout"}, contract.ENV_READY_FD),
])
def test_bad_config_names_the_variable(env: dict[str, str], names: str) -> None:
    environ = {contract.ENV_HANDLER: "main.handler", **env} if env != {} else {}
    with pytest.raises(ConfigError, match=names):
        Config.from_env(environ)


@pytest.fixture
def module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    prefix = f"kfnrt_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    yield tmp_path / prefix
    for name in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[name]


def write(module_path: Path, source: str) -> str:
    module_path.with_suffix(".py").write_text(source)
    return module_path.name


def test_load_handler_finds_sync_and_async_functions(module_path: Path) -> None:
    module = write(module_path, "def handler(e, c): return 1\nasync def ahandler(e, c): return 2\n")
    assert load_handler(f"{module}.handler").is_async is False
    assert load_handler(f"{module}.ahandler").is_async is True


def test_load_handler_reports_a_missing_module(module_path: Path) -> None:
    with pytest.raises(HandlerLoadError, match="cannot import module"):
        load_handler(f"{module_path.name}_absent.handler")


def test_load_handler_reports_a_missing_import_inside_the_module(module_path: Path) -> None:
    module = write(module_path, "import kfn_no_such_dependency\ndef handler(e, c): pass\n")
    with pytest.raises(HandlerLoadError, match="kfn_no_such_dependency") as info:
        load_handler(f"{module}.handler")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_load_handler_reports_a_syntax_error(module_path: Path) -> None:
    module = write(module_path, "def handler(e, c)\n    pass\n")
    with pytest.raises(HandlerLoadError, match="SyntaxError"):
        load_handler(f"{module}.handler")


def test_load_handler_reports_a_missing_attribute(module_path: Path) -> None:
    module = write(module_path, "def other(e, c): pass\n")
    with pytest.raises(HandlerLoadError, match="has no attribute 'handler'"):
        load_handler(f"{module}.handler")


def test_load_handler_rejects_a_non_callable(module_path: Path) -> None:
    module = write(module_path, "handler = 42\n")
    with pytest.raises(HandlerLoadError, match="not callable"):
        load_handler(f"{module}.handler")


def test_metrics_count_by_status_and_bucket_durations() -> None:
    m = Metrics(concurrency=4, in_flight=lambda: 3, buckets=(0.1, 1.0))
    m.observe(200, 0.05)
    m.observe(200, 0.5)
    m.observe(500, 5.0)
    m.timed_out()
    m.failed()
    snap = m.snapshot()
    assert snap["by_code"] == {200: 2, 500: 1}
    assert snap["buckets"] == [(0.1, 1), (1.0, 2), (float("inf"), 3)]
    assert snap["count"] == 3
    assert snap["sum"] == pytest.approx(5.55)
    assert (snap["timeouts"], snap["errors"], snap["in_flight"], snap["concurrency"]) == (1, 1, 3, 4)


def test_metrics_render_in_prometheus_text_format() -> None:
    m = Metrics(concurrency=4, in_flight=lambda: 1)
    m.observe(429, 0.001)
    body, content_type = m.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert f'{contract.METRIC_INVOCATIONS}{{code="429"}} 1.0' in text
    assert f"{contract.METRIC_DURATION}_count 1.0" in text
    assert f"{contract.METRIC_IN_FLIGHT} 1.0" in text
    assert f"{contract.METRIC_CONCURRENCY_LIMIT} 4.0" in text
    assert f"{contract.METRIC_TIMEOUTS} 0.0" in text
    assert f"{contract.METRIC_ERRORS} 0.0" in text


def test_requirements_skip_blanks_and_comments() -> None:
    text = "requests==2.32.3\n\n# a comment\nattrs>=23  # inline\n  six ; python_version >= '3'\n"
    assert parse_requirements(text) == ["requests==2.32.3", "attrs>=23", "six ; python_version >= '3'"]


def test_requirements_reject_pip_options() -> None:
    with pytest.raises(RequirementsError, match="options are not allowed"):
        parse_requirements("requests\n--index-url http://evil.test/simple\n")


def test_pip_command_installs_into_the_target_without_a_cache() -> None:
    cmd = pip_command(["requests==2.32.3"], "/opt/kfn/deps", python="python")
    assert cmd[:4] == ["python", "-m", "pip", "install"]
    assert "--no-cache-dir" in cmd
    assert cmd[cmd.index("--target") + 1] == "/opt/kfn/deps"
    assert cmd[-1] == "requests==2.32.3"
