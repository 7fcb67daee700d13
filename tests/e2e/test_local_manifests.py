"""`kfn local` and its manifest directory: live changes, broken files, startup and shutdown."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

from tests.support.localmode import (
    HELLO,
    PYTHON,
    REPO,
    LocalMode,
    descendants,
    http,
    make_wheel,
    pid_alive,
    running,
    write_manifest,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def _version(version: str) -> str:
    return f"""
        def handler(event, context):
            return "{version}"
    """


def test_a_manifest_added_while_serving_is_served(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with running(tmp_path) as local:
        assert local.invoke("later").status == 404
        write_manifest(tmp_path, "later", _version("later"))
        wait_until(lambda: local.function("later"), timeout=10, what="the new function")
        result = local.invoke("later")
        assert result.status == 200 and result.body == b"later"


def test_a_changed_manifest_rolls_to_the_new_code_without_failing_a_request(tmp_path: Path) -> None:
    write_manifest(tmp_path, "roll", _version("v1"), scale={"minReplicas": 1})
    with running(tmp_path) as local:
        wait_until(lambda: local.ready("roll") == 1, timeout=10, what="roll's first instance")
        seen: list[tuple[int, bytes]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                result = local.invoke("roll")
                seen.append((result.status, result.body))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(seen) > 5, timeout=10, what="requests before the change")
            write_manifest(tmp_path, "roll", _version("v2"), scale={"minReplicas": 1})
            wait_until(lambda: seen and seen[-1][1] == b"v2", timeout=15, what="the new version to answer")
            count = len(seen)
            wait_until(lambda: len(seen) > count + 5, timeout=10, what="requests after the change")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert {status for status, _ in seen} == {200}
        assert {body for _, body in seen} == {b"v1", b"v2"}
        # Once rolled, only the new version runs.
        wait_until(lambda: all(i["current"] for i in local.instances("roll")["instances"]), timeout=10,
                   what="old instances to drain")


def test_a_deleted_manifest_stops_its_function(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    path = write_manifest(tmp_path, "gone", _version("gone"), scale={"minReplicas": 1})
    with running(tmp_path) as local:
        wait_until(lambda: local.ready("gone") == 1, timeout=10, what="gone's instance")
        pids = [i["pid"] for i in local.instances("gone")["instances"]]
        path.unlink()
        wait_until(lambda: local.function("gone") is None, timeout=10, what="the function to disappear")
        assert local.invoke("gone").status == 404
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="its instance to exit")
        assert local.invoke("hello").status == 200


def test_a_broken_manifest_is_reported_and_the_others_keep_serving(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: broken}\n"
                      "spec: {handler: main.handler, source: {files: {main.py: ''}}, concurrency: lots}\n")
    with running(tmp_path) as local:
        assert local.invoke("hello").status == 200
        errors = local.errors()["manifests"]
        assert [e["file"] for e in errors] == [str(broken)]
        assert "spec.concurrency" in errors[0]["error"]
        assert local.function("broken") is None
        assert "broken.yaml" in local.output() and "spec.concurrency" in local.output()


def test_a_manifest_broken_while_serving_keeps_its_last_good_version(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "fragile", _version("good"))
    with running(tmp_path) as local:
        assert local.invoke("fragile").body == b"good"
        path.write_text(path.read_text().replace("kind: Function", "kind: Function\nspec_typo: 1")
                        .replace("handler: main.handler", "handler: main.handler\n  timeout: forever"))
        wait_until(lambda: local.errors()["manifests"], timeout=10, what="the error to be reported")
        error = local.errors()["manifests"][0]
        assert error["file"] == str(path) and "spec.timeout" in error["error"]
        assert error["functions"] == ["fragile"]
        assert local.invoke("fragile").body == b"good"
        write_manifest(tmp_path, "fragile", _version("fixed"))
        wait_until(lambda: local.invoke("fragile").body == b"fixed", timeout=15, what="the fixed version")
        assert local.errors()["manifests"] == []


def test_a_function_name_defined_twice_is_served_from_the_first_file(tmp_path: Path) -> None:
    write_manifest(tmp_path, "twin", _version("first"), file="a.yaml")
    write_manifest(tmp_path, "twin", _version("second"), file="b.yaml")
    with running(tmp_path) as local:
        assert local.invoke("twin").body == b"first"
        errors = local.errors()["manifests"]
        assert [e["file"] for e in errors] == [str(tmp_path / "b.yaml")]
        assert "already defined" in errors[0]["error"] and "a.yaml" in errors[0]["error"]


def test_a_function_local_mode_cannot_run_reports_the_field(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: cm}\n"
                                      "spec: {handler: main.handler, source: {configMap: {name: code}}}\n")
    secret = {"secretKeyRef": {"name": "s", "key": "k"}}
    write_manifest(tmp_path, "hello", HELLO, env=[{"name": "A", "valueFrom": secret}])
    with running(tmp_path) as local:
        errors = {e["function"]: e["error"] for e in local.errors()["functions"]}
        assert "spec.source.configMap" in errors["cm"]
        assert "spec.env[0].valueFrom" in errors["hello"]


def test_a_handler_that_fails_to_import_reports_its_output(tmp_path: Path) -> None:
    write_manifest(tmp_path, "broken-code", "raise RuntimeError('cannot import this')\n",
                   scale={"minReplicas": 1})
    with running(tmp_path) as local:
        wait_until(lambda: local.errors()["functions"], timeout=15, what="the start failure")
        error = local.errors()["functions"][0]
        assert error["function"] == "broken-code"
        assert "cannot import this" in error["error"]


def test_requirements_are_installed_for_the_handler(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "kfnprobe", "VALUE = 'from a wheel'\n")
    functions = tmp_path / "functions"
    functions.mkdir()
    write_manifest(functions, "deps", """
        import kfnprobe
        def handler(event, context):
            return kfnprobe.VALUE
    """, requirements=[str(wheel)])
    with running(functions) as local:
        result = local.invoke("deps", timeout=120)
        assert result.status == 200, result.body
        assert result.body == b"from a wheel"


def test_a_failed_pip_install_is_the_functions_error(tmp_path: Path) -> None:
    write_manifest(tmp_path, "nodeps", HELLO, requirements=[str(tmp_path / "missing-1.0-py3-none-any.whl")],
                   scale={"minReplicas": 1})
    with running(tmp_path) as local:
        wait_until(lambda: local.errors()["functions"], timeout=60, what="the pip failure")
        error = local.errors()["functions"][0]
        assert error["function"] == "nodeps"
        assert "spec.requirements: pip install failed" in error["error"]
        assert "missing-1.0-py3-none-any.whl" in error["error"]


def test_a_missing_directory_exits_2_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "kfn", "local", str(tmp_path / "nope"), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2
    assert "no such directory" in result.stderr and "nope" in result.stderr


def test_a_port_in_use_exits_non_zero_with_a_message(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([PYTHON, "-m", "kfn", "local", str(tmp_path), "--port", str(port)],
                                capture_output=True, text=True, timeout=30, cwd=REPO, start_new_session=True)
    assert result.returncode != 0
    assert "already in use" in result.stderr and str(port) in result.stderr


def test_sigterm_drains_stops_every_instance_and_exits_0(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO, scale={"minReplicas": 2})
    write_manifest(tmp_path, "other", HELLO, scale={"minReplicas": 1})
    local = LocalMode(tmp_path)
    try:
        local.start()
        wait_until(lambda: local.ready("hello") == 2 and local.ready("other") == 1, timeout=15, what="instances")
        assert local.process is not None
        instances = descendants(local.process.pid)
        assert len(instances) >= 3
        assert "serving 2 functions at " + local.url + " (hello, other)" in local.output()
        local.process.send_signal(signal.SIGTERM)
        assert local.process.wait(timeout=30) == 0
        assert not [pid for pid in instances if pid_alive(pid)]
    finally:
        local.stop()


def test_a_request_in_flight_at_shutdown_is_answered(tmp_path: Path) -> None:
    write_manifest(tmp_path, "slow", """
        import time
        def handler(event, context):
            time.sleep(1.5)
            return "finished"
    """)
    local = LocalMode(tmp_path)
    try:
        local.start()
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(local.invoke("slow").status))
        thread.start()
        wait_until(lambda: (local.function("slow") or {}).get("inFlight") == 1, timeout=10, what="a request in flight")
        assert local.process is not None
        os.kill(local.process.pid, signal.SIGINT)
        thread.join(timeout=30)
        assert results == [200]
        assert local.process.wait(timeout=30) == 0
    finally:
        local.stop()


def test_the_status_routes_answer_404_json_for_unknown_functions(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with running(tmp_path) as local:
        for path in ("/system/logs/nope", "/system/instances/nope", "/system/functions/nope"):
            result = http("GET", local.url + path)
            assert result.status == 404, path
            assert "nope" in result.json()["error"]
