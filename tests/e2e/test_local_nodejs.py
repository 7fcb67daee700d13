"""`kfn local` serving Node.js functions (runtime nodejs20 / nodejs22) through its gateway."""
from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfn.processes import nodejs
from kfn.processes.code import Unsupported
from tests.support.localmode import REPO, LocalMode, http
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                 reason="needs Node.js 20 and npm on PATH")]

# Where `make node22` installs Node.js 22 from the npm registry; kfn local looks there in a checkout.
NODE22_PREFIX = REPO / ".cache" / "node" / "22"
NODE22 = NODE22_PREFIX / "node_modules" / ".bin" / "node"
ARCH = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def write_node_manifest(directory: Path, name: str, files: dict[str, str], *, runtime: str = "nodejs20",
                        handler: str = "index.handler", **spec: Any) -> Path:
    manifest = {
        "apiVersion": "kfn.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"runtime": runtime, "handler": handler,
                 "source": {"files": {path: textwrap.dedent(text).lstrip("\n") for path, text in files.items()}},
                 "scale": {"idleTimeout": "30s", "stableWindow": "2s"}, **spec},
    }
    path = directory / f"{name}.yaml"
    partial = directory / f".{name}.yaml.partial"
    partial.write_text(yaml.safe_dump(manifest, sort_keys=False))
    partial.replace(path)
    return path


def npm_package(directory: Path, name: str, source: str) -> Path:
    """A package tarball npm installs without any registry (an ES module exporting `source`)."""
    tarball = directory / f"{name}-1.0.0.tgz"
    files = {"package/package.json": json.dumps({"name": name, "version": "1.0.0", "type": "module",
                                                 "exports": "./index.js"}),
             "package/index.js": source}
    with tarfile.open(tarball, "w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return tarball


def node22_installed() -> bool:
    """Node.js 22 in the checkout's cache, installed from the npm registry when missing (as `make node22`)."""
    if not NODE22.is_file():
        try:
            subprocess.run(["npm", "install", "--prefix", str(NODE22_PREFIX), "--no-save", "--no-package-lock",
                            "--no-audit", "--no-fund", f"node-linux-{ARCH}@22"], check=True, timeout=300,
                           capture_output=True)
        except (OSError, subprocess.SubprocessError):
            return False
    return NODE22.is_file()


HELLO = """
    export const handler = async (event, context) => {
      const name = event.queryStringParameters?.name ?? 'world';
      console.log('greeting', name);
      return {
        statusCode: 200,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ message: `Hello, ${name}!`, node: process.version, function: context.functionName }),
      };
    };
"""


@pytest.fixture(scope="module")
def node22() -> bool:
    return node22_installed()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, node22: bool) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("functions")
    packages = tmp_path_factory.mktemp("packages")
    write_node_manifest(directory, "hello-node", {"index.mjs": HELLO})
    write_node_manifest(directory, "failing-node", {"index.js": """
        exports.handler = async (event) => { throw new TypeError('cannot handle ' + event.rawPath); };
    """})
    write_node_manifest(directory, "broken-node", {"index.mjs": """
        export const handler = async () => {
          return 1 +;
        };
    """}, scale={"minReplicas": 1})
    tarball = npm_package(packages, "shouty", "export const shout = (s) => s.toUpperCase() + '!';")
    write_node_manifest(directory, "deps-node", {"index.mjs": """
        import { shout } from 'shouty';
        export const handler = async () => shout('installed');
    """}, requirements=[str(tarball)])
    write_node_manifest(directory, "hello-node22", {"index.mjs": HELLO}, runtime="nodejs22")
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_nodejs20_function_answers_through_the_gateway(local: LocalMode) -> None:
    result = local.invoke("hello-node", path="?name=kfn")
    assert result.status == 200
    body = result.json()
    assert (body["message"], body["function"]) == ("Hello, kfn!", "hello-node")
    assert body["node"].startswith("v20.")


def test_console_log_reaches_the_functions_logs_with_the_request_id(local: LocalMode) -> None:
    result = local.invoke("hello-node", path="?name=logs")
    request_id = result.headers["X-Kfn-Request-Id"]
    wait_until(lambda: f"\t{request_id}\tINFO\tgreeting logs" in
               http("GET", f"{local.url}/system/logs/hello-node?tail=50").body.decode(),
               timeout=10, what="the handler's log line")


def test_a_thrown_error_is_a_500_naming_its_type(local: LocalMode) -> None:
    result = local.invoke("failing-node", path="/orders")
    assert result.status == 500
    assert result.headers["X-Kfn-Error-Type"] == "TypeError"


def test_a_syntax_error_is_reported_as_the_functions_error(local: LocalMode) -> None:
    def reported() -> str:
        return next((f["error"] for f in local.errors()["functions"] if f["function"] == "broken-node"), "")

    error = wait_until(reported, timeout=30, what="broken-node's init error")
    assert "Runtime.UserCodeSyntaxError" in error
    assert "index.mjs:2" in error


def test_npm_requirements_are_installed_and_importable(local: LocalMode) -> None:
    result = local.invoke("deps-node", timeout=120)
    assert result.status == 200, result.body
    assert result.body == b"INSTALLED!"


def test_a_nodejs22_function_runs_on_node_22(local: LocalMode, node22: bool) -> None:
    if not node22:
        pytest.skip("Node.js 22 is neither on PATH nor installable from the npm registry")
    result = local.invoke("hello-node22", path="?name=22", timeout=60)
    assert result.status == 200, result.body
    assert result.json()["node"].startswith("v22.")


# --- which node kfn local runs ------------------------------------------------------------------

def fake_node(directory: Path, name: str, version: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH and caches with no Node.js at all; returns the PATH directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(nodejs, "_CHECKOUT", tmp_path / "not-a-checkout")
    return bin_dir


def test_a_node_of_another_major_is_refused_with_how_to_get_the_right_one(no_node: Path) -> None:
    fake_node(no_node, "node", "v20.1.0")
    with pytest.raises(Unsupported) as refused:
        nodejs.find_node("nodejs22")
    message = str(refused.value)
    assert "nodejs22 needs Node.js 22" in message and "is v20.1.0" in message
    assert f"npm install --prefix {no_node.parent / 'cache' / 'kfn' / 'node' / '22'}" in message


def test_a_versioned_node_on_path_is_used(no_node: Path) -> None:
    fake_node(no_node, "node", "v20.1.0")
    node22 = fake_node(no_node, "node22", "v22.3.0")
    assert nodejs.find_node("nodejs22") == str(node22)


def test_node_installed_in_kfns_cache_is_used(no_node: Path) -> None:
    cached = no_node.parent / "cache" / "kfn" / "node" / "22" / "node_modules" / ".bin"
    cached.mkdir(parents=True)
    node = fake_node(cached, "node", "v22.3.0")
    assert nodejs.find_node("nodejs22") == str(node)
