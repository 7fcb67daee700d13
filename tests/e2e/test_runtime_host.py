"""kfn's Python runtime under an `InstanceHost`: real execution environments forked from a zygote,
exactly Lambda's execution model (one invocation at a time per environment, the handler on the
main thread, module state per environment), driven from the test's event loop."""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime import contract
from kfn_runtime.environments import ZygoteSpawner
from kfn_runtime.execution import InitFailed, Rejected
from kfn_runtime.host import InstanceHost
from tests.e2e.runtimes import gather_bounded, host_config, pid_alive, python_env, python_host, write_code
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(60)]

# One module with a handler per behaviour; a test picks one. Coordination with the test goes
# through files in the code directory, never through sleeps the test has to guess.
APP = '''
import asyncio, json, logging, os, signal, subprocess, sys, threading, time
from pathlib import Path

HERE = Path(__file__).parent
STATE = {"event": None, "count": 0}
IMPORTED_BY = os.getpid()
log = logging.getLogger("app")


def wait_for(name, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not (HERE / name).exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def remember(event, context):
    # The bug this model rules out: a global written by one invocation and read back after
    # another invocation ran in between.
    STATE["event"] = event
    (HERE / f"started-{event['n']}").write_text("")
    wait_for(event.get("gate", "never"), event.get("hold", 0))
    return {"event": STATE["event"], "pid": os.getpid()}


def count(event, context):
    STATE["count"] += 1
    time.sleep(event.get("sleep", 0))
    return {"count": STATE["count"], "pid": os.getpid(), "imported_by": IMPORTED_BY}


def where(event, context):
    return {"main_thread": threading.current_thread() is threading.main_thread(),
            "threads": threading.active_count(), "pid": os.getpid()}


def alarm(event, context):
    fired = []

    def on_alarm(signum, frame):
        fired.append(signum)
        raise TimeoutError("the alarm went off")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(1)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 5:
            time.sleep(0.01)
    except TimeoutError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return {"fired": fired, "after": round(time.monotonic() - started, 1)}


async def async_handler(event, context):
    await asyncio.sleep(0.01)
    task = asyncio.current_task()
    return {"event": event, "in_task": task is not None, "remaining": context.get_remaining_time_in_millis()}


def uses_event_loop(event, context):
    # What Mangum and other adapters do inside a synchronous handler.
    loop = asyncio.get_event_loop()

    async def double():
        await asyncio.sleep(0)
        return event["x"] * 2

    return {"result": loop.run_until_complete(double())}


def sleepy(event, context):
    if event.get("child"):
        child = subprocess.Popen(["sleep", "30"])
        (HERE / "child-pid").write_text(str(child.pid))
    time.sleep(event.get("seconds", 0))
    return {"pid": os.getpid()}


def crash(event, context):
    if event.get("crash"):
        os._exit(7)
    return {"pid": os.getpid()}


def fail(event, context):
    raise ValueError("bad input: " + str(event.get("why")))


def unserialisable(event, context):
    return {"when": object()}


def decimal_result(event, context):
    import decimal
    return {"price": decimal.Decimal("1.50")}


def big(event, context):
    STATE["count"] += 1
    if "size" not in event:
        return {"count": STATE["count"], "pid": os.getpid()}
    return "x" * event["size"]


def environment(event, context):
    return {"environ": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(),
            "context": {"function_name": context.function_name, "function_version": context.function_version,
                        "memory_limit_in_mb": context.memory_limit_in_mb,
                        "log_group_name": context.log_group_name, "log_stream_name": context.log_stream_name,
                        "aws_request_id": context.aws_request_id,
                        "invoked_function_arn": context.invoked_function_arn,
                        "remaining": context.get_remaining_time_in_millis()}}


def context_details(event, context):
    cc = context.client_context
    return {"client_context": None if cc is None else {"custom": cc.custom, "env": cc.env,
                                                       "app_title": cc.client and cc.client.app_title},
            "trace": os.environ.get("_X_AMZN_TRACE_ID")}


def unfinished(event, context):
    sys.stdout.write("a line the handler never ended")
    sys.stdout.flush()
    time.sleep(event.get("seconds", 0))
    return "ok"


def marked(event, context):
    print("mark-%d" % event["n"])
    return event["n"]


def logs(event, context):
    print("printed", event["tag"])
    log.warning("logged %s", event["tag"])
    log.debug("debug %s", event["tag"])
    return "ok"
'''


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return write_code(tmp_path / "code", {"main.py": APP})


def error_of(result: bytes) -> dict[str, Any]:
    error = json.loads(result)
    assert isinstance(error, dict)
    return error


# --- Lambda's execution model -----------------------------------------------------------------

async def test_module_state_is_per_environment_under_parallel_invocations(code: Path) -> None:
    # Four invocations at once, each writing its event to a module global and reading it back
    # after all four have written theirs: each must get its own event back.
    async with python_host(code, "main.remember", concurrency=4) as h:
        release = code / "go"
        calls = [h.result({"n": n, "gate": "go", "hold": 10}) for n in range(4)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        await eventually(lambda: all((code / f"started-{n}").exists() for n in range(4)), what="all four running")
        release.write_text("")
        results = await gather_bounded(*tasks)
    assert [r["event"]["n"] for r in results] == [0, 1, 2, 3]
    assert len({r["pid"] for r in results}) == 4   # four environments, one invocation each


async def test_module_state_persists_across_invocations_of_one_environment(code: Path) -> None:
    async with python_host(code, "main.count") as h:
        results = [await h.result({}) for _ in range(3)]
    assert [r["count"] for r in results] == [1, 2, 3]
    assert len({r["pid"] for r in results}) == 1


async def test_environments_are_forked_after_the_module_was_imported_once(code: Path) -> None:
    async with python_host(code, "main.count") as h:
        result = await h.result({})
    assert result["imported_by"] != result["pid"]      # the zygote imported it...
    assert result["imported_by"] == h.zygote_pid       # ...and the environment is its fork


async def test_handler_runs_on_the_main_thread(code: Path) -> None:
    async with python_host(code, "main.where") as h:
        result = await h.result({})
    assert result["main_thread"] is True
    assert result["threads"] == 1   # no runtime threads beside it


async def test_signal_alarm_works_in_a_handler(code: Path) -> None:
    async with python_host(code, "main.alarm") as h:
        result = await h.result({})
    assert result["fired"] == [14]   # SIGALRM, delivered to the handler's own signal handler
    assert result["after"] < 3


async def test_async_handler_runs_on_the_environments_event_loop(code: Path) -> None:
    async with python_host(code, "main.async_handler", timeout=3) as h:
        result = await h.result({"a": 1})
    assert result["event"] == {"a": 1}
    assert result["in_task"] is True
    assert 0 < result["remaining"] <= 3000


async def test_get_event_loop_works_in_a_sync_handler(code: Path) -> None:
    async with python_host(code, "main.uses_event_loop") as h:
        assert await h.result({"x": 21}) == {"result": 42}
        assert await h.result({"x": 2}) == {"result": 4}   # and again, in the same environment


# --- concurrency ------------------------------------------------------------------------------

async def test_an_invocation_finding_every_environment_busy_gets_a_new_one(code: Path) -> None:
    async with python_host(code, "main.remember", concurrency=2) as h:
        assert len(h.host.environments) == 1
        tasks = [asyncio.ensure_future(h.result({"n": n, "gate": "go", "hold": 10})) for n in range(2)]
        await eventually(lambda: all((code / f"started-{n}").exists() for n in range(2)), what="both running")
        assert len(h.host.environments) == 2
        (code / "go").write_text("")
        results = await gather_bounded(*tasks)
    assert results[0]["pid"] != results[1]["pid"]


async def test_an_invocation_beyond_the_concurrency_and_queue_is_rejected_without_running(code: Path) -> None:
    async with python_host(code, "main.remember", concurrency=2, queue_limit=1) as h:
        tasks = [asyncio.ensure_future(h.result({"n": n, "gate": "go", "hold": 10})) for n in range(3)]
        await eventually(lambda: all((code / f"started-{n}").exists() for n in range(2)), what="two running")
        await eventually(lambda: h.host.in_flight == 3, what="one waiting")
        with pytest.raises(Rejected) as info:
            await h.invoke({"n": 3, "gate": "go", "hold": 10})
        assert info.value.reason == contract.REJECTED_CONCURRENCY
        assert not (code / "started-2").exists() and not (code / "started-3").exists()
        (code / "go").write_text("")
        await gather_bounded(*tasks)
        assert (code / "started-2").exists()   # the one that waited ran once an environment was free
        # Capacity comes back as soon as the environments are free again.
        assert (await h.result({"n": 3}))["event"]["n"] == 3


async def test_invocations_are_rejected_while_loading_and_while_draining(code: Path) -> None:
    async with python_host(code, "main.count", start=False) as h:
        with pytest.raises(Rejected) as loading:
            await h.invoke({})
        assert loading.value.reason == contract.REJECTED_LOADING
        await h.host.start()
        await h.result({})
        h.host.drain()
        with pytest.raises(Rejected) as draining:
            await h.invoke({})
        assert draining.value.reason == contract.REJECTED_DRAINING
        assert await h.host.wait_idle(1.0) is True


async def test_draining_waits_for_the_running_invocation(code: Path) -> None:
    async with python_host(code, "main.remember") as h:
        task = asyncio.ensure_future(h.result({"n": 0, "gate": "go", "hold": 10}))
        await eventually(lambda: (code / "started-0").exists(), what="the invocation running")
        h.host.drain()
        assert await h.host.wait_idle(0.2) is False
        (code / "go").write_text("")
        assert await h.host.wait_idle(5.0) is True
        assert (await task)["event"]["n"] == 0


async def test_idle_extra_environments_are_stopped_after_the_idle_timeout(code: Path) -> None:
    async with python_host(code, "main.remember", concurrency=2, idle_timeout=0.3) as h:
        tasks = [asyncio.ensure_future(h.result({"n": n, "gate": "go", "hold": 10})) for n in range(2)]
        await eventually(lambda: all((code / f"started-{n}").exists() for n in range(2)), what="both running")
        (code / "go").write_text("")
        pids = {r["pid"] for r in await gather_bounded(*tasks)}
        assert len(pids) == 2
        await eventually(lambda: len(h.host.environments) == 1, timeout=5, what="one environment stopped")
        [stopped] = pids - set(h.env_pids())
        await eventually(lambda: not pid_alive(stopped), what="its process gone")
        # The last environment stays, however long it idles.
        await asyncio.sleep(0.8)
        assert len(h.host.environments) == 1


# --- timeouts and crashes ---------------------------------------------------------------------

async def test_timeout_ends_the_invocation_with_lambdas_error_and_kills_the_environment(code: Path) -> None:
    async with python_host(code, "main.sleepy", timeout=0.5) as h:
        [pid] = h.env_pids()
        started = time.monotonic()
        invocation = await h.invoke({"seconds": 30})
        assert time.monotonic() - started < 3
        assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Sandbox.Timedout")
        assert error_of(invocation.result) == {
            "errorType": "Sandbox.Timedout",
            "errorMessage": f"RequestId: {invocation.id} Error: Task timed out after 0.50 seconds"}
        await eventually(lambda: not pid_alive(pid), what="the timed-out environment killed")
        assert h.log.has("Task timed out after 0.50 seconds")


async def test_after_a_timeout_the_next_invocation_succeeds_at_once(code: Path) -> None:
    async with python_host(code, "main.sleepy", timeout=0.5) as h:
        [pid] = h.env_pids()
        assert (await h.invoke({"seconds": 30})).error_type == "Sandbox.Timedout"
        started = time.monotonic()
        result = await h.result({"seconds": 0})
        assert time.monotonic() - started < 1.0   # a fork, not a wait for the old environment
        assert result["pid"] != pid


async def test_a_timed_out_environment_takes_what_its_handler_started_with_it(code: Path) -> None:
    async with python_host(code, "main.sleepy", timeout=0.5) as h:
        assert (await h.invoke({"seconds": 30, "child": True})).error_type == "Sandbox.Timedout"
        child = int((code / "child-pid").read_text())
        await eventually(lambda: not pid_alive(child), what="the handler's child process killed")


async def test_a_new_environment_starts_from_the_module_as_initialised(code: Path) -> None:
    async with python_host(code, "main.count", timeout=0.5) as h:
        assert [(await h.result({}))["count"] for _ in range(2)] == [1, 2]
        assert (await h.invoke({"sleep": 30})).error_type == "Sandbox.Timedout"
        assert (await h.result({}))["count"] == 1


async def test_environment_exiting_mid_invocation_is_an_exit_error_and_the_next_succeeds(code: Path) -> None:
    async with python_host(code, "main.crash") as h:
        [pid] = h.env_pids()
        invocation = await h.invoke({"crash": True})
        assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Runtime.ExitError")
        error = error_of(invocation.result)
        assert error["errorType"] == "Runtime.ExitError"
        assert error["errorMessage"].startswith(f"RequestId: {invocation.id} Error: Runtime exited")
        assert "7" in error["errorMessage"]
        assert h.log.has("Runtime exited with error: exit status 7")
        assert (await h.result({}))["pid"] != pid


async def test_close_fails_the_running_invocation_and_stops_every_process(code: Path) -> None:
    async with python_host(code, "main.sleepy", timeout=30) as h:
        task = asyncio.ensure_future(h.invoke({"seconds": 30}))
        await eventually(lambda: any(env.state == "busy" for env in h.host.environments), what="busy")
        processes = [h.zygote_pid, *h.env_pids()]
        await h.host.close()
        invocation = await asyncio.wait_for(task, 5)
        assert invocation.function_error == "Unhandled"
        await eventually(lambda: not any(pid_alive(pid) for pid in processes if pid), what="every process gone")


# --- errors -----------------------------------------------------------------------------------

async def test_handler_exception_is_lambdas_error_object(code: Path) -> None:
    async with python_host(code, "main.fail") as h:
        pids = h.env_pids()
        invocation = await h.invoke({"why": 42})
        assert (await h.invoke({"why": 1})).error_type == "ValueError"
        assert h.env_pids() == pids   # the environment lives on: an exception is the function's answer
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "ValueError")
    error = error_of(invocation.result)
    assert (error["errorType"], error["errorMessage"], error["requestId"]) == (
        "ValueError", "bad input: 42", invocation.id)
    assert isinstance(error["stackTrace"], list)
    assert any('main.py", line' in frame and "raise ValueError" in frame for frame in error["stackTrace"])


async def test_error_stack_trace_holds_only_the_functions_frames(code: Path) -> None:
    async with python_host(code, "main.fail") as h:
        invocation = await h.invoke({})
    frames = error_of(invocation.result)["stackTrace"]
    assert all("kfn_runtime" not in frame for frame in frames), frames


async def test_handler_exception_is_logged_with_its_traceback(code: Path) -> None:
    async with python_host(code, "main.fail") as h:
        await h.invoke({"why": "logged"})
        await eventually(lambda: h.log.has("ValueError: bad input: logged"), what="the traceback logged")


async def test_unserialisable_result_is_a_marshal_error(code: Path) -> None:
    async with python_host(code, "main.unserialisable") as h:
        invocation = await h.invoke({})
    assert invocation.error_type == "Runtime.MarshalError"
    assert "not JSON serializable" in error_of(invocation.result)["errorMessage"]


async def test_malformed_event_is_an_unmarshal_error(code: Path) -> None:
    async with python_host(code, "main.count") as h:
        invocation = await h.invoke(payload=b"{not json")
        assert invocation.error_type == "Runtime.UnmarshalError"
        assert (await h.result({}))["count"] == 1   # never reached the handler


async def test_client_context_that_is_not_an_object_is_an_unmarshal_error_not_a_crash(code: Path) -> None:
    async with python_host(code, "main.crash") as h:
        [pid] = h.env_pids()
        invocation = await h.invoke({}, client_context="[1, 2]")
        assert invocation.error_type == "Runtime.UnmarshalError"
        assert (await h.result({}))["pid"] == pid


async def test_decimal_result_is_encoded_as_awslambdaric_does(code: Path) -> None:
    async with python_host(code, "main.decimal_result") as h:
        assert await h.result({}) == {"price": 1.5}


async def test_response_over_lambdas_limit_is_response_size_too_large(code: Path) -> None:
    async with python_host(code, "main.big") as h:
        invocation = await h.invoke({"size": 7 * 1024 * 1024})
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Function.ResponseSizeTooLarge")
    assert "exceeded maximum allowed payload size" in error_of(invocation.result)["errorMessage"]


@pytest.mark.parametrize("megabytes", [7, 20])
async def test_after_a_response_too_large_the_same_environment_serves_the_next_invocation(
        code: Path, megabytes: int) -> None:
    # 20 MB is more than the Runtime API would ever buffer: the host reads it and throws it away
    # (it used to close the connection mid-body, and the environment died of SIGPIPE).
    async with python_host(code, "main.big") as h:
        first = await h.result({})
        invocation = await h.invoke({"size": megabytes * 1024 * 1024})
        after = await h.result({})
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Function.ResponseSizeTooLarge")
    assert f"({megabytes * 1024 * 1024 + 2} bytes)" in error_of(invocation.result)["errorMessage"]
    assert after == {"count": first["count"] + 2, "pid": first["pid"]}   # its module state intact


# --- init errors ------------------------------------------------------------------------------

async def init_error(tmp_path: Path, source: str, handler: str = "main.handler") -> tuple[InitFailed, int | None]:
    """The InitFailed a host raises for `source`, and its zygote's PID."""
    code = write_code(tmp_path / "broken", {"main.py": source})
    async with python_host(code, handler, start=False) as h:
        with pytest.raises(InitFailed) as info:
            await h.host.start(timeout=20)
        zygote = h.zygote_pid
    return info.value, zygote


async def test_syntax_error_is_user_code_syntax_error(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "def handler(event, context)\n    return 1\n")
    payload = json.loads(error.payload)
    assert payload["errorType"] == "Runtime.UserCodeSyntaxError"
    assert "main" in payload["errorMessage"]


async def test_missing_module_is_import_module_error(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "", handler="absent.handler")
    payload = json.loads(error.payload)
    assert payload["errorType"] == "Runtime.ImportModuleError"
    assert "absent" in payload["errorMessage"]


async def test_missing_dependency_is_import_module_error_naming_it(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "import kfn_no_such_library\ndef handler(event, context): pass\n")
    payload = json.loads(error.payload)
    assert payload["errorType"] == "Runtime.ImportModuleError"
    assert "No module named 'kfn_no_such_library'" in payload["errorMessage"]


async def test_missing_handler_attribute_is_handler_not_found(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "def other(event, context): pass\n")
    payload = json.loads(error.payload)
    assert payload["errorType"] == "Runtime.HandlerNotFound"
    assert "handler" in payload["errorMessage"]


async def test_exception_at_import_fails_init_with_its_message(tmp_path: Path) -> None:
    error, zygote = await init_error(tmp_path, "raise RuntimeError('boom at import')\n")
    payload = json.loads(error.payload)
    assert "boom at import" in payload["errorMessage"]
    assert isinstance(payload["stackTrace"], list)
    assert zygote is not None and not pid_alive(zygote)


async def test_exception_at_import_has_the_exceptions_type_as_on_lambda(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "raise RuntimeError('boom at import')\n")
    assert json.loads(error.payload)["errorType"] == "RuntimeError"


async def test_an_init_that_outlasts_the_init_timeout_fails_as_lambdas_sandbox_timedout(tmp_path: Path) -> None:
    code = write_code(tmp_path / "slow", {"main.py": "import time\ntime.sleep(60)\ndef handler(e, c): pass\n"})
    async with python_host(code, start=False, init_timeout=1.0) as h:
        with pytest.raises(InitFailed) as info:
            async with asyncio.timeout(20):   # the host's own limit is the configured init timeout
                await h.host.start()
    payload = json.loads(info.value.payload)
    assert payload == {"errorType": "Sandbox.Timedout", "errorMessage": "Init phase timed out after 1.00 seconds"}
    assert not info.value.platform


async def test_a_runtime_exiting_during_init_is_lambdas_runtime_exit_error(tmp_path: Path) -> None:
    error, _ = await init_error(tmp_path, "import os\nos._exit(3)\n")
    assert json.loads(error.payload) == {"errorType": "Runtime.ExitError",
                                         "errorMessage": "Runtime exited with error: exit status 3"}
    assert not error.platform


async def test_an_interpreter_that_cannot_run_is_the_platforms_init_failure(tmp_path: Path) -> None:
    code = write_code(tmp_path / "fine", {"main.py": "def handler(e, c): pass\n"})
    config = host_config()
    spawner = ZygoteSpawner(python=str(tmp_path / "no-such-python"), env=python_env(config, code, "main.handler", None),
                            cwd=str(code))
    host = InstanceHost(config, spawner)
    try:
        with pytest.raises(InitFailed) as info:
            await host.start()
    finally:
        await host.close()
    assert info.value.platform


# --- what a handler sees ----------------------------------------------------------------------

async def test_handler_sees_lambdas_environment_and_none_of_the_hosts(code: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    marker = f"KFN_TEST_MARKER_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(marker, "leaked")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-host-s-credentials")
    async with python_host(code, "main.environment", function_name="orders", memory_mb=256, region="eu-west-1",
                           user_env={"DATABASE_URL": "postgres://db"}) as h:
        [env] = h.host.environments
        result = await h.result({})
    environ = result["environ"]
    assert marker not in environ
    assert "AWS_SECRET_ACCESS_KEY" not in environ
    assert environ["DATABASE_URL"] == "postgres://db"
    assert {k: environ[k] for k in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
                                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_REGION",
                                    "AWS_DEFAULT_REGION", "LAMBDA_TASK_ROOT", "_HANDLER", "TZ",
                                    "AWS_LAMBDA_RUNTIME_API")} == {
        "AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/orders",
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "LAMBDA_TASK_ROOT": str(code),
        "_HANDLER": "main.environment", "TZ": ":UTC", "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{env.port}"}
    assert environ["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert result["cwd"] == str(code)


async def test_context_carries_lambdas_names_request_id_and_arn(code: Path) -> None:
    async with python_host(code, "main.environment", function_name="orders", memory_mb=256, region="eu-west-1",
                           timeout=4) as h:
        invocation = await h.invoke({})
    context = json.loads(invocation.result)["context"]
    assert {k: v for k, v in context.items() if k not in ("log_stream_name", "remaining")} == {
        "function_name": "orders", "function_version": "$LATEST", "memory_limit_in_mb": "256",
        "log_group_name": "/aws/lambda/orders", "aws_request_id": invocation.id,
        "invoked_function_arn": "arn:aws:lambda:eu-west-1:000000000000:function:orders"}
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", context["log_stream_name"])
    assert 3000 < context["remaining"] <= 4000


async def test_client_context_and_trace_id_reach_the_handler(code: Path) -> None:
    client_context = {"custom": {"tenant": "acme"}, "env": {"os": "linux"}, "client": {"app_title": "Shop"}}
    async with python_host(code, "main.context_details") as h:
        first = await h.result({}, client_context=json.dumps(client_context), trace_id="Root=1-abc-def;Sampled=1")
        second = await h.result({})
    assert first == {"client_context": {"custom": {"tenant": "acme"}, "env": {"os": "linux"}, "app_title": "Shop"},
                     "trace": "Root=1-abc-def;Sampled=1"}
    assert second == {"client_context": None, "trace": None}   # nothing carried over


async def test_client_context_is_carried_whatever_whitespace_its_json_holds(code: Path) -> None:
    async with python_host(code, "main.context_details") as h:
        result = await h.result({}, client_context='{"custom": {"tenant": "acme"},\r\n"env": {}}')
    assert result["client_context"]["custom"] == {"tenant": "acme"}


async def test_print_and_logging_reach_the_hosts_log_with_the_request_id(code: Path) -> None:
    async with python_host(code, "main.logs") as h:
        invocation = await h.invoke({"tag": "t1"})
        await eventually(lambda: h.log.has("printed t1") and h.log.has("logged t1"), what="both lines")
    [line] = [line for _, line in h.log.lines if "logged t1" in line]
    level, timestamp, request_id, message = line.split("\t")
    assert (level, request_id, message) == ("[WARNING]", invocation.id, "logged t1")
    assert timestamp.endswith("Z")
    assert not h.log.has("debug t1")   # the root logger stays at WARNING, as on Lambda
    assert {env for env, line in h.log.lines if "t1" in line} == {"env-1"}


async def test_log_level_follows_aws_lambda_log_level(code: Path) -> None:
    async with python_host(code, "main.logs", user_env={"AWS_LAMBDA_LOG_LEVEL": "DEBUG"}) as h:
        invocation = await h.invoke({"tag": "t2"})
        await eventually(lambda: h.log.has("debug t2"), what="the debug line")
    assert any(line.startswith("[DEBUG]") and invocation.id in line for _, line in h.log.lines)


async def test_log_tail_holds_what_the_invocation_printed(code: Path) -> None:
    async with python_host(code, "main.logs") as h:
        invocation = await h.invoke({"tag": "tail-me"}, want_log=True)
    # Printed before the result was posted, so it is in the tail when the invocation ends.
    assert b"printed tail-me" in invocation.log_tail()
    lines = invocation.log_tail().decode().split("\n")
    assert lines[0] == f"START RequestId: {invocation.id} Version: $LATEST"
    assert lines[-3] == f"END RequestId: {invocation.id}"
    assert lines[-2].startswith(f"REPORT RequestId: {invocation.id}\tDuration: ") and lines[-1] == ""
    assert h.log.has(lines[-2])   # the instance's log has the same REPORT line


async def test_log_tail_holds_only_its_own_invocations_output_when_invocations_follow_each_other(
        code: Path) -> None:
    # One environment, invocations queued behind each other: the next starts the moment the last
    # posts its result, and the output pipe may be read only after that. What an invocation printed
    # before posting must be in its own tail, and never in the tail of the one after it.
    async with python_host(code, "main.marked", concurrency=1, queue_limit=200) as h:
        invocations = await gather_bounded(*(h.invoke({"n": n}, want_log=True) for n in range(200)))
    wrong = {}
    for invocation in invocations:
        marks = re.findall(r"mark-\d+", invocation.log_tail().decode())
        if marks != [f"mark-{json.loads(invocation.result)}"]:
            wrong[json.loads(invocation.result)] = marks
    assert wrong == {}


async def test_log_tail_of_a_timed_out_invocation_ends_its_last_line_and_says_it_timed_out(code: Path) -> None:
    async with python_host(code, "main.unfinished", timeout=0.5) as h:
        invocation = await h.invoke({"seconds": 30}, want_log=True)
    lines = invocation.log_tail().decode().split("\n")
    assert lines[1:4] == ["a line the handler never ended",
                          f"RequestId: {invocation.id} Error: Task timed out after 0.50 seconds",
                          f"END RequestId: {invocation.id}"]
    assert lines[4].startswith(f"REPORT RequestId: {invocation.id}\t")
