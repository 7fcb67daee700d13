"""NATS URLs as kfn takes them: one server or a comma-separated list, each checked."""
from __future__ import annotations

import pytest

from kfn.core.natsurl import servers


def test_one_url_is_one_server() -> None:
    assert servers("nats://kfn-nats.kfn-system:4222") == ["nats://kfn-nats.kfn-system:4222"]


def test_a_comma_separated_list_is_a_list_of_servers_without_spaces() -> None:
    assert servers("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize("url", ["", " , ", "http://a:4222", "nats://", "a:4222", "nats://a:4222,redis://b"])
def test_anything_else_is_refused_naming_the_bad_part(url: str) -> None:
    with pytest.raises(ValueError, match="NATS URL"):
        servers(url)
