"""The environment variables of an execution environment (`kfn_runtime.variables.lambda_environment`):
Lambda's reserved variables in Lambda's formats, the function's own, and nothing of the host's."""
from __future__ import annotations

import re
import time

import pytest

from kfn_runtime.execution import HostConfig
from kfn_runtime.variables import lambda_environment


def config(**overrides: object) -> HostConfig:
    values: dict[str, object] = {"function_name": "orders", "timeout": 3.0, "concurrency": 2, "memory_mb": 512,
                                 "region": "us-east-1"}
    values.update(overrides)
    return HostConfig(**values)  # type: ignore[arg-type]


def environment(host_config: HostConfig | None = None, **kwargs: object) -> dict[str, str]:
    values: dict[str, object] = {"handler": "main.handler", "task_root": "/var/task", "runtime_dir": "/opt/kfn/runtime",
                                 "execution_env": "AWS_Lambda_python3.12"}
    values.update(kwargs)
    return lambda_environment(host_config or config(), **values)  # type: ignore[arg-type]


def test_reserved_variables_have_lambdas_names_and_values() -> None:
    env = environment(config(version="7"))
    assert {k: env[k] for k in (
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR", "_HANDLER", "TZ")} == {
        "AWS_LAMBDA_FUNCTION_NAME": "orders",
        "AWS_LAMBDA_FUNCTION_VERSION": "7",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/orders",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/opt/kfn/runtime",
        "_HANDLER": "main.handler",
        "TZ": ":UTC",
    }


def test_version_defaults_to_latest() -> None:
    assert environment()["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"


def test_log_stream_name_has_lambdas_format() -> None:
    stream = environment()["AWS_LAMBDA_LOG_STREAM_NAME"]
    # e.g. 2026/01/02/[$LATEST]0123456789abcdef0123456789abcdef
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", stream), stream
    assert stream.startswith(time.strftime("%Y/%m/", time.gmtime()))


def test_region_is_configurable_and_sets_both_region_variables() -> None:
    env = environment(config(region="eu-central-1"))
    assert (env["AWS_REGION"], env["AWS_DEFAULT_REGION"]) == ("eu-central-1", "eu-central-1")


def test_region_defaults_to_us_east_1() -> None:
    assert environment()["AWS_REGION"] == "us-east-1"


def test_nothing_of_the_hosts_environment_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFN_TEST_HOST_SECRET", "must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-credentials")
    env = environment()
    assert "KFN_TEST_HOST_SECRET" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "AWS_LAMBDA_RUNTIME_API" not in env   # each environment gets its own, from its spawner
    assert set(env) == {
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_REGION",
        "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_XRAY_CONTEXT_MISSING", "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR", "_HANDLER", "TZ", "LANG", "PATH", "PYTHONUNBUFFERED"}


def test_the_functions_own_variables_are_passed() -> None:
    env = environment(user_env={"DATABASE_URL": "postgres://db", "PATH": "/custom/bin"})
    assert (env["DATABASE_URL"], env["PATH"]) == ("postgres://db", "/custom/bin")


def test_path_has_a_default_without_one_of_the_functions() -> None:
    assert environment()["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_reserved_variables_cannot_be_overridden_by_the_function() -> None:
    env = environment(user_env={"AWS_LAMBDA_FUNCTION_NAME": "spoofed", "_HANDLER": "evil.handler",
                                "AWS_REGION": "xx-fake-1"})
    assert (env["AWS_LAMBDA_FUNCTION_NAME"], env["_HANDLER"], env["AWS_REGION"]) == (
        "orders", "main.handler", "us-east-1")


def test_the_callers_user_env_is_not_modified() -> None:
    user_env = {"A": "1"}
    environment(user_env=user_env)
    assert user_env == {"A": "1"}


def test_arn_names_region_account_and_function() -> None:
    assert config(region="ap-south-1").arn == "arn:aws:lambda:ap-south-1:000000000000:function:orders"
    assert config(account_id="123456789012").arn == "arn:aws:lambda:us-east-1:123456789012:function:orders"
