"""`kfn local --keys FILE`: /system/* for admin keys, key-protected functions, the CLI sending
keys, and keys rotated by editing the file while serving."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.localmode import HELLO, PYTHON, REPO, LocalMode, http, write_manifest
from tests.support.waiting import wait_until

ADMIN = "admin-key-0123456789abcdef"
TEAM = "default-key-0123456789abcd"


def write_keys(path: Path, *, admin: str = ADMIN, default: str = TEAM) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(yaml.safe_dump({"admin": {"ops": admin}, "namespaces": {"default": {"app": default}}}))
    partial.chmod(0o600)
    partial.replace(path)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    root = tmp_path_factory.mktemp("auth")
    functions = root / "functions"
    functions.mkdir()
    write_manifest(functions, "hello", HELLO)
    write_manifest(functions, "guarded", HELLO, http={"auth": {"type": "key"}})
    write_keys(root / "keys.yaml")
    server = LocalMode(functions, extra_args=["--keys", str(root / "keys.yaml")])
    try:
        yield server.start()
    finally:
        server.stop()


def keys_file(local: LocalMode) -> Path:
    return local.directory.parent / "keys.yaml"


def kfn(*args: str, gateway: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    env["KFN_GATEWAY"] = gateway
    if api_key is not None:
        env["KFN_API_KEY"] = api_key
    return subprocess.run([PYTHON, "-m", "kfn", *args], capture_output=True, text=True, timeout=30, env=env,
                          cwd=REPO)


def test_the_system_paths_need_the_admin_key(local: LocalMode) -> None:
    for path in ("/system/functions", "/system/errors", "/system/instances/hello", "/system/logs/hello"):
        refused = http("GET", local.url + path)
        assert (refused.status, refused.json()) == (401, {"message": "Unauthorized"}), path
        assert http("GET", local.url + path, headers={"X-Api-Key": ADMIN}).status == 200, path
    assert http("GET", local.url + "/system/functions", headers={"X-Api-Key": TEAM}).status == 403


def test_kfn_list_without_a_key_says_how_to_give_one_and_exits_1(local: LocalMode) -> None:
    result = kfn("list", gateway=local.url)
    assert result.returncode == 1
    assert "--api-key" in result.stderr and "KFN_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_kfn_list_and_logs_send_the_api_key(local: LocalMode, how: str) -> None:
    flag = ["--api-key", ADMIN] if how == "flag" else []
    env_key = ADMIN if how == "environment" else None
    listed = kfn("list", "-o", "json", *flag, gateway=local.url, api_key=env_key)
    assert listed.returncode == 0, listed.stderr
    assert {f["name"] for f in json.loads(listed.stdout)} == {"hello", "guarded"}
    assert local.invoke("hello").status == 200   # something to show: `kfn logs` of an idle function exits 1
    logs = kfn("logs", "hello", *flag, gateway=local.url, api_key=env_key)
    assert logs.returncode == 0, logs.stderr


def test_a_key_protected_function_needs_a_key_of_its_namespace_and_kfn_invoke_sends_it(local: LocalMode) -> None:
    assert local.invoke("guarded").status == 401
    assert local.invoke("hello").status == 200   # public functions stay public
    refused = kfn("invoke", "guarded", gateway=local.url)
    assert refused.returncode == 1 and "401" in refused.stderr
    result = kfn("invoke", "guarded", "--api-key", TEAM, gateway=local.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["function"] == "guarded"


def test_keys_rotated_in_the_file_work_without_a_restart(local: LocalMode) -> None:
    rotated = "rotated-key-0123456789abcd"
    try:
        write_keys(keys_file(local), default=rotated)
        wait_until(lambda: local.invoke("guarded", headers={"Authorization": f"Bearer {rotated}"}).status == 200,
                   timeout=15, what="the rotated key")
        assert local.invoke("guarded", headers={"Authorization": f"Bearer {TEAM}"}).status == 401
        # A broken edit keeps the keys read last (nobody locked out, nobody let in).
        keys_file(local).write_text("admin: [not, a, mapping]\n")
        wait_until(lambda: "keys read before stay in force" in local.output(), timeout=15, what="the error logged")
        assert local.invoke("guarded", headers={"Authorization": f"Bearer {rotated}"}).status == 200
    finally:
        write_keys(keys_file(local))
        wait_until(lambda: local.invoke("guarded", headers={"Authorization": f"Bearer {TEAM}"}).status == 200,
                   timeout=15, what="the original keys back")


def test_kfn_local_refuses_to_start_with_an_unusable_keys_file(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"admin": {"ops": "too-short"}}))
    write_manifest(tmp_path, "hello", HELLO)
    result = subprocess.run([PYTHON, "-m", "kfn", "local", str(tmp_path), "--port", "0", "--keys",
                             str(tmp_path / "keys.yaml")], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2
    assert "--keys" in result.stderr and "16 to 4096 characters" in result.stderr
    assert "too-short" not in result.stderr
