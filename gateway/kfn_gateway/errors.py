"""The gateway's own answers when no function answered: JSON {"error": ..., "function": ...}
(a leaf module, for every HTTP front-end of the gateway)."""
from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from kfn_gateway.connections import close_after
from kfn_gateway.outcomes import Refusal, Refused

# Why a request's body was not taken → the status (the connection is closed after it).
REFUSED_STATUS: Mapping[Refusal, int] = {Refusal.TOO_LARGE: 413, Refusal.TOO_SLOW: 408, Refusal.BROKEN: 400}


def json_error(status: int, message: str, function: str = "", *, retry_after: int | None = None,
               close: bool = False, now: bool = False, request_id: str | None = None) -> web.Response:
    """The gateway's error answer: `close` ends the connection after it (the client must not send
    its next request on it), `now` also leaves the rest of the request unread."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body: dict[str, str] = {"error": message}
    if function:
        body["function"] = function
    if request_id is not None:
        body["requestId"] = request_id   # the answer's id, for the caller to quote
    response = web.Response(status=status, headers=headers, content_type="application/json",
                            text=json.dumps(body))
    if close:
        response.force_close()   # the client must not send its next request on this connection
    if now:
        close_after(response)   # and the rest of this one is not worth reading
    return response


def response_status(response: web.StreamResponse) -> int:
    """The status a held request is counted with: its answer's."""
    return response.status


def client_gone() -> web.Response:
    """What a held request whose client went away ends with (nginx's 499): nobody reads it."""
    return web.Response(status=499)


def refused(e: Refused, function: str = "") -> web.Response:
    """The answer to a body not taken; the rest of a broken or slow request is not read."""
    return json_error(REFUSED_STATUS[e.refusal], str(e), function, close=True, now=e.refusal is not Refusal.TOO_LARGE)
