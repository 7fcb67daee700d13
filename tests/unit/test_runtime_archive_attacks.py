"""Attacks on "build once" from the instance side: crafted archives, a hostile or broken installer in the
build Job, and an archive store that misbehaves towards the init container's fetch.

The build Job runs the tenant's own installer with the archive's put token in its environment, so any
archive at all may be stored under a tenant's key: `unpack` and `fetch` are the trust boundary. Servers
here are real HTTP servers on loopback; installers are real processes (a `pip` module the test writes).
"""
from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kfn_runtime import archive, build, contract, fetch
from tests.support.archives import digest_of, member, refused, written

KEY = archive.KEY_PREFIX + "0" * 32
META = archive.manifest(key=KEY, runtime="python3.12", installer="pip", requirements=["six"])
RUNTIME_DIR = Path(archive.__file__).resolve().parent.parent


def manifest_member(body: bytes = json.dumps(META).encode()) -> tuple[tarfile.TarInfo, bytes]:
    return member(archive.MANIFEST_NAME, data=body)


def packed_tree(tmp_path: Path) -> bytes:
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("X = 1\n")
    (source / "pkg" / "blob.bin").write_bytes(os.urandom(200_000))
    out = io.BytesIO()
    archive.pack(str(source), out, META)
    return out.getvalue()


# -- crafted archives -------------------------------------------------------------------------------


def test_a_manifest_nested_too_deep_for_json_is_refused_as_an_archive_error(tmp_path: Path) -> None:
    message = refused(written(manifest_member(b"[" * 100_000 + b"]" * 100_000)), tmp_path)
    assert archive.MANIFEST_NAME in message


def test_a_manifest_that_is_not_json_is_refused_naming_the_manifest(tmp_path: Path) -> None:
    assert archive.MANIFEST_NAME in refused(written(manifest_member(b"<html>")), tmp_path)


def test_a_member_thousands_of_directories_deep_is_refused_as_an_archive_error(tmp_path: Path) -> None:
    message = refused(written(manifest_member(), member("a/" * 3000 + "f", data=b"x")), tmp_path)
    assert "deeper than" in message


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_SPARSE, tarfile.CONTTYPE], ids=["gnu sparse", "contiguous"])
def test_unpack_refuses_member_types_pack_never_writes(tmp_path: Path, kind: bytes) -> None:
    message = refused(written(manifest_member(), member("odd", kind=kind, data=b"")), tmp_path)
    assert "'odd': not a regular file or directory" in message


def test_a_sparse_member_written_by_gnu_tar_is_refused(tmp_path: Path) -> None:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("no tar")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / archive.MANIFEST_NAME).write_text(json.dumps(META))
    with (tree / "holes").open("wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(0, os.SEEK_END)
        f.write(b"end")
    subprocess.run([tar, "--sparse", "--format=gnu", "-czf", str(tmp_path / "sparse.tgz"), archive.MANIFEST_NAME,
                    "holes"], cwd=tree, check=True, timeout=60)

    message = refused(io.BytesIO((tmp_path / "sparse.tgz").read_bytes()), tmp_path / "out")
    assert "'holes': not a regular file or directory" in message


def test_a_tree_deeper_than_the_limit_is_not_packed(tmp_path: Path) -> None:
    deep = source = tmp_path / "source"
    for _ in range(archive.MAX_DEPTH + 1):
        deep = deep / "d"
        deep.mkdir(parents=True)
    (deep / "f").write_text("f")

    with pytest.raises(archive.ArchiveError, match="deeper than"):
        archive.pack(str(source), io.BytesIO(), META)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user may enter (pytest's own is its user's only)."""
    path = Path(tempfile.mkdtemp(prefix="kfn-attack-"))
    path.chmod(0o755)
    yield path
    for directory, _, _ in os.walk(path):
        os.chmod(directory, 0o755)
    shutil.rmtree(path)


def test_pack_refuses_a_directory_it_cannot_list_instead_of_leaving_it_out(shared_tmp: Path) -> None:
    """The build runs as a non-root user: an installer can leave a directory that user cannot read."""
    source = shared_tmp / "source"
    (source / "pkg" / "hidden").mkdir(parents=True)
    (source / "pkg" / "hidden" / "mod.py").write_text("M = 1\n")
    (source / "top.py").write_text("")
    (source / "pkg" / "hidden").chmod(0o300)   # enter and write, but not list
    script = ("import gzip, io, os, sys\nfrom kfn_runtime import archive\n"
              "if os.geteuid() == 0:   # as the build's user, not root (who may list anything)\n"
              "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
              "try:\n    archive.pack(sys.argv[1], io.BytesIO(), {'format': 1})\n"
              "except archive.ArchiveError as e:\n    print('refused:', e)\nelse:\n    print('packed')\n")
    if os.geteuid() == 0:
        for directory, dirs, files in os.walk(source):
            for name in [directory, *(os.path.join(directory, f) for f in dirs + files)]:
                os.chown(name, 65534, 65534)
    result = subprocess.run([sys.executable, "-c", script, str(source)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}, cwd=shared_tmp)

    assert result.stdout.startswith("refused: pkg/hidden"), result.stdout + result.stderr


# -- the build Job against a hostile or broken installer --------------------------------------------


def fake_pip(tmp_path: Path, body: str) -> dict[str, str]:
    """The environment of a build whose `python -m pip` runs `body` (a Python script) instead of pip."""
    pip = tmp_path / "fakepip" / "pip"
    pip.mkdir(parents=True)
    (pip / "__init__.py").write_text("")
    (pip / "__main__.py").write_text(body)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(pip.parent), str(RUNTIME_DIR)]),
            contract.ENV_REQUIREMENTS: "six", contract.ENV_RUNTIME: "python3.12", build.ENV_KEY: KEY,
            build.ENV_URL: "http://127.0.0.1:9/system/archives/ns/" + KEY, build.ENV_TOKEN: "t",
            "TMPDIR": str(tmp_path)}


def test_a_failed_builds_termination_message_starts_with_the_reason_when_the_installer_prints_megabytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    environ = fake_pip(tmp_path, "import sys\nfor i in range(30):\n    print(str(i) * 200_000)\n"
                                 "print('ERROR: the real reason')\nsys.exit(3)\n")
    termination = tmp_path / "termination-log"
    monkeypatch.setattr(contract, "TERMINATION_LOG", str(termination))

    assert build.main(environ) == 1

    message = termination.read_text()
    assert message.startswith("kfn-build: pip could not install the requirements (exit code 3)")
    assert message.endswith("ERROR: the real reason") and len(message.encode()) <= 4096
    assert "29" * 1000 in capsys.readouterr().out   # the whole output is still in the log


@pytest.mark.parametrize("leftover", ["fifo", "socket"])
def test_a_build_whose_installer_leaves_a_special_file_fails_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leftover: str) -> None:
    make = ("os.mkfifo(os.path.join(target, 'pipe'))" if leftover == "fifo" else
            "s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(target, 'pipe'))")
    environ = fake_pip(tmp_path, f"import os, socket, sys\ntarget = sys.argv[sys.argv.index('--target') + 1]\n"
                                 f"open(os.path.join(target, 'ok.py'), 'w').close()\n{make}\n")
    termination = tmp_path / "termination-log"
    monkeypatch.setattr(contract, "TERMINATION_LOG", str(termination))

    assert build.main(environ) == 1

    assert termination.read_text() == "kfn-build: pipe: not a regular file or directory"


def test_a_build_whose_installer_leaves_a_dangling_link_fails_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = fake_pip(tmp_path, "import os, sys\ntarget = sys.argv[sys.argv.index('--target') + 1]\n"
                                 "os.makedirs(os.path.join(target, 'bin'))\n"
                                 "os.symlink('../pkg/missing.js', os.path.join(target, 'bin', 'tool'))\n")
    termination = tmp_path / "termination-log"
    monkeypatch.setattr(contract, "TERMINATION_LOG", str(termination))

    assert build.main(environ) == 1

    assert termination.read_text() == "kfn-build: bin/tool: No such file or directory"


# -- the init container's fetch against a misbehaving store -----------------------------------------


class Store(http.server.ThreadingHTTPServer):
    """A loopback HTTP server answering every GET and PUT with `answer(handler)`; it records what it was sent."""

    daemon_threads = True

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str | None]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                store.requests.append((self.path, self.headers.get("Authorization")))
                store.answer(self)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.do_GET()

        store = self
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/system/archives/ns/{KEY}"


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    started: list[Store] = []
    yield started
    for store in started:
        store.shutdown()
        store.server_close()


def serving(stores: list[Store], answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Store:
    store = Store(answer)
    stores.append(store)
    return store


def body(data: bytes, *, length: int | None = None, content_type: str = archive.MEDIA_TYPE, status: int = 200,
         ) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True
    return answer


def test_fetch_does_not_follow_a_redirect_nor_send_its_token_elsewhere(stores: list[Store], tmp_path: Path) -> None:
    data = packed_tree(tmp_path)
    elsewhere = serving(stores, body(data))

    def redirect(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", elsewhere.url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    store = serving(stores, redirect)

    with pytest.raises(fetch.FetchFailed, match="302"):
        fetch.fetch(store.url, "the-token", digest_of(data), str(tmp_path / "deps"), attempts=1)

    assert elsewhere.requests == [] and os.listdir(tmp_path / "deps") == []


def test_fetch_unpacks_nothing_of_an_archive_that_is_not_the_one_built(stores: list[Store], tmp_path: Path) -> None:
    other = packed_tree(tmp_path)
    store = serving(stores, body(other))
    unpacked: list[str] = []
    real_unpack = archive.unpack

    def watching_unpack(source: io.BufferedIOBase, target: str, **limits: int) -> dict[str, object]:
        unpacked.append(target)
        return real_unpack(source, target, **limits)   # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(archive, "unpack", watching_unpack)
        with pytest.raises(fetch.FetchFailed, match="the one built was sha256:0+"):
            fetch.fetch(store.url, "t", archive.DIGEST_PREFIX + "0" * 64, str(tmp_path / "deps"), attempts=1)

    assert unpacked == [] and os.listdir(tmp_path / "deps") == []


def test_a_200_with_html_is_refused_at_once_saying_what_came(stores: list[Store], tmp_path: Path) -> None:
    store = serving(stores, body(b"<html>login</html>", content_type="text/html"))

    with pytest.raises(fetch.FetchFailed, match="text/html"):
        fetch.fetch(store.url, "t", digest_of(packed_tree(tmp_path)), str(tmp_path / "deps"), attempts=3)

    assert len(store.requests) == 1


def test_a_body_cut_short_is_fetched_again(stores: list[Store], tmp_path: Path) -> None:
    data = packed_tree(tmp_path)
    answers = [body(data[:len(data) // 2], length=len(data)), body(data)]
    store = serving(stores, lambda handler: answers.pop(0)(handler))
    slept: list[float] = []

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fetch.time, "sleep", slept.append)
        meta = fetch.fetch(store.url, "t", digest_of(data), str(tmp_path / "deps"), attempts=2)

    assert meta == META and slept == [1] and (tmp_path / "deps" / "pkg" / "__init__.py").read_text() == "X = 1\n"


def test_a_body_that_never_ends_is_cut_at_the_limit(stores: list[Store], tmp_path: Path) -> None:
    data = packed_tree(tmp_path)

    def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()   # no Content-Length: the body lasts until the connection closes
        handler.wfile.write(data)
        try:
            while True:
                handler.wfile.write(b"\0" * 65536)
        except OSError:
            pass

    store = serving(stores, endless)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fetch, "FETCH_MAX_BYTES", 4 * 1024 * 1024)
        with pytest.raises(fetch.FetchFailed, match="larger than"):
            fetch.fetch(store.url, "t", digest_of(data), str(tmp_path / "deps"), attempts=1)


def test_a_body_trickling_in_gives_up_at_the_deadline(stores: list[Store], tmp_path: Path) -> None:
    data = packed_tree(tmp_path)

    def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            for byte in data:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    store = serving(stores, trickle)
    outcome: list[fetch.FetchFailed | None] = []

    def run() -> None:
        try:
            fetch.fetch(store.url, "t", digest_of(data), str(tmp_path / "deps"), attempts=1)
            outcome.append(None)
        except fetch.FetchFailed as e:
            outcome.append(e)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fetch, "FETCH_DEADLINE", 1.0)
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(10)

    assert outcome and outcome[0] is not None and "within 1s" in str(outcome[0])


def test_a_deps_dir_holding_an_earlier_attempts_files_is_emptied_and_filled(
        stores: list[Store], tmp_path: Path) -> None:
    data = packed_tree(tmp_path)
    store = serving(stores, body(data))
    deps = tmp_path / "deps"
    (deps / "pkg").mkdir(parents=True)
    (deps / "pkg" / "__init__.py").write_text("half")
    (deps / "stale.py").write_text("")

    meta = fetch.fetch(store.url, "t", digest_of(data), str(deps), attempts=1)

    assert meta == META and sorted(os.listdir(deps)) == ["pkg"]
    assert (deps / "pkg" / "__init__.py").read_text() == "X = 1\n"


def test_an_archive_stored_by_a_hostile_build_fails_the_fetch_with_its_reason_at_once(
        stores: list[Store], tmp_path: Path) -> None:
    data = written(manifest_member(), member("dup", data=b"1"), member("dup", data=b"2")).getvalue()
    store = serving(stores, body(data))

    with pytest.raises(fetch.FetchFailed, match="not one kfn built"):
        fetch.fetch(store.url, "t", digest_of(data), str(tmp_path / "deps"), attempts=3)

    assert len(store.requests) == 1 and os.listdir(tmp_path / "deps") == []


# -- the build Job's upload against a misbehaving store ---------------------------------------------


@pytest.fixture
def built(tmp_path: Path) -> tuple[str, str]:
    """(the path, the digest) of an archive as the build packs it."""
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(packed_tree(tmp_path))
    return str(path), archive.file_digest(str(path))


def test_an_upload_answered_with_an_html_page_fails_at_once_saying_what_answered(
        stores: list[Store], built: tuple[str, str]) -> None:
    store = serving(stores, body(b"<html>it works</html>", content_type="text/html"))

    with pytest.raises(build.BuildFailed, match=r"answered 200 \(text/html\), not the archive store's JSON"):
        build.upload(built[0], store.url, "t", built[1], attempts=3)

    assert len(store.requests) == 1


def test_an_upload_the_store_says_it_stored_as_another_digest_fails(stores: list[Store],
                                                                    built: tuple[str, str]) -> None:
    other = archive.DIGEST_PREFIX + "1" * 64
    store = serving(stores, body(json.dumps({"key": KEY, "digest": other, "size": 1}).encode(),
                                 content_type="application/json", status=201))

    with pytest.raises(build.BuildFailed, match=f"the store says it stored {other}, not {built[1]}"):
        build.upload(built[0], store.url, "t", built[1], attempts=3)


def test_an_upload_of_a_key_stored_before_succeeds_with_the_stored_digest(stores: list[Store],
                                                                          built: tuple[str, str]) -> None:
    # First writer wins: an earlier build of the same key stored its own bytes (installs are not
    # byte-for-byte repeatable); that archive is the one the functions fetch.
    other = archive.DIGEST_PREFIX + "1" * 64
    store = serving(stores, body(json.dumps({"key": KEY, "digest": other, "size": 1}).encode(),
                                 content_type="application/json", status=200))

    assert build.upload(built[0], store.url, "t", built[1], attempts=3)["digest"] == other


def test_an_upload_to_a_store_refusing_connections_is_tried_again_then_fails(
        built: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(build.time, "sleep", slept.append)

    with pytest.raises(build.BuildFailed, match=r"cannot be reached \(3 attempts\)"):
        build.upload(built[0], f"http://127.0.0.1:9/system/archives/ns/{KEY}", "t", built[1], attempts=3)

    assert slept == [1, 2]


def test_an_upload_redirected_is_refused_not_followed(stores: list[Store], built: tuple[str, str]) -> None:
    elsewhere = serving(stores, body(b"{}"))

    def redirect(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", elsewhere.url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    store = serving(stores, redirect)
    with pytest.raises(build.BuildFailed, match="refused the archive: 307"):
        build.upload(built[0], store.url, "t", built[1], attempts=3)

    assert elsewhere.requests == []


def test_a_file_name_that_is_not_utf8_survives_pack_and_unpack(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    with open(os.path.join(os.fsencode(source / "d"), b"caf\xe9.py"), "w") as f:
        f.write("C = 1\n")
    out = io.BytesIO()
    archive.pack(str(source), out, META)
    out.seek(0)

    archive.unpack(out, str(tmp_path / "out"))

    assert os.listdir(os.fsencode(tmp_path / "out" / "d")) == [b"caf\xe9.py"]
