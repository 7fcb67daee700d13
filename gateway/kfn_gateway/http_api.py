"""The HTTP front-end: functions behind URLs, as API Gateway's HTTP APIs put them.

    ANY /function/{name}[/{path}]        invoke a function through an API Gateway HTTP API event
    ANY (Host in spec.http.hosts)        the same, with the function at the root of that host
    ANY /async-function/{name}[/{path}]  the same event stored as an asynchronous invocation: 202
                                         {"requestId": ...} once stored; X-Callback-Url gets the result

{name} is NAME (in the gateway's default namespace) or NAME.NAMESPACE, as in OpenFaaS. A function
whose spec.http.auth is `key` needs a key of its namespace (`kfn_gateway.auth`, SECURITY.md).

An HTTP request becomes an event (`kfn_gateway.apigateway`), the dispatch core runs it
(`kfn_gateway.dispatch`), and the outcome becomes the response: the function's result in API
Gateway's shape ({"message": ...} for its failure), or the gateway's own JSON error
({"error": ..., "function": ...}) with the status `STATUS` gives why nothing ran.
"""
from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import HttpVersion, HttpVersion11, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from kfn.core import naming
from kfn.core.functions import Function, FunctionRef
from kfn.core.httpspec import CorsSpec
from kfn.core.instances import Invocation
from kfn.core.keys import KeySource
from kfn_gateway import apigateway, cors
from kfn_gateway.auth import Scope, authorize, credential_headers, key_headers
from kfn_gateway.connections import expect_continue, read_body
from kfn_gateway.dispatch import Dispatcher
from kfn_gateway.errors import client_gone, json_error, refused, response_status
from kfn_gateway.outcomes import Accepted, NotRun, Outcome, Ran, Reason, Refused, TimedOut
from kfn_gateway.routing import Route
from kfn_runtime import awslambda

logger = logging.getLogger(__name__)

# An id a client gives its asynchronous invocation (X-Call-Id), so that a retry stores it once.
_CALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_CALLBACK_URL = 2048

# Why nothing ran → the gateway's status.
STATUS: Mapping[Reason, int] = {
    Reason.QUEUE_FULL: 429, Reason.THROTTLED: 429, Reason.NO_SLOT: 503, Reason.CANNOT_START: 503,
    Reason.SCALE_FAILED: 503, Reason.FUNCTION_GONE: 404, Reason.SHUTTING_DOWN: 503, Reason.TURNED_AWAY: 503,
    Reason.UNREACHABLE: 502, Reason.NO_STORE: 503, Reason.STORE_FAILED: 503, Reason.TOO_LARGE: 413,
}
TIMED_OUT_STATUS = 504      # the instance did not answer in time
INSTANCE_LOST_STATUS = 502  # the instance failed after it was given the invocation


def status_of(outcome: Outcome) -> int:
    """The HTTP status of an outcome, as /function/ answers it and the metrics count it."""
    if isinstance(outcome, Ran):
        result = outcome.result
        if result.function_error is None:
            return 200
        return 504 if result.error_type == awslambda.ERROR_TIMED_OUT else 500
    if isinstance(outcome, NotRun):
        return STATUS[outcome.reason]
    return TIMED_OUT_STATUS if isinstance(outcome, TimedOut) else INSTANCE_LOST_STATUS


class HttpApi:
    """/function/, /async-function/ and functions' own hosts, over one dispatch core."""

    def __init__(self, dispatcher: Dispatcher, keys: KeySource) -> None:
        self._dispatcher = dispatcher
        self._settings = dispatcher.settings
        self._keys = keys
        self._hosts: dict[str, FunctionRef] | None = None
        dispatcher.on_change(self._forget_hosts)

    # -- hosts --------------------------------------------------------------------------------------

    @web.middleware
    async def hosts_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request to a host in some function's spec.http.hosts is that function's, whatever its path."""
        if self._hosts is None:
            self._hosts = self._host_index()
        if self._hosts:
            function = self._by_host(request.host or "")
            if function is not None:
                raw = origin_form(request.raw_path)
                path, _, query = raw.partition("?")
                return await self.invoke_http(request, function, label=function.name, path=path or "/",
                                              query=query, prefix="")
        return await handler(request)

    def _forget_hosts(self, ref: FunctionRef) -> None:
        self._hosts = None   # rebuilt on the next request

    def _host_index(self) -> dict[str, FunctionRef]:
        """Host (or *.domain) → the function served at its root; rebuilt after the backend changes."""
        index: dict[str, FunctionRef] = {}
        for function in sorted(self._dispatcher.backend.functions(), key=claim_order):
            for host in function.spec.http.hosts:
                index.setdefault(host, function.ref)   # two claiming one host: the first claim wins
        return index

    def _by_host(self, host_header: str) -> Function | None:
        """The function served at the root of a Host header's name (spec.http.hosts), if one is."""
        assert self._hosts is not None
        host = host_header.lower()
        if host.startswith("["):
            return None   # an IP literal names no function
        host = host.rsplit(":", 1)[0] if ":" in host else host
        if host.rpartition(".")[2].isdigit():
            return None   # nor an IPv4 address: what is sent to the gateway's address stays its own
        ref = self._hosts.get(host)
        if ref is None and "." in host:
            ref = self._hosts.get("*." + host.split(".", 1)[1])
        return self._dispatcher.backend.function(ref) if ref is not None else None

    # -- the routes ---------------------------------------------------------------------------------

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a body the gateway would refuse is refused before it is sent
        (413 instead of 100 Continue); otherwise the client is told to go on."""
        limit = (self._settings.max_async_payload_bytes if request.path.startswith(naming.ASYNC_FUNCTION_PATH_PREFIX)
                 else self._settings.max_body_bytes)
        return await expect_continue(request, limit)

    async def invoke_path(self, request: web.Request) -> web.StreamResponse:
        """/function/NAME[.NAMESPACE][/path]: the function sees the path below its mount."""
        name = request.match_info["name"]
        function = self._dispatcher.function(name)
        if function is None:
            return json_error(404, f"no function named {name!r}", name)
        path, query = _below_mount(request, naming.FUNCTION_PATH_PREFIX)
        return await self.invoke_http(request, function, label=name, path=path, query=query,
                                      prefix=naming.FUNCTION_PATH_PREFIX + name)

    async def invoke_async_path(self, request: web.Request) -> web.StreamResponse:
        """/async-function/NAME[.NAMESPACE][/path]: the event /function/ would send, stored as an
        asynchronous invocation; 202 {"requestId": ID} (also in X-Call-Id) once it is durable.

        The caller may name the invocation (X-Call-Id: a retry with the same id stores one event)
        and ask for the result (X-Callback-Url: POSTed the function's answer when it is known, as
        OpenFaaS's queue worker does). Runs as long as the store takes to confirm.
        """
        name = request.match_info["name"]
        dispatcher = self._dispatcher
        function = dispatcher.function(name)
        if function is None:
            return json_error(404, f"no function named {name!r}", name)
        route = dispatcher.route(function.ref)
        strip = self._credentials(request, function)
        if isinstance(strip, web.Response):
            return _counted(route, strip)
        headers_in = request.headers
        callback_url = headers_in.get("X-Callback-Url")
        if callback_url is not None and not _is_http_url(callback_url):
            return _counted(route, json_error(400, "X-Callback-Url must be an http:// or https:// URL", name))
        invocation_id = headers_in.get("X-Call-Id") or apigateway.invocation_id()
        if not _CALL_ID.fullmatch(invocation_id):
            return _counted(route, json_error(
                400, "X-Call-Id must be 1-128 letters, digits and . _ : - (starting with a letter or digit)", name))
        try:
            body = await read_body(request, self._settings.max_async_payload_bytes, self._settings.body_timeout)
        except Refused as e:
            return _counted(route, refused(e, name))
        path, query = _below_mount(request, naming.ASYNC_FUNCTION_PATH_PREFIX)
        try:
            event, _ = self._http_event(request, function, body, path=path, query=query,
                                        prefix=naming.ASYNC_FUNCTION_PATH_PREFIX + name, strip=strip)
        except apigateway.NoRoute:
            return _counted(route, _not_found())
        outcome = await dispatcher.accept_event(function, orjson.dumps(event), invocation_id=invocation_id,
                                                callback_url=callback_url, caller_chosen="X-Call-Id" in headers_in)
        if not isinstance(outcome, Accepted):
            return _counted(route, json_error(STATUS[outcome.reason], outcome.message, name,
                                              retry_after=outcome.retry_after))
        stored = outcome.invocation_id
        return _counted(route, web.json_response({"requestId": stored}, status=202,
                                                 headers={"X-Call-Id": stored, "X-Kfn-Request-Id": stored}))

    def _credentials(self, request: web.Request, function: Function) -> frozenset[str] | web.Response:
        """For a key-protected function (spec.http.auth key): the 401/403 answer, or the headers
        that carried the key (kept from the function). For a public function, the headers that
        carry a kfn key anyway (`key_headers`): no function sees a caller's key."""
        if function.spec.http.auth.type != "key":
            if not credential_headers(request.headers):
                return frozenset()   # the common case costs no key lookup
            return key_headers(request.headers, self._keys.keys())
        outcome = authorize(request, Scope.of_namespace(function.namespace), self._keys)
        if isinstance(outcome, web.Response):
            return outcome
        return frozenset(credential_headers(request.headers))

    async def invoke_http(self, request: web.Request, function: Function, *, label: str, path: str, query: str,
                          prefix: str) -> web.StreamResponse:
        """Answer one HTTP request with the function's result; runs as long as the invocation.

        Never raises for a failure of an instance or of the function: those answer with an error
        response. Only the client going away ends it early (cancelled, or its answer dropped).
        A request counts as held (the load the autoscaler sees) from when its body has arrived.
        """
        dispatcher = self._dispatcher
        route = dispatcher.route(function.ref)
        http = function.spec.http
        headers_in = request.headers
        if http.cors is not None and cors.is_preflight(request.method, headers_in):
            # Browsers send preflights without credentials; API Gateway answers them unauthenticated.
            return _counted(route, web.Response(status=204, headers=cors.preflight(http.cors, headers_in)))
        strip = self._credentials(request, function)   # a key is never the function's to see
        if isinstance(strip, web.Response):
            return _counted(route, _with_cors(strip, http.cors, headers_in))
        try:
            body = await read_body(request, self._settings.max_body_bytes, self._settings.body_timeout)
        except Refused as e:
            return _counted(route, _with_cors(refused(e, label), http.cors, headers_in))
        return await dispatcher.held(
            route, self._answer(request, function, route, body, label=label, path=path, query=query, prefix=prefix,
                                strip=strip),
            status=response_status, lost=client_gone,
            failed=lambda: json_error(500, f"the gateway failed to invoke function {label!r}", label))

    def _http_event(self, request: web.Request, function: Function, body: bytes, *, path: str, query: str,
                    prefix: str, strip: frozenset[str]) -> tuple[dict[str, Any], str]:
        """The API Gateway event of an HTTP request to `function` (the path below its mount, the
        headers in `strip` left out), and the API request id it carries; for /function/ and
        /async-function/ alike."""
        headers_in = request.headers
        source_ip, forwarded_for = apigateway.trusted_client(
            request.remote or "", headers_in.getall("X-Forwarded-For", ()), trusted_hops=self._settings.trusted_hops)
        host = request.host or ""
        scheme = request.scheme
        _, colon, port = host.rpartition(":")
        headers = headers_in.items()
        if strip:
            headers = [(name, value) for name, value in headers if name.lower() not in strip]  # type: ignore[assignment]
        http_request = apigateway.HttpRequest(
            method=request.method, path=path, raw_query=query, headers=headers,
            body=body, source_ip=source_ip, forwarded_for=forwarded_for, scheme=scheme,
            port=int(port) if colon and port.isdigit() else (443 if scheme == "https" else 80),
            protocol=_protocol(request.version),
            prefix=prefix)
        api_request_id = apigateway.request_id()
        event = apigateway.event(http_request, payload_format=function.spec.http.payloadFormat,
                                 api_request_id=api_request_id, routes=function.spec.http.route_table)
        return event, api_request_id

    async def _answer(self, request: web.Request, function: Function, route: Route, body: bytes, *, label: str,
                      path: str, query: str, prefix: str, strip: frozenset[str]) -> web.StreamResponse:
        http = function.spec.http
        headers_in = request.headers
        try:
            event, api_request_id = self._http_event(request, function, body, path=path, query=query, prefix=prefix,
                                                     strip=strip)
        except apigateway.NoRoute:
            return _with_cors(_not_found(), http.cors, headers_in)
        invocation = Invocation(payload=orjson.dumps(event), request_id=apigateway.invocation_id(),
                                trace_id=event["headers"].get("x-amzn-trace-id"))
        outcome = await self._dispatcher.dispatch(function, route, invocation)
        if not isinstance(outcome, Ran):
            if isinstance(outcome, NotRun):
                response = json_error(STATUS[outcome.reason], outcome.message, label,
                                      retry_after=outcome.retry_after, request_id=invocation.request_id)
            else:
                response = json_error(status_of(outcome), outcome.message, label, request_id=invocation.request_id)
            response.headers["X-Kfn-Request-Id"] = invocation.request_id
            return _with_cors(response, http.cors, headers_in)
        result = outcome.result
        if result.function_error:
            if result.error_type == awslambda.ERROR_TIMED_OUT:
                out = apigateway.timed_out(api_request_id)
            else:
                out = apigateway.internal_error(api_request_id)
            headers_out = [*out.headers, ("X-Amz-Function-Error", result.function_error)]
            if result.error_type:
                headers_out.append(("X-Kfn-Error-Type", result.error_type))
            logger.info("function %s failed (%s): %s", function.ref, result.error_type, result.payload[:500])
        else:
            try:
                out = apigateway.response(result.payload, payload_format=http.payloadFormat,
                                          api_request_id=api_request_id)
            except apigateway.InvalidResult as e:
                logger.warning("function %s returned a result API Gateway would reject: %s", function.ref, e)
                out = apigateway.internal_error(api_request_id)
                headers_out = [*out.headers, ("X-Kfn-Error-Type", awslambda.ERROR_INVALID_RESPONSE)]
            else:
                headers_out = out.headers
        headers_out.append(("X-Kfn-Request-Id", invocation.request_id))
        if http.cors is not None:
            headers_out = cors.apply(http.cors, headers_in, headers_out)
        return web.Response(status=out.status, body=out.body or None, headers=headers_out)


def _counted(route: Route, response: web.Response) -> web.Response:
    """An answer the gateway gave without holding the request for an instance, counted."""
    Dispatcher.count(route, response.status)
    return response


def claim_order(function: Function) -> tuple[str, FunctionRef]:
    """Which of the functions claiming one host serves it, as the Gateway API resolves conflicting
    routes: the oldest (its Kubernetes creationTimestamp, RFC 3339 in UTC, which sorts by time),
    then the first by namespace and name (local mode has no timestamps). A function of another
    namespace claiming a host later takes nothing from the function that has it."""
    created = (function.metadata.model_extra or {}).get("creationTimestamp")
    return (str(created) if created else "", function.ref)


def _below_mount(request: web.Request, prefix: str) -> tuple[str, str]:
    """The path below PREFIX{name} (at least "/") and the query of a request's raw target, cut by
    position: the name itself may have come percent-encoded."""
    raw = origin_form(request.raw_path)
    start = len(prefix)
    end = min((i for i in (raw.find("/", start), raw.find("?", start)) if i >= 0), default=len(raw))
    path, _, query = raw[end:].partition("?")
    return path or "/", query


def _is_http_url(text: str) -> bool:
    if len(text) > MAX_CALLBACK_URL or any(c.isspace() for c in text):
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        # A name the lookup would refuse (an empty label, one over 63 characters) fails now, not
        # at delivery, where it could only be retried until it is given up.
        host = parts.hostname
        if host:
            host.encode("idna")
    except (ValueError, UnicodeError):
        return False
    return parts.scheme in ("http", "https") and bool(host)


def origin_form(target: str) -> str:
    """The path and query of a request target: an absolute-form target (`GET http://host/p`, which
    proxies send and servers must accept) loses its scheme and authority."""
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isalpha():
        slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        rest = rest[slash:]
        return rest if rest.startswith("/") else "/" + rest
    return "/"   # the asterisk form (OPTIONS *) or nonsense


def _with_cors(response: web.Response, config: CorsSpec | None, request_headers: Mapping[str, str]) -> web.Response:
    """The gateway's own answer with the function's CORS headers, so a browser can read the error."""
    if config is not None:
        for name, value in cors.apply(config, request_headers, ()):
            response.headers.add(name, value)
    return response


def _not_found() -> web.Response:
    """API Gateway's answer to a request that none of the function's routes takes."""
    out = apigateway.not_found(apigateway.request_id())
    return web.Response(status=out.status, body=out.body, headers=CIMultiDict(out.headers))


def _protocol(version: HttpVersion) -> str:
    return "HTTP/1.1" if version == HttpVersion11 else f"HTTP/{version.major}.{version.minor}"
