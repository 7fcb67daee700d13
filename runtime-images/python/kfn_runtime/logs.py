"""Lambda-style logging for handler code.

The handler's print() goes to stdout as written; `logging` records from handler code go to stdout
too, formatted like AWS Lambda's Python runtime ("[LEVEL]\\ttime\\trequestId\\tmessage"), with the
current invocation's request id. The runtime's own failures (tracebacks) go to stderr.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import time

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import TextIO

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
