"""How HTTP requests reach a function: its routes, hosts, event payload format, CORS and who may call it."""
from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from kfn.core.fields import StrictModel, invalid
from kfn.core.routes import DEFAULT as DEFAULT_ROUTE
from kfn.core.routes import MAX_ROUTES, InvalidRoute, RouteTable, check_routes, parse_route

PayloadFormat = Literal["2.0", "1.0"]
AuthType = Literal["none", "key"]

# A host a function may claim: a DNS name of two labels or more whose last starts with a letter, so
# never an IP address (which would take every request sent to the gateway by its address: probes,
# scrapes, kfn local's 127.0.0.1) nor a bare name such as localhost or a Service's short name.
_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]([-a-z0-9]*[a-z0-9])?$")


class CorsSpec(StrictModel):
    """CORS answered by the gateway, with API Gateway HTTP APIs' settings."""

    allowOrigins: list[str] = Field(default_factory=list,
                                    description="Origins allowed, e.g. https://app.example.com, or *.")
    allowMethods: list[str] = Field(default_factory=list, description="Methods allowed in preflights, or *.")
    allowHeaders: list[str] = Field(default_factory=list, description="Request headers allowed, or *.")
    exposeHeaders: list[str] = Field(default_factory=list, description="Response headers scripts may read.")
    maxAge: int | None = Field(default=None, ge=-1, le=86400, description="Seconds a preflight may be cached.")
    allowCredentials: bool = False

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> CorsSpec:
        if not self.allowOrigins:
            raise invalid("spec.http.cors.allowOrigins: must name at least one origin")
        return self


class HttpAuth(StrictModel):
    """Who may call the function over HTTP (checked by the gateway; see SECURITY.md)."""

    type: AuthType = Field(
        default="none",
        description="none: anyone may call it (public). key: only callers presenting an API key of the "
                    "function's namespace, or an admin key (Authorization: Bearer KEY, or X-Api-Key: KEY).")


def _route_key(key: str) -> str:
    try:
        parse_route(key)
    except InvalidRoute as e:
        raise invalid(str(e)) from None
    return key


# One route key, checked on its own (so an error names its index: spec.http.routes[1]).
RouteKey = Annotated[str, pydantic.AfterValidator(_route_key)]


class HttpSpec(StrictModel):
    """How HTTP requests reach the function."""

    payloadFormat: PayloadFormat = Field(
        default="2.0", description="The API Gateway HTTP API event format: 2.0 (default) or 1.0.")
    hosts: list[str] = Field(
        default_factory=list,
        description="Serve the function at the root of these hosts (requests routed by their Host header).")
    cors: CorsSpec | None = Field(default=None, description="CORS answered by the gateway (preflights too).")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="Public, or only for callers with an API key.")
    routes: list[RouteKey] = Field(
        default_factory=lambda: [DEFAULT_ROUTE], min_length=1, max_length=MAX_ROUTES,
        description="Routes as API Gateway HTTP APIs write them: 'GET /users/{id}', 'ANY /{proxy+}', or "
                    "$default (the catch-all, the default). They fill the event's routeKey, resource and "
                    "pathParameters; a request that matches none is answered 404 when $default is not listed.")

    @field_validator("routes")
    @classmethod
    def _distinct_routes(cls, keys: list[str]) -> list[str]:
        try:
            return check_routes(keys)
        except InvalidRoute as e:
            raise invalid(str(e)) from None

    @functools.cached_property
    def route_table(self) -> RouteTable:
        """The routes, ready to match requests (built once per Function)."""
        return RouteTable(self.routes)

    @field_validator("hosts")
    @classmethod
    def _hostnames(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise invalid(f"each host must be a lowercase DNS name of two labels or more such as fn.example.com, "
                             f"not an IP address (got {host!r})")
        if len(set(hosts)) != len(hosts):
            raise invalid("hosts must not repeat")
        return hosts
