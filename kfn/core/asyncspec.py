"""How a function's asynchronous invocations are retried and where their outcomes go (Lambda's
asynchronous invocation settings and destinations)."""
from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from kfn.core.fields import MAX_NAME_LENGTH, StrictModel, invalid

# Lambda's asynchronous invocation settings (PutFunctionEventInvokeConfig) and their bounds.
MAX_RETRY_ATTEMPTS = 2
MIN_EVENT_AGE_SECONDS = 60
MAX_EVENT_AGE_SECONDS = 21600
# A function reference (NAME or NAME.NAMESPACE) and a destination URL, as the CRD checks them too.
FUNCTION_REF_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
DESTINATION_URL_PATTERN = r"^https?://[^\s/?#]+([/?#]\S*)?$"
_FUNCTION_REF = re.compile(FUNCTION_REF_PATTERN)
_DESTINATION_URL = re.compile(DESTINATION_URL_PATTERN)


class Destination(StrictModel):
    """Where the record of an asynchronous invocation's outcome goes (Lambda's destinations):
    another function, invoked asynchronously with the record as its event, or an HTTP URL that
    receives the record as a JSON POST."""

    function: str | None = Field(
        default=None, description="A function: NAME (in this function's namespace) or NAME.NAMESPACE.")
    url: str | None = Field(default=None, description="An http:// or https:// URL, POSTed the record as JSON.")

    @field_validator("function")
    @classmethod
    def _function_ref(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 2 * MAX_NAME_LENGTH + 1 or not _FUNCTION_REF.fullmatch(value)):
            raise invalid(f"must be a function name, NAME or NAME.NAMESPACE (got {value!r})")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not _DESTINATION_URL.fullmatch(value):
            raise invalid(f"must be an http:// or https:// URL (got {value!r})")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        if (self.function is None) == (self.url is None):
            raise invalid("must set exactly one of function or url")
        return self


class AsyncSpec(StrictModel):
    """How asynchronous invocations (Event, /async-function/) are retried and reported, with
    Lambda's settings and bounds. Every event that ends in failure is also kept in the
    dead-letter store (`kfn async list`, `kfn async replay`)."""

    maxRetryAttempts: int = Field(
        default=MAX_RETRY_ATTEMPTS, ge=0, le=MAX_RETRY_ATTEMPTS,
        description="Retries after a function error (0-2); Lambda waits 1 minute, then 2.")
    maximumEventAgeSeconds: int = Field(
        default=MAX_EVENT_AGE_SECONDS, ge=MIN_EVENT_AGE_SECONDS, le=MAX_EVENT_AGE_SECONDS,
        description="An event not processed within this many seconds of its arrival is given up (60-21600).")
    onSuccess: Destination | None = Field(default=None, description="Told of each successful invocation.")
    onFailure: Destination | None = Field(
        default=None, description="Told of each event given up (retries exhausted, or too old).")
