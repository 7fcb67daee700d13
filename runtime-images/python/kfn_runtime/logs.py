"""Log output: one JSON line per invocation on stdout, and Lambda-style logging for handler code.

The handler's print() goes to stdout as written; `logging` records from handler code go to stdout
too, formatted like AWS Lambda's Python runtime ("[LEVEL]\\ttime\\trequestId\\tmessage"), with the
current invocation's request id. The runtime's own failures (tracebacks) go to stderr.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any, TextIO

# The invocation a thread or task is working for; set around every handler call.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("kfn_request_id", default="")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = current_request_id.get() or "-"
        return True


class _LambdaFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%S")


def configure_handler_logging(stream: TextIO | None = None, *, level: int = logging.INFO) -> logging.Handler:
    """Give the root logger one Lambda-style handler, so logging.info() in handler code is seen.

    Like on Lambda, a later logging.basicConfig() in handler code does nothing: the root logger
    already has a handler. Returns the handler (for tests to remove it).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(_LambdaFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class EventLog:
    """Writes the runtime's structured lines (invocations, lifecycle) as single JSON lines."""

    def __init__(self, *, function_name: str, stream: TextIO | None = None) -> None:
        self._function = function_name
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def invocation(self, *, request_id: str, method: str, path: str, status: int, duration: float,
                   error_type: str | None = None, level: str = "info") -> None:
        record = {
            "time": _now(),
            "level": level,
            "msg": "invocation",
            "requestId": request_id,
            "function": self._function,
            "method": method,
            "path": path,
            "status": status,
            "durationMs": round(duration * 1000, 3),
        }
        if error_type:
            record["errorType"] = error_type
        self._write(record)

    def event(self, msg: str, *, level: str = "info", **fields: object) -> None:
        self._write({"time": _now(), "level": level, "msg": msg, "function": self._function, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stdout must not fail invocations


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
