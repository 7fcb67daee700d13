"""A warm pool's generic instance: `python -m kfn_runtime` with KFN_POOL=1 starts with no function,
answers its probes "pool", and becomes the function one signed POST /_/specialize names."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime import archive, contract, specialize
from tests.e2e.runtimes import RUNTIME_DIR, RuntimeProcess, invoke
from tests.support.archives import TOKEN, Store, packed
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(60)]

KEY = specialize.namespace_key(b"the-platform-pool-key-0123456789", "team")
UID = "0f6c2a9e-4d1b-4c33-9a0e-5b7d2f1e8c44"
APP = '''
import os


def handler(event, context):
    return {"greeting": os.environ.get("GREETING"), "event": event}
'''
SNOOP = '''
import os


def _ancestors(pid):
    out = []
    for _ in range(20):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rfind(")") + 2:].split()[1])
        if pid <= 0:
            break
        out.append(pid)
    return out


def handler(event, context):
    key = event["key"]
    found = [name for name, value in os.environ.items() if key in value or key in name]
    readable = []
    for pid in {os.getppid(), 1, int(os.environ["RUNTIME_PID"]), *_ancestors(os.getpid())}:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                text = f.read()
        except OSError:
            continue
        readable.append(pid)
        if key.encode() in text:
            found.append(f"/proc/{pid}/environ")
    return {"found": found, "readable": readable}
'''


def pool_instance(workdir: Path, **settings: str) -> RuntimeProcess:
    """A pool instance on a port of its own, listening (its "pool" line logged)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {contract.ENV_POOL: "1", contract.ENV_POOL_KEY: KEY, contract.ENV_POD_UID: UID,
           contract.ENV_CODE_DIR: str(workdir / "code"), contract.ENV_DEPS_DIR: str(workdir / "deps"),
           contract.ENV_HOST: "127.0.0.1", contract.ENV_PORT: str(port),
           contract.ENV_TERMINATION_LOG: str(workdir / "termination-log"), **settings}
    (workdir / "termination-log").write_bytes(b"")
    (workdir / "code").mkdir(exist_ok=True)
    rt = RuntimeProcess(workdir, env)
    rt.port = port

    def listening() -> bool:
        if rt.process.poll() is not None:
            raise AssertionError(f"the runtime exited with {rt.process.returncode}:\n{rt.stderr()}")
        return any(line.get("msg") == "pool" for line in rt.log_lines())

    wait_until(listening, timeout=15, what="the pool instance's pool line")
    return rt


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[RuntimeProcess]:
    rt = pool_instance(tmp_path / "pod")
    try:
        yield rt
    finally:
        rt.stop()


def body_of(env: dict[str, str] | None = None, files: dict[str, str] | None = None, **extra: Any) -> bytes:
    return json.dumps({"env": {contract.ENV_HANDLER: "main.handler", contract.ENV_FUNCTION_NAME: "hello",
                               contract.ENV_TIMEOUT: "10", **(env or {})},
                       "files": {"main.py": APP} if files is None else files, **extra}).encode()


def specialise(rt: RuntimeProcess, body: bytes, *, key: str = KEY, uid: str = UID,
               signature: str | None = None) -> tuple[int, dict[str, Any]]:
    sig = specialize.signature(key, uid, body) if signature is None else signature
    status, _, data = rt.request("POST", contract.PATH_SPECIALIZE, body=body,
                                 headers={contract.HEADER_SIGNATURE: sig, "Content-Type": "application/json"},
                                 timeout=40)
    return status, json.loads(data)


def test_an_idle_pool_instance_is_ready_as_a_pool(pool: RuntimeProcess) -> None:
    status, _, body = pool.request("GET", contract.PATH_READY)
    assert (status, json.loads(body)) == (200, {"status": contract.STATUS_POOL})
    assert pool.request("GET", contract.PATH_HEALTH)[0] == 200


def test_an_invocation_of_an_idle_pool_instance_is_rejected_as_loading(pool: RuntimeProcess) -> None:
    status, headers, _ = invoke(pool, {})
    assert status == 503
    assert headers[contract.HEADER_REJECTED.lower()] == contract.REJECTED_LOADING


def test_a_specialize_request_with_a_wrong_signature_is_refused(pool: RuntimeProcess) -> None:
    status, error = specialise(pool, body_of(), signature="00" * 32)
    assert status == 401 and error["errorType"] == "Unauthorized"
    assert pool.request("GET", contract.PATH_READY)[0] == 200


def test_a_specialize_request_without_a_signature_is_refused(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of(), signature="")[0] == 401


def test_a_specialize_request_signed_for_another_pod_is_refused(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of(), uid="another-pod-uid")[0] == 401


def test_specialize_answers_only_post(pool: RuntimeProcess) -> None:
    status, headers, _ = pool.request("GET", contract.PATH_SPECIALIZE)
    assert (status, headers["allow"]) == (405, "POST")


def test_a_specialised_instance_runs_the_function_with_the_env_of_the_request(pool: RuntimeProcess) -> None:
    status, answer = specialise(pool, body_of({"GREETING": "hi from the body"}))
    assert status == 200, answer
    assert answer["status"] == "ready" and answer["startupMs"] >= 0
    status, _, body = invoke(pool, {"n": 1})
    assert (status, json.loads(body)) == (200, {"greeting": "hi from the body", "event": {"n": 1}})
    status, _, body = pool.request("GET", contract.PATH_READY)
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    (line,) = [line for line in pool.log_lines() if line.get("msg") == "specialized"]
    assert line["function"] == "hello"


def test_a_specialised_instance_reports_the_functions_concurrency(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of({contract.ENV_CONCURRENCY: "3"}))[0] == 200
    status, _, body = pool.request("GET", contract.PATH_METRICS)
    if status == 501:
        pytest.skip("prometheus_client is not installed")
    assert f"{contract.METRIC_CONCURRENCY_LIMIT} 3.0" in body.decode()


def test_a_second_specialize_request_is_refused(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of())[0] == 200
    status, error = specialise(pool, body_of({"GREETING": "again"}))
    assert status == 409 and error["errorType"] == "Conflict"


def test_the_request_cannot_move_the_code_directory(pool: RuntimeProcess, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    assert specialise(pool, body_of({contract.ENV_CODE_DIR: str(elsewhere)}))[0] == 200
    assert (pool.workdir / "code" / "main.py").is_file()
    assert not elsewhere.exists()


def test_a_file_name_leaving_the_code_directory_is_refused_and_nothing_is_written(pool: RuntimeProcess) -> None:
    status, error = specialise(pool, body_of(files={"main.py": APP, "../x": "escaped"}))
    assert status == 400, error
    assert not (pool.workdir / "x").exists()
    assert list((pool.workdir / "code").iterdir()) == []
    assert specialise(pool, body_of())[0] == 200   # the instance is still generic


def test_a_body_that_is_not_a_json_object_is_refused(pool: RuntimeProcess) -> None:
    assert specialise(pool, b"[1, 2]")[0] == 400


def test_a_handler_that_fails_at_import_fails_the_specialisation_and_ends_the_instance(
        pool: RuntimeProcess) -> None:
    status, error = specialise(pool, body_of(files={"main.py": "raise ValueError('broken at import')\n"}))
    assert status == 502
    assert error["errorType"] == "Runtime.ImportModuleError" or "ValueError" in error["errorType"], error
    assert pool.wait_exit() == contract.EXIT_LOAD_FAILED
    message = json.loads((pool.workdir / "termination-log").read_bytes())
    assert message[contract.TERMINATION_MARK] is True and message["errorType"] == error["errorType"]


def test_the_function_cannot_find_the_pool_key(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of({"RUNTIME_PID": str(pool.pid)}, files={"main.py": SNOOP}))[0] == 200
    status, _, body = invoke(pool, {"key": KEY})
    result = json.loads(body)
    assert status == 200, result
    assert result["found"] == []


def test_a_pool_instance_restarted_after_its_specialisation_does_not_come_back(tmp_path: Path) -> None:
    workdir = tmp_path / "pod"
    (workdir / "code").mkdir(parents=True)
    (workdir / "code" / specialize.MARKER).write_text("1\n")
    (workdir / "termination-log").write_bytes(b"")
    rt = RuntimeProcess(workdir, {contract.ENV_POOL: "1", contract.ENV_POOL_KEY: KEY, contract.ENV_POD_UID: UID,
                                  contract.ENV_CODE_DIR: str(workdir / "code"), contract.ENV_HOST: "127.0.0.1",
                                  contract.ENV_PORT: str(free_port()),
                                  contract.ENV_TERMINATION_LOG: str(workdir / "termination-log")})
    try:
        assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
        assert specialize.MARKER in rt.stderr()
        message = json.loads((workdir / "termination-log").read_bytes())
        assert message[contract.TERMINATION_MARK] is True and message["platform"] is True
    finally:
        rt.stop()


def test_a_pool_instance_without_its_key_does_not_start(tmp_path: Path) -> None:
    workdir = tmp_path / "pod"
    workdir.mkdir()
    rt = RuntimeProcess(workdir, {contract.ENV_POOL: "1", contract.ENV_POD_UID: UID,
                                  contract.ENV_CODE_DIR: str(workdir / "code"), contract.ENV_PORT: "0"})
    try:
        assert rt.wait_exit() == contract.EXIT_BAD_CONFIG
        assert contract.ENV_POOL_KEY in rt.stderr()
    finally:
        rt.stop()


def test_sigterm_ends_an_idle_pool_instance_with_0(pool: RuntimeProcess) -> None:
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == contract.EXIT_OK


def test_a_specialised_instance_drains_on_sigterm(pool: RuntimeProcess) -> None:
    assert specialise(pool, body_of())[0] == 200
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == contract.EXIT_OK
    assert any(line.get("msg") == "draining" for line in pool.log_lines())


def test_a_specialised_instance_fetches_the_requirements_the_request_names(tmp_path: Path) -> None:
    store = Store(*packed(tmp_path))
    rt = pool_instance(tmp_path / "pod")
    try:
        env = {contract.ENV_ARCHIVE_URL: store.url, contract.ENV_ARCHIVE_TOKEN: TOKEN,
               contract.ENV_ARCHIVE_DIGEST: store.digest}
        app = "import six_like\n\n\ndef handler(event, context):\n    return six_like.answer()\n"
        assert specialise(rt, body_of(env, files={"main.py": app}))[0] == 200
        status, _, body = invoke(rt, {})
        assert (status, json.loads(body)) == (200, "from six_like")
    finally:
        rt.stop()
        store.close()


def test_an_archive_the_store_cannot_give_fails_the_specialisation(tmp_path: Path) -> None:
    store = Store(None)
    rt = pool_instance(tmp_path / "pod")
    try:
        env = {contract.ENV_ARCHIVE_URL: store.url, contract.ENV_ARCHIVE_TOKEN: TOKEN,
               contract.ENV_ARCHIVE_DIGEST: archive.DIGEST_PREFIX + "a" * 64}
        status, error = specialise(rt, body_of(env))
        assert status == 502 and "404" in error["errorMessage"]
        assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
        assert json.loads((rt.workdir / "termination-log").read_bytes())["requirements"] is True
    finally:
        rt.stop()
        store.close()


def test_a_pool_instance_whose_working_directory_is_its_code_directory_does_not_start(tmp_path: Path) -> None:
    # python -m imports from the working directory first: a function could leave a kfn_runtime
    # package in its code directory for the container's next start, which would run it with the key.
    workdir = tmp_path / "pod"
    workdir.mkdir()
    rt = RuntimeProcess(workdir, {contract.ENV_POOL: "1", contract.ENV_POOL_KEY: KEY, contract.ENV_POD_UID: UID,
                                  contract.ENV_CODE_DIR: str(workdir), contract.ENV_HOST: "127.0.0.1",
                                  contract.ENV_PORT: str(free_port())})
    try:
        assert rt.wait_exit() == contract.EXIT_BAD_CONFIG
        assert "working directory" in rt.stderr()
    finally:
        rt.stop()


def test_a_pool_instance_whose_deps_directory_is_on_its_import_path_does_not_start(tmp_path: Path) -> None:
    workdir = tmp_path / "pod"
    (workdir / "deps").mkdir(parents=True)
    rt = RuntimeProcess(workdir, {contract.ENV_POOL: "1", contract.ENV_POOL_KEY: KEY, contract.ENV_POD_UID: UID,
                                  contract.ENV_CODE_DIR: str(workdir / "code"),
                                  contract.ENV_DEPS_DIR: str(workdir / "deps"), contract.ENV_HOST: "127.0.0.1",
                                  contract.ENV_PORT: str(free_port()),
                                  "PYTHONPATH": f"{RUNTIME_DIR}{os.pathsep}{workdir / 'deps'}"})
    try:
        assert rt.wait_exit() == contract.EXIT_BAD_CONFIG
        assert str(workdir / "deps") in rt.stderr()
    finally:
        rt.stop()


def test_a_variable_the_os_cannot_hold_is_refused_and_the_instance_stays_generic(pool: RuntimeProcess) -> None:
    status, error = specialise(pool, body_of({"GREETING": "\ud800"}))
    assert status == 400, error
    assert pool.request("GET", contract.PATH_READY)[0] == 200
    assert specialise(pool, body_of())[0] == 200


def raw_exchange(rt: RuntimeProcess, data: bytes, answers: int) -> list[int]:
    """Send `data` as it is on one connection; the statuses of the first `answers` answers (10 s at most)."""
    assert rt.port is not None
    statuses: list[int] = []
    received = b""
    with socket.create_connection(("127.0.0.1", rt.port), timeout=10) as conn:
        conn.sendall(data)
        while len(statuses) < answers:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            while b"\r\n\r\n" in received and len(statuses) < answers:
                head, _, rest = received.partition(b"\r\n\r\n")
                length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                if len(rest) < length:
                    break
                statuses.append(int(head.split(b" ", 2)[1]))
                received = rest[length:]
    return statuses


def test_a_signature_of_non_ascii_bytes_is_refused(pool: RuntimeProcess) -> None:
    body = body_of()
    request = (b"POST " + contract.PATH_SPECIALIZE.encode() + b" HTTP/1.1\r\nHost: x\r\n"
               + contract.HEADER_SIGNATURE.encode() + b": " + b"\xff" * 64 + b"\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert raw_exchange(pool, request, 1) == [401]
    assert specialise(pool, body_of())[0] == 200


def test_a_specialise_request_pipelined_between_probes_is_answered_in_order(pool: RuntimeProcess) -> None:
    body = body_of()
    ready = f"GET {contract.PATH_READY} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    unsigned = (f"POST {contract.PATH_SPECIALIZE} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)
    assert raw_exchange(pool, ready + unsigned + ready, 3) == [200, 401, 200]


SLOW_IMPORT = """
import time

time.sleep(1.5)


def handler(event, context):
    return {"ok": True}
"""


def test_a_pool_instance_stays_ready_to_the_kubelet_while_it_is_specialised(pool: RuntimeProcess) -> None:
    # Nothing routes to it until the platform makes it the function's, after the answer: a readiness
    # the kubelet saw fail meanwhile would keep the new instance out of rotation for a probe period.
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        specialising = executor.submit(specialise, pool, body_of(files={"main.py": SLOW_IMPORT}))
        answers = []
        while not specialising.done() and len(answers) < 1000:
            status, _, body = pool.request("GET", contract.PATH_READY)
            answers.append((status, json.loads(body)["status"]))
            time.sleep(0.005)
        assert specialising.result()[0] == 200
    assert "loading" in {state for _, state in answers}, answers[:5]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
