"""The gateway's limits from the command line, for `kfn local` and `kfn gateway` alike."""
from __future__ import annotations

from pathlib import Path

import pytest

from kfn.cli import build_parser, options
from kfn.cli.local import settings
from kfn.core.errors import CommandError
from kfn_gateway.settings import GatewaySettings


def local_gateway(tmp_path: Path, *flags: str) -> GatewaySettings:
    args = build_parser().parse_args(["local", str(tmp_path), *flags])
    return settings(options.local(args)).gateway


def test_limits_not_given_keep_the_gateways_defaults(tmp_path: Path) -> None:
    gateway = local_gateway(tmp_path)
    defaults = GatewaySettings()
    assert (gateway.max_body_bytes, gateway.max_async_payload_bytes, gateway.queue_limit, gateway.queue_timeout) == (
        defaults.max_body_bytes, defaults.max_async_payload_bytes, defaults.queue_limit, defaults.queue_timeout)


def test_every_limit_given_reaches_the_gateway(tmp_path: Path) -> None:
    gateway = local_gateway(tmp_path, "--max-body-size", "2Mi", "--max-async-payload-size", "256Ki",
                            "--queue-limit", "7", "--queue-timeout", "5s")
    assert (gateway.max_body_bytes, gateway.max_async_payload_bytes, gateway.queue_limit, gateway.queue_timeout) == (
        2 << 20, 256 << 10, 7, 5.0)


@pytest.mark.parametrize("flag", ["--max-body-size", "--max-async-payload-size"])
@pytest.mark.parametrize("value", ["0", "-1Ki", "lots"])
def test_a_size_that_is_not_positive_is_a_usage_error_naming_the_flag(tmp_path: Path, flag: str, value: str) -> None:
    with pytest.raises(CommandError) as caught:
        local_gateway(tmp_path, f"{flag}={value}")
    assert caught.value.exit_code == 2
    assert flag in str(caught.value)


def test_the_send_timeout_and_connection_cap_reach_the_gateway_of_kfn_local_and_kfn_gateway(tmp_path: Path) -> None:
    assert (GatewaySettings().send_timeout, GatewaySettings().max_connections) == (60.0, 1024)
    gateway = local_gateway(tmp_path, "--send-timeout", "5s", "--max-connections", "10")
    assert (gateway.send_timeout, gateway.max_connections) == (5.0, 10)
    args = build_parser().parse_args(["gateway", "--send-timeout", "2m", "--max-connections", "20"])
    given = options.gateway(args).connections
    assert (given.send_timeout, given.max_connections) == (120.0, 20)


@pytest.mark.parametrize(("flag", "value"), [("--send-timeout", "0s"), ("--send-timeout", "soon"),
                                             ("--max-connections", "0")])
def test_a_send_timeout_or_connection_cap_that_is_not_positive_is_a_usage_error(tmp_path: Path, flag: str,
                                                                                value: str) -> None:
    with pytest.raises(CommandError) as caught:
        local_gateway(tmp_path, f"{flag}={value}")
    assert caught.value.exit_code == 2
    assert flag in str(caught.value)


def test_kfn_locals_init_timeout_is_lambdas_10s_unless_init_timeout_says_otherwise(tmp_path: Path) -> None:
    parse = build_parser().parse_args
    assert settings(options.local(parse(["local", str(tmp_path)]))).init_timeout == 10.0
    assert settings(options.local(parse(["local", str(tmp_path), "--init-timeout", "30s"]))).init_timeout == 30.0


@pytest.mark.parametrize("value", ["0s", "-1s", "soon"])
def test_an_init_timeout_that_is_not_positive_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(CommandError) as caught:
        options.local(build_parser().parse_args(["local", str(tmp_path), f"--init-timeout={value}"]))
    assert caught.value.exit_code == 2 and "--init-timeout" in str(caught.value)


def test_kfn_gateways_health_port_reaches_its_options_and_is_none_by_default() -> None:
    assert options.gateway(build_parser().parse_args(["gateway"])).health_port is None
    given = options.gateway(build_parser().parse_args(["gateway", "--port", "8080", "--health-port", "8081"]))
    assert (given.port, given.health_port) == (8080, 8081)


@pytest.mark.parametrize("flags", [["--health-port", "0"], ["--health-port", "70000"],
                                   ["--port", "9000", "--health-port", "9000"]])
def test_a_health_port_that_is_no_port_or_the_main_port_is_a_usage_error(flags: list[str]) -> None:
    with pytest.raises(CommandError) as caught:
        options.gateway(build_parser().parse_args(["gateway", *flags]))
    assert caught.value.exit_code == 2
    assert "--health-port" in str(caught.value)


@pytest.mark.parametrize("command", ["gateway", "operator"])
def test_the_sync_timeout_reaches_the_options_and_is_30s_by_default(command: str) -> None:
    parse = options.gateway if command == "gateway" else options.operator
    assert parse(build_parser().parse_args([command])).sync_timeout == 30.0
    assert parse(build_parser().parse_args([command, "--sync-timeout", "2.5"])).sync_timeout == 2.5


@pytest.mark.parametrize("command", ["gateway", "operator"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_sync_timeout_that_is_not_positive_is_a_usage_error(command: str, value: str) -> None:
    parse = options.gateway if command == "gateway" else options.operator
    with pytest.raises(CommandError) as caught:
        parse(build_parser().parse_args([command, f"--sync-timeout={value}"]))
    assert caught.value.exit_code == 2 and "--sync-timeout" in str(caught.value)
