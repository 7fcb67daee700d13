"""`kfn gateway --region`: the region its async destination records name (the chart passes functions.region)."""
from __future__ import annotations

import pytest

from kfn.cli import build_parser, options


def gateway_options(*args: str) -> options.GatewayOptions:
    return options.gateway(build_parser().parse_args(["gateway", *args]))


def test_the_gateway_region_is_the_flag_else_kfn_region_else_us_east_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFN_REGION", raising=False)
    assert gateway_options().region == "us-east-1"
    monkeypatch.setenv("KFN_REGION", " ap-south-2 ")
    assert gateway_options().region == "ap-south-2"
    assert gateway_options("--region", "eu-west-3").region == "eu-west-3"
