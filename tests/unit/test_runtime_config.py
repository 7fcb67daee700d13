"""An instance's settings as `python -m kfn_runtime` reads them from the KFN_* environment."""
from __future__ import annotations

import os
import sys

import pytest

from kfn_runtime import awslambda, contract
from kfn_runtime.config import Config, ConfigError

PYTHON = {contract.ENV_HANDLER: "main.handler"}
THIS_PYTHON = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def test_defaults_follow_lambdas_layout() -> None:
    c = Config.from_env(PYTHON)
    assert (c.handler, c.runtime, c.command) == ("main.handler", THIS_PYTHON, None)
    assert (c.code_dir, c.deps_dir) == (contract.DEFAULT_CODE_DIR, contract.DEFAULT_DEPS_DIR)
    assert (c.host, c.port) == (contract.DEFAULT_HOST, contract.DEFAULT_PORT)
    assert (c.timeout, c.concurrency, c.memory_mb) == (contract.DEFAULT_TIMEOUT, contract.DEFAULT_CONCURRENCY,
                                                       contract.DEFAULT_MEMORY_MB)
    assert (c.function_version, c.namespace, c.region) == ("$LATEST", "", awslambda.DEFAULT_REGION)
    assert c.idle_timeout == contract.DEFAULT_IDLE_TIMEOUT
    assert c.max_body_bytes == contract.DEFAULT_MAX_BODY_BYTES
    assert c.drain_timeout == contract.DEFAULT_TIMEOUT + contract.DEFAULT_DRAIN_EXTRA


def test_function_name_defaults_to_the_handlers_module() -> None:
    assert Config.from_env({contract.ENV_HANDLER: "orders.api.handler"}).function_name == "orders"


def test_runtime_dir_is_where_the_runtime_package_lives() -> None:
    import kfn_runtime

    assert Config.from_env(PYTHON).runtime_dir == os.path.dirname(os.path.dirname(kfn_runtime.__file__))


def test_every_variable_is_read() -> None:
    c = Config.from_env({
        contract.ENV_HANDLER: "pkg.mod.fn", contract.ENV_RUNTIME: "python3.12", contract.ENV_CODE_DIR: "/code",
        contract.ENV_DEPS_DIR: "/deps", contract.ENV_FUNCTION_NAME: "orders", contract.ENV_FUNCTION_VERSION: "7",
        contract.ENV_NAMESPACE: "shop", contract.ENV_REGION: "eu-west-1", contract.ENV_TIMEOUT: "2.5",
        contract.ENV_CONCURRENCY: "3", contract.ENV_MEMORY_MB: "128", contract.ENV_HOST: "127.0.0.1",
        contract.ENV_PORT: "0", contract.ENV_DRAIN_TIMEOUT: "0", contract.ENV_IDLE_TIMEOUT: "0.5",
        contract.ENV_MAX_BODY_BYTES: "1000",
    })
    assert (c.handler, c.runtime, c.code_dir, c.deps_dir) == ("pkg.mod.fn", "python3.12", "/code", "/deps")
    assert (c.function_name, c.function_version, c.namespace, c.region) == ("orders", "7", "shop", "eu-west-1")
    assert (c.timeout, c.concurrency, c.memory_mb) == (2.5, 3, 128)
    assert (c.host, c.port, c.drain_timeout, c.idle_timeout, c.max_body_bytes) == ("127.0.0.1", 0, 0.0, 0.5, 1000)


def test_relative_directories_are_made_absolute() -> None:
    c = Config.from_env({**PYTHON, contract.ENV_CODE_DIR: "code", contract.ENV_DEPS_DIR: "deps"})
    assert (c.code_dir, c.deps_dir) == (os.path.abspath("code"), os.path.abspath("deps"))


def test_drain_timeout_defaults_to_the_invocation_timeout_plus_a_margin() -> None:
    c = Config.from_env({**PYTHON, contract.ENV_TIMEOUT: "3"})
    assert c.drain_timeout == 3 + contract.DEFAULT_DRAIN_EXTRA


def test_blank_variables_mean_their_defaults() -> None:
    blank = {name: "  " for name in (contract.ENV_TIMEOUT, contract.ENV_CONCURRENCY, contract.ENV_MEMORY_MB,
                                     contract.ENV_PORT, contract.ENV_DRAIN_TIMEOUT, contract.ENV_IDLE_TIMEOUT,
                                     contract.ENV_MAX_BODY_BYTES)}
    c = Config.from_env({**PYTHON, **blank})
    assert (c.timeout, c.concurrency, c.memory_mb, c.port) == (contract.DEFAULT_TIMEOUT, contract.DEFAULT_CONCURRENCY,
                                                               contract.DEFAULT_MEMORY_MB, contract.DEFAULT_PORT)
    assert c.drain_timeout == contract.DEFAULT_TIMEOUT + contract.DEFAULT_DRAIN_EXTRA
    assert (c.idle_timeout, c.max_body_bytes) == (contract.DEFAULT_IDLE_TIMEOUT, contract.DEFAULT_MAX_BODY_BYTES)


def test_user_environment_is_everything_but_the_platforms_variables() -> None:
    c = Config.from_env({**PYTHON, contract.ENV_TIMEOUT: "3", "DATABASE_URL": "postgres://db", "PATH": "/bin"})
    assert c.user_env == {"DATABASE_URL": "postgres://db", "PATH": "/bin"}


def test_command_is_a_json_list_and_needs_no_handler() -> None:
    c = Config.from_env({contract.ENV_COMMAND: '["python", "-m", "awslambdaric", "app.handler"]'})
    assert c.command == ["python", "-m", "awslambdaric", "app.handler"]


def test_nodejs_runtime_is_accepted() -> None:
    c = Config.from_env({contract.ENV_RUNTIME: "nodejs20", contract.ENV_HANDLER: "index.handler"})
    assert (c.runtime, c.handler, c.command) == ("nodejs20", "index.handler", None)


def test_image_runtime_needs_no_handler_but_the_launchers_directory() -> None:
    c = Config.from_env({contract.ENV_RUNTIME: contract.RUNTIME_IMAGE, contract.ENV_ENVIRONMENTS_DIR: " /shared "})
    assert (c.runtime, c.environments_dir, c.command) == (contract.RUNTIME_IMAGE, "/shared", None)


def test_image_runtime_without_the_launchers_directory_names_it() -> None:
    with pytest.raises(ConfigError, match=contract.ENV_ENVIRONMENTS_DIR):
        Config.from_env({contract.ENV_RUNTIME: contract.RUNTIME_IMAGE, contract.ENV_ENVIRONMENTS_DIR: " "})


def test_config_is_immutable() -> None:
    c = Config.from_env(PYTHON)
    with pytest.raises(AttributeError):
        c.timeout = 1.0


def test_config_needs_every_field_when_built_by_hand() -> None:
    with pytest.raises(TypeError, match="exactly"):
        Config(handler="main.handler")


# --- invalid configuration names the variable --------------------------------------------------

@pytest.mark.parametrize(("env", "message"), [
    ({}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_HANDLER: ""}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_HANDLER: "nodot"}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_HANDLER: ".handler"}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_HANDLER: "main."}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_RUNTIME: "nodejs20"}, "KFN_HANDLER must be module.function"),
    ({contract.ENV_RUNTIME: "ruby3.3", contract.ENV_HANDLER: "main.handler"}, "KFN_RUNTIME must be"),
    ({contract.ENV_COMMAND: "python bootstrap.py"}, "KFN_COMMAND must be a JSON list"),
    ({contract.ENV_COMMAND: "[]"}, "KFN_COMMAND must be a JSON list"),
    ({contract.ENV_COMMAND: '["python", 3]'}, "KFN_COMMAND must be a JSON list"),
    ({contract.ENV_COMMAND: '{"cmd": "python"}'}, "KFN_COMMAND must be a JSON list"),
], ids=["handler-missing", "handler-empty", "handler-without-dot", "handler-without-module",
        "handler-without-function", "nodejs-without-handler", "unknown-runtime", "command-not-json",
        "command-empty", "command-not-strings", "command-not-a-list"])
def test_missing_or_malformed_handler_runtime_or_command_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


@pytest.mark.parametrize(("name", "value", "message"), [
    (contract.ENV_TIMEOUT, "soon", "must be a number"),
    (contract.ENV_TIMEOUT, "0", "must be > 0"),
    (contract.ENV_TIMEOUT, "-1", "must be > 0"),
    (contract.ENV_TIMEOUT, "nan", "must be > 0"),
    (contract.ENV_TIMEOUT, "inf", "must be > 0"),
    (contract.ENV_CONCURRENCY, "0", "must be >= 1"),
    (contract.ENV_CONCURRENCY, "2.5", "must be an integer"),
    (contract.ENV_CONCURRENCY, "many", "must be an integer"),
    (contract.ENV_MEMORY_MB, "0", "must be >= 1"),
    (contract.ENV_MEMORY_MB, "1.5GB", "must be an integer"),
    (contract.ENV_PORT, "-1", "must be >= 0 and <= 65535"),
    (contract.ENV_PORT, "70000", "must be >= 0 and <= 65535"),
    (contract.ENV_PORT, "http", "must be an integer"),
    (contract.ENV_DRAIN_TIMEOUT, "-1", "must be >= 0"),
    (contract.ENV_DRAIN_TIMEOUT, "later", "must be a number"),
    (contract.ENV_IDLE_TIMEOUT, "0", "must be > 0"),
    (contract.ENV_IDLE_TIMEOUT, "never", "must be a number"),
    (contract.ENV_MAX_BODY_BYTES, "-1", "must be >= 0"),
    (contract.ENV_MAX_BODY_BYTES, "6MB", "must be an integer"),
])
def test_invalid_number_is_named_with_its_value(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({**PYTHON, name: value})
    assert str(info.value).startswith(f"{name} {message}")
    assert repr(value) in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_the_init_timeout_is_lambdas_10_seconds_unless_kfn_init_timeout_says_otherwise() -> None:
    assert Config.from_env(PYTHON).init_timeout == 10.0
    assert Config.from_env({**PYTHON, contract.ENV_INIT_TIMEOUT: "2.5"}).init_timeout == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_an_init_timeout_that_is_not_a_positive_number_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match=contract.ENV_INIT_TIMEOUT):
        Config.from_env({**PYTHON, contract.ENV_INIT_TIMEOUT: value})


def test_the_host_gets_the_init_timeout() -> None:
    from kfn_runtime.launch import build_host

    config = Config.from_env({**PYTHON, contract.ENV_INIT_TIMEOUT: "3"})
    assert build_host(config).config.init_timeout == 3.0
