"""The kfn command line against the cluster's gateway (KFN_GATEWAY=http://127.0.0.1:NODEPORT)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

NAME = "cli"
CODE = """
import json


def handler(event, context):
    return {"got": json.loads(event.get("body") or "null")}
"""


@pytest.fixture(scope="module")
def cli_function(release: Release, fn_ns: str) -> Iterator[str]:
    release.deploy(platform.function(NAME, CODE), fn_ns)
    yield platform.cli_name(NAME, fn_ns)
    platform.kubectl("delete", "function", NAME, "--wait=false", namespace=fn_ns, check=False)


def test_kfn_invoke_answers_with_the_function_body(release: Release, cli_function: str) -> None:
    result = release.kfn("invoke", cli_function, "--data", '{"x": 1}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"got": {"x": 1}}


def test_kfn_list_shows_the_function_with_its_runtime_and_replicas(release: Release, cli_function: str) -> None:
    result = release.kfn("list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["NAMESPACE", "NAME", "RUNTIME", "READY/DESIRED"], header
    (row,) = [r.split() for r in rows if r.split()[1] == NAME]
    assert row[2] == "python3.12"
    assert row[3] in ("0/0", "0/1", "1/1"), row


def invoke_with_id(release: Release, fn_ns: str) -> str:
    answer = platform.request("POST", release.url(NAME, fn_ns), body=b'{"log": 1}',
                           headers={"Content-Type": "application/json"})
    assert answer.status == 200, answer.text
    return answer.headers["x-kfn-request-id"]


def invocation_lines(output: str, request_id: str) -> list[str]:
    """Lambda's REPORT line of the invocation (one per invocation, as in CloudWatch)."""
    return [line for line in output.splitlines() if f"REPORT RequestId: {request_id}\t" in line]


def test_kfn_logs_prints_the_invocation_lines(release: Release, fn_ns: str, cli_function: str) -> None:
    request_id = invoke_with_id(release, fn_ns)
    result = release.kfn("logs", cli_function, timeout=30)
    assert result.returncode == 0, result.stderr
    output = platform.wait_until(f"request {request_id} in kfn logs", lambda: (
        out if invocation_lines(out := release.kfn("logs", cli_function, timeout=30).stdout, request_id) else None),
        timeout=10, interval=1)
    assert invocation_lines(output, request_id)


def test_kfn_logs_follow_streams_new_invocations(release: Release, fn_ns: str, cli_function: str) -> None:
    follow = subprocess.Popen([platform.KFN, "logs", cli_function, "-f", "--tail", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "KFN_GATEWAY": release.gateway, "KFN_API_KEY": release.admin_key})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        time.sleep(1)
        assert follow.poll() is None, f"kfn logs -f exited {follow.returncode}: {follow.stderr.read()}"
        request_id = invoke_with_id(release, fn_ns)
        platform.wait_until(f"request {request_id} streamed by kfn logs -f",
                            lambda: invocation_lines("".join(lines), request_id), timeout=15, interval=0.2)
    finally:
        platform.stop_process(follow)
