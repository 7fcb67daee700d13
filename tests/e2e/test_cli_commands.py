"""`kfn invoke`, `kfn list` and `kfn logs` against a running `kfn local`, and without one."""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localmode import HELLO, PYTHON, REPO, LocalMode, kfn, write_manifest
from tests.support.ports import free_port
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("functions")
    write_manifest(directory, "hello", HELLO)
    write_manifest(directory, "chatty", """
        def handler(event, context):
            print("chatty says", event.get("body"))
            return "said"
    """)
    write_manifest(directory, "teapot", """
        def handler(event, context):
            return {"statusCode": 418, "body": "short and stout"}
    """)
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def test_invoke_prints_the_response_body(local: LocalMode) -> None:
    result = kfn("invoke", "hello", "--data", '"from the cli"', gateway=local.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"hello": '"from the cli"', "function": "hello"}


def test_invoke_reads_the_body_from_a_file(local: LocalMode, tmp_path: Path) -> None:
    data = tmp_path / "event.json"
    data.write_text('{"name": "file"}')
    result = kfn("invoke", "hello", "--data", f"@{data}", "--gateway", local.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hello"] == '{"name": "file"}'


def test_invoke_of_a_non_2xx_answer_prints_the_body_and_the_status_and_exits_1(local: LocalMode) -> None:
    result = kfn("invoke", "teapot", gateway=local.url)
    assert result.returncode == 1
    assert result.stdout.strip() == "short and stout"
    assert "418" in result.stderr


def test_invoke_of_an_unknown_function_says_so(local: LocalMode) -> None:
    result = kfn("invoke", "nope", gateway=local.url)
    assert result.returncode == 1
    assert "no function named 'nope'" in result.stderr


def test_invoke_with_a_missing_data_file_says_so(local: LocalMode, tmp_path: Path) -> None:
    result = kfn("invoke", "hello", "--data", f"@{tmp_path / 'missing.json'}", gateway=local.url)
    assert result.returncode == 2
    assert "cannot read the --data file" in result.stderr and "missing.json" in result.stderr


def test_invoke_with_a_malformed_header_says_so(local: LocalMode) -> None:
    result = kfn("invoke", "hello", "-H", "no colon here", gateway=local.url)
    assert result.returncode == 2
    assert "Name: value" in result.stderr


def test_list_shows_a_table_of_functions(local: LocalMode) -> None:
    assert kfn("invoke", "hello", gateway=local.url).returncode == 0
    result = kfn("list", gateway=local.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "RUNTIME", "READY/DESIRED", "INVOCATIONS", "LAST", "USED"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(rows) == {"chatty", "hello", "teapot"}
    assert {row[0] for row in rows.values()} == {"default"}
    assert rows["hello"][4] != "0" and rows["hello"][5].endswith("s")


def test_list_shows_why_a_function_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: cm}\n"
                                      "spec: {handler: main.handler, source: {configMap: {name: code}}}\n")
    (tmp_path / "broken.yaml").write_text("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: Broken}\n")
    server = LocalMode(tmp_path)
    try:
        server.start()
        result = kfn("list", gateway=server.url)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[-1] == "ERROR"
    assert row.split()[:2] == ["default", "cm"] and "spec.source.configMap" in row
    assert "broken.yaml" in result.stderr and "metadata.name" in result.stderr


def test_list_as_json(local: LocalMode) -> None:
    result = kfn("list", "-o", "json", gateway=local.url)
    assert result.returncode == 0, result.stderr
    assert sorted(f["name"] for f in json.loads(result.stdout)) == ["chatty", "hello", "teapot"]


def test_logs_prints_what_a_handler_printed(local: LocalMode) -> None:
    assert kfn("invoke", "chatty", "--data", '"hi there"', gateway=local.url).returncode == 0
    result = kfn("logs", "chatty", "--tail", "50", gateway=local.url)
    assert result.returncode == 0, result.stderr
    assert 'chatty says "hi there"' in result.stdout


def test_logs_follow_streams_new_lines(local: LocalMode, tmp_path: Path) -> None:
    output = tmp_path / "follow.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    with output.open("w") as out:
        follower = subprocess.Popen([PYTHON, "-m", "kfn", "logs", "chatty", "--follow", "--tail", "0",
                                     "--gateway", local.url], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        marker = f"followed-{time.monotonic_ns()}"

        def seen() -> bool:
            # Invoke until the follower is connected and the line shows up.
            assert kfn("invoke", "chatty", "--data", json.dumps(marker), gateway=local.url).returncode == 0
            return marker in output.read_text()

        wait_until(seen, timeout=20, interval=0.3, what="the followed line")
        assert follower.poll() is None
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_logs_of_an_unknown_function_says_so(local: LocalMode) -> None:
    result = kfn("logs", "nope", gateway=local.url)
    assert result.returncode == 1
    assert "no function named 'nope'" in result.stderr


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """kfn local with functions at zero instances, never invoked (but by the test that follows one)."""
    directory = tmp_path_factory.mktemp("idle")
    write_manifest(directory, "quiet", HELLO)
    write_manifest(directory, "sleepy", """
        def handler(event, context):
            print("sleepy woke up")
            return "awake"
    """)
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def test_logs_of_a_function_without_instances_or_output_says_no_instance_is_running(idle: LocalMode) -> None:
    result = kfn("logs", "quiet", gateway=idle.url)
    assert result.returncode == 1
    assert (result.stdout, result.stderr.count("\n")) == ("", 1)
    assert "no instance of 'quiet' is running" in result.stderr
    assert "invoke it" in result.stderr and "kfn logs quiet -f" in result.stderr


def test_logs_follow_of_a_function_without_instances_says_so_and_waits_for_the_next_one(idle: LocalMode,
                                                                                      tmp_path: Path) -> None:
    output, errors = tmp_path / "follow.txt", tmp_path / "follow-errors.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    with output.open("w") as out, errors.open("w") as err:
        follower = subprocess.Popen([PYTHON, "-m", "kfn", "logs", "sleepy", "-f", "--gateway", idle.url],
                                    stdout=out, stderr=err, env=env, cwd=REPO)
    try:
        wait_until(lambda: "no instance of 'sleepy' is running" in errors.read_text(), timeout=20,
                   what="the follower's notice")
        assert kfn("invoke", "sleepy", gateway=idle.url).returncode == 0
        wait_until(lambda: "sleepy woke up" in output.read_text(), timeout=20, interval=0.2,
                   what="the new instance's line")
        assert follower.poll() is None
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version
    result = kfn("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"kfn {version('kfn')}\n", "")


@pytest.mark.parametrize("args", [["invoke", "hello"], ["list"], ["logs", "hello"]])
def test_every_command_says_when_no_gateway_is_running(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = kfn(*args, gateway=url)
    assert result.returncode == 1
    assert f"cannot reach the kfn gateway at {url}: is `kfn local` running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_gateway_url_is_rejected() -> None:
    result = kfn("list", "--gateway", "localhost:8080")
    assert result.returncode == 2
    assert "http://HOST:PORT" in result.stderr
