"""`kfn gateway --pool-key-file` and `--archive-url`: a scale from zero served by the warm pools."""
from __future__ import annotations

from pathlib import Path

import pytest

from kfn.cli import build_parser, gateway, options
from kfn.core.errors import CommandError


def gateway_options(*args: str) -> options.GatewayOptions:
    return options.gateway(build_parser().parse_args(["gateway", *args]))


def test_without_a_pool_key_the_gateway_claims_no_pool_pods() -> None:
    assert gateway._pool_key(gateway_options()) is None


def test_the_pool_key_is_the_files_raw_bytes(tmp_path: Path) -> None:
    key = tmp_path / "pool-key"
    key.write_bytes(b"\x00\xff" * 16)
    assert gateway._pool_key(gateway_options("--pool-key-file", str(key))) == b"\x00\xff" * 16


def test_a_short_pool_key_is_refused_naming_the_flag(tmp_path: Path) -> None:
    key = tmp_path / "pool-key"
    key.write_bytes(b"short")
    with pytest.raises(CommandError, match="--pool-key-file .* 5 bytes"):
        gateway._pool_key(gateway_options("--pool-key-file", str(key)))


def test_a_missing_pool_key_file_is_refused_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--pool-key-file"):
        gateway._pool_key(gateway_options("--pool-key-file", str(tmp_path / "absent")))


def test_the_archive_url_loses_its_trailing_slash() -> None:
    assert gateway_options("--archive-url", "http://kfn-gateway.kfn.svc:8080/").archive_url == \
        "http://kfn-gateway.kfn.svc:8080"


def test_an_archive_url_that_is_no_http_url_is_refused() -> None:
    with pytest.raises(CommandError, match="--archive-url"):
        gateway_options("--archive-url", "kfn-gateway:8080")
