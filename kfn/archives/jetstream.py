"""Build archives in a NATS JetStream object store (`JetStreamArchives`): the gateway's store on Kubernetes.

The layout is JetStream's object store (ADR-20, as `nats object` and nats-py read it): the bucket
is the stream OBJ_<bucket>; an object's bytes are chunks on `$O.<bucket>.C.<nuid>`, then one meta
message on `$O.<bucket>.M.<base64 of its name>` saying its nuid, size, chunk count and digest
(`SHA-256=` and the base64 of the SHA-256 of its bytes, which is the archive's digest in another
spelling). The object of archive KEY of NAMESPACE is named NAMESPACE/KEY.

nats-py's own `put` overwrites an object; here the meta message is published only if its subject
has no message yet (`Nats-Expected-Last-Subject-Sequence`), so of writers racing from several
gateways the first one's meta stands and the others delete their chunks and answer it. A put
streams the file a chunk at a time and a read asks for one chunk at a time (each a request to the
stream), so neither holds more than a chunk in memory, and a slow reader slows the reads.

The connection (`kfn._cogs.nats.connect`) is opened on first use, one bounded attempt, so that a
NATS server down when the gateway starts does not stop it: meanwhile calls raise
ArchivesUnavailable, at once for `retry_wait` seconds after a failed attempt. Once open it
reconnects by itself; a call while NATS is away raises ArchivesUnavailable.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE

from kfn._cogs.nats import NATS_ERRORS, Backoff, NatsUnreachable, connect, disconnect
from kfn.archives.store import ArchiveInfo, ArchivesUnavailable, NotStored, check_name
from kfn.core import natsurl
from kfn_runtime import archive

logger = logging.getLogger(__name__)

# Bytes per chunk message: reads take one JetStream request per chunk, so an archive of a few MB
# comes in a handful (nats-py's default, 128 KiB, made 40 for 5 MB); below NATS's default payload
# limit of 1 MiB, headers included.
CHUNK_BYTES = 512 * 1024
DEFAULT_BUCKET = "kfn-archives"
REQUEST_TIMEOUT = 10.0    # seconds for each request to JetStream (a chunk published, a chunk read)
RETRY_WAIT = 5.0          # seconds after a failed connection attempt before the next one
# JetStream's answer to a publish whose subject has another last sequence than the one expected.
WRONG_LAST_SEQUENCE = 10071


class JetStreamArchives:
    """An `ArchiveStore` (see kfn.archives.store) in the object store `bucket` of the NATS server(s)
    at `nats_url` (see the module docstring); the bucket is created on first use with `replicas`
    replicas (one that exists is used as it is)."""

    def __init__(self, nats_url: str, *, bucket: str = DEFAULT_BUCKET, replicas: int = 1,
                 timeout: float = REQUEST_TIMEOUT, retry_wait: float = RETRY_WAIT) -> None:
        self.url = nats_url
        self.bucket = bucket
        self._replicas = replicas
        self._timeout = timeout
        self._retry_wait = retry_wait
        self._stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._failed: tuple[float, str] | None = None   # when the last attempt failed, and why
        self._closed = False

    # -- the connection -------------------------------------------------------------------------------

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting first if need be (one attempt, bounded by
        `kfn._cogs.nats.connect`, then the bucket created). ArchivesUnavailable if NATS cannot be
        reached or is away, or within `retry_wait` seconds of a failed attempt."""
        if self._js is None:
            async with self._connecting:
                if self._js is None:
                    await self._open()
        assert self._js is not None and self._nc is not None
        if not self._nc.is_connected:
            raise ArchivesUnavailable(f"not connected to NATS at {natsurl.masked(self.url)}")
        return self._js

    async def _open(self) -> None:
        if self._closed:
            raise ArchivesUnavailable("the archive store is closed")
        if self._failed is not None and time.monotonic() - self._failed[0] < self._retry_wait:
            raise ArchivesUnavailable(self._failed[1])
        try:
            nc = await connect(self.url, name="kfn-archives", attempts=1, backoff=Backoff(self._retry_wait))
        except NatsUnreachable as e:
            self._failed = (time.monotonic(), str(e))
            raise ArchivesUnavailable(str(e)) from e
        js = nc.jetstream(timeout=self._timeout)
        try:
            await self._ensure_bucket(js)
        except NATS_ERRORS as e:
            await disconnect(nc)
            self._failed = (time.monotonic(), f"could not set up the object store {self.bucket}: {e}")
            raise ArchivesUnavailable(self._failed[1]) from e
        if self._closed:
            await disconnect(nc)
            raise ArchivesUnavailable("the archive store is closed")
        self._nc, self._js, self._failed = nc, js, None
        logger.info("build archives stored in the JetStream object store %s at %s", self.bucket,
                    natsurl.masked(self.url))

    async def _ensure_bucket(self, js: JetStreamContext) -> None:
        try:
            await js.create_object_store(self.bucket, config=api.ObjectStoreConfig(replicas=self._replicas))
        except nats.js.errors.BadRequestError:
            await js.stream_info(self._stream)   # it exists, set up otherwise (another replica count): kept

    async def close(self) -> None:
        """Close the connection (`kfn._cogs.nats.disconnect`); later calls raise ArchivesUnavailable."""
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        await disconnect(nc)

    # -- the archives ---------------------------------------------------------------------------------

    def _meta_subject(self, name: str) -> str:
        return OBJ_META_PRE_TEMPLATE.format(bucket=self.bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())

    def _chunk_subject(self, nuid: str) -> str:
        return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=nuid)

    async def _meta(self, js: JetStreamContext, name: str) -> tuple[int, api.ObjectInfo | None]:
        """(the sequence of the object's last meta message, 0 if none; the object, None if none or deleted)."""
        try:
            msg = await js.get_last_msg(self._stream, self._meta_subject(name))
        except nats.js.errors.NotFoundError:
            return 0, None
        info = api.ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        return msg.seq or 0, None if info.deleted else info

    async def _lookup(self, namespace: str, key: str) -> tuple[JetStreamContext, api.ObjectInfo | None]:
        """JetStream and the object of archive `key` of `namespace` (None if absent); ArchivesUnavailable."""
        name = check_name(namespace, key)
        js = await self._jetstream()
        try:
            _, info = await self._meta(js, name)
        except NATS_ERRORS as e:
            raise ArchivesUnavailable(f"could not look up {name}: {e}") from e
        return js, info

    async def info(self, namespace: str, key: str) -> ArchiveInfo | None:
        _, info = await self._lookup(namespace, key)
        return None if info is None else _archive_info(info)

    async def put(self, namespace: str, key: str, path: str, digest: str) -> ArchiveInfo:
        """Publish the file's chunks, then its meta message unless another writer's came first (see
        the module docstring); runs as long as one request per chunk takes. ArchivesUnavailable if
        JetStream fails meanwhile (the chunks published are deleted again, as far as it answers)."""
        name = check_name(namespace, key)
        js = await self._jetstream()
        try:
            sequence, existing = await self._meta(js, name)
            if existing is not None:
                return _archive_info(existing)
            nuid = secrets.token_hex(11)
            try:
                info = await self._publish(js, name, nuid, path, digest, sequence)
            except nats.js.errors.APIError as e:
                await self._forget(js, nuid)
                if e.err_code != WRONG_LAST_SEQUENCE:
                    raise
                _, existing = await self._meta(js, name)
                if existing is None:
                    raise
                return _archive_info(existing)   # another writer's came first
            except BaseException:
                await self._forget(js, nuid)
                raise
        except NATS_ERRORS as e:
            raise ArchivesUnavailable(f"could not store {name}: {e}") from e
        logger.info("build archive %s stored: %s, %d bytes", name, digest, info.size)
        return info

    async def _publish(self, js: JetStreamContext, name: str, nuid: str, path: str, digest: str,
                       sequence: int) -> ArchiveInfo:
        """The file's chunks on the chunk subject of `nuid`, then the meta message, expecting the
        meta subject's last sequence to be `sequence`. ValueError if the file is not `digest`."""
        h = hashlib.sha256()
        size = chunks = 0
        f = await asyncio.to_thread(open, path, "rb")
        try:
            while block := await asyncio.to_thread(f.read, CHUNK_BYTES):
                h.update(block)
                size += len(block)
                chunks += 1
                await js.publish(self._chunk_subject(nuid), block)
        finally:
            f.close()
        if archive.DIGEST_PREFIX + h.hexdigest() != digest:
            raise ValueError(f"{path} is {archive.DIGEST_PREFIX + h.hexdigest()}, not {digest}")
        meta = api.ObjectInfo(name=name, bucket=self.bucket, nuid=nuid, size=size, chunks=chunks,
                              mtime=datetime.datetime.now(datetime.UTC).isoformat(),
                              digest=OBJ_DIGEST_TYPE + base64.urlsafe_b64encode(h.digest()).decode(),
                              options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
        await js.publish(self._meta_subject(name), json.dumps(meta.as_dict()).encode(), headers={
            api.Header.ROLLUP: "sub", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(sequence)})
        return ArchiveInfo(digest=digest, size=size)

    async def _forget(self, js: JetStreamContext, nuid: str) -> None:
        """Delete the chunks published under `nuid`, if JetStream answers (else they stay, unread)."""
        with contextlib.suppress(*NATS_ERRORS):
            await js.purge_stream(self._stream, subject=self._chunk_subject(nuid))

    async def read(self, namespace: str, key: str) -> AsyncIterator[bytes]:
        js, info = await self._lookup(namespace, key)
        if info is None:
            raise NotStored(f"no archive {key} in {namespace}")
        return self._chunks(js, info)

    async def _chunks(self, js: JetStreamContext, info: api.ObjectInfo) -> AsyncIterator[bytes]:
        """The object's chunks, one request each; ArchivesUnavailable if one cannot be read, or if
        they do not add up to the object's size and digest."""
        subject = self._chunk_subject(info.nuid)
        h = hashlib.sha256()
        size = 0
        sequence = 1
        for _ in range(info.chunks or 0):
            try:
                msg = await js.get_msg(self._stream, seq=sequence, subject=subject, next=True)
            except NATS_ERRORS as e:
                raise ArchivesUnavailable(f"could not read {info.name} (at {size} bytes): {e}") from e
            data = msg.data or b""
            h.update(data)
            size += len(data)
            sequence = (msg.seq or sequence) + 1
            yield data
        if size != info.size or _archive_digest(info.digest) != archive.DIGEST_PREFIX + h.hexdigest():
            raise ArchivesUnavailable(f"{info.name} is damaged: its chunks are not the object stored")


def _archive_digest(nats_digest: str | None) -> str:
    """`sha256:HEX` from JetStream's `SHA-256=BASE64` (either case), "" if it is not one."""
    value = nats_digest or ""
    if value[:len(OBJ_DIGEST_TYPE)].upper() != OBJ_DIGEST_TYPE.upper():
        return ""
    try:
        return archive.DIGEST_PREFIX + base64.urlsafe_b64decode(value[len(OBJ_DIGEST_TYPE):]).hex()
    except ValueError:
        return ""


def _archive_info(info: api.ObjectInfo) -> ArchiveInfo:
    return ArchiveInfo(digest=_archive_digest(info.digest), size=info.size or 0)
