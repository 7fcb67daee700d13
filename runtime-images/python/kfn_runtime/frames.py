"""kfn's own channel between an instance host and the environments its zygote forks: the Runtime
API's messages as length-prefixed frames on the Unix socket each environment gets at fork.

kfn's Python client (`kfn_runtime.ric`) speaks it in a forked environment instead of HTTP: one
write each way per invocation, no HTTP head to write or parse on either side, and the environment
tells its own peak memory with each result, so the host reads no /proc file for the REPORT line.
The execution model is the Runtime API's: the environment asks for an invocation, gets one, posts
its result (which asks for the next), one invocation at a time. Every other client (AWS's
awslambdaric, a custom runtime, kfn's client started as a command) speaks the standard Runtime API
over HTTP on the environment's TCP listener, which stays.

A frame is a 4-byte big-endian length, then that many bytes:

- environment → host: `n` (Lambda's GET next), or a result, `r` (POST .../response) or `e` (POST
  .../error), followed by `REQUEST_ID\\nERROR_TYPE\\nPEAK_KIB\\n` and the result's body;
- host → environment, an invocation: `REQUEST_ID\\nDEADLINE_MS\\nFUNCTION_ARN\\nTRACE_ID\\nCLIENT_CONTEXT\\n`
  and the event (an empty field: the invocation has none).

Fields are Latin-1 with line breaks and NULs dropped, as the HTTP headers carrying them would be.
Standard library only and no asyncio: environments import it.
"""
from __future__ import annotations

LENGTH_BYTES = 4
POLL = b"\x00\x00\x00\x01n"
NEXT, RESPONSE, ERROR = b"n", b"r", b"e"
# The head of a result (kind and fields) is at most this long; the rest is its body.
MAX_HEAD_BYTES = 4096


class FrameError(ValueError):
    """A frame that is not one of the channel's."""


def safe_field(value: str) -> bytes:
    """`value` as one field (or one HTTP header value): line breaks and NULs dropped (JSON
    whitespace, in a client context), and what Latin-1 cannot say replaced."""
    if "\r" in value or "\n" in value or "\0" in value:
        value = value.replace("\r", "").replace("\n", "").replace("\0", "")
    return value.encode("latin-1", "replace")


def invocation(request_id: str, deadline_ms: int, arn: bytes, trace_id: str | None, client_context: str | None,
               event: bytes) -> bytes:
    """The frame handing an environment its invocation (`arn` already a field)."""
    head = b"%s\n%d\n%s\n%s\n%s\n" % (safe_field(request_id), deadline_ms, arn,
                                      safe_field(trace_id) if trace_id else b"",
                                      safe_field(client_context) if client_context else b"")
    return (len(head) + len(event)).to_bytes(LENGTH_BYTES, "big") + head + event


def read_invocation(frame: bytes) -> tuple[dict[str, str], bytes]:
    """(the invocation's Runtime API headers, as Lambda names them, lower-case; its event) of a
    frame without its length. Raises FrameError for anything else."""
    parts = frame.split(b"\n", 5)
    if len(parts) != 6:
        raise FrameError("not an invocation frame")
    request_id, deadline, arn, trace_id, client_context, event = parts
    headers = {"lambda-runtime-aws-request-id": request_id.decode("latin-1"),
               "lambda-runtime-deadline-ms": deadline.decode("latin-1"),
               "lambda-runtime-invoked-function-arn": arn.decode("latin-1")}
    if trace_id:
        headers["lambda-runtime-trace-id"] = trace_id.decode("latin-1")
    if client_context:
        headers["lambda-runtime-client-context"] = client_context.decode("latin-1")
    return headers, event


def result(request_id: str, body: bytes, error_type: str | None, peak_kib: int) -> bytes:
    """The frame posting an invocation's result (an error when `error_type` is set), which also
    asks for the next invocation."""
    head = b"%s%s\n%s\n%d\n" % (ERROR if error_type else RESPONSE, safe_field(request_id),
                                safe_field(error_type) if error_type else b"", peak_kib)
    return (len(head) + len(body)).to_bytes(LENGTH_BYTES, "big") + head + body


def read_result_head(frame: bytes | bytearray) -> tuple[bool, str, str | None, int | None, int] | None:
    """(whether it is an error, request id, error type, peak KiB, where the body starts) of a
    result frame's start (without its length), or None if its head is not all there yet. Raises
    FrameError for one that is not a result."""
    end = -1
    for _ in range(3):
        end = frame.find(b"\n", end + 1)
        if end < 0:
            if len(frame) > MAX_HEAD_BYTES:
                raise FrameError("result head too long")
            return None
    kind = frame[:1]
    if kind not in (RESPONSE, ERROR):
        raise FrameError("not a result frame")
    request_id, error_type, peak = bytes(frame[1:end]).split(b"\n")
    return (kind == ERROR, request_id.decode("latin-1"), error_type.decode("latin-1") or None,
            int(peak) if peak.isdigit() and len(peak) < 19 else None, end + 1)
