"""The JetStream archive store (`kfn.archives.jetstream.JetStreamArchives`) against a real nats-server
when gateways race, die mid-upload or lose NATS mid-upload: an archive is whole or absent, never half
stored, and once stored never replaced."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE

from kfn.archives.jetstream import DEFAULT_BUCKET, JetStreamArchives
from kfn.archives.store import ArchivesUnavailable, NotStored
from kfn_runtime import archive
from tests.support.nats import NatsServer

KEY = archive.KEY_PREFIX + "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def gateways(nats_server: NatsServer) -> AsyncIterator[tuple[JetStreamArchives, JetStreamArchives]]:
    """Two gateways' stores: a connection each to the same server."""
    first, second = JetStreamArchives(nats_server.url), JetStreamArchives(nats_server.url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def a_file(directory: Path, size: int) -> tuple[str, str]:
    path = directory / f"archive-{os.urandom(4).hex()}.tar.gz"
    path.write_bytes(os.urandom(size))
    return str(path), archive.file_digest(str(path))


def contents(path: str) -> bytes:
    return Path(path).read_bytes()


async def read_all(store: JetStreamArchives) -> bytes:
    return b"".join([chunk async for chunk in await store.read("team", KEY)])


async def test_two_gateways_racing_one_key_with_different_bytes_both_answer_the_one_stored(
        gateways: tuple[JetStreamArchives, JetStreamArchives], tmp_path: Path) -> None:
    first, second = gateways
    for _ in range(3):
        (a, a_digest), (b, b_digest) = a_file(tmp_path, 700_000), a_file(tmp_path, 300_000)
        key = archive.KEY_PREFIX + os.urandom(16).hex()
        answers = await asyncio.gather(first.put("team", key, a, a_digest), second.put("team", key, b, b_digest))
        assert answers[0] == answers[1] and answers[0].digest in (a_digest, b_digest)
        kept = contents(a if answers[0].digest == a_digest else b)
        for store in gateways:
            assert b"".join([chunk async for chunk in await store.read("team", key)]) == kept


async def test_chunks_left_by_a_gateway_killed_before_its_meta_are_neither_read_nor_in_the_way(
        gateways: tuple[JetStreamArchives, JetStreamArchives], nats_server: NatsServer, tmp_path: Path) -> None:
    first, second = gateways
    await first.info("team", KEY)   # the bucket exists
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        for _ in range(3):   # what a gateway killed mid-put leaves: chunks, no meta
            await js.publish(OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=DEFAULT_BUCKET, obj="killed0000000000000000"),
                             os.urandom(1000))
    finally:
        await client.close()
    assert await second.info("team", KEY) is None
    with pytest.raises(NotStored):
        await second.read("team", KEY)
    path, digest = a_file(tmp_path, 200_000)
    assert (await second.put("team", KEY, path, digest)).digest == digest
    assert await read_all(first) == contents(path)


async def test_a_put_cancelled_mid_way_leaves_nothing_readable_and_the_next_put_stores(
        nats_server: NatsServer, tmp_path: Path) -> None:
    class CancelledMidPut(JetStreamArchives):
        """Its put is cancelled as its third chunk is about to go out (the gateway stopping)."""

        chunks = 0

        def _chunk_subject(self, nuid: str) -> str:
            self.chunks += 1
            if self.chunks == 3:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            return super()._chunk_subject(nuid)

    first, second = CancelledMidPut(nats_server.url), JetStreamArchives(nats_server.url)
    try:
        path, digest = a_file(tmp_path, 3 * 1024 * 1024)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(first.put("team", KEY, path, digest))
        assert await second.info("team", KEY) is None
        other, other_digest = a_file(tmp_path, 1000)
        assert (await second.put("team", KEY, other, other_digest)).digest == other_digest
        assert b"".join([c async for c in await first.read("team", KEY)]) == contents(other)
    finally:
        await first.close()
        await second.close()


async def test_nats_killed_mid_put_is_unavailable_and_after_its_restart_the_archive_is_absent(
        nats_server: NatsServer, tmp_path: Path) -> None:
    class KilledMidPut(JetStreamArchives):
        """Kills the NATS server as its third chunk is about to go out."""

        chunks = 0

        def _chunk_subject(self, nuid: str) -> str:
            self.chunks += 1
            if self.chunks == 3:
                nats_server.kill()
            return super()._chunk_subject(nuid)

    store = KilledMidPut(nats_server.url, timeout=2.0)
    path, digest = a_file(tmp_path, 2 * 1024 * 1024)
    try:
        with pytest.raises(ArchivesUnavailable):
            await store.put("team", KEY, path, digest)
    finally:
        await store.close()
    nats_server.start()
    again = JetStreamArchives(nats_server.url)
    try:
        assert await again.info("team", KEY) is None
        assert (await again.put("team", KEY, path, digest)).digest == digest
        assert b"".join([c async for c in await again.read("team", KEY)]) == contents(path)
    finally:
        await again.close()
