"""Build archives for the tests: packed as a build packs them (`make_archive`) or crafted member by member as a
hostile builder could write them (`member`, `written`); and the gateway's archive store
(/system/archives/NAMESPACE/KEY) as the tests call it, signed with SECRET, the archive KEY in namespace "team"."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kfn.archives.store import ArchiveStore
from kfn_gateway.archives_api import HEADER_DIGEST
from kfn_runtime import archive
from tests.support.backend import FakeBackend
from tests.support.gateway import RunningGateway, running_gateway

SECRET = b"the-signing-key-of-this-platform"
TOKEN = "get-token"   # what `Store` takes as the archive's token
KEY = archive.KEY_PREFIX + "0123456789abcdef0123456789abcdef"


# -- archives -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    path: Path
    digest: str

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def make_archive(directory: Path, key: str = KEY, content: bytes = b"print('hi')\n") -> Archive:
    """An archive of `key` as a build packs it, holding one module."""
    tree = directory / f"tree-{os.urandom(4).hex()}"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_bytes(content)
    path, digest = archive.pack_to_file(str(tree), str(directory), archive.manifest(
        key=key, runtime="python3.12", installer="pip", requirements=["pkg==1"]))
    return Archive(Path(path), digest)


def digest_of(data: bytes) -> str:
    """The archive digest of `data` ("sha256:…")."""
    return archive.DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def member(name: str, *, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
           **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    """A tar member `name` of type `kind` holding `data` (a regular file's), other TarInfo fields as given."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    for field, value in fields.items():
        setattr(info, field, value)
    return info, data


def written(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    """A gzip tar of `members` in order, as a hostile builder could write it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    out.seek(0)
    return out


def refused(source: io.BytesIO, target: Path, **limits: int) -> str:
    """The refusal's message (an ArchiveError, nothing else); also checks the target was left empty."""
    with pytest.raises(archive.ArchiveError) as info:
        archive.unpack(source, str(target), **limits)
    assert os.listdir(target) == []
    return str(info.value)


def leftovers(directory: Path) -> list[Path]:
    """What is left in `directory` (the gateway's temporary files, say)."""
    return list(directory.iterdir())


# -- the gateway's archive store ------------------------------------------------------------------

def url(namespace: str = "team", key: str = KEY) -> str:
    return f"/system/archives/{namespace}/{key}"


def token(verb: str, namespace: str = "team", key: str = KEY) -> dict[str, str]:
    """The Authorization header of the token opening this archive for `verb`."""
    return {"Authorization": f"Bearer {archive.token(SECRET, verb, namespace, key)}"}


def put_headers(digest: str, namespace: str = "team", key: str = KEY) -> dict[str, str]:
    """The headers of a build's PUT of this archive."""
    return {**token(archive.VERB_PUT, namespace, key), HEADER_DIGEST: digest, "Content-Type": archive.MEDIA_TYPE}


@asynccontextmanager
async def archive_gateway(store: ArchiveStore | None, *, key: bytes | None = SECRET,
                          **kwargs: Any) -> AsyncIterator[RunningGateway]:
    """A gateway keeping its archives in `store`, signing with `key` (other running_gateway arguments as given),
    over a FakeBackend, served until exit."""
    backend = FakeBackend()
    async with backend, running_gateway(backend, archives=store, archive_key=key, **kwargs) as gw:
        yield gw


# -- a stand-in for the store's GET, for instances -----------------------------------------------

class Store:
    """The archive store's GET on 127.0.0.1: one archive at /system/archives/default/KEY for TOKEN, or 404.
    Served from a thread until `close`."""

    def __init__(self, body: bytes | None, digest: str = "") -> None:
        self.body, self.digest = body, digest
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if store.body is None or self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", archive.MEDIA_TYPE)
                self.send_header("Content-Length", str(len(store.body)))
                self.end_headers()
                self.wfile.write(store.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/system/archives/default/{KEY}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def packed(tmp_path: Path) -> tuple[bytes, str]:
    """An archive of KEY holding the module `six_like`; (its bytes, its digest)."""
    deps = tmp_path / f"built-{os.urandom(4).hex()}"
    (deps / "six_like").mkdir(parents=True)
    (deps / "six_like" / "__init__.py").write_text("def answer():\n    return 'from six_like'\n")
    meta = archive.manifest(key=KEY, runtime="python3.12", installer="pip", requirements=["six_like"])
    path, digest = archive.pack_to_file(str(deps), str(tmp_path), meta)
    return Path(path).read_bytes(), digest
