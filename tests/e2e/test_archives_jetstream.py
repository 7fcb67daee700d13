"""Build archives in a NATS JetStream object store (`kfn.archives.jetstream.JetStreamArchives`)
against a real nats-server: streamed in and out in chunks, stored once, and a NATS server down when
the store is made does not keep it from working once the server is up."""
from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from kfn.archives.jetstream import CHUNK_BYTES, JetStreamArchives
from kfn.archives.store import ArchivesUnavailable, NotStored
from kfn_runtime import archive
from tests.support.nats import NatsServer

KEY = archive.KEY_PREFIX + "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def store(nats_server: NatsServer) -> AsyncIterator[JetStreamArchives]:
    archives = JetStreamArchives(nats_server.url)
    try:
        yield archives
    finally:
        await archives.close()


def contents(path: str) -> bytes:
    return Path(path).read_bytes()


def a_file(directory: Path, size: int) -> tuple[str, str]:
    """A file of `size` random bytes: (its path, its digest)."""
    path = directory / f"archive-{os.urandom(4).hex()}.tar.gz"
    path.write_bytes(os.urandom(size))
    return str(path), archive.file_digest(str(path))


async def test_a_5_mib_archive_goes_in_and_comes_back_in_chunks(store: JetStreamArchives, tmp_path: Path) -> None:
    path, digest = a_file(tmp_path, 5 * 1024 * 1024 + 3)
    stored = await store.put("team", KEY, path, digest)
    chunks = [chunk async for chunk in await store.read("team", KEY)]
    assert stored.digest == digest and stored.size == 5 * 1024 * 1024 + 3
    assert await store.info("team", KEY) == stored
    assert len(chunks) > 1 and max(map(len, chunks)) < 1024 * 1024
    assert b"".join(chunks) == contents(path)


async def test_the_first_writer_wins(store: JetStreamArchives, tmp_path: Path) -> None:
    (first, first_digest), (second, second_digest) = a_file(tmp_path, 300_000), a_file(tmp_path, 1000)
    await store.put("team", KEY, first, first_digest)
    answer = await store.put("team", KEY, second, second_digest)
    assert answer.digest == first_digest
    assert b"".join([chunk async for chunk in await store.read("team", KEY)]) == contents(first)


async def test_of_writers_racing_one_wins_every_one_is_told_it_and_the_others_leave_nothing(
        store: JetStreamArchives, nats_server: NatsServer, tmp_path: Path) -> None:
    files = [a_file(tmp_path, size) for size in (1_000_000, 2000, 500_000)]
    answers = await asyncio.gather(*(store.put("team", KEY, path, digest) for path, digest in files))
    assert len(set(answers)) == 1 and answers[0].digest in {digest for _, digest in files}
    assert await store.info("team", KEY) == answers[0]
    client = await nats.connect(nats_server.url)
    try:
        stream = await client.jetstream().stream_info(f"OBJ_{store.bucket}")
    finally:
        await client.close()
    assert stream.state.messages == math.ceil(answers[0].size / CHUNK_BYTES) + 1   # its chunks, its meta


async def test_an_archive_is_stored_per_namespace(store: JetStreamArchives, tmp_path: Path) -> None:
    path, digest = a_file(tmp_path, 1000)
    await store.put("team", KEY, path, digest)
    assert await store.info("other", KEY) is None


async def test_an_archive_not_stored_is_none_and_cannot_be_read(store: JetStreamArchives) -> None:
    assert await store.info("team", KEY) is None
    with pytest.raises(NotStored):
        await store.read("team", KEY)


async def test_a_file_that_is_not_its_digest_is_refused_and_nothing_is_stored(store: JetStreamArchives,
                                                                             tmp_path: Path) -> None:
    path, _ = a_file(tmp_path, 1000)
    with pytest.raises(ValueError, match="not sha256:"):
        await store.put("team", KEY, path, archive.DIGEST_PREFIX + "0" * 64)
    assert await store.info("team", KEY) is None


async def test_nats_down_when_the_store_is_made_then_up_works(tmp_path: Path) -> None:
    nats_server = NatsServer(tmp_path)
    archives = JetStreamArchives(nats_server.url, retry_wait=0.5)   # nothing listens yet
    try:
        with pytest.raises(ArchivesUnavailable):
            await archives.info("team", KEY)
        nats_server.start()
        await asyncio.sleep(0.5)   # past retry_wait
        path, digest = a_file(tmp_path, 10_000)
        assert (await archives.put("team", KEY, path, digest)).digest == digest
        assert await archives.info("team", KEY) is not None
    finally:
        await archives.close()
        nats_server.stop()
