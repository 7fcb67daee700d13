"""`kfn_runtime.archive`: the format of built requirements, what unpacking refuses, keys and tokens."""
from __future__ import annotations

import io
import json
import os
import py_compile
import stat
import tarfile
import time
from pathlib import Path

import pytest

from kfn_runtime import archive
from tests.support.archives import member, refused, written

META = archive.manifest(key="deps-" + "0" * 32, runtime="python3.12", installer="pip", requirements=["six"])


def packed(source: Path, meta: dict[str, object] = META) -> io.BytesIO:
    out = io.BytesIO()
    archive.pack(str(source), out, meta)
    out.seek(0)
    return out


def manifest_member(meta: object = META) -> tuple[tarfile.TarInfo, bytes]:
    return member(archive.MANIFEST_NAME, data=json.dumps(meta).encode())


# -- pack and unpack --------------------------------------------------------------------------------


def test_a_packed_tree_unpacks_to_the_same_files_directories_and_manifest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "pkg" / "sub").mkdir(parents=True)
    (source / "empty" / "deeper").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("X = 1\n")
    (source / "pkg" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    (source / "top.txt").write_text("top")

    meta = archive.unpack(packed(source), str(tmp_path / "out"))

    out = tmp_path / "out"
    assert meta == META
    assert (out / "pkg" / "__init__.py").read_text() == "X = 1\n"
    assert (out / "pkg" / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 100
    assert (out / "top.txt").read_text() == "top"
    assert (out / "empty" / "deeper").is_dir() and os.listdir(out / "empty" / "deeper") == []
    assert not (out / archive.MANIFEST_NAME).exists()


def test_executable_files_stay_executable_and_others_do_not(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "bin").mkdir(parents=True)
    (source / "bin" / "tool").write_text("#!/bin/sh\n")
    (source / "bin" / "tool").chmod(0o700)
    (source / "lib.py").write_text("")
    (source / "lib.py").chmod(0o600)

    archive.unpack(packed(source), str(tmp_path / "out"))

    assert os.stat(tmp_path / "out" / "bin" / "tool").st_mode & 0o111
    assert not os.stat(tmp_path / "out" / "lib.py").st_mode & 0o111


def test_members_are_written_as_root_owned_with_fixed_modes_and_their_files_mtime(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "d" / "x").write_text("x")
    (source / "d" / "x").chmod(0o640)
    os.utime(source / "d" / "x", (1_700_000_000, 1_700_000_000))

    with tarfile.open(fileobj=packed(source), mode="r:gz") as tar:
        infos = tar.getmembers()

    assert infos[0].name == archive.MANIFEST_NAME
    assert {(i.name, i.uid, i.gid, i.mtime, stat.S_IMODE(i.mode)) for i in infos[1:]} == {
        ("d", 0, 0, archive.MTIME, 0o755), ("d/x", 0, 0, 1_700_000_000, 0o644)}


def test_unpacked_files_keep_their_mtime_so_compiled_bytecode_stays_valid(tmp_path: Path) -> None:
    # A .pyc names its source's mtime: a source unpacked with another one is compiled again at every
    # import, and a read-only deps directory cannot even keep the result.
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    os.utime(source / "pkg" / "__init__.py", (1_600_000_000, 1_600_000_000))
    py_compile.compile(str(source / "pkg" / "__init__.py"), doraise=True)
    time.sleep(0.01)

    with open(tmp_path / "a.tar.gz", "wb") as out:
        archive.pack(str(source), out, META)
    with open(tmp_path / "a.tar.gz", "rb") as f:
        archive.unpack(f, str(tmp_path / "out"))

    unpacked = tmp_path / "out" / "pkg" / "__init__.py"
    assert os.stat(unpacked).st_mtime == 1_600_000_000
    (pyc,) = (tmp_path / "out" / "pkg" / "__pycache__").iterdir()
    assert int.from_bytes(pyc.read_bytes()[8:12], "little") == 1_600_000_000   # the pyc's source mtime


def test_the_same_tree_packs_to_the_same_members(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "b").mkdir(parents=True)
    for name in ("z", "a", "m"):
        (source / "b" / name).write_text(name)

    def members() -> list[tuple[str, int, int]]:
        with tarfile.open(fileobj=packed(source), mode="r:gz") as tar:
            return [(i.name, i.size, i.mode) for i in tar.getmembers()]

    first = members()
    assert members() == first and [m[0] for m in first] == [archive.MANIFEST_NAME, "b", "b/a", "b/m", "b/z"]


def test_a_link_inside_the_tree_is_packed_as_what_it_points_to(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("M = 1\n")
    (source / "alias.py").symlink_to("pkg/mod.py")
    (source / "linked").symlink_to("pkg")

    archive.unpack(packed(source), str(tmp_path / "out"))

    out = tmp_path / "out"
    assert not (out / "alias.py").is_symlink() and (out / "alias.py").read_text() == "M = 1\n"
    assert not (out / "linked").is_symlink() and (out / "linked" / "mod.py").read_text() == "M = 1\n"


def test_pack_refuses_a_link_pointing_outside_the_tree(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("secret")
    source = tmp_path / "source"
    source.mkdir()
    (source / "leak").symlink_to(tmp_path / "secret")

    with pytest.raises(archive.ArchiveError, match="leak: a link out of the tree"):
        archive.pack(str(source), io.BytesIO(), META)


def test_pack_refuses_a_link_leading_back_into_its_own_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "again").symlink_to("..")

    with pytest.raises(archive.ArchiveError, match="pkg/again: a link loop"):
        archive.pack(str(source), io.BytesIO(), META)


def test_pack_to_file_writes_the_archive_in_the_directory_with_its_digest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_text("f")

    path, digest = archive.pack_to_file(str(source), str(tmp_path), META)

    assert os.path.dirname(path) == str(tmp_path) and digest == archive.file_digest(path)
    assert digest.startswith(archive.DIGEST_PREFIX)
    with open(path, "rb") as f:
        archive.unpack(f, str(tmp_path / "out"))
    assert (tmp_path / "out" / "f").read_text() == "f"


# -- what unpack refuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../escape", "a/..", "a\\..\\b", "."])
def test_unpack_refuses_a_name_outside_the_target(tmp_path: Path, name: str) -> None:
    message = refused(written(manifest_member(), member("fine", data=b"1"), member(name, data=b"x")), tmp_path)
    assert "not a relative name" in message


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE],
                         ids=["symlink", "hard link", "character device", "block device", "fifo"])
def test_unpack_refuses_links_and_special_files(tmp_path: Path, kind: bytes) -> None:
    special = member("special", kind=kind, linkname="fine" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "")
    message = refused(written(manifest_member(), member("fine", data=b"1"), special), tmp_path)
    assert "'special': not a regular file or directory" in message


def test_unpack_refuses_an_archive_without_a_manifest(tmp_path: Path) -> None:
    assert "the first member must be" in refused(written(member("fine", data=b"1")), tmp_path)


def test_unpack_refuses_a_manifest_that_is_not_the_first_member(tmp_path: Path) -> None:
    assert "the first member must be" in refused(written(member("fine", data=b"1"), manifest_member()), tmp_path)


def test_unpack_refuses_an_empty_archive(tmp_path: Path) -> None:
    assert "no manifest" in refused(written(), tmp_path)


def test_unpack_refuses_another_format(tmp_path: Path) -> None:
    message = refused(written(manifest_member({**META, "format": 2}), member("fine", data=b"1")), tmp_path)
    assert "format 2" in message


def test_unpack_refuses_a_manifest_that_is_not_an_object(tmp_path: Path) -> None:
    assert "this runtime reads 1" in refused(written(manifest_member([1])), tmp_path)


def test_unpack_refuses_more_members_than_the_limit(tmp_path: Path) -> None:
    files = [member(f"f{i}", data=b"x") for i in range(5)]
    assert "more than 4 members" in refused(written(manifest_member(), *files), tmp_path, max_members=4)


def test_unpack_refuses_more_bytes_than_the_limit(tmp_path: Path) -> None:
    files = [member("a", data=b"x" * 600), member("b", data=b"x" * 600)]
    assert "more than 1000 bytes" in refused(written(manifest_member(), *files), tmp_path, max_bytes=1000)


def test_unpack_refuses_what_is_not_a_gzip_tar(tmp_path: Path) -> None:
    assert "not a readable archive" in refused(io.BytesIO(b"not an archive at all"), tmp_path)


def test_unpack_refuses_a_truncated_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "big").write_bytes(os.urandom(100_000))
    whole = packed(source).getvalue()

    assert "not a readable archive" in refused(io.BytesIO(whole[:len(whole) // 2]), tmp_path / "out")


def test_unpack_refuses_a_file_twice(tmp_path: Path) -> None:
    members = [manifest_member(), member("dup", data=b"1"), member("dup", data=b"2")]
    assert "not a readable archive" in refused(written(*members), tmp_path)


def test_unpack_refuses_a_target_that_is_not_empty_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "mine").write_text("mine")

    with pytest.raises(archive.ArchiveError, match="not empty"):
        archive.unpack(written(manifest_member()), str(tmp_path))

    assert os.listdir(tmp_path) == ["mine"]


def test_unpack_creates_a_missing_target(tmp_path: Path) -> None:
    assert archive.unpack(written(manifest_member(), member("f", data=b"1")), str(tmp_path / "new" / "dir")) == META
    assert (tmp_path / "new" / "dir" / "f").read_bytes() == b"1"


# -- keys and tokens --------------------------------------------------------------------------------

KEY_INPUTS = {"runtime": "python3.12", "image": "ghcr.io/kfn/python:1", "requirements": ["six==1.16.0"],
              "sources": ["index_url=https://pypi.example/simple"]}


def test_deps_key_is_stable_and_valid() -> None:
    key = archive.deps_key(**KEY_INPUTS)   # type: ignore[arg-type]
    assert key == archive.deps_key(**KEY_INPUTS) and archive.valid_key(key)   # type: ignore[arg-type]
    assert key == "deps-" + key.removeprefix("deps-") and len(key) == len("deps-") + 32


@pytest.mark.parametrize("field, other", [
    ("runtime", "python3.13"), ("image", "ghcr.io/kfn/python:2"), ("requirements", ["six==1.17.0"]),
    ("requirements", ["six==1.16.0", "requests"]), ("sources", []), ("sources", ["index_url=https://other/simple"])])
def test_deps_key_changes_with_each_input(field: str, other: object) -> None:
    assert archive.deps_key(**{**KEY_INPUTS, field: other}) != archive.deps_key(**KEY_INPUTS)   # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["deps-" + "0" * 31, "deps-" + "G" * 32, "dep-" + "0" * 33, "deps-" + "A" * 32,
                                 "../" + "0" * 34, ""])
def test_valid_key_refuses_anything_but_a_deps_key(key: str) -> None:
    assert not archive.valid_key(key)


SECRET = b"signing key"
KEY = "deps-" + "1" * 32


@pytest.mark.parametrize("verb, namespace, key, secret", [
    (archive.VERB_PUT, "team-a", KEY, SECRET), (archive.VERB_GET, "team-b", KEY, SECRET),
    (archive.VERB_GET, "team-a", "deps-" + "2" * 32, SECRET), (archive.VERB_GET, "team-a", KEY, b"another key")])
def test_a_token_differs_per_verb_namespace_key_and_secret(verb: str, namespace: str, key: str, secret: bytes) -> None:
    assert archive.token(secret, verb, namespace, key) != archive.token(SECRET, archive.VERB_GET, "team-a", KEY)


def test_token_matches_only_its_own_token() -> None:
    good = archive.token(SECRET, archive.VERB_GET, "team-a", KEY)
    assert archive.token_matches(SECRET, archive.VERB_GET, "team-a", KEY, good)
    assert not archive.token_matches(SECRET, archive.VERB_PUT, "team-a", KEY, good)
    assert not archive.token_matches(SECRET, archive.VERB_GET, "team-b", KEY, good)
    assert not archive.token_matches(SECRET, archive.VERB_GET, "team-a", KEY, good[:-1] + "0")
    assert not archive.token_matches(SECRET, archive.VERB_GET, "team-a", KEY, "")
