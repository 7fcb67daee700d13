"""The gateway's archive store (/system/archives/NAMESPACE/KEY): build archives stored once behind
tokens that open one archive of one namespace for one verb, fetched byte for byte."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kfn.archives.directory import DirectoryArchives
from kfn.archives.store import ArchiveInfo, ArchivesUnavailable
from kfn_gateway.archives_api import HEADER_DIGEST
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import archive, build, fetch
from tests.support.archives import (
    KEY,
    SECRET,
    archive_gateway,
    digest_of,
    leftovers,
    make_archive,
    put_headers,
    token,
    url,
)
from tests.support.keys import MutableKeys

OTHER_KEY = archive.KEY_PREFIX + "fedcba9876543210fedcba9876543210"


async def test_an_archive_put_then_got_comes_back_byte_for_byte_with_its_digest(
        store: DirectoryArchives, tmp_path: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        assert (status, body) == (201, {"key": KEY, "digest": built.digest, "size": len(built.data)})
        async with gw.session.get(gw.url(url()), headers=token(archive.VERB_GET)) as response:
            assert response.status == 200
            assert await response.read() == built.data
            assert response.headers[HEADER_DIGEST] == built.digest
            assert response.headers["Content-Type"] == archive.MEDIA_TYPE
            assert response.headers["Content-Length"] == str(len(built.data))


async def test_head_answers_the_digest_and_size_without_the_archive(store: DirectoryArchives, tmp_path: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        async with gw.session.head(gw.url(url()), headers=token(archive.VERB_GET)) as response:
            assert response.status == 200
            assert response.headers[HEADER_DIGEST] == built.digest
            assert response.headers["Content-Length"] == str(len(built.data))
            assert await response.read() == b""


async def test_the_builds_upload_and_the_instances_fetch_work_against_the_gateway(
        store: DirectoryArchives, tmp_path: Path) -> None:
    built = make_archive(tmp_path, content=b"VALUE = 42\n")
    async with archive_gateway(store) as gw:
        answer = await asyncio.to_thread(build.upload, str(built.path), gw.base + url(),
                                         archive.token(SECRET, archive.VERB_PUT, "team", KEY), built.digest)
        meta = await asyncio.to_thread(fetch.fetch, gw.base + url(),
                                       archive.token(SECRET, archive.VERB_GET, "team", KEY), built.digest,
                                       str(tmp_path / "deps"), attempts=1)
    assert answer["digest"] == built.digest and meta["key"] == KEY
    assert (tmp_path / "deps" / "pkg" / "__init__.py").read_bytes() == b"VALUE = 42\n"


@pytest.mark.parametrize(("method", "verb", "namespace", "key"), [
    ("GET", archive.VERB_GET, "other", KEY),
    ("GET", archive.VERB_GET, "team", OTHER_KEY),
    ("GET", archive.VERB_PUT, "team", KEY),
    ("PUT", archive.VERB_GET, "team", KEY),
], ids=["another namespace", "another key", "the put token to get", "the get token to put"])
async def test_a_token_for_anything_but_this_archive_and_verb_is_403(
        store: DirectoryArchives, tmp_path: Path, method: str, verb: str, namespace: str, key: str) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        headers = {**put_headers(built.digest), **token(verb, namespace, key)}
        status, body, _ = await gw.json(method, url(), data=built.data if method == "PUT" else None, headers=headers)
    assert status == 403 and "does not open" in body["error"]


async def test_a_request_without_a_token_is_401(store: DirectoryArchives) -> None:
    async with archive_gateway(store) as gw:
        status, body, headers = await gw.json("GET", url())
    assert status == 401 and "token" in body["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("namespace", "key"),
                         [("team", "deps-xyz"), ("team", KEY.upper()), ("team", ".."), ("Team_1", KEY)])
async def test_a_name_that_is_not_an_archive_is_400(store: DirectoryArchives, namespace: str, key: str) -> None:
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("GET", url(namespace, key), headers=token(archive.VERB_GET, namespace, key))
    assert status == 400 and "is not an archive" in body["error"]


@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length", "chunked"])
async def test_an_archive_over_the_limit_is_413_and_nothing_is_stored(
        store: DirectoryArchives, tmp_path: Path, temporary: Path, declared: bool) -> None:
    built = make_archive(tmp_path, content=os.urandom(64 * 1024))

    async def chunked() -> AsyncIterator[bytes]:
        yield built.data

    async with archive_gateway(store, settings=GatewaySettings(archive_max_bytes=len(built.data) - 1)) as gw:
        status, body, _ = await gw.json("PUT", url(), data=built.data if declared else chunked(),
                                        headers=put_headers(built.digest))
    assert status == 413 and str(len(built.data) - 1) in body["error"]
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_a_digest_header_that_is_not_the_bodys_is_400(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("PUT", url(), data=built.data,
                                        headers=put_headers(archive.DIGEST_PREFIX + "0" * 64))
    assert status == 400 and HEADER_DIGEST in body["error"]
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_an_archive_whose_manifest_names_another_key_is_400(
        store: DirectoryArchives, tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path, key=OTHER_KEY)
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
    assert status == 400 and OTHER_KEY in body["error"]
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_a_body_that_is_not_an_archive_is_400(store: DirectoryArchives, temporary: Path) -> None:
    data = b"not a gzip stream at all" * 100
    async with archive_gateway(store) as gw:
        status, body, _ = await gw.json("PUT", url(), data=data, headers=put_headers(digest_of(data)))
    assert status == 400 and "not an archive" in body["error"]
    assert await store.info("team", KEY) is None
    assert leftovers(temporary) == []


async def test_the_second_put_of_a_key_keeps_the_first_and_answers_its_digest(
        store: DirectoryArchives, tmp_path: Path) -> None:
    first, second = make_archive(tmp_path, content=b"first\n"), make_archive(tmp_path, content=b"second\n")
    assert first.digest != second.digest
    async with archive_gateway(store) as gw:
        assert (await gw.json("PUT", url(), data=first.data, headers=put_headers(first.digest)))[0] == 201
        status, body, _ = await gw.json("PUT", url(), data=second.data, headers=put_headers(second.digest))
        async with gw.session.get(gw.url(url()), headers=token(archive.VERB_GET)) as response:
            kept = await response.read()
    assert (status, body["digest"]) == (200, first.digest)
    assert kept == first.data


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_an_archive_not_stored_is_404(store: DirectoryArchives, method: str) -> None:
    async with archive_gateway(store) as gw:
        async with gw.session.request(method, gw.url(url()), headers=token(archive.VERB_GET)) as response:
            assert response.status == 404
            assert response.content_type == "application/json"


async def test_the_admin_key_is_not_asked_for_a_token_opens_the_archive(
        store: DirectoryArchives, tmp_path: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store, settings=GatewaySettings(system_auth=True), keys=MutableKeys()) as gw:
        assert (await gw.json("GET", "/system/functions"))[0] == 401   # the admin key is asked for elsewhere
        status, _, _ = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        async with gw.session.get(gw.url(url()), headers=token(archive.VERB_GET)) as response:
            assert (status, response.status, await response.read()) == (201, 200, built.data)


async def test_a_refused_put_that_expects_100_continue_is_answered_before_its_body(
        store: DirectoryArchives, tmp_path: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(store) as gw:
        headers = {**put_headers(built.digest), **token(archive.VERB_GET)}
        status, _, _ = await gw.json("PUT", url(), data=built.data, headers=headers, expect100=True)
    assert status == 403


@pytest.mark.parametrize(("configured", "key"), [(False, SECRET), (True, None)], ids=["no store", "no signing key"])
async def test_a_gateway_without_an_archive_store_answers_404_on_every_archive_route(
        store: DirectoryArchives, configured: bool, key: bytes | None) -> None:
    async with archive_gateway(store if configured else None, key=key) as gw:
        for method in ("PUT", "GET", "HEAD", "POST"):
            async with gw.session.request(method, gw.url(url()), headers=token(archive.VERB_GET)) as response:
                body = await response.json() if method != "HEAD" else {"error": "this gateway has no archive store"}
                assert (response.status, body) == (404, {"error": "this gateway has no archive store"}), method


class UnavailableArchives(DirectoryArchives):
    """A store whose backend is away."""

    async def info(self, namespace: str, key: str) -> ArchiveInfo | None:
        raise ArchivesUnavailable("NATS is away")

    async def put(self, namespace: str, key: str, path: str, digest: str) -> ArchiveInfo:
        raise ArchivesUnavailable("NATS is away")


async def test_a_store_that_cannot_answer_is_503_with_retry_after(tmp_path: Path, temporary: Path) -> None:
    built = make_archive(tmp_path)
    async with archive_gateway(UnavailableArchives(tmp_path / "store")) as gw:
        put = await gw.json("PUT", url(), data=built.data, headers=put_headers(built.digest))
        got = await gw.json("GET", url(), headers=token(archive.VERB_GET))
    for status, body, headers in (put, got):
        assert status == 503 and "NATS is away" in body["error"] and headers["Retry-After"]
    assert leftovers(temporary) == []
