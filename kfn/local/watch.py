"""Whether anything changed in a few directories since the last look: Linux inotify, through libc.

`ManifestDirectory` polls its files every second; with a thousand manifests, listing and
stat-ing them all is most of what an idle `kfn local` does. A `ChangeWatch` lets it skip a poll
when the kernel reports no change in the directory (nor in the directories that its symbolic
links lead to). It only says *that* something changed, never what: the poll still finds out by
looking, so a missed or spurious report costs a late or an extra poll, never a wrong function.

Reading is non-blocking (`changed` returns at once). Where inotify is not available (another
OS, no libc symbol, the per-user instance limit reached) `ChangeWatch.open` returns None and
the caller polls as before.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import sys
from collections.abc import Iterable
from typing import Protocol

logger = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

# Every change to a directory's entries or to the content and metadata of the files in it.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")   # wd, mask, cookie, len (then len bytes of name)
_READ_SIZE = 64 * 1024
# Bounds the events drained per look (a burst of edits is one change all the same).
MAX_READS = 64


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class Watch(Protocol):
    """What `ManifestDirectory` needs of a change watch (`ChangeWatch`, or a test's)."""

    def watch(self, directories: Iterable[str]) -> bool: ...

    def changed(self) -> bool: ...

    def close(self) -> None: ...


class ChangeWatch:
    """An inotify instance watching a set of directories (see the module docstring)."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._watches: dict[str, int] = {}   # directory → watch descriptor
        self._pending = False                # a change seen while re-watching, for the next `changed`

    @classmethod
    def open(cls) -> ChangeWatch | None:
        """A new watch, or None where inotify cannot be had (logged at debug level)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            logger.debug("inotify unavailable: %s", os.strerror(ctypes.get_errno()))
            return None
        return cls(libc, fd)

    def watch(self, directories: Iterable[str]) -> bool:
        """Watch exactly `directories` from now on; False if any of them could not be watched
        (missing, not a directory, the kernel's watch limit reached): the caller must then not
        rely on this watch for it. Never raises."""
        wanted = set(directories)
        if self._fd < 0:
            return False
        complete = True
        for directory in list(self._watches):
            if directory not in wanted:
                wd = self._watches.pop(directory)
                if wd not in self._watches.values():   # two paths to one directory share a descriptor
                    self._libc.inotify_rm_watch(self._fd, wd)
        for directory in wanted:
            # Added again even if known: a directory replaced since has a new inode to watch.
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), MASK)
            if wd < 0:
                code = ctypes.get_errno()
                if code not in (errno.ENOENT, errno.ENOTDIR):
                    logger.debug("cannot watch %s: %s", directory, os.strerror(code))
                self._watches.pop(directory, None)
                complete = False
                continue
            previous = self._watches.get(directory)
            self._watches[directory] = wd
            if previous is not None and previous != wd:
                self._pending = True   # replaced between two looks: that is a change
                if previous not in self._watches.values():
                    self._libc.inotify_rm_watch(self._fd, previous)   # the old one, wherever it went
        return complete

    def changed(self) -> bool:
        """Whether any watched directory (or a file in one) changed since the last call; drains
        the kernel's queue (bounded by MAX_READS reads). An overflowed queue counts as a change."""
        changed, self._pending = self._pending, False
        if self._fd < 0:
            return True
        for _ in range(MAX_READS):
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return changed
            except OSError as e:
                logger.warning("reading the manifest directory's change watch failed: %s", e)
                return True
            if not data:
                return changed
            changed = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & IN_IGNORED:   # the directory is gone: watched again at the next `watch`
                    self._watches = {d: w for d, w in self._watches.items() if w != wd}
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._watches.clear()

    def __enter__(self) -> ChangeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
