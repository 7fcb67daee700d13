"""kfn's Node.js runtime (runtime-images/nodejs/ric.mjs) in real environments of an InstanceHost.

Each test writes a function into a fresh code directory, starts an InstanceHost whose environments
run `node ric.mjs` (exactly as `kfn local` and a pod do, through `launch.build_host`), invokes it
and closes the host, which kills every environment it started by process group.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime.config import Config
from kfn_runtime.execution import InitFailed, Invocation
from kfn_runtime.host import InstanceHost
from kfn_runtime.launch import build_host
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "runtime-images" / "nodejs" / "ric.mjs"
RUNTIME_DIR = REPO / "runtime-images" / "python"
NODE = shutil.which("node")
START_TIMEOUT = 20.0

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(NODE is None, reason="needs Node.js (`node` on PATH)")]


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def config(code: Path, handler: str, *, timeout: float = 10.0, concurrency: int = 1, deps: Path | None = None,
           env: dict[str, str] | None = None) -> Config:
    return Config(handler=handler, runtime="nodejs20", command=None, code_dir=str(code),
                  deps_dir=str(deps or code.parent / "no-deps"), runtime_dir=str(RUNTIME_DIR), function_name="demo",
                  function_version="$LATEST", namespace="default", region="us-east-1", timeout=timeout,
                  concurrency=concurrency, memory_mb=256, host="127.0.0.1", port=0, drain_timeout=1.0,
                  idle_timeout=60.0, max_body_bytes=12 << 20, user_env=env or {})


@contextlib.asynccontextmanager
async def running(code: Path, handler: str, *, lines: list[str] | None = None, **settings: Any
                  ) -> AsyncIterator[InstanceHost]:
    """An InstanceHost of `handler` with its first environment up; every environment killed after."""
    assert NODE is not None
    output = lines if lines is not None else []
    host = build_host(config(code, handler, **settings), log=lambda env_id, line: output.append(line), node=NODE,
                      node_client=str(CLIENT))
    try:
        await host.start(timeout=START_TIMEOUT)
        yield host
    finally:
        await host.close()


async def invoke(host: InstanceHost, event: Any = None, **options: Any) -> Invocation:
    payload = json.dumps({} if event is None else event).encode()
    async with asyncio.timeout(host.config.timeout + 15):
        return await host.invoke(Invocation(payload, timeout=host.config.timeout, **options))


async def init_error(code: Path, handler: str) -> dict[str, Any]:
    with pytest.raises(InitFailed) as failed:
        async with running(code, handler):
            pass
    payload: dict[str, Any] = json.loads(failed.value.payload)
    return payload


def result(invocation: Invocation) -> Any:
    assert invocation.function_error is None, invocation.result
    return json.loads(invocation.result)


def error(invocation: Invocation) -> dict[str, Any]:
    assert invocation.function_error == "Unhandled", invocation.result
    payload: dict[str, Any] = json.loads(invocation.result)
    return payload


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


async def gone(pid: int) -> bool:
    return await eventually(lambda: not alive(pid), timeout=10, what=f"process {pid} to be gone")


@pytest.fixture
def code(tmp_path: Path) -> Path:
    directory = tmp_path / "code"
    directory.mkdir()
    return directory


# --- handler forms ------------------------------------------------------------------------------

async def test_an_async_handler_answers_with_its_result(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async (event) => ({ got: event, node: 'yes' });"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, {"a": [1, 2]})) == {"got": {"a": [1, 2]}, "node": "yes"}


async def test_a_handler_returning_a_promise_answers_with_what_it_resolves_to(code: Path) -> None:
    write(code, {"index.mjs": "export function handler(event) { return Promise.resolve(event.n * 2); }"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, {"n": 21})) == 42


async def test_a_callback_handler_answers_through_the_callback(code: Path) -> None:
    write(code, {"index.js": "exports.handler = (event, context, callback) => { callback(null, {via: 'callback'}); };"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host)) == {"via": "callback"}


async def test_a_callback_result_waits_for_the_event_loop_to_empty(code: Path, tmp_path: Path) -> None:
    marker = tmp_path / "timer-ran"
    write(code, {"index.js": """
        const fs = require('fs');
        exports.handler = (event, context, callback) => {
          setTimeout(() => fs.writeFileSync(event.marker, 'x'), 300);
          callback(null, 'done');
        };"""})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, {"marker": str(marker)})) == "done"
        assert marker.exists()


async def test_callback_waits_for_empty_event_loop_false_answers_at_once(code: Path, tmp_path: Path) -> None:
    marker = tmp_path / "timer-ran"
    write(code, {"index.js": """
        const fs = require('fs');
        exports.handler = (event, context, callback) => {
          context.callbackWaitsForEmptyEventLoop = false;
          setTimeout(() => fs.writeFileSync(event.marker, 'x'), 5000);
          callback(null, 'done');
        };"""})
    async with running(code, "index.handler") as host:
        started = time.monotonic()
        assert result(await invoke(host, {"marker": str(marker)})) == "done"
        assert time.monotonic() - started < 4
        assert not marker.exists()


async def test_a_plain_function_that_never_calls_back_answers_null(code: Path) -> None:
    # As on Lambda: a non-async handler's return value is ignored; the answer comes when the loop empties.
    write(code, {"index.js": "exports.handler = (event, context) => 'ignored';"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host)) is None


async def test_context_succeed_answers_with_its_argument(code: Path) -> None:
    write(code, {"index.js": "exports.handler = (event, context) => { context.succeed({legacy: true}); };"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host)) == {"legacy": True}


async def test_context_fail_with_a_string_is_an_error_of_type_string(code: Path) -> None:
    write(code, {"index.js": "exports.handler = (event, context) => { context.fail('no way'); };"})
    async with running(code, "index.handler") as host:
        assert error(await invoke(host)) == {"errorType": "string", "errorMessage": "no way", "trace": []}


async def test_a_large_event_and_result_cross_intact(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async (e) => ({ size: e.data.length, echo: e.data })"})
    data = "x" * (4 << 20)
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, {"data": data})) == {"size": len(data), "echo": data}


async def test_an_oversized_result_fails_the_invocation_and_the_environment_lives_on(code: Path) -> None:
    write(code, {"index.mjs": "let calls = 0;\n"
                              "export const handler = async (e) => (++calls, e.mb ? 'x'.repeat(e.mb << 20) : "
                              "[process.pid, calls]);"})
    async with running(code, "index.handler") as host:
        pid, calls = result(await invoke(host))
        # 20 MB is more than the Runtime API buffers: it is read and thrown away, and answered 413.
        for mb in (7, 20):
            assert (await invoke(host, {"mb": mb})).error_type == "Function.ResponseSizeTooLarge"
        assert result(await invoke(host)) == [pid, calls + 3]


async def test_each_log_tail_holds_only_what_its_own_invocation_logged(code: Path) -> None:
    # Invocations queued behind each other in one environment: each starts the moment the one
    # before posts its result, possibly before the host has read what that one logged.
    write(code, {"index.mjs": "export const handler = async (e) => { console.log('mark-' + e.n); return e.n; };"})
    async with running(code, "index.handler", concurrency=1) as host:
        host.config.queue_limit = 200
        invocations = await asyncio.gather(*(invoke(host, {"n": n}, want_log=True) for n in range(200)))
    wrong = {}
    for invocation in invocations:
        marks = re.findall(r"mark-\d+", invocation.log_tail().decode())
        if marks != [f"mark-{result(invocation)}"]:
            wrong[result(invocation)] = marks
    assert wrong == {}


async def test_a_request_id_with_path_characters_is_answered(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async (event, context) => context.awsRequestId;"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, request_id="gw:2024.06-01_abc")) == "gw:2024.06-01_abc"


async def test_a_streaming_handler_is_answered_whole_as_an_http_response(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
          const stream = awslambda.HttpResponseStream.from(responseStream, {
            statusCode: 201, headers: { 'content-type': 'text/plain' }, cookies: ['a=1'] });
          stream.write('hello ');
          await new Promise((resolve) => setTimeout(resolve, 10));
          stream.end(context.functionName);
        });"""})
    async with running(code, "index.handler") as host:
        answer = result(await invoke(host))
    assert base64.b64decode(answer.pop("body")) == b"hello demo"
    assert answer == {"statusCode": 201, "headers": {"content-type": "text/plain"}, "cookies": ["a=1"],
                      "isBase64Encoded": True}


async def test_a_streaming_handler_that_does_not_end_its_stream_fails(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
          responseStream.write('never ended');
        });"""})
    async with running(code, "index.handler") as host:
        assert error(await invoke(host))["errorMessage"] == "Response stream is not finished."


# --- loading ------------------------------------------------------------------------------------

async def test_a_commonjs_js_file_is_required(code: Path) -> None:
    write(code, {"app.js": "module.exports.handler = async () => typeof require;"})
    async with running(code, "app.handler") as host:
        assert result(await invoke(host)) == "function"


async def test_a_cjs_file_is_required(code: Path) -> None:
    write(code, {"app.cjs": "exports.handler = async () => typeof module;"})
    async with running(code, "app.handler") as host:
        assert result(await invoke(host)) == "object"


async def test_a_js_file_under_a_type_module_package_is_imported_as_an_es_module(code: Path) -> None:
    write(code, {"package.json": '{"type": "module"}',
                 "app.js": "export const handler = async () => typeof require;"})
    async with running(code, "app.handler") as host:
        assert result(await invoke(host)) == "undefined"


async def test_a_handler_in_a_directory_with_a_nested_export_path(code: Path) -> None:
    write(code, {"src/api/app.mjs": "export const handlers = { orders: { list: async () => 'nested' } };"})
    async with running(code, "src/api/app.handlers.orders.list") as host:
        assert result(await invoke(host)) == "nested"


async def test_es_modules_import_packages_from_the_deps_node_modules(code: Path, tmp_path: Path) -> None:
    deps = write(tmp_path / "deps", {
        "node_modules/greet/package.json": '{"name": "greet", "type": "module", "exports": "./main.js"}',
        "node_modules/greet/main.js": "export const greet = (name) => `hello ${name}`;"})
    write(code, {"index.mjs": "import { greet } from 'greet';\nexport const handler = async () => greet('esm');"})
    async with running(code, "index.handler", deps=deps) as host:
        assert result(await invoke(host)) == "hello esm"


async def test_commonjs_requires_packages_from_the_deps_node_modules(code: Path, tmp_path: Path) -> None:
    deps = write(tmp_path / "deps", {"node_modules/shout/index.js": "exports.shout = (s) => s.toUpperCase();"})
    write(code, {"index.js": "const { shout } = require('shout');\nexports.handler = async () => shout('cjs');"})
    async with running(code, "index.handler", deps=deps) as host:
        assert result(await invoke(host)) == "CJS"


# --- init errors --------------------------------------------------------------------------------

async def test_a_missing_module_is_an_import_module_error(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => 1;"})
    payload = await init_error(code, "missing.handler")
    assert payload["errorType"] == "Runtime.ImportModuleError"
    assert "Cannot find module 'missing'" in payload["errorMessage"]


async def test_a_missing_package_imported_by_the_handler_is_an_import_module_error(code: Path) -> None:
    write(code, {"index.mjs": "import 'no-such-package';\nexport const handler = async () => 1;"})
    payload = await init_error(code, "index.handler")
    assert payload["errorType"] == "Runtime.ImportModuleError"
    assert "no-such-package" in payload["errorMessage"]


async def test_a_missing_export_is_handler_not_found(code: Path) -> None:
    write(code, {"index.mjs": "export const other = async () => 1;"})
    payload = await init_error(code, "index.handler")
    assert payload["errorType"] == "Runtime.HandlerNotFound"
    assert payload["errorMessage"] == "index.handler is undefined or not exported"


async def test_an_export_that_is_not_a_function_is_handler_not_found(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = 42;"})
    payload = await init_error(code, "index.handler")
    assert payload["errorType"] == "Runtime.HandlerNotFound"
    assert payload["errorMessage"] == "index.handler is not a function"


async def test_a_syntax_error_in_an_es_module_names_the_file_and_line(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => {\n  return 1 +;\n};\n"})
    payload = await init_error(code, "index.handler")
    assert payload["errorType"] == "Runtime.UserCodeSyntaxError"
    assert payload["errorMessage"].startswith("SyntaxError: ")
    assert any(line.endswith("index.mjs:2") for line in payload["trace"]), payload["trace"]


async def test_a_syntax_error_in_commonjs_names_the_file_and_line(code: Path) -> None:
    write(code, {"index.js": "exports.handler = function () {\n  return {{;\n};\n"})
    payload = await init_error(code, "index.handler")
    assert payload["errorType"] == "Runtime.UserCodeSyntaxError"
    assert any(line.endswith("index.js:2") for line in payload["trace"]), payload["trace"]


async def test_an_exception_at_module_load_is_the_init_error(code: Path) -> None:
    write(code, {"index.mjs": "throw new RangeError('no config');\nexport const handler = async () => 1;"})
    payload = await init_error(code, "index.handler")
    assert (payload["errorType"], payload["errorMessage"]) == ("RangeError", "no config")


# --- errors during invocations ------------------------------------------------------------------

async def test_a_thrown_error_is_lambdas_error_object(code: Path) -> None:
    write(code, {"index.mjs": """
        class ValidationError extends Error { name = 'ValidationError'; }
        export const handler = async () => { throw new ValidationError('amount must be positive'); };"""})
    async with running(code, "index.handler") as host:
        invocation = await invoke(host)
    payload = error(invocation)
    assert invocation.error_type == "ValidationError"
    assert set(payload) == {"errorType", "errorMessage", "trace"}
    assert (payload["errorType"], payload["errorMessage"]) == ("ValidationError", "amount must be positive")
    assert payload["trace"][0] == "ValidationError: amount must be positive"
    assert any("index.mjs" in line for line in payload["trace"][1:])


async def test_an_error_passed_to_the_callback_is_the_answer(code: Path) -> None:
    write(code, {"index.js": "exports.handler = (e, c, callback) => callback(new TypeError('bad input'));"})
    async with running(code, "index.handler") as host:
        payload = error(await invoke(host))
    assert (payload["errorType"], payload["errorMessage"]) == ("TypeError", "bad input")


async def test_a_result_json_cannot_express_is_an_error(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => ({ big: 10n });"})
    async with running(code, "index.handler") as host:
        payload = error(await invoke(host))
    assert (payload["errorType"], payload["errorMessage"]) == ("Error", "Unable to stringify response body")


async def test_an_async_handler_that_never_settles_is_a_node_js_exit_error(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => new Promise(() => {});"})
    async with running(code, "index.handler") as host:
        assert error(await invoke(host))["errorType"] == "Runtime.NodeJsExit"


async def test_an_uncaught_exception_fails_the_invocation_and_ends_the_environment(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async () => {
          setTimeout(() => { throw new Error('thrown from a timer'); }, 10);
          return new Promise(() => {});
        };"""})
    async with running(code, "index.handler") as host:
        invocation = await invoke(host)
        payload = error(invocation)
        assert (payload["errorType"], payload["errorMessage"]) == ("Error", "thrown from a timer")
        assert invocation.env is not None and invocation.env.pid is not None
        assert await gone(invocation.env.pid)


async def test_an_unhandled_rejection_fails_the_invocation(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async () => {
          Promise.reject(new Error('nobody catches me'));
          await new Promise((resolve) => setTimeout(resolve, 2000));
          return 'too late';
        };"""})
    async with running(code, "index.handler") as host:
        payload = error(await invoke(host))
    assert payload["errorType"] == "Runtime.UnhandledPromiseRejection"
    assert payload["errorMessage"] == "Error: nobody catches me"


async def test_an_environment_that_ended_is_replaced_for_the_next_invocation(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async (event) => {
          if (event.crash) setTimeout(() => { throw new Error('crash'); }, 0);
          return event.crash ? new Promise(() => {}) : process.pid;
        };"""})
    async with running(code, "index.handler") as host:
        crashed = await invoke(host, {"crash": True})
        assert crashed.env is not None and await gone(crashed.env.pid or 0)
        assert result(await invoke(host)) != crashed.env.pid


async def test_a_timeout_kills_the_environment(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async () => new Promise(() => setInterval(() => {}, 1000));"""})
    async with running(code, "index.handler", timeout=0.5) as host:
        invocation = await invoke(host)
        assert invocation.error_type == "Sandbox.Timedout"
        assert "Task timed out after 0.50 seconds" in error(invocation)["errorMessage"]
        assert invocation.env is not None and invocation.env.pid is not None
        assert await gone(invocation.env.pid)


# --- context, state, logs -----------------------------------------------------------------------

async def test_the_context_has_lambdas_fields(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async (event, context) => {
          const { getRemainingTimeInMillis, succeed, fail, done, ...fields } = context;
          return { ...fields, callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
                   legacy: [typeof succeed, typeof fail, typeof done] };
        };"""})
    async with running(code, "index.handler") as host:
        invocation = await invoke(host, request_id="req-42", client_context='{"client": {"installation_id": "i-1"}}')
    fields = result(invocation)
    assert fields["awsRequestId"] == "req-42"
    assert fields["functionName"] == "demo"
    assert fields["functionVersion"] == "$LATEST"
    assert fields["memoryLimitInMB"] == "256"
    assert fields["logGroupName"] == "/aws/lambda/demo"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", fields["logStreamName"])
    assert fields["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:demo"
    assert fields["clientContext"] == {"client": {"installation_id": "i-1"}}
    assert fields["callbackWaitsForEmptyEventLoop"] is True
    assert fields["legacy"] == ["function", "function", "function"]


async def test_the_environment_has_lambdas_variables(code: Path) -> None:
    write(code, {"index.mjs": """
        const names = ['AWS_EXECUTION_ENV', 'AWS_LAMBDA_FUNCTION_NAME', 'AWS_REGION', 'LAMBDA_TASK_ROOT',
                       '_HANDLER', 'TZ'];
        export const handler = async () => Object.fromEntries(names.map((n) => [n, process.env[n]]));"""})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host)) == {
            "AWS_EXECUTION_ENV": "AWS_Lambda_nodejs20.x", "AWS_LAMBDA_FUNCTION_NAME": "demo", "AWS_REGION": "us-east-1",
            "LAMBDA_TASK_ROOT": str(code), "_HANDLER": "index.handler", "TZ": ":UTC"}


async def test_get_remaining_time_counts_down_to_the_deadline(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async (event, context) => {
          const first = context.getRemainingTimeInMillis();
          await new Promise((resolve) => setTimeout(resolve, 300));
          return [first, context.getRemainingTimeInMillis()];
        };"""})
    async with running(code, "index.handler", timeout=5.0) as host:
        first, second = result(await invoke(host))
    assert 4000 < first <= 5000
    assert 250 <= first - second < 2000


async def test_the_trace_id_is_in_the_environment_during_the_invocation(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => process.env._X_AMZN_TRACE_ID ?? null;"})
    async with running(code, "index.handler") as host:
        assert result(await invoke(host, trace_id="Root=1-5759e988-bd862e3fe1be46a994272793")) == \
            "Root=1-5759e988-bd862e3fe1be46a994272793"
        assert result(await invoke(host)) is None


async def test_module_state_persists_across_invocations_of_one_environment(code: Path) -> None:
    write(code, {"index.mjs": "let count = 0;\nexport const handler = async () => [++count, process.pid];"})
    async with running(code, "index.handler") as host:
        answers = [result(await invoke(host)) for _ in range(3)]
    assert [count for count, _ in answers] == [1, 2, 3]
    assert len({pid for _, pid in answers}) == 1


async def test_parallel_environments_do_not_share_module_state(code: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    write(code, {"index.mjs": """
        import fs from 'node:fs';
        let count = 0;
        export const handler = async (event) => {
          count++;
          while (event.wait && !fs.existsSync(event.wait)) await new Promise((r) => setTimeout(r, 10));
          return [count, process.pid];
        };"""})
    async with running(code, "index.handler", concurrency=2) as host:
        held = asyncio.ensure_future(invoke(host, {"wait": str(release)}))
        try:
            assert await eventually(lambda: any(env.state == "busy" for env in host.environments))
            other = result(await invoke(host))
        finally:
            release.touch()
        first = result(await held)
    assert first[0] == other[0] == 1
    assert first[1] != other[1]


async def test_console_log_lines_carry_the_timestamp_request_id_and_level(code: Path) -> None:
    write(code, {"index.mjs": """
        export const handler = async () => {
          console.log('hello', { n: 1 });
          console.error('two\\nlines');
          return 1;
        };"""})
    lines: list[str] = []
    async with running(code, "index.handler", lines=lines) as host:
        await invoke(host, request_id="req-log")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert any(re.fullmatch(stamp + r"\treq-log\tINFO\thello \{ n: 1 \}", line) for line in lines), lines
    assert any(re.fullmatch(stamp + r"\treq-log\tERROR\ttwo\rlines", line) for line in lines), lines


async def test_json_log_format_writes_one_json_object_per_line(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => { console.warn('careful', 42); return 1; };"})
    lines: list[str] = []
    async with running(code, "index.handler", lines=lines, env={"AWS_LAMBDA_LOG_FORMAT": "JSON"}) as host:
        await invoke(host, request_id="req-json")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["level"], r["requestId"], r["message"]) for r in records] == [("WARN", "req-json", "careful 42")]


async def test_an_invocation_error_is_logged_as_an_invoke_error(code: Path) -> None:
    write(code, {"index.mjs": "export const handler = async () => { throw new Error('logged'); };"})
    lines: list[str] = []
    async with running(code, "index.handler", lines=lines) as host:
        await invoke(host, request_id="req-err")
    logged = [line for line in lines if "\treq-err\tERROR\tInvoke Error \t" in line]
    assert logged and json.loads(logged[0].split("\t", 4)[4])["errorMessage"] == "logged"


def test_the_client_has_no_dependencies_beyond_node() -> None:
    imports = re.findall(r"^import .* from '([^']+)';$", CLIENT.read_text(), re.MULTILINE)
    assert imports and all(name.startswith("node:") for name in imports), imports
    assert os.access(CLIENT, os.R_OK)
