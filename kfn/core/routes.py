"""Route keys, as API Gateway HTTP APIs write them, and which route a request takes.

A Function declares its routes in `spec.http.routes` (default `["$default"]`): `METHOD /path`
with METHOD one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY, and a path of literal
segments, path variables (`{id}`, one whole segment) and at most one greedy variable
(`{proxy+}`, the last segment, one or more segments); or `$default`, the catch-all. A key is at
most MAX_ROUTE_KEY_LENGTH characters.

A request takes the most specific route that matches it, as an HTTP API chooses:

1. routes without a greedy variable before routes with one;
2. then segment by segment from the left, a literal before a `{variable}` before a greedy one;
3. then, for the same path, the route of the request's own method before `ANY`;
4. `$default` when no route matches; no route at all when there is no `$default` (the gateway
   then answers 404 {"message":"Not Found"}).

Paths are case-sensitive and compared segment by segment after percent-decoding each segment,
so `/users/a%2Fb` is one segment (`{id}` = `a/b`). A trailing slash makes an empty last segment:
`/users/42/` matches neither `/users/{id}` nor `/users` (a variable never matches an empty
segment), only a greedy variable or `$default`.

Pure: parsing and matching only, no I/O; the caller supplies the percent-decoding.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT = "$default"
METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
# API Gateway's quota of routes per HTTP API.
MAX_ROUTES = 300
# kfn's own bound on one route key (API Gateway documents none): matching a request walks each
# route's segments, so the routes' total length is what one request may cost the gateway (300
# keys of 4,000 segments made every request to their function cost it 0.2 s of CPU).
MAX_ROUTE_KEY_LENGTH = 512

_NAME = r"[A-Za-z0-9_.-]+"
# RFC 3986 pchar without percent-encoding: what a literal segment may be written with.
_LITERAL = r"[A-Za-z0-9._~!$&'()*+,;=:@-]+"
# The whole grammar as one expression, for the CRD's schema (the parser below says what is wrong).
ROUTE_KEY_PATTERN = (rf"^\$default$|^({'|'.join(METHODS)}) "
                     rf"(/|(/({_LITERAL}|\{{{_NAME}\}}))*/({_LITERAL}|\{{{_NAME}\+?\}}))$")
_VARIABLE = re.compile(rf"\{{({_NAME})(\+?)\}}")
_LITERAL_SEGMENT = re.compile(_LITERAL)

LITERAL, VARIABLE, GREEDY = 0, 1, 2


class InvalidRoute(ValueError):
    """A route key that is not `METHOD /path` or `$default`; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Route:
    """One parsed route key."""

    key: str                                # as written: "GET /users/{id}"
    method: str                             # GET ... or ANY
    path: str                               # "/users/{id}"
    segments: tuple[tuple[int, str], ...]   # (LITERAL, text) | (VARIABLE, name) | (GREEDY, name)

    @property
    def shape(self) -> tuple[str, tuple[object, ...]]:
        """What the route matches: its method and path with the variables' names left out.
        Two routes of one shape would match the same requests."""
        return self.method, tuple(text if kind == LITERAL else kind for kind, text in self.segments)

    @property
    def rank(self) -> tuple[bool, tuple[int, ...], bool]:
        """Sorts the more specific route first (see the module's rules)."""
        kinds = tuple(kind for kind, _ in self.segments)
        return (GREEDY in kinds, kinds, self.method == "ANY")


@dataclass(frozen=True, slots=True)
class Match:
    """The route a request took: what the event says of it."""

    route_key: str                      # "GET /users/{id}" or "$default"
    resource: str                       # the route's path ("/users/{id}"), or "$default"
    parameters: dict[str, str] | None   # path variables, decoded; None when the route has none


DEFAULT_MATCH = Match(DEFAULT, DEFAULT, None)


def parse_route(key: object) -> Route | None:
    """The route of a key, or None for `$default`. Raises InvalidRoute saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidRoute(f"a route must be a string such as 'GET /users/{{id}}' (got {type(key).__name__})")
    if key == DEFAULT:
        return None
    if len(key) > MAX_ROUTE_KEY_LENGTH:
        raise InvalidRoute(f"a route key is at most {MAX_ROUTE_KEY_LENGTH} characters (got {len(key)}: "
                           f"{key[:40]!r}...)")
    method, space, path = key.partition(" ")
    if not space or not method:
        raise InvalidRoute(f"must be 'METHOD /path' (e.g. 'GET /users/{{id}}') or '$default' (got {key!r})")
    if method not in METHODS:
        raise InvalidRoute(f"the method must be one of {', '.join(METHODS)} (got {method!r} in {key!r})")
    if not path.startswith("/"):
        raise InvalidRoute(f"the path must start with '/' after one space (got {key!r})")
    if path == "/":
        return Route(key, method, path, ((LITERAL, ""),))
    segments: list[tuple[int, str]] = []
    names: set[str] = set()
    parts = path[1:].split("/")
    for i, part in enumerate(parts):
        if not part:
            raise InvalidRoute(f"the path must not have empty segments ('//' or a trailing '/') (got {key!r})")
        variable = _VARIABLE.fullmatch(part)
        if variable:
            name, greedy = variable.groups()
            if greedy and i != len(parts) - 1:
                raise InvalidRoute(f"a greedy variable such as {{proxy+}} must be the last segment (got {key!r})")
            if name in names:
                raise InvalidRoute(f"the variable {{{name}}} appears twice in {key!r}")
            names.add(name)
            segments.append((GREEDY if greedy else VARIABLE, name))
        elif "{" in part or "}" in part:
            raise InvalidRoute(f"a path variable is a whole segment named with letters, digits and -_. "
                               f"such as /users/{{id}} or /{{proxy+}} (got {part!r} in {key!r})")
        elif not _LITERAL_SEGMENT.fullmatch(part):
            raise InvalidRoute(f"path segments may contain only letters, digits and -._~!$&'()*+,;=:@ "
                               f"(got {part!r} in {key!r})")
        else:
            segments.append((LITERAL, part))
    return Route(key, method, path, tuple(segments))


def check_routes(keys: Iterable[object]) -> list[str]:
    """Every key parsed, and no two routes of one shape. Raises InvalidRoute naming the clash."""
    seen: dict[object, str] = {}
    out: list[str] = []
    for key in keys:
        route = parse_route(key)
        shape: object = DEFAULT if route is None else route.shape
        if shape in seen:
            first = seen[shape]
            same = "is listed twice" if first == key else f"matches the same requests as {first!r}"
            raise InvalidRoute(f"{key!r} {same}")
        seen[shape] = str(key)
        out.append(str(key))
    return out


class RouteTable:
    """A function's routes, ready to match requests. Built once per Function (its routes are
    checked by the model already: InvalidRoute here means a key that was never checked)."""

    __slots__ = ("_routes", "_default")

    def __init__(self, keys: Iterable[str]) -> None:
        routes: list[Route] = []
        self._default = False
        for key in keys:
            route = parse_route(key)
            if route is None:
                self._default = True
            else:
                routes.append(route)
        self._routes = tuple(sorted(routes, key=lambda r: r.rank))

    def match(self, method: str, path: str, *, decode: Callable[[str], str]) -> Match | None:
        """The route `method path` takes, `path` as sent (percent-encoded, from "/"), each of its
        segments percent-decoded by `decode`; None when no route matches and there is no $default."""
        if not self._routes:
            return DEFAULT_MATCH if self._default else None
        parts = [decode(part) for part in path[1:].split("/")] if path.startswith("/") else None
        if parts is not None:
            for route in self._routes:
                if route.method != method and route.method != "ANY":
                    continue
                parameters = _match(route, parts)
                if parameters is not None:
                    return Match(route.key, route.path, parameters or None)
        return DEFAULT_MATCH if self._default else None


def _match(route: Route, parts: list[str]) -> dict[str, str] | None:
    """The route's variables for a request's decoded segments, or None when it does not match."""
    segments = route.segments
    greedy = segments[-1][0] == GREEDY
    if len(parts) != len(segments) and not (greedy and len(parts) >= len(segments)):
        return None
    parameters: dict[str, str] = {}
    for i, (kind, text) in enumerate(segments):
        if kind == LITERAL:
            if parts[i] != text:
                return None
        elif kind == VARIABLE:
            if not parts[i]:
                return None
            parameters[text] = parts[i]
        else:
            rest = "/".join(parts[i:])
            if not rest:
                return None
            parameters[text] = rest
    return parameters
