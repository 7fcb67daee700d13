"""The `context` argument of a Lambda handler, with the attributes AWS's Python runtime gives it."""
from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name", "installation_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: dict[str, Any]) -> None:
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")


_NO_IDENTITY: dict[str, Any] = {}
# The reserved variables the context reports, read once per environment: Lambda sets them
# before init, and they do not change for the environment's life.
_names: tuple[str | None, ...] = ()


def _read_names() -> tuple[str | None, ...]:
    global _names
    env = os.environ
    # memory_limit_in_mb is a string, as on AWS.
    _names = tuple(env.get(name) for name in (
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME"))
    return _names


def _object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from a Runtime API header; ValueError (the runtime's UnmarshalError) for anything else."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"the {what} is not a JSON object: {text[:100]!r}")
    return data


class LambdaContext:
    """As awslambdaric builds it: names from the environment, the rest from the invocation."""

    __slots__ = ("_deadline_ms", "aws_request_id", "client_context", "function_name", "function_version",
                 "identity", "invoked_function_arn", "log_group_name", "log_stream_name", "memory_limit_in_mb",
                 "tenant_id")

    def __init__(self, *, request_id: str, deadline_ms: int, invoked_function_arn: str,
                 client_context: str | None = None, cognito_identity: str | None = None,
                 tenant_id: str | None = None) -> None:
        names = _names or _read_names()
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms
        self.invoked_function_arn = invoked_function_arn
        self.function_name, self.function_version, self.memory_limit_in_mb, self.log_group_name, \
            self.log_stream_name = names
        self.client_context = ClientContext(_object(client_context, "client context")) if client_context else None
        self.identity = CognitoIdentity(_object(cognito_identity, "Cognito identity") if cognito_identity
                                        else _NO_IDENTITY)
        self.tenant_id = tenant_id

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return (f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r}, "
                f"remaining_ms={self.get_remaining_time_in_millis()})")
