"""NATS with credentials: the URL carries them (`nats://USER:PASSWORD@HOST:4222`, put there from
$KFN_NATS_USER and $KFN_NATS_PASSWORD), kfn hands them to nats-py apart from the URL, a server
that requires them refuses a client without, and no log or error message shows the password."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfn._cogs.nats import Backoff, NatsUnreachable, connect, disconnect
from kfn.cli import build_parser, options
from kfn.core import natsurl
from kfn.core.natsurl import Credentials
from kfn.events.jetstream_connection import Connection
from kfn.events.store import StoreUnavailable
from kfn_operator.config import OperatorConfig
from tests.support.nats import NatsServer, nats_server_binary
from tests.support.ports import free_port

PASSWORD = "p@ss/w:rd%20 é"   # every character a URL cannot carry as it is
SERVER_PASSWORD = "AbcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    nats_server_binary()
    started = NatsServer(tmp_path, user="kfn", password=SERVER_PASSWORD)
    started.start()
    try:
        yield started
    finally:
        started.stop()


# -- the URL ----------------------------------------------------------------------------------------

def test_credentials_put_into_a_url_are_percent_encoded_and_read_back_decoded() -> None:
    url = natsurl.with_credentials("nats://kfn-nats.kfn:4222", "kfn", PASSWORD)
    assert url == "nats://kfn:p%40ss%2Fw%3Ard%2520%20%C3%A9@kfn-nats.kfn:4222"
    assert natsurl.servers(url) == [url]
    assert natsurl.credentials(url) == Credentials(user="kfn", password=PASSWORD)


def test_each_server_of_a_list_gets_the_credentials() -> None:
    url = natsurl.with_credentials("nats://a:4222,nats://b:4222", "kfn", "pw")
    assert url == "nats://kfn:pw@a:4222,nats://kfn:pw@b:4222"
    assert natsurl.bare(url) == ["nats://a:4222", "nats://b:4222"]


def test_credentials_written_in_the_url_win_over_those_given() -> None:
    assert natsurl.with_credentials("nats://me:mine@a:4222", "kfn", "pw") == "nats://me:mine@a:4222"


def test_a_url_without_a_password_is_left_as_it_is() -> None:
    assert natsurl.with_credentials("nats://a:4222", "kfn", None) == "nats://a:4222"
    assert natsurl.credentials("nats://a:4222") is None


def test_a_user_alone_in_the_url_is_a_token() -> None:
    assert natsurl.credentials("nats://s3cr3t@a:4222") == Credentials(token="s3cr3t")


def test_servers_with_different_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="different credentials"):
        natsurl.credentials("nats://a:x@a:4222,nats://a:y@b:4222")


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://kfn:hunter2@a:4222", "nats://kfn:***@a:4222"),
    ("nats://hunter2@a:4222", "nats://***@a:4222"),
    ("nats://kfn:hunter2@a:4222,nats://kfn:hunter2@b:4222", "nats://kfn:***@a:4222,nats://kfn:***@b:4222"),
    ("nats://a:4222", "nats://a:4222"),
])
def test_a_masked_url_shows_the_user_and_never_the_password(url: str, shown: str) -> None:
    assert natsurl.masked(url) == shown


def test_a_bad_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as refused:
        natsurl.servers("nats://kfn:hunter2@a:4222,redis://b")
    assert "hunter2" not in str(refused.value)


def test_the_environment_credentials_go_into_the_url() -> None:
    env = {natsurl.ENV_USER: "kfn", natsurl.ENV_PASSWORD: "pw"}
    assert natsurl.in_environment("nats://a:4222", env) == "nats://kfn:pw@a:4222"
    assert natsurl.in_environment("nats://a:4222", {natsurl.ENV_PASSWORD: "tok"}) == "nats://tok@a:4222"
    assert natsurl.in_environment("nats://a:4222", {natsurl.ENV_USER: "kfn"}) == "nats://a:4222"


def test_the_gateway_and_kfn_local_take_the_credentials_of_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFN_NATS_URL", "nats://kfn-nats.kfn-system.svc:4222")
    monkeypatch.setenv("KFN_NATS_USER", "kfn")
    monkeypatch.setenv("KFN_NATS_PASSWORD", "pw")
    assert options.nats_url(None) == "nats://kfn:pw@kfn-nats.kfn-system.svc:4222"
    parsed = options.gateway(build_parser().parse_args(["gateway"]))
    assert parsed.nats_url == "nats://kfn:pw@kfn-nats.kfn-system.svc:4222"


def test_the_operator_takes_the_credentials_of_the_environment() -> None:
    config = OperatorConfig.build(env={"KFN_NATS_URL": "nats://kfn-nats.kfn-system.svc:4222",
                                       "KFN_NATS_USER": "kfn", "KFN_NATS_PASSWORD": "pw"})
    assert config.nats_url == "nats://kfn:pw@kfn-nats.kfn-system.svc:4222"
    assert OperatorConfig.build(env={"KFN_NATS_PASSWORD": "pw"}).nats_url is None


# -- a server that requires them ---------------------------------------------------------------------

async def test_a_client_with_the_credentials_is_admitted(server: NatsServer) -> None:
    url = natsurl.with_credentials(server.url, "kfn", SERVER_PASSWORD)
    client = await asyncio.wait_for(connect(url, name="kfn-test", attempts=1, backoff=Backoff(0.1)), 20)
    try:
        assert client.is_connected
        # nats-py was given the server without the credentials: its own messages cannot show them.
        assert all(SERVER_PASSWORD not in s.geturl() for s in client.servers)
    finally:
        await disconnect(client)


async def test_a_client_without_credentials_is_refused(server: NatsServer) -> None:
    with pytest.raises(NatsUnreachable) as refused:
        await asyncio.wait_for(connect(server.url, name="kfn-test", attempts=1, backoff=Backoff(0.1)), 30)
    assert "authorization" in str(refused.value).lower()


async def test_a_client_with_a_wrong_password_is_refused_and_the_error_does_not_show_it(
        server: NatsServer) -> None:
    url = natsurl.with_credentials(server.url, "kfn", "wrong-password-0123")
    with pytest.raises(NatsUnreachable) as refused:
        await asyncio.wait_for(connect(url, name="kfn-test", attempts=1, backoff=Backoff(0.1)), 30)
    assert "authorization" in str(refused.value).lower()
    assert "wrong-password-0123" not in str(refused.value)
    assert "nats://kfn:***@127.0.0.1" in str(refused.value)


async def test_the_event_store_logs_its_url_masked(server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    url = natsurl.with_credentials(server.url, "kfn", SERVER_PASSWORD)
    connection = Connection(url, publish_timeout=2.0, publish_attempts=1, connect_attempts=1)
    await connection.open([])
    try:
        with caplog.at_level(logging.WARNING):
            server.stop()
            await asyncio.wait_for(connection._on_disconnected(), 5)
            with pytest.raises(StoreUnavailable) as refused:
                await connection.publish("kfn.x", b"{}", "id-1")
    finally:
        await connection.close()
    assert "disconnected from nats://kfn:***@127.0.0.1" in caplog.text
    assert SERVER_PASSWORD not in caplog.text and SERVER_PASSWORD not in str(refused.value)


async def test_an_unreachable_server_is_reported_with_its_url_masked() -> None:
    url = f"nats://kfn:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnreachable) as unreachable:
        await asyncio.wait_for(connect(url, name="kfn-test", attempts=1, backoff=Backoff(0.1)), 30)
    assert "hunter2" not in str(unreachable.value)
    assert f"could not connect to NATS at nats://kfn:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in str(unreachable.value)
