"""`ProcessBackend` on its own: real runtime processes, driven through the InstanceBackend seam."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kfn.core.functions import FunctionRef
from kfn.core.instances import Instance, Invocation, StartReason
from kfn.processes import ProcessBackend
from tests.support.functions import make_function
from tests.support.localmode import pid_alive
from tests.support.waiting import eventually

HELLO = """
def handler(event, context):
    return {"version": context.function_version, "body": event.get("body")}
"""


def R(name: str) -> FunctionRef:
    return FunctionRef.parse(name)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[ProcessBackend]:
    backend = ProcessBackend(work_dir=tmp_path / "work", deps_cache=tmp_path / "deps", init_timeout=20,
                             max_backoff=0.5, region="us-east-1")
    await backend.start()
    try:
        yield backend
    finally:
        pids = [i["pid"] for f in backend.functions() for i in (backend.status(f.ref) or {})["instances"]
                if i["pid"]]
        await backend.close()
        assert not [pid for pid in pids if pid_alive(pid)]


async def invoke(instance: Instance, event: dict[str, Any] | None = None) -> Any:
    """The function's result on `instance`, through its in-process endpoint (as the gateway calls it)."""
    assert instance.endpoint is not None
    result = await instance.endpoint.invoke(Invocation(payload=json.dumps(event or {}).encode(),
                                                       request_id=str(uuid.uuid4())))
    assert result.rejected is None and result.function_error is None, result
    return json.loads(result.payload)


async def test_scaling_up_starts_ready_in_process_instances(backend: ProcessBackend) -> None:
    backend.set_function(make_function("hello", HELLO))
    assert backend.ready(R("hello")) == [] and backend.desired(R("hello")) == 0
    await backend.scale(R("hello"), 2)
    instances = await eventually(lambda: len(backend.ready(R("hello"))) == 2 and backend.ready(R("hello")),
                                 what="2 ready")
    assert len({i.id for i in instances}) == 2
    assert all(i.endpoint is not None for i in instances)
    assert {i.capacity for i in instances} == {10}
    pids = {p["pid"] for p in backend.status(R("hello"))["instances"]}  # type: ignore[index]
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    body = await invoke(instances[0])
    assert body["version"] == "$LATEST"


async def test_listeners_hear_about_ready_instances(backend: ProcessBackend) -> None:
    heard: list[tuple[str, int]] = []
    backend.add_listener(lambda ref: heard.append((ref.name, len(backend.ready(ref)))))
    backend.set_function(make_function("hello", HELLO))
    await backend.scale(R("hello"), 1)
    await eventually(lambda: ("hello", 1) in heard, what="a ready notification")
    await backend.scale(R("hello"), 0)
    await eventually(lambda: heard[-1] == ("hello", 0), what="a scale-down notification")


async def test_scaling_down_takes_instances_out_of_rotation_before_stopping_them(backend: ProcessBackend) -> None:
    backend.set_function(make_function("hello", HELLO))
    await backend.scale(R("hello"), 1)
    await eventually(lambda: backend.ready(R("hello")), what="an instance")
    pid = backend.status(R("hello"))["instances"][0]["pid"]  # type: ignore[index]
    # When the gateway hears that the instance left rotation, it has not been signalled yet.
    alive_when_removed: list[bool] = []
    backend.add_listener(lambda name: alive_when_removed.append(pid_alive(pid)) if not backend.ready(name) else None)
    await backend.scale(R("hello"), 0)
    await eventually(lambda: not pid_alive(pid), what="the process to exit")
    assert alive_when_removed[:1] == [True]
    await eventually(lambda: backend.status(R("hello"))["instances"] == [], what="it to be reaped")  # type: ignore[index]


async def test_a_changed_function_rolls_without_a_moment_with_no_ready_instance(backend: ProcessBackend) -> None:
    backend.set_function(make_function("roll", HELLO, scale={"minReplicas": 2}))
    await eventually(lambda: len(backend.ready(R("roll"))) == 2, what="2 ready")
    old_ids = {i.id for i in backend.ready(R("roll"))}
    gaps: list[float] = []
    backend.add_listener(lambda name: gaps.append(time.monotonic()) if not backend.ready(name) else None)
    changed = make_function("roll", code=HELLO + "\n# v2\n", scale={"minReplicas": 2})
    backend.set_function(changed)
    await eventually(lambda: len(backend.ready(R("roll"))) == 2
                     and not {i.id for i in backend.ready(R("roll"))} & old_ids, what="the new version")
    assert gaps == []
    ready = [p for p in backend.status(R("roll"))["instances"] if p["state"] == "ready"]  # type: ignore[index]
    assert {p["version"] for p in ready} == {changed.code_hash()}


async def test_a_crashed_instance_is_replaced_and_its_output_kept(backend: ProcessBackend) -> None:
    backend.set_function(make_function("crashy", code="print('about to be killed', flush=True)\n" + HELLO))
    await backend.scale(R("crashy"), 1)
    first = (await eventually(lambda: backend.ready(R("crashy")), what="an instance"))[0]
    pid = backend.status(R("crashy"))["instances"][0]["pid"]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    replacement = (await eventually(lambda: [i for i in backend.ready(R("crashy")) if i.id != first.id],
                                    what="a replacement"))[0]
    assert await invoke(replacement) == {"version": "$LATEST", "body": None}
    async with backend.logs(R("crashy"), tail=100, follow=False) as lines:
        logs = "\n".join([line async for line in lines])
    assert f"instance {first.id} stopped working while serving (its zygote exited with code -9)" in logs
    assert "about to be killed" in logs


async def test_a_reported_failure_replaces_the_instance(backend: ProcessBackend) -> None:
    backend.set_function(make_function("hello", HELLO))
    await backend.scale(R("hello"), 1)
    first = (await eventually(lambda: backend.ready(R("hello")), what="an instance"))[0]
    backend.report_failure(first, error="connection refused")
    assert first not in backend.ready(R("hello"))
    await eventually(lambda: [i for i in backend.ready(R("hello")) if i.id != first.id], what="a replacement")


async def test_a_handler_that_cannot_load_reports_why_and_is_retried_while_wanted(backend: ProcessBackend) -> None:
    backend.set_function(make_function("broken", code="raise ImportError('no such thing')\n"))
    await backend.scale(R("broken"), 1)
    error = await eventually(lambda: backend.problem(R("broken")), what="the failure to be reported")
    assert error.init_error is not None and "no such thing" in error.init_error.message
    assert backend.ready(R("broken")) == []
    # Attempts go on, with backoff, for as long as an instance is wanted: no giving up.
    logs: list[str] = []
    async with backend.logs(R("broken"), tail=1000, follow=True) as lines:
        async for line in lines:
            logs.append(line)
            if sum("failed to start" in line for line in logs) >= 6:
                break
    assert backend.problem(R("broken")) is not None


async def test_a_requirement_that_cannot_be_installed_is_the_requirements_class_with_pips_words_for_the_owner(
        backend: ProcessBackend, tmp_path: Path) -> None:
    missing = tmp_path / "kfn_missing-1.0-py3-none-any.whl"
    backend.set_function(make_function("nodeps", HELLO, requirements=[str(missing)]))
    await backend.scale(R("nodeps"), 1)
    problem = await eventually(lambda: backend.problem(R("nodeps")), what="the failed install")
    assert problem.reason == StartReason.REQUIREMENTS and problem.init_error is None
    assert "pip install failed" in problem.detail and "kfn_missing" in problem.detail


async def test_an_init_past_the_init_timeout_is_the_functions_sandbox_timedout(tmp_path: Path) -> None:
    backend = ProcessBackend(work_dir=tmp_path / "work", init_timeout=1.0, max_backoff=5, region="us-east-1")
    await backend.start()
    try:
        backend.set_function(make_function("slow", code="import time\ntime.sleep(30)\n" + HELLO))
        await backend.scale(R("slow"), 1)
        problem = await eventually(lambda: backend.problem(R("slow")), timeout=15, what="the init timeout")
    finally:
        await backend.close()
    assert problem.reason == StartReason.INIT and problem.init_error is not None
    assert problem.init_error.error_type == "Sandbox.Timedout"


async def test_a_start_failure_that_heals_heals_the_function_without_a_change(
        backend: ProcessBackend, tmp_path: Path) -> None:
    flag = tmp_path / "broken-flag"
    flag.write_text("x")
    code = f"import os\nif os.path.exists({str(flag)!r}):\n    raise RuntimeError('not yet')\n" + HELLO
    backend.set_function(make_function("healing", code=code))
    await backend.scale(R("healing"), 1)
    await eventually(lambda: "not yet" in str(backend.problem(R("healing"))), what="the first failures")
    flag.unlink()
    await eventually(lambda: backend.ready(R("healing")), timeout=30, what="an instance once the cause is gone")
    assert backend.problem(R("healing")) is None


async def test_the_handler_sees_lambdas_environment_and_nothing_of_kfn_locals(backend: ProcessBackend) -> None:
    names = ("GREETING", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
             "AWS_REGION", "_HANDLER", "LAMBDA_TASK_ROOT", "KFN_LEAK_CHECK")
    code = f"""
import os
def handler(event, context):
    return {{k: os.environ.get(k) for k in {names!r}}}
"""
    os.environ["KFN_LEAK_CHECK"] = "leaked"
    try:
        backend.set_function(make_function("env", code=code, env=[{"name": "GREETING", "value": "hi"}],
                                           concurrency=3, timeout="7s", resources={"limits": {"memory": "128Mi"}}))
        await backend.scale(R("env"), 1)
        instance = (await eventually(lambda: backend.ready(R("env")), what="an instance"))[0]
    finally:
        del os.environ["KFN_LEAK_CHECK"]
    body = await invoke(instance)
    assert body.pop("LAMBDA_TASK_ROOT")
    assert body == {"GREETING": "hi", "AWS_LAMBDA_FUNCTION_NAME": "env", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": "us-east-1", "_HANDLER": "main.handler",
                    "KFN_LEAK_CHECK": None}


async def test_log_followers_get_new_lines_until_the_backend_closes(tmp_path: Path) -> None:
    backend = ProcessBackend(work_dir=tmp_path / "work", region="us-east-1")
    await backend.start()
    backend.set_function(make_function("chatty", code="print('loaded', flush=True)\n" + HELLO))
    lines: list[str] = []

    async def follow() -> None:
        async with backend.logs(R("chatty"), tail=0, follow=True) as followed:
            async for line in followed:
                lines.append(line)

    follower = asyncio.create_task(follow())
    try:
        await backend.scale(R("chatty"), 1)
        await eventually(lambda: any(line.endswith("] loaded") for line in lines), what="the followed line")
    finally:
        await backend.close()
    async with asyncio.timeout(5):
        await follower   # ends by itself once the backend closes


async def test_a_handler_sees_only_its_requirements_not_kfns_environment(backend: ProcessBackend) -> None:
    # PyYAML is installed beside kfn; in a runtime image it is not, unless the function lists it.
    backend.set_function(make_function("unlisted", code="import yaml\n" + HELLO))
    await backend.scale(R("unlisted"), 1)
    error = await eventually(lambda: backend.problem(R("unlisted")), what="the import failure")
    assert "No module named 'yaml'" in str(error)
