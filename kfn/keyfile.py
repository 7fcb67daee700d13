"""API keys from a local file (`kfn local --keys FILE`, `kfn gateway --keys FILE`), re-read when it changes.

The file is YAML (or JSON) in the shape `kfn.core.keys.parse_key_file` reads. It is read as a
manifest is (a regular file of bounded size; a FIFO or a device is refused). Rotating a key is
editing the file: the next poll swaps the whole key ring at once. A file that becomes invalid is
reported and the keys read last stay in force, so a typo never locks everyone out, nor lets
everyone in.
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import yaml

from kfn.core.errors import CommandError
from kfn.core.keys import InvalidKeys, KeyRing, parse_key_file
from kfn.core.manifests import ManifestError
from kfn.manifests import decode, read_bytes

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


def read_key_file(path: Path) -> KeyRing:
    """The keys in `path`; InvalidKeys saying what is wrong (never a key itself)."""
    try:
        text = decode(read_bytes(path), file=str(path))
    except ManifestError as e:
        raise InvalidKeys(str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidKeys(f"{path}: not valid YAML{where}") from None
    except (RecursionError, ValueError) as e:
        raise InvalidKeys(f"{path}: cannot be parsed: {type(e).__name__}") from None
    return parse_key_file(data, file=str(path))


def open_key_file(path: Path) -> KeyFile:
    """The keys file of `--keys`, read now (a process refuses to start on keys it cannot use):
    CommandError (exit code 2) saying what is wrong. `run` it to follow the file afterwards."""
    keys = KeyFile(path)
    try:
        ring = keys.load()
    except InvalidKeys as e:
        raise CommandError(f"--keys: {e}", exit_code=2) from None
    logger.info("API keys from %s: %s", path, ring.summary())
    return keys


class KeyFile:
    """A `KeySource` following a keys file; `load` once, then `run` polls it."""

    def __init__(self, path: Path, *, interval: float = POLL_INTERVAL) -> None:
        self.path = path
        self._interval = interval
        self._ring = KeyRing()
        self._stamp: tuple[int, int, int] | None = None
        self.error: str | None = None

    def keys(self) -> KeyRing:
        return self._ring

    def load(self) -> KeyRing:
        """Read the file now; InvalidKeys if it cannot be used (the caller decides: at startup, fail)."""
        stamp = self._stat()
        ring = read_key_file(self.path)
        self._ring, self._stamp, self.error = ring, stamp, None
        self._warn_if_readable_by_others()
        return ring

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _warn_if_readable_by_others(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            logger.warning("%s can be read by other users: its keys are secrets (chmod 600 %s)", self.path, self.path)

    async def poll(self) -> bool:
        """Re-read the file if it changed; whether the keys changed. Never raises."""
        stamp = await asyncio.to_thread(self._stat)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            ring = await asyncio.to_thread(read_key_file, self.path)
        except InvalidKeys as e:
            if str(e) != self.error:
                logger.error("keys file: %s; the keys read before stay in force", e)
            self.error = str(e)
            return False
        self.error = None
        self._ring = ring
        logger.info("keys file %s re-read: %s", self.path, ring.summary())
        return True

    async def run(self) -> None:
        """Polls until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await self.poll()
