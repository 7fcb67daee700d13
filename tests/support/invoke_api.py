"""AWS Lambda's Invoke API, called at a running gateway as boto3 calls it (botocore's signer and parser)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HeadersDict
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from botocore.session import get_session
from multidict import CIMultiDictProxy

from tests.support.gateway import RunningGateway

INVOKE = get_session().get_service_model("lambda").operation_model("Invoke")


def path_of(name: str, query: str = "") -> str:
    # As botocore sends it: the name percent-encoded (an ARN's ':' as %3A).
    return f"/2015-03-31/functions/{quote(name, safe='')}/invocations{query}"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]

    def json(self) -> Any:
        return json.loads(self.body)

    def boto(self) -> dict[str, Any]:
        """What boto3 makes of this answer (botocore's rest-json parser with Lambda's model)."""
        parser = create_parser("rest-json")
        response = {"status_code": self.status, "headers": HeadersDict(self.headers.items()), "body": self.body}
        return parser.parse(response, INVOKE.output_shape)


async def invoke(gw: RunningGateway, name: str = "hello", payload: bytes | None = b'{"x": 1}', *,
                 query: str = "", headers: dict[str, str] | None = None, method: str = "POST") -> Answer:
    async with gw.session.request(method, gw.url(path_of(name, query)), data=payload,
                                  headers=headers or {}) as response:
        return Answer(response.status, await response.read(), response.headers)


def signed(gw: RunningGateway, name: str, payload: bytes, *, key_id: str, secret: str,
           headers: dict[str, str] | None = None) -> dict[str, str]:
    """The headers botocore's signer adds for this call (as boto3 signs an Invoke)."""
    request = AWSRequest(method="POST", url=gw.base + path_of(name), data=payload, headers=headers or {})
    SigV4Auth(Credentials(key_id, secret), "lambda", "eu-west-1").add_auth(request)
    return dict(request.headers.items())


def assert_lambda_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    """The answer is Lambda's error `code` with `status`, and boto3 raises that exception."""
    assert answer.status == status
    assert answer.headers["x-amzn-ErrorType"] == code
    uuid.UUID(answer.headers["x-amzn-RequestId"])
    body = answer.json()
    assert body["Type"] == ("User" if status < 500 else "Service")
    assert body.get("message") or body.get("Message")
    parsed = answer.boto()
    assert parsed["Error"]["Code"] == code
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == status
    return body
