"""A careless operator's signing key file: the operator refuses what the gateway refuses, so the two
never run with keys one of them would not take."""
from __future__ import annotations

from pathlib import Path

import pytest

from kfn.cli.gateway import _archive_key
from kfn.cli.options import GatewayOptions
from kfn.core.errors import CommandError
from kfn_operator.config import OperatorConfig
from kfn_runtime import archive

STORE = "http://kfn-gateway.kfn:8080"


def key_file(tmp_path: Path, content: bytes | None) -> Path:
    """A key file holding `content`; None: a directory where the file should be."""
    path = tmp_path / "key"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("content", [b"", b"short", b"x" * (archive.MIN_SECRET_BYTES - 1), None],
                         ids=["empty", "short", "one byte short", "a directory"])
def test_the_operator_refuses_a_key_file_the_gateway_refuses(tmp_path: Path, content: bytes | None) -> None:
    path = key_file(tmp_path, content)
    with pytest.raises(CommandError):
        _archive_key(GatewayOptions(archive_key_file=path))
    with pytest.raises(ValueError, match="--archive-key-file"):
        OperatorConfig.build(archive_url=STORE, archive_key_file=str(path), env={})


def test_a_missing_key_file_is_refused_by_both(tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        _archive_key(GatewayOptions(archive_key_file=tmp_path / "absent"))
    with pytest.raises(ValueError, match="absent"):
        OperatorConfig.build(archive_url=STORE, archive_key_file=str(tmp_path / "absent"), env={})


def test_both_read_the_same_key_from_the_same_file_byte_for_byte(tmp_path: Path) -> None:
    path = key_file(tmp_path, b"k" * archive.MIN_SECRET_BYTES + b"\n")   # a trailing newline is part of it
    config = OperatorConfig.build(archive_url=STORE, archive_key_file=str(path), env={})
    assert config.archive_key == _archive_key(GatewayOptions(archive_key_file=path))
