"""`kfn gateway --peers-service`: the gateway's own Service, whose ready endpoints are the replicas
sharing the async queue (the chart passes it); without it, `--replicas` is the count."""
from __future__ import annotations

import pytest

from kfn.cli import build_parser, options
from kfn.core.errors import CommandError


def gateway_options(*args: str) -> options.GatewayOptions:
    return options.gateway(build_parser().parse_args(["gateway", *args]))


def test_without_a_peers_service_the_replicas_flag_is_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFN_GATEWAY_REPLICAS", raising=False)
    parsed = gateway_options("--replicas", "3")
    assert (parsed.peers_service, parsed.replicas) == (None, 3)


def test_the_peers_service_is_looked_up_in_the_gateways_own_namespace() -> None:
    parsed = gateway_options("--peers-service", "kfn-gateway", "--admin-namespace", "platform")
    assert (parsed.peers_service, parsed.admin_namespace) == ("kfn-gateway", "platform")


@pytest.mark.parametrize("name", ["Kfn-Gateway", "kfn_gateway", "-kfn", "kfn-", "1kfn", "x" * 64, "a/b"])
def test_a_peers_service_that_is_no_service_name_is_refused(name: str) -> None:
    with pytest.raises(CommandError, match="--peers-service") as raised:
        gateway_options(f"--peers-service={name}")
    assert raised.value.exit_code == 2
