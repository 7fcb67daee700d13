"""Build archives as files under a directory (`DirectoryArchives`): kfn local's store, and the tests'.

Each archive is a directory ROOT/NAMESPACE/KEY holding `archive.tar.gz` and `digest`. A put fills a
staging directory beside it (named with a leading dot, which no key has) and renames it into
place: a rename onto a directory that exists fails, so the first writer wins and a reader never
sees half an archive. File work runs on threads, never on the event loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from kfn.archives.store import ArchiveInfo, NotStored, check_name
from kfn_runtime import archive

ARCHIVE_FILE = "archive.tar.gz"
DIGEST_FILE = "digest"
CHUNK = 1024 * 1024   # bytes read or copied at a time


class DirectoryArchives:
    """An `ArchiveStore` (see kfn.archives.store) of files under `path` (created when first written)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)

    def _directory(self, namespace: str, key: str) -> Path:
        return self.root / check_name(namespace, key)

    async def info(self, namespace: str, key: str) -> ArchiveInfo | None:
        return await asyncio.to_thread(self._info, self._directory(namespace, key))

    @staticmethod
    def _info(directory: Path) -> ArchiveInfo | None:
        try:
            digest = (directory / DIGEST_FILE).read_text().strip()
            size = (directory / ARCHIVE_FILE).stat().st_size
        except FileNotFoundError:
            return None
        return ArchiveInfo(digest=digest, size=size)

    async def put(self, namespace: str, key: str, path: str, digest: str) -> ArchiveInfo:
        """Copy the file in (hashing it: ValueError if it is not `digest`) unless `key` is stored
        already; runs as long as the copy takes."""
        return await asyncio.to_thread(self._put, self._directory(namespace, key), path, digest)

    def _put(self, directory: Path, path: str, digest: str) -> ArchiveInfo:
        existing = self._info(directory)
        if existing is not None:
            return existing
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".put-", dir=directory.parent))
        try:
            copied, size = _copy(path, staging / ARCHIVE_FILE)
            if copied != digest:
                raise ValueError(f"{path} is {copied}, not {digest}")
            _write_synced(staging / DIGEST_FILE, digest.encode())
            try:
                os.rename(staging, directory)
            except OSError:
                existing = self._info(directory)
                if existing is None:
                    raise
                return existing   # another writer's came first
            return ArchiveInfo(digest=digest, size=size)
        finally:
            shutil.rmtree(staging, ignore_errors=True)   # gone already once renamed

    async def read(self, namespace: str, key: str) -> AsyncIterator[bytes]:
        directory = self._directory(namespace, key)
        if await asyncio.to_thread(self._info, directory) is None:
            raise NotStored(f"no archive {key} in {namespace}")
        return self._chunks(directory / ARCHIVE_FILE)

    @staticmethod
    async def _chunks(path: Path) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def close(self) -> None:
        """Nothing to release."""


def _copy(source: str, target: Path) -> tuple[str, int]:
    """Copy `source` to the new file `target`, synced; (its digest, its size)."""
    h = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "xb") as out:
        while block := src.read(CHUNK):
            h.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return archive.DIGEST_PREFIX + h.hexdigest(), size


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
