"""The archive store's routes: build archives (`kfn_runtime.archive`) stored once, fetched by instances.

    PUT  /system/archives/{namespace}/{key}   store the body: 201 {"key", "digest", "size"}; 200 with
                                              what was stored already (the first writer wins)
    GET  /system/archives/{namespace}/{key}   the archive, streamed
    HEAD /system/archives/{namespace}/{key}   its digest and size only

Each request carries its token (`Authorization: Bearer`, `kfn_runtime.archive.token`: PUT needs
the put token of that archive of that namespace, GET and HEAD its get token): no API key, so
the admin-key middleware leaves these routes alone (`ROUTE_NAME`). A build uploads with
`kfn_runtime.build.upload`, an instance downloads with `kfn_runtime.fetch` before it initialises its function.

A PUT's body goes to a temporary file (never memory), hashed on the way, up to
`archive_max_bytes` (413 past it), arriving with no pause longer than `body_timeout` (408),
all of it within UPLOAD_DEADLINE seconds (408 past it: a trickle cannot hold an upload slot for
good); it must be what `X-Kfn-Archive-Digest` says and an archive whose manifest names the URL's key
(400 otherwise, only the manifest read). GET and HEAD answer `X-Kfn-Archive-Digest`,
Content-Length and `kfn_runtime.archive.MEDIA_TYPE`. Errors are JSON {"error": ...}: 400 a bad
name, 401 no token, 403 a token that does not open this archive for this verb, 404 nothing
stored (or no store on this gateway), 503 the store is unavailable, 507 no room for the
temporary file.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tarfile
import tempfile
import zlib
from typing import IO

from aiohttp import web

from kfn.archives.store import ArchiveInfo, ArchiveStore, ArchivesUnavailable, NotStored, valid_name
from kfn_gateway.connections import close_after, expect_continue
from kfn_gateway.errors import json_error, refused
from kfn_gateway.outcomes import Refusal, Refused
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import archive

logger = logging.getLogger(__name__)

ARCHIVES_PATH = "/system/archives"
ROUTE_NAME = "kfn-archives"   # the route's name: the admin-key middleware lets it through
HEADER_DIGEST = "X-Kfn-Archive-Digest"
WRITE_BLOCK = 1024 * 1024     # bytes of a PUT's body gathered before they are hashed and written
MAX_MANIFEST_BYTES = 1024 * 1024
NO_STORE = "this gateway has no archive store"
# Seconds a PUT's whole body may take to arrive (the build's own upload timeout): 256 MiB needs <1 MiB/s.
UPLOAD_DEADLINE = 300.0


class ArchivesApi:
    """The archive routes over `store`, checking tokens signed with `signing_key`; with no store
    or no key, every archive route answers 404."""

    def __init__(self, store: ArchiveStore | None, signing_key: bytes | None, settings: GatewaySettings) -> None:
        self._store = store
        self._key = signing_key
        self._settings = settings
        # The namespaces of the PUTs receiving their body now: settings.archive_uploads at most, one
        # per namespace, so no namespace's uploads (its builds hold their own put tokens) can take
        # every slot from the others.
        self._uploading: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """PUT, GET or HEAD /system/archives/{namespace}/{key} (see the module docstring)."""
        checked = self._check(request)
        if isinstance(checked, web.Response):
            return checked
        store, namespace, key = checked
        if request.method == "PUT":
            return await self._put(request, store, namespace, key)
        return await self._get(request, store, namespace, key)

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a request refused by its head alone (name, token, size) is
        refused before its body is sent; otherwise the client is told to go on."""
        checked = self._check(request)
        if isinstance(checked, web.Response):
            return close_after(checked)   # the body will not come: the connection ends with the answer
        return await expect_continue(request, self._settings.archive_max_bytes)

    def _check(self, request: web.Request) -> tuple[ArchiveStore, str, str] | web.Response:
        """(the store, the namespace, the key) if the request's head may go on, else its answer."""
        if self._store is None or self._key is None:
            return json_error(404, NO_STORE)
        if request.method not in ("PUT", "GET", "HEAD"):
            response = json_error(405, f"method {request.method} is not allowed on {request.path}")
            response.headers["Allow"] = "PUT, GET, HEAD"
            return response
        namespace, key = request.match_info["namespace"], request.match_info["key"]
        if not valid_name(namespace, key):
            return json_error(400, f"{namespace[:100]!r}/{key[:100]!r} is not an archive: a namespace and a "
                                   f"key {archive.KEY_PREFIX}<32 hex digits>")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            response = json_error(401, "an archive token is needed (Authorization: Bearer TOKEN)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="kfn-archives"'
            return response
        verb = archive.VERB_PUT if request.method == "PUT" else archive.VERB_GET
        if not token.isascii() or not archive.token_matches(self._key, verb, namespace, key, token):
            return json_error(403, f"this token does not open {namespace}/{key} for {verb}")
        return self._store, namespace, key

    async def _put(self, request: web.Request, store: ArchiveStore, namespace: str, key: str) -> web.StreamResponse:
        limit = self._settings.archive_max_bytes
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, f"the archive is {request.content_length} bytes; the limit is {limit}", close=True)
        claimed = request.headers.get(HEADER_DIGEST, "")
        if not claimed.startswith(archive.DIGEST_PREFIX):
            return json_error(400, f"{HEADER_DIGEST}: {archive.DIGEST_PREFIX}<hex> is required")
        if namespace in self._uploading or len(self._uploading) >= self._settings.archive_uploads:
            return json_error(503, f"{len(self._uploading)} archives are arriving already; try again",
                              retry_after=self._settings.retry_after, close=True)
        self._uploading.add(namespace)
        try:
            return await self._receive_and_store(request, store, namespace, key, claimed)
        finally:
            self._uploading.discard(namespace)

    async def _receive_and_store(self, request: web.Request, store: ArchiveStore, namespace: str, key: str,
                                 claimed: str) -> web.StreamResponse:
        limit = self._settings.archive_max_bytes
        fd, path = tempfile.mkstemp(prefix=".kfn-archive-", suffix=".tar.gz")
        handed_over = False
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    digest = await _receive(request, out, limit, self._settings.body_timeout, UPLOAD_DEADLINE)
            except Refused as e:
                return refused(e)
            except OSError as e:   # the temporary directory is full
                return json_error(507, f"the gateway cannot hold the archive while it arrives: {e}", close=True)
            if digest != claimed:
                return json_error(400, f"the archive received is {digest}; {HEADER_DIGEST} says {claimed[:100]}")
            problem = await asyncio.to_thread(_manifest_problem, path, key)
            if problem is not None:
                return json_error(400, problem)
            handed_over = True
            # Shielded: a client gone once its whole archive arrived still gets it stored.
            stored = await asyncio.shield(_store_and_remove(store, namespace, key, path, digest))
        except ArchivesUnavailable as e:
            return json_error(503, f"the archive store is unavailable: {e}", retry_after=self._settings.retry_after)
        finally:
            if not handed_over:
                _remove(path)
        status = 201 if stored.digest == digest else 200
        return web.json_response({"key": key, "digest": stored.digest, "size": stored.size}, status=status)

    async def _get(self, request: web.Request, store: ArchiveStore, namespace: str, key: str) -> web.StreamResponse:
        try:
            info = await store.info(namespace, key)
            if info is None:
                raise NotStored
            chunks = None if request.method == "HEAD" else await store.read(namespace, key)
        except NotStored:
            return json_error(404, f"no archive {key} in {namespace}")
        except ArchivesUnavailable as e:
            return json_error(503, f"the archive store is unavailable: {e}", retry_after=self._settings.retry_after)
        response = web.StreamResponse(headers={HEADER_DIGEST: info.digest, "Content-Type": archive.MEDIA_TYPE})
        response.content_length = info.size
        await response.prepare(request)
        if chunks is not None:
            try:
                async for chunk in chunks:
                    await response.write(chunk)
            except ArchivesUnavailable as e:
                # Fewer bytes than Content-Length, then the connection closes: the client sees it broken.
                logger.warning("archive %s/%s: the store failed after %d bytes of it: %s",
                               namespace, key, response.body_length, e)
                response.force_close()
                return response
            except ConnectionResetError:
                return response   # the client went away
        await response.write_eof()
        return response


async def _receive(request: web.Request, out: IO[bytes], limit: int, pause: float, deadline: float) -> str:
    """Write the request's body to `out`, hashing it on a thread a block at a time; its digest.
    Runs `deadline` seconds at most. Raises Refused: TOO_LARGE past `limit` bytes, TOO_SLOW when
    no byte comes for `pause` seconds or the body is not all there after `deadline`, BROKEN when
    the client breaks it off."""
    h = hashlib.sha256()
    size = 0
    block = bytearray()
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    try:
        while True:
            if loop.time() >= until:
                raise Refused(Refusal.TOO_SLOW, f"the archive did not arrive within {deadline:g}s")
            async with asyncio.timeout(min(pause, until - loop.time())):
                chunk = await request.content.readany()
            size += len(chunk)
            if size > limit:
                raise Refused(Refusal.TOO_LARGE, f"the archive is more than {limit} bytes")
            block += chunk
            if len(block) >= WRITE_BLOCK or (not chunk and block):
                await asyncio.to_thread(_hash_and_write, h, out, block)
                block = bytearray()
            if not chunk:
                break
    except TimeoutError:
        if loop.time() >= until:
            raise Refused(Refusal.TOO_SLOW, f"the archive did not arrive within {deadline:g}s") from None
        raise Refused(Refusal.TOO_SLOW, f"the archive stopped arriving for {pause:g}s") from None
    except (asyncio.IncompleteReadError, ConnectionResetError) as e:
        raise Refused(Refusal.BROKEN, f"could not read the archive: {e}") from None
    except web.HTTPException as e:
        raise Refused(Refusal.BROKEN, f"could not read the archive: {e.reason}") from None
    return archive.DIGEST_PREFIX + h.hexdigest()


def _hash_and_write(h: hashlib._Hash, out: IO[bytes], block: bytearray) -> None:
    h.update(block)
    out.write(block)


def _manifest_problem(path: str, key: str) -> str | None:
    """Why the file at `path` is not an archive of `key` (None: it is one): its first member must be
    the manifest, of this FORMAT, naming `key`. Only the manifest is read, nothing unpacked."""
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            first = tar.next()
            if (first is None or first.name != archive.MANIFEST_NAME or not first.isreg()
                    or first.size > MAX_MANIFEST_BYTES):
                return f"not an archive kfn builds: its first member must be {archive.MANIFEST_NAME}"
            member = tar.extractfile(first)
            assert member is not None
            meta = json.loads(member.read())
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, RecursionError) as e:
        return f"not an archive kfn builds: {str(e)[:200]}"
    if not isinstance(meta, dict) or meta.get("format") != archive.FORMAT:
        return f"the archive's manifest is not of format {archive.FORMAT}"
    if meta.get("key") != key:
        return f"the archive's manifest names key {str(meta.get('key'))[:100]!r}, not {key}"
    return None


async def _store_and_remove(store: ArchiveStore, namespace: str, key: str, path: str, digest: str) -> ArchiveInfo:
    """`store.put` the file, then remove it whatever happened."""
    try:
        return await store.put(namespace, key, path, digest)
    finally:
        _remove(path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
