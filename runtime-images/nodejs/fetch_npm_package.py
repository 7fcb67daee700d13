"""Fetch one package from an npm registry and unpack it: how the Node.js image gets node and npm.

    python3 fetch_npm_package.py REGISTRY NAME VERSION DEST

NAME may contain "{arch}" (x64, arm64: this machine's, in npm's words), e.g. node-linux-{arch}.
The tarball is checked against the registry's sha512 integrity before anything is unpacked; its
`package/` directory becomes DEST. Standard library only: it runs in the image build, before node.
"""
from __future__ import annotations

import base64
import hashlib
import json
import platform
import shutil
import ssl
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120, context=ssl.create_default_context()) as response:
        return bytes(response.read())


def main(registry: str, name: str, version: str, dest: str) -> int:
    name = name.replace("{arch}", ARCHES.get(platform.machine().lower(), platform.machine().lower()))
    meta_url = f"{registry.rstrip('/')}/{urllib.parse.quote(name, safe='@')}/{urllib.parse.quote(version)}"
    dist = json.loads(fetch(meta_url))["dist"]
    algorithm, _, expected = str(dist["integrity"]).partition("-")
    if algorithm != "sha512":
        sys.exit(f"{name}@{version}: unsupported integrity {dist['integrity']!r}")
    print(f"fetching {name}@{version} from {dist['tarball']}", flush=True)
    data = fetch(dist["tarball"])
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != expected:
        sys.exit(f"{name}@{version}: the tarball does not match the registry's sha512 integrity")
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "package.tgz"
        archive.write_bytes(data)
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:   # Python before 3.11.4 (Debian bookworm's 3.11.2): the same checks by hand
                for member in tar.getmembers():
                    target = Path(member.name)
                    if target.is_absolute() or ".." in target.parts or not (member.isfile() or member.isdir()):
                        sys.exit(f"{name}@{version}: refusing to unpack {member.name!r}")
                tar.extractall(scratch)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(Path(scratch) / "package"), dest)
    print(f"unpacked {name}@{version} into {dest} ({len(data) >> 20} MiB download)", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
