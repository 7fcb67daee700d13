"""What the gateway answered before it was split around a typed dispatch outcome (commit 73becbb),
found different afterwards by a differential run of the old and the new gateway side by side:
each test pins one behaviour of the old gateway, byte for byte where a client could see bytes."""
from __future__ import annotations

import json

from kfn.core.instances import InitError, StartProblem, StartReason
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend, ref
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.invoke_api import assert_lambda_error, invoke

IMPORT_ERROR = StartProblem(
    StartReason.INIT, "instance hello-1 failed to start",
    InitError("Runtime.ImportModuleError", "Unable to import module 'main': No module named 'numpy'",
              ("  File \"/var/task/main.py\", line 1, in <module>\n",)))


async def test_an_init_errors_object_on_the_invoke_api_lists_error_message_first() -> None:
    # Before: {"errorMessage", "errorType", "requestId", "stackTrace"}, awslambdaric's order.
    fake = FakeBackend(make_function("hello"), start_on_scale=False)
    fake.problems[ref("hello")] = IMPORT_ERROR
    async with fake, running_gateway(fake) as gw:
        answer = await invoke(gw)
    assert answer.status == 200
    assert list(json.loads(answer.body)) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert answer.body.startswith(b'{"errorMessage": "Unable to import module')


async def test_an_unsigned_invoke_names_the_gateways_region_in_its_arns() -> None:
    # Changed on purpose: an unsigned call (no region in a credential) used to get us-east-1 in its ARNs
    # whatever the gateway's region (kfn gateway --region, $KFN_REGION), which its functions and their
    # destination records have; the gateway now says the region its functions run in.
    fake = FakeBackend(make_function("hello"))
    async with fake, running_gateway(fake, settings=GatewaySettings(region="eu-west-1")) as gw:
        answer = await invoke(gw, "nope")
    body = assert_lambda_error(answer, 404, "ResourceNotFoundException")
    assert body["Message"] == "Function not found: arn:aws:lambda:eu-west-1:000000000000:function:nope"
