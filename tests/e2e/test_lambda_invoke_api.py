"""`kfn local` invoked through AWS Lambda's Invoke API by the real clients: boto3 and the AWS CLI,
unchanged, with their endpoint pointed at the gateway."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.localmode import LocalMode, write_manifest
from tests.support.waiting import wait_until

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402  (after the skip: botocore comes with boto3)
from botocore.exceptions import ClientError  # noqa: E402

KEY_ID = "ci"
KEY = "3f9a0c5e8b7d41a2b6e0c9d8f7a6b5c4"
REGION = "eu-central-1"

HELLO = """
    def handler(event, context):
        name = event.get("name", "world") if isinstance(event, dict) else event
        print(f"printed for {name}")
        custom = context.client_context.custom if context.client_context else None
        return {"hello": name, "request_id": context.aws_request_id, "custom": custom,
                "function": context.function_name}
"""
BOOM = """
    def handler(event, context):
        raise ValueError("the handler failed on purpose")
"""
SLEEPY = """
    import time
    def handler(event, context):
        time.sleep(10)
"""
# Prints what the event asks for. Each LogType=Tail test has a function of its own: the first call of
# "tailed" is a cold start, whatever ran before.
TAILED = """
    def handler(event, context):
        for i in range(event.get("lines", 0)):
            print(f"line {i:05d} " + "x" * 90)
        print(f"printed for {event['name']}")
        return "ok"
"""
# Prints a secret while it imports, then fails: its callers must never see what it printed.
SECRET = "hunter2-the-database-password"
BROKEN = f"""
    print("connecting with DB_PASSWORD={SECRET}", flush=True)
    raise RuntimeError("init failed on purpose")
"""
# A requirement pip cannot install (a wheel that is not there): the platform's failure.
MISSING_WHEEL = "kfn_private_index_token_hunter2-1.0-py3-none-any.whl"
# Writes the event it got to the file the event names: an Event invocation is seen to run.
WRITER = """
    import json
    def handler(event, context):
        with open(event["file"], "w") as out:
            json.dump({"event": event, "request_id": context.aws_request_id}, out)
"""


def write_functions(directory: Path) -> None:
    write_manifest(directory, "hello", HELLO)
    write_manifest(directory, "boom", BOOM)
    write_manifest(directory, "sleepy", SLEEPY, timeout="1s")
    write_manifest(directory, "writer", WRITER)
    write_manifest(directory, "guarded", HELLO, http={"auth": {"type": "key"}})
    write_manifest(directory, "broken", BROKEN)
    write_manifest(directory, "nodeps", HELLO, requirements=[str(directory / MISSING_WHEEL)])
    write_manifest(directory, "tailed", TAILED)
    write_manifest(directory, "long-tail", TAILED)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("functions")
    write_functions(directory)
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def client(url: str, *, key_id: str = "test", secret: str = "test") -> Any:
    """A boto3 Lambda client on kfn's gateway; one attempt per call (a test sees each answer)."""
    return boto3.client("lambda", endpoint_url=url, region_name=REGION, aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=60, connect_timeout=5))


def test_boto3_invokes_a_function_with_the_payload_as_its_event(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="hello", Payload=json.dumps({"name": "ada"}))
    assert (response["StatusCode"], response["ExecutedVersion"]) == (200, "$LATEST")
    assert "FunctionError" not in response
    result = json.loads(response["Payload"].read())
    assert (result["hello"], result["function"]) == ("ada", "hello")
    assert result["request_id"] == response["ResponseMetadata"]["RequestId"]


def tail_of(response: dict[str, Any]) -> list[str]:
    assert response["StatusCode"] == 200 and "FunctionError" not in response, response
    return base64.b64decode(response["LogResult"]).decode().split("\n")


REPORT = re.compile(r"REPORT RequestId: (?P<id>[-\w]+)\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
                    r"Memory Size: 256 MB\tMax Memory Used: [1-9]\d* MB(?P<init>\tInit Duration: \d+\.\d\d ms)?")


def test_boto3_log_tail_is_lambdas_with_start_end_and_report_and_init_duration_only_when_cold(
        local: LocalMode) -> None:
    lam = client(local.url)
    tails = [tail_of(lam.invoke(FunctionName="tailed", Payload=json.dumps({"name": n}), LogType="Tail"))
             for n in ("cold", "warm")]
    for (start, printed, end, report, last), name in zip(tails, ("cold", "warm"), strict=True):
        request_id = start.removeprefix("START RequestId: ").removesuffix(" Version: $LATEST")
        assert start == f"START RequestId: {request_id} Version: $LATEST"
        assert printed == f"printed for {name}"
        assert end == f"END RequestId: {request_id}"
        match = REPORT.fullmatch(report)
        assert match is not None and match["id"] == request_id, report
        assert last == ""   # the REPORT line ends the log, with its newline
        # Init Duration on the invocation that paid its environment's cold start only.
        assert (match["init"] is not None) == (name == "cold"), report


def test_boto3_log_tail_is_the_last_4_kb_of_a_long_log_ending_with_report(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="long-tail", Payload=json.dumps({"name": "long", "lines": 1000}),
                                        LogType="Tail")
    assert response["StatusCode"] == 200
    log = base64.b64decode(response["LogResult"])
    assert len(log) == 4096   # of about 100 KB printed
    *_, printed, end, report, last = log.decode().split("\n")
    assert (printed, last) == ("printed for long", "")
    assert end.startswith("END RequestId: ") and REPORT.fullmatch(report) is not None
    assert b"line 00999 " in log and b"line 00900 " not in log


def test_boto3_client_context_reaches_the_handler(local: LocalMode) -> None:
    context = base64.b64encode(json.dumps({"custom": {"tenant": "t-1"}}).encode()).decode()
    response = client(local.url).invoke(FunctionName="hello", Payload=b"{}", ClientContext=context)
    assert json.loads(response["Payload"].read())["custom"] == {"tenant": "t-1"}


@pytest.mark.parametrize("name", ["hello.default", f"arn:aws:lambda:{REGION}:123456789012:function:hello",
                                  "123456789012:function:hello:$LATEST"])
def test_boto3_names_a_function_by_arn_or_with_its_namespace(local: LocalMode, name: str) -> None:
    response = client(local.url).invoke(FunctionName=name, Payload=b'{"name": "arn"}')
    assert json.loads(response["Payload"].read())["hello"] == "arn"


def test_a_handlers_exception_is_a_function_error_not_an_exception(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="boom", Payload=b"{}")
    assert (response["StatusCode"], response["FunctionError"]) == (200, "Unhandled")
    error = json.loads(response["Payload"].read())
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "the handler failed on purpose")


def test_a_function_past_its_timeout_is_a_sandbox_timedout_function_error(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="sleepy", Payload=b"{}")
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]


def test_an_unknown_function_raises_resource_not_found(local: LocalMode) -> None:
    lam = client(local.url)
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as raised:
        lam.invoke(FunctionName="nope", Payload=b"{}")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "function:nope" in raised.value.response["Error"]["Message"]


def test_a_payload_that_is_not_json_raises_invalid_request_content(local: LocalMode) -> None:
    lam = client(local.url)
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName="hello", Payload=b"not json")


def test_dry_run_is_204(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="hello", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204


def test_an_event_invocation_is_accepted_202_and_runs_later(local: LocalMode, tmp_path: Path) -> None:
    marker = tmp_path / "ran.json"
    response = client(local.url).invoke(FunctionName="writer", InvocationType="Event",
                                        Payload=json.dumps({"file": str(marker)}))
    assert response["StatusCode"] == 202
    ran = wait_until(lambda: marker.exists() and marker.read_text(), timeout=30, what="the event's invocation")
    assert json.loads(ran)["request_id"] == response["ResponseMetadata"]["RequestId"]


# -- the AWS CLI ------------------------------------------------------------------------------------

def aws(local: LocalMode, *args: str, cwd: Path, key_id: str = "test",
        secret: str = "test") -> subprocess.CompletedProcess[str]:
    """`aws ARGS --endpoint-url GATEWAY` with these credentials (dummy ones by default) and nothing
    read from ~/.aws."""
    executable = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if executable is None:
        pytest.skip("the AWS CLI is not installed (pip install awscli: the test extra has it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION=REGION,
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1", AWS_PAGER="",
               AWS_CONFIG_FILE=str(cwd / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(cwd / "no-credentials"))
    return subprocess.run([executable, *args, "--endpoint-url", local.url], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def raw_payload(local: LocalMode, tmp_path: Path) -> list[str]:
    """How the installed CLI takes --payload as raw JSON: v2 reads blobs as base64 unless told
    `--cli-binary-format raw-in-base64-out` (an option v1, which sends it as it is, does not know)."""
    version = aws(local, "--version", cwd=tmp_path)
    return ["--cli-binary-format", "raw-in-base64-out"] if "aws-cli/2" in version.stdout + version.stderr else []


def test_the_aws_cli_invokes_a_function_and_writes_its_result(local: LocalMode, tmp_path: Path) -> None:
    done = aws(local, "lambda", "invoke", "--function-name", "hello", "--payload", '{"name": "cli"}',
               *raw_payload(local, tmp_path), "out.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    assert json.loads((tmp_path / "out.json").read_text())["hello"] == "cli"


def test_the_aws_cli_reports_a_function_error_and_an_unknown_function(local: LocalMode, tmp_path: Path) -> None:
    failed = aws(local, "lambda", "invoke", "--function-name", "boom", "out.json", cwd=tmp_path)
    assert failed.returncode == 0, failed.stderr   # the call worked: the function failed
    assert json.loads(failed.stdout)["FunctionError"] == "Unhandled"
    assert json.loads((tmp_path / "out.json").read_text())["errorType"] == "ValueError"
    unknown = aws(local, "lambda", "invoke", "--function-name", "nope", "out.json", cwd=tmp_path)
    assert unknown.returncode != 0
    assert "ResourceNotFoundException" in unknown.stderr


# -- functions that cannot run --------------------------------------------------------------------------

@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event", "DryRun"])
def test_without_gateway_keys_boto3_cannot_invoke_a_key_protected_function(local: LocalMode,
                                                                           invocation_type: str) -> None:
    with pytest.raises(ClientError) as raised:
        client(local.url).invoke(FunctionName="guarded", Payload=b'{"name": "x"}', InvocationType=invocation_type)
    assert raised.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert local.invoke("guarded").status == 401   # as on its HTTP path


def test_an_init_error_is_the_functions_error_for_boto3_and_500_on_http_never_its_output(local: LocalMode) -> None:
    response = client(local.url).invoke(FunctionName="broken", Payload=b"{}")
    payload = response["Payload"].read()
    assert (response["StatusCode"], response.get("FunctionError")) == (200, "Unhandled")
    error = json.loads(payload)
    assert error["errorType"] == "RuntimeError" and "init failed on purpose" in error["errorMessage"]
    assert error["requestId"] == response["ResponseMetadata"]["RequestId"]
    answer = local.invoke("broken")
    assert (answer.status, answer.json()) == (500, {"message": "Internal Server Error"})
    assert answer.headers["X-Kfn-Error-Type"] == "RuntimeError"
    for seen in (payload, json.dumps(response["ResponseMetadata"]["HTTPHeaders"]).encode(), answer.body,
                 json.dumps(dict(answer.headers)).encode()):
        assert SECRET.encode() not in seen
    # Its owner sees all of it.
    errors = wait_until(lambda: [e for e in local.errors()["functions"] if e["function"] == "broken"], timeout=10,
                        what="the failure in /system/errors")
    assert SECRET in errors[0]["error"] and "init failed on purpose" in errors[0]["error"]


def test_a_requirement_pip_cannot_install_is_a_503_saying_so_without_pips_words(local: LocalMode) -> None:
    answer = local.invoke("nodeps", timeout=60)
    assert answer.status == 503 and answer.headers["Retry-After"].isdigit()
    body = answer.json()
    assert "its requirements could not be installed" in body["error"]
    assert body["requestId"] == answer.headers["X-Kfn-Request-Id"]
    with pytest.raises(ClientError) as raised:
        client(local.url).invoke(FunctionName="nodeps", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == "ResourceNotReadyException"
    for seen in (answer.body, json.dumps(dict(answer.headers)).encode(),
                 json.dumps(raised.value.response, default=str).encode()):
        assert b"hunter2" not in seen and b"pip" not in seen
    errors = [e for e in local.errors()["functions"] if e["function"] == "nodeps"]
    assert "pip install failed" in errors[0]["error"] and "hunter2" in errors[0]["error"]


# -- with keys ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("keyed")
    write_manifest(directory, "hello", HELLO)
    keys = directory.parent / "keys.yaml"
    keys.write_text(json.dumps({"namespaces": {"default": {KEY_ID: KEY}}}))
    server = LocalMode(directory, extra_args=["--keys", str(keys)])
    try:
        yield server.start()
    finally:
        server.stop()


def test_with_keys_boto3_signing_with_a_key_invokes(keyed: LocalMode) -> None:
    response = client(keyed.url, key_id=KEY_ID, secret=KEY).invoke(FunctionName="hello", Payload=b'{"name": "k"}')
    assert json.loads(response["Payload"].read())["hello"] == "k"


@pytest.mark.parametrize(("key_id", "secret", "code"), [
    (KEY_ID, "not-the-key-0123456789", "InvalidSignatureException"),
    ("someone", KEY, "UnrecognizedClientException"),
])
def test_with_keys_boto3_signing_with_anything_else_is_refused(keyed: LocalMode, key_id: str, secret: str,
                                                                code: str) -> None:
    with pytest.raises(ClientError) as raised:
        client(keyed.url, key_id=key_id, secret=secret).invoke(FunctionName="hello", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_with_keys_the_aws_cli_signs_with_its_credentials(keyed: LocalMode, tmp_path: Path) -> None:
    done = aws(keyed, "lambda", "invoke", "--function-name", "hello", "out.json", cwd=tmp_path, key_id=KEY_ID,
               secret=KEY)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out.json").read_text())["hello"] == "world"
    refused = aws(keyed, "lambda", "invoke", "--function-name", "hello", "out.json", cwd=tmp_path)
    assert refused.returncode != 0 and "UnrecognizedClientException" in refused.stderr
