"""A function's built requirements as one archive: installed once, unpacked at each instance start.

The format (FORMAT 1) is a gzip-compressed POSIX tar whose first member is MANIFEST_NAME, a JSON
object saying what was built (`key`, `runtime`, `installer`, `requirements`, `format`); every other
member is a regular file or a directory under the unpacked root, named relatively (at most
MAX_DEPTH directories deep), owned by 0:0, with mode 0644 or 0755 and its file's mtime (kept on
unpacking: Python's compiled bytecode names its source's mtime, and is compiled again, at every
start, when it no longer matches). `pack` writes
only that; `unpack` accepts only that (no links, devices, sparse members, absolute names or `..`),
within limits on members and unpacked bytes, so a hostile archive cannot write outside its target
nor fill a disk. A build runs the tenant's own installer with its archive's put token at hand, so
any archive at all may be stored under a tenant's key: `unpack` is the trust boundary.

Who may fetch or store an archive is a token: HMAC-SHA256 over the verb, the namespace and the
key with the platform's signing key (`token`), so a token opens one archive of one namespace for
one verb. The archive store (the gateway's `/system/archives/NAMESPACE/KEY`) checks it; builds
and instances carry only their own.

Standard library only: it ships in every runtime image (the build Job and the fetch step run it).
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import IO, Any, Final

FORMAT: Final = 1
MANIFEST_NAME: Final = ".kfn-archive.json"
MEDIA_TYPE: Final = "application/vnd.kfn.archive.v1.tar+gzip"
DIGEST_PREFIX: Final = "sha256:"
KEY_PREFIX: Final = "deps-"
# Limits `unpack` enforces unless told otherwise.
DEFAULT_MAX_UNPACKED_BYTES: Final = 2 * 1024 * 1024 * 1024
DEFAULT_MAX_MEMBERS: Final = 200_000
# The most directories a member's name may go down (deeper trees are refused by both sides).
MAX_DEPTH: Final = 256
# What unpacking fails with when the target's disk, not the archive, is at fault: raised as OSError.
DISK_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES,
                                errno.EPERM})
# The mtime of the manifest and of directories: the same tree packs to the same member headers.
MTIME: Final = 0

VERB_GET: Final = "get"   # fetch (GET) or look up (HEAD)
VERB_PUT: Final = "put"   # store, once
# The shortest signing key the platform takes (the gateway and the operator refuse a shorter one).
MIN_SECRET_BYTES: Final = 16


class ArchiveError(ValueError):
    """An archive that is not one kfn wrote, or breaks a limit; the message says which member."""


def deps_key(*, runtime: str, image: str, requirements: Sequence[str], sources: Sequence[str] = ()) -> str:
    """The archive's key for installing `requirements` for `runtime` in `image` from `sources` (the
    package index settings, e.g. ["index_url=https://..."]): equal inputs, equal keys. The namespace
    is not part of it: archives are stored per namespace (see SECURITY.md)."""
    blob = json.dumps({"format": FORMAT, "runtime": runtime, "image": image, "requirements": list(requirements),
                       "sources": list(sources)}, sort_keys=True, separators=(",", ":"))
    return KEY_PREFIX + hashlib.sha256(blob.encode()).hexdigest()[:32]


def valid_key(key: str) -> bool:
    return (key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 32
            and all(c in "0123456789abcdef" for c in key[len(KEY_PREFIX):]))


def read_secret(path: str) -> bytes:
    """The signing key in the file at `path`: its raw bytes (the gateway and the operator read the
    same file); ValueError, naming the flag, if it cannot be read or is shorter than MIN_SECRET_BYTES."""
    try:
        with open(path, "rb") as f:
            secret = f.read()
    except OSError as e:
        raise ValueError(f"--archive-key-file {path}: {e.strerror or e}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"--archive-key-file {path}: {len(secret)} bytes; a signing key needs "
                         f"{MIN_SECRET_BYTES} at least")
    return secret


def token(secret: bytes, verb: str, namespace: str, key: str) -> str:
    """The token that opens archive `key` of `namespace` for `verb` (VERB_GET or VERB_PUT)."""
    message = f"kfn-archive\n{verb}\n{namespace}\n{key}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def token_matches(secret: bytes, verb: str, namespace: str, key: str, presented: str) -> bool:
    return hmac.compare_digest(token(secret, verb, namespace, key), presented)


def manifest(*, key: str, runtime: str, installer: str, requirements: Sequence[str]) -> dict[str, Any]:
    return {"format": FORMAT, "key": key, "runtime": runtime, "installer": installer,
            "requirements": list(requirements)}


def _walk(root: str) -> Iterable[tuple[str, str]]:
    """(path on disk, member name) of everything under root, sorted, directories before contents.
    A link to a directory is walked like the directory (ArchiveError if it leads back into itself);
    ArchiveError for a directory that cannot be listed (rather than an archive without its contents)
    or one deeper than MAX_DEPTH."""
    def unlisted(error: OSError) -> None:
        raise ArchiveError(f"{os.path.relpath(error.filename or root, root)}: cannot be listed ({error.strerror})")

    # The real directories each directory being walked lies in, itself included: a loop's way back.
    chains = {root: frozenset([os.path.realpath(root)])}
    for directory, dirs, files in os.walk(root, followlinks=True, onerror=unlisted):
        dirs.sort()
        relative = os.path.relpath(directory, root)
        chain = chains.pop(directory)
        if relative != "." and relative.count("/") + 1 >= MAX_DEPTH and dirs:
            raise ArchiveError(f"{relative}/{dirs[0]}: deeper than {MAX_DEPTH} directories")
        for name in dirs:
            real = os.path.realpath(os.path.join(directory, name))
            if real in chain:
                raise ArchiveError(f"{name if relative == '.' else f'{relative}/{name}'}: a link loop")
            chains[os.path.join(directory, name)] = chain | {real}
        for name in [*dirs, *sorted(files)]:
            path = os.path.join(directory, name)
            yield path, name if relative == "." else f"{relative}/{name}"


def _info(name: str, *, size: int = 0, directory: bool = False, executable: bool = False,
          mtime: int = MTIME) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(source: str, out: IO[bytes], meta: Mapping[str, Any]) -> None:
    """Write the tree under `source` into `out` as an archive with `meta` as its manifest. Symbolic
    links are followed when they point inside `source` and otherwise refused (ArchiveError); other
    special files are refused."""
    root = os.path.realpath(source)
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
        body = json.dumps(dict(meta), sort_keys=True).encode()
        tar.addfile(_info(MANIFEST_NAME, size=len(body)), io.BytesIO(body))
        for path, name in _walk(root):
            real = os.path.realpath(path)
            if real != root and not real.startswith(root + os.sep):
                raise ArchiveError(f"{name}: a link out of the tree being packed")
            try:
                st = os.stat(real)
            except OSError as e:   # a link to nothing, or a loop of links
                raise ArchiveError(f"{name}: {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_info(name, directory=True))
            elif stat.S_ISREG(st.st_mode):
                with open(real, "rb") as f:
                    tar.addfile(_info(name, size=st.st_size, executable=bool(st.st_mode & 0o111),
                                      mtime=max(0, int(st.st_mtime))), f)
            else:
                raise ArchiveError(f"{name}: not a regular file or directory")


def _safe_name(name: str) -> str:
    """`name` as a relative path inside the target ("a/./b/" → "a/b"); ArchiveError if it is not one."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or "\\" in name or "\x00" in name:
        raise ArchiveError(f"{name!r}: not a relative name inside the archive")
    if len(parts) > MAX_DEPTH + 1:
        raise ArchiveError(f"{name[:200]!r}...: deeper than {MAX_DEPTH} directories")
    return "/".join(parts)


def unpack(source: IO[bytes], target: str, *, max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
           max_members: int = DEFAULT_MAX_MEMBERS) -> dict[str, Any]:
    """Unpack an archive into the directory `target` (created; must not hold anything yet) and
    return its manifest. ArchiveError, with `target` left empty, for anything `pack` would not
    have written or past the limits; OSError, with `target` left empty, when the target's disk
    fails the unpacking (full, read-only, not permitted: errno in DISK_ERRNOS), the archive being
    no worse for it."""
    os.makedirs(target, exist_ok=True)
    if os.listdir(target):
        raise ArchiveError(f"{target}: not empty")
    try:
        return _unpack(source, target, max_bytes=max_bytes, max_members=max_members)
    except (ArchiveError, tarfile.TarError, OSError, EOFError, ValueError) as e:
        clear(target)
        if isinstance(e, ArchiveError) or (isinstance(e, OSError) and e.errno in DISK_ERRNOS):
            raise
        raise ArchiveError(f"not a readable archive: {e}") from e


def _unpack(source: IO[bytes], target: str, *, max_bytes: int, max_members: int) -> dict[str, Any]:
    meta: dict[str, Any] | None = None
    total = members = 0
    with tarfile.open(fileobj=source, mode="r|gz") as tar:
        for info in tar:
            members += 1
            if members > max_members:
                raise ArchiveError(f"more than {max_members} members")
            if meta is None:
                if info.name != MANIFEST_NAME or not info.isreg() or info.size > 1024 * 1024:
                    raise ArchiveError(f"the first member must be {MANIFEST_NAME}")
                f = tar.extractfile(info)
                assert f is not None
                try:
                    meta = json.loads(f.read())
                except (ValueError, RecursionError) as e:
                    raise ArchiveError(f"{MANIFEST_NAME} is not JSON: {e}") from None
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise ArchiveError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                                       f"this runtime reads {FORMAT}")
                continue
            name = _safe_name(info.name)
            path = os.path.join(target, name)
            if info.isdir():
                os.makedirs(path, mode=0o755, exist_ok=True)
                continue
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):   # isreg() admits sparse members too
                raise ArchiveError(f"{info.name!r}: not a regular file or directory")
            total += info.size
            if total > max_bytes:
                raise ArchiveError(f"unpacks to more than {max_bytes} bytes")
            parent = os.path.dirname(path)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if os.path.realpath(parent) != os.path.join(os.path.realpath(target), os.path.dirname(name)).rstrip("/"):
                raise ArchiveError(f"{info.name!r}: outside the target")
            f = tar.extractfile(info)
            assert f is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o755 if info.mode & 0o111 else 0o644)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(f, out, 1024 * 1024)
            mtime = int(info.mtime) if 0 <= info.mtime < 2 ** 33 else MTIME
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    if meta is None:
        raise ArchiveError("empty: no manifest")
    return meta


def clear(target: str) -> None:
    """Remove everything in the directory `target` (nothing if it does not exist), keeping it."""
    if not os.path.isdir(target):
        return
    for entry in os.listdir(target):
        path = os.path.join(target, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return DIGEST_PREFIX + h.hexdigest()


def pack_to_file(source: str, directory: str, meta: Mapping[str, Any]) -> tuple[str, str]:
    """Pack `source` into a new file in `directory`; (its path, its digest)."""
    fd, path = tempfile.mkstemp(prefix=".archive-", suffix=".tar.gz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            pack(source, out, meta)
        return path, file_digest(path)
    except BaseException:
        os.unlink(path)
        raise
