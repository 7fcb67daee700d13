"""Function manifests from files: a bounded reader in front of `kfn.core.manifests`.

Only regular files are read (a FIFO or a device would block or never end), at most
`MAX_MANIFEST_BYTES` of them, as UTF-8; every failure is a `ManifestError` naming the file.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kfn.core.functions import Function
from kfn.core.manifests import MANIFEST_SUFFIXES, MAX_MANIFEST_BYTES, ManifestError, load_text


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a manifest file, or ManifestError. Never blocks on a FIFO or a device."""
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ManifestError.of(name, f"cannot read: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ManifestError.of(name, f"cannot read: {kind}")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError.of(name, f"larger than {MAX_MANIFEST_BYTES} bytes: not a Function manifest")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1024 * 1024):
            size += len(chunk)
            if size > MAX_MANIFEST_BYTES:  # it grew while being read
                raise ManifestError.of(name, f"larger than {MAX_MANIFEST_BYTES} bytes: not a Function manifest")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise ManifestError.of(name, "cannot read: a directory") from None
        raise ManifestError.of(name, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def decode(raw: bytes, *, file: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError.of(file, "not UTF-8 text") from None


def load_file(path: str | Path) -> list[Function]:
    """Every Function in one manifest file; ManifestError (naming the file) if it cannot be used."""
    raw = read_bytes(path)
    return load_text(decode(raw, file=str(path)), file=str(path))


def manifest_files(directory: str | Path) -> list[Path]:
    """The manifest files directly in `directory`, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in Path(directory).iterdir()
        if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
