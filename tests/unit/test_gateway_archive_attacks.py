"""The archive store (/system/archives/NAMESPACE/KEY) attacked by a tenant holding only its own
namespace's tokens, or none: no path, verb or body trick reaches another namespace's archive, changes
one that is stored, or holds the upload slots for good."""
from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest

from kfn.archives.directory import DirectoryArchives
from kfn.archives.store import valid_name
from kfn_gateway import archives_api
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import archive
from tests.support.archives import KEY, archive_gateway, leftovers, make_archive, put_headers, token, url


async def raw_request(port: int, head: str, body: bytes = b"", *, wait: float = 5.0) -> bytes:
    """Send `head` (CRLF line ends added) and `body` as they are; what the gateway answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("namespace", ["team\n", "team\r", " team"])
def test_a_namespace_with_a_line_end_or_space_is_not_a_name(namespace: str) -> None:
    assert not valid_name(namespace, KEY)


async def test_a_namespace_ending_in_an_encoded_line_feed_is_400_even_with_its_own_token(
        store: DirectoryArchives, tmp_path: Path) -> None:
    # A token for "team\n" could only come from a leaked signing key; the store must not hold such a name anyway.
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("GET", url("team%0A"), headers=token(archive.VERB_GET, "team\n"))
    assert status == 400 and "is not an archive" in body["error"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("path", [
    f"/system/archives/other/../team/{KEY}",
    f"/system/archives/other/%2E%2E/team/{KEY}",
    f"/system/archives/other%2F..%2Fteam/{KEY}",
    f"/system/archives//team/{KEY}",
    f"//system/archives/team/{KEY}",
    f"/system/archives/team/{KEY}/",
    f"/system/archives/TEAM/{KEY}",
    f"/system/archives/te\N{LATIN SMALL LETTER A WITH GRAVE}m/{KEY}".encode().decode("latin-1"),
    f"/system/archives/{'t' * 5000}/{KEY}",
], ids=["dot-dot", "encoded dot-dot", "encoded slashes", "double slash", "leading double slash",
        "trailing slash", "upper case", "unicode", "very long"])
async def test_no_path_trick_opens_another_namespaces_archive_with_ones_own_get_token(
        store: DirectoryArchives, tmp_path: Path, path: str) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        assert (await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest)))[0] == 201
        own = token(archive.VERB_GET, "other")["Authorization"]
        answer = await raw_request(gw.port, f"GET {path} HTTP/1.1\nHost: x\nAuthorization: {own}\n"
                                            "Connection: close\n")
    assert status_of(answer) in (400, 403, 404, 414, 431), answer[:200]
    assert built.data not in answer


@pytest.mark.parametrize(("method", "verb"), [("HEAD", archive.VERB_PUT), ("GET", archive.VERB_PUT),
                                              ("POST", archive.VERB_PUT), ("DELETE", archive.VERB_PUT)])
async def test_a_put_token_opens_nothing_but_a_put(store: DirectoryArchives, tmp_path: Path,
                                                   method: str, verb: str) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        async with gw.session.request(method, gw.url(url()), headers=token(verb)) as response:
            assert response.status in (403, 405)
            assert await response.read() != built.data
    assert (await store.info("team", KEY)) is not None


async def test_a_stored_archive_is_not_replaced_by_a_put_with_its_own_valid_token(
        store: DirectoryArchives, tmp_path: Path) -> None:
    first, poison = make_archive(tmp_path, content=b"good\n"), make_archive(tmp_path, content=b"evil\n")
    async with archive_gateway(store) as gw:
        await gw.json("PUT", url(), data=first.data, headers=put_headers(first.digest))
        for _ in range(3):
            status, body, _ = await gw.json("PUT", url(), data=poison.data, headers=put_headers(poison.digest))
            assert (status, body["digest"]) == (200, first.digest)
        async with gw.session.get(gw.url(url()), headers=token(archive.VERB_GET)) as response:
            assert await response.read() == first.data


async def test_a_content_length_shorter_than_the_body_stores_nothing(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path)
    headers = "".join(f"{k}: {v}\n" for k, v in put_headers(built.digest).items())
    async with archive_gateway(store) as gw:
        answer = await raw_request(gw.port, f"PUT {url()} HTTP/1.1\nHost: x\n{headers}"
                                            f"Content-Length: {len(built.data) - 10}\nConnection: close\n",
                                   built.data)
    assert status_of(answer) == 400
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_a_content_length_longer_than_the_body_then_a_close_stores_nothing(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path)
    headers = "".join(f"{k}: {v}\n" for k, v in put_headers(built.digest).items())
    async with archive_gateway(store) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"PUT {url()} HTTP/1.1\r\nHost: x\r\n{headers.replace(chr(10), chr(13) + chr(10))}"
                     f"Content-Length: {len(built.data) + 100}\r\n\r\n".encode() + built.data)
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.5)
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_a_chunked_body_past_the_limit_is_cut_off_at_the_limit(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    headers = "".join(f"{k}: {v}\n" for k, v in put_headers(archive.DIGEST_PREFIX + "0" * 64).items())
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(64)) + b"0\r\n\r\n"
    async with archive_gateway(store, settings=GatewaySettings(archive_max_bytes=10_000)) as gw:
        answer = await raw_request(gw.port, f"PUT {url()} HTTP/1.1\nHost: x\n{headers}"
                                            "Transfer-Encoding: chunked\n", body)
    assert status_of(answer) == 413
    assert leftovers(temporary) == []


async def test_expect_100_continue_over_the_limit_is_refused_before_the_body(
        store: DirectoryArchives, tmp_path: Path) -> None:
    headers = "".join(f"{k}: {v}\n" for k, v in put_headers(archive.DIGEST_PREFIX + "0" * 64).items())
    async with archive_gateway(store, settings=GatewaySettings(archive_max_bytes=1000)) as gw:
        answer = await raw_request(gw.port, f"PUT {url()} HTTP/1.1\nHost: x\n{headers}"
                                            "Content-Length: 1000000\nExpect: 100-continue\n")
    assert status_of(answer) == 413 and b"100 Continue" not in answer


async def test_a_slow_upload_gives_its_slot_back_at_the_upload_deadline(
        store: DirectoryArchives, tmp_path: Path, temporary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One byte every 0.2 s never trips the 1 s pause limit; without a deadline it holds the slot for good.
    monkeypatch.setattr(archives_api, "UPLOAD_DEADLINE", 1.5)
    built = make_archive(tmp_path)
    headers = "".join(f"{k}: {v}\r\n" for k, v in put_headers(built.digest).items())
    settings = GatewaySettings(archive_uploads=1, body_timeout=1.0)
    async with archive_gateway(store, settings=settings) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"PUT {url()} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 100000\r\n\r\n".encode())

        async def drip() -> None:
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)

        dripping = asyncio.create_task(drip())
        try:
            await asyncio.sleep(0.5)
            assert (await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest)))[0] == 503
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), 5.0)
            assert status_of(answer) == 408, answer[:200]
            assert time.monotonic() - started < 3.0
            status, _, _ = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
            assert status == 201
        finally:
            dripping.cancel()
            writer.close()
    assert leftovers(temporary) == []


async def test_many_heads_without_a_token_never_reach_the_store(tmp_path: Path) -> None:
    class CountingArchives(DirectoryArchives):
        asked = 0

        async def info(self, namespace: str, key: str):  # type: ignore[no-untyped-def]
            CountingArchives.asked += 1
            return await super().info(namespace, key)

    async with archive_gateway(CountingArchives(tmp_path / "store")) as gw:
        statuses = set()
        for _ in range(200):
            async with gw.session.head(gw.url(url()), headers={"Authorization": "Bearer " + "0" * 64}) as response:
                statuses.add(response.status)
    assert statuses == {403} and CountingArchives.asked == 0


async def test_a_gateway_stopped_mid_upload_leaves_no_temporary_file_and_nothing_stored(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path)
    headers = "".join(f"{k}: {v}\r\n" for k, v in put_headers(built.digest).items())
    async with archive_gateway(store, settings=GatewaySettings(body_timeout=1.0)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"PUT {url()} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(built.data)}\r\n\r\n".encode()
                     + built.data[: len(built.data) // 2])
        await writer.drain()
        await asyncio.sleep(0.3)
        assert len(leftovers(temporary)) == 1   # the half that arrived
    writer.close()
    assert leftovers(temporary) == []
    assert await store.info("team", KEY) is None


async def test_a_put_token_of_ones_own_namespace_cannot_store_into_another(
        store: DirectoryArchives, tmp_path: Path) -> None:
    poison = make_archive(tmp_path, content=b"evil\n")
    async with archive_gateway(store) as gw:
        headers = {**put_headers(poison.digest), **token(archive.VERB_PUT, "mallory")}
        status, _, _ = await gw.json("PUT", url("team"), data=poison.data, headers=headers)
    assert status == 403
    assert await store.info("team", KEY) is None


async def test_one_namespace_takes_one_upload_slot_and_another_namespace_still_uploads(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    # Every namespace's builds hold put tokens of their own: one namespace uploading slowly must not
    # take every slot from the others.
    built = make_archive(tmp_path)
    headers = "".join(f"{k}: {v}\r\n" for k, v in put_headers(built.digest).items())
    async with archive_gateway(store, settings=GatewaySettings(archive_uploads=2)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"PUT {url()} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 100000\r\n\r\nx".encode())
        await writer.drain()
        try:
            await asyncio.sleep(0.3)   # team's upload is arriving, slowly
            second = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
            assert second[0] == 503 and second[2]["Retry-After"], second
            other = await gw.json("PUT", url("other"), data=built.data, headers=put_headers(built.digest, "other"))
            assert other[0] == 201, other
        finally:
            writer.close()
    assert leftovers(temporary) == []


async def test_an_archive_whose_manifest_nests_too_deep_for_json_is_400(store: DirectoryArchives,
                                                                          tmp_path: Path) -> None:
    data = io.BytesIO()
    manifest = b"[" * 100_000
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo(archive.MANIFEST_NAME)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    digest = archive.DIGEST_PREFIX + hashlib.sha256(data.getvalue()).hexdigest()
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("PUT", url(), data=data.getvalue(), headers=put_headers(digest))
    assert status == 400 and "not an archive kfn builds" in body["error"], (status, body)
