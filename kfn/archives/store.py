"""The store of build archives: one semantics, two backends.

`ArchiveStore` is what the gateway's archive routes (`kfn_gateway.archives_api`) see;
`kfn.archives.jetstream.JetStreamArchives` (Kubernetes: a NATS JetStream object store) and
`kfn.archives.directory.DirectoryArchives` (files under a directory: kfn local, tests) implement it.
The semantics:

- An archive is named by a namespace (a DNS label) and a key (`kfn_runtime.archive.valid_key`);
  `valid_name` says whether a pair is one, and every method raises ValueError for one that is not.
- Once stored, an archive never changes: `put` stores it only if nothing is stored under its name,
  and otherwise answers what is (the first writer wins, writers racing from several gateways too).
- `info` says what is stored (its digest, `sha256:…` of its bytes, and its size), None if nothing;
  `read` gives its bytes in order, a chunk at a time, raising NotStored if there are none.
- ArchivesUnavailable: the backend cannot answer now (NATS away); asking again later may work.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from kfn.core.fields import DNS_LABEL, MAX_NAME_LENGTH
from kfn_runtime import archive


class NotStored(LookupError):
    """No archive is stored under that name."""


class ArchivesUnavailable(Exception):
    """The store cannot answer now; the message says why."""


@dataclass(frozen=True)
class ArchiveInfo:
    """What is stored under a name: the archive's digest (`sha256:…`) and its size in bytes."""

    digest: str
    size: int


def valid_name(namespace: str, key: str) -> bool:
    """Whether (namespace, key) names an archive: a DNS label and an archive key."""
    # fullmatch: `$` in the pattern also matches before a final line feed ("team\n").
    return len(namespace) <= MAX_NAME_LENGTH and bool(DNS_LABEL.fullmatch(namespace)) and archive.valid_key(key)


def check_name(namespace: str, key: str) -> str:
    """The name both backends store the archive under, NAMESPACE/KEY; ValueError if it is not one."""
    if not valid_name(namespace, key):
        raise ValueError(f"not an archive name: {namespace!r}/{key!r}")
    return f"{namespace}/{key}"


class ArchiveStore(Protocol):
    async def info(self, namespace: str, key: str) -> ArchiveInfo | None:
        """What is stored under (namespace, key), None if nothing."""
        ...

    async def put(self, namespace: str, key: str, path: str, digest: str) -> ArchiveInfo:
        """Store the file at `path` (whose digest is `digest`: ValueError if it is not) under
        (namespace, key), unless something is stored there already: what is stored, either way.
        The file is read, not moved: it stays the caller's."""
        ...

    async def read(self, namespace: str, key: str) -> AsyncIterator[bytes]:
        """The archive's bytes, in chunks (NotStored if absent). ArchivesUnavailable may also come
        from the iterator, between chunks."""
        ...

    async def close(self) -> None:
        """Release the store's connections; returns once they are closed."""
        ...
