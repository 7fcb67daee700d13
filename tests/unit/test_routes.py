"""Route keys (spec.http.routes) and which route a request takes, as API Gateway HTTP APIs choose."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfn.core.routes import DEFAULT, ROUTE_KEY_PATTERN, InvalidRoute, Match, RouteTable, check_routes, parse_route


def match(routes: list[str], method: str, path: str) -> Match | None:
    return RouteTable(routes).match(method, path, decode=unquote)


def taken(routes: list[str], method: str, path: str) -> tuple[str, dict[str, str] | None] | None:
    found = match(routes, method, path)
    return None if found is None else (found.route_key, found.parameters)


# -- matching --------------------------------------------------------------------------------------

def test_the_default_route_takes_every_request() -> None:
    assert match([DEFAULT], "DELETE", "/any/thing") == Match("$default", "$default", None)


def test_a_path_variable_takes_one_segment() -> None:
    found = match(["GET /users/{id}"], "GET", "/users/42")
    assert found == Match("GET /users/{id}", "/users/{id}", {"id": "42"})


def test_a_route_without_variables_has_no_path_parameters() -> None:
    assert taken(["POST /orders"], "POST", "/orders") == ("POST /orders", None)


def test_a_request_no_route_takes_and_no_default_is_no_match() -> None:
    routes = ["GET /users/{id}", "POST /orders"]
    assert match(routes, "GET", "/orders") is None           # method
    assert match(routes, "GET", "/users/42/posts") is None   # too many segments
    assert match(routes, "GET", "/users") is None            # too few
    assert match(routes, "GET", "/Users/42") is None         # paths are case-sensitive


def test_a_request_no_route_takes_goes_to_the_default_route() -> None:
    assert taken(["GET /users/{id}", DEFAULT], "POST", "/users/42") == ("$default", None)


def test_a_greedy_variable_takes_one_or_more_segments() -> None:
    routes = ["ANY /files/{proxy+}"]
    assert taken(routes, "GET", "/files/a") == ("ANY /files/{proxy+}", {"proxy": "a"})
    assert taken(routes, "PUT", "/files/a/b/c") == ("ANY /files/{proxy+}", {"proxy": "a/b/c"})
    assert match(routes, "GET", "/files") is None
    assert match(routes, "GET", "/files/") is None   # zero segments


def test_a_greedy_variable_at_the_root_does_not_take_the_root() -> None:
    assert match(["ANY /{proxy+}"], "GET", "/") is None
    assert taken(["ANY /{proxy+}", "GET /"], "GET", "/") == ("GET /", None)


def test_a_variable_never_takes_an_empty_segment() -> None:
    routes = ["GET /users/{id}", "GET /users"]
    assert match(routes, "GET", "/users/") is None
    assert match(routes, "GET", "//") is None


def test_a_trailing_slash_is_part_of_a_greedy_value() -> None:
    assert taken(["GET /{proxy+}"], "GET", "/a/b/") == ("GET /{proxy+}", {"proxy": "a/b/"})


def test_path_parameters_are_percent_decoded_segment_by_segment() -> None:
    assert taken(["GET /users/{id}"], "GET", "/users/a%20b%2Fc%C3%BC") == ("GET /users/{id}", {"id": "a b/cü"})
    assert taken(["GET /{proxy+}"], "GET", "/a%2Fb/c%3F") == ("GET /{proxy+}", {"proxy": "a/b/c?"})


def test_literal_segments_are_compared_after_decoding() -> None:
    assert taken(["GET /users/me"], "GET", "/users/%6De") == ("GET /users/me", None)


def test_an_exact_method_beats_any_on_the_same_path() -> None:
    routes = ["ANY /users/{id}", "GET /users/{id}"]
    assert taken(routes, "GET", "/users/1") == ("GET /users/{id}", {"id": "1"})
    assert taken(routes, "DELETE", "/users/1") == ("ANY /users/{id}", {"id": "1"})


def test_a_head_request_does_not_take_a_get_route() -> None:
    assert match(["GET /users/{id}"], "HEAD", "/users/1") is None


@pytest.mark.parametrize("path, route", [
    ("/pets/dog/1", "GET /pets/dog/1"),
    ("/pets/dog/2", "GET /pets/dog/{id}"),
    ("/pets/cat/1", "GET /pets/{proxy+}"),
    ("/toys/1", "ANY /{proxy+}"),
])
def test_the_most_specific_route_wins_as_in_api_gateways_example(path: str, route: str) -> None:
    # The routing example of AWS's "Create routes for HTTP APIs", listed in the worst order.
    routes = ["$default", "ANY /{proxy+}", "GET /pets/{proxy+}", "GET /pets/dog/{id}", "GET /pets/dog/1"]
    found = match(routes, "GET", path)
    assert found is not None and found.route_key == route


def test_another_method_falls_through_to_the_any_route_as_in_api_gateways_example() -> None:
    routes = ["GET /pets/dog/1", "GET /pets/dog/{id}", "GET /pets/{proxy+}", "ANY /{proxy+}"]
    assert taken(routes, "POST", "/pets/dog/1") == ("ANY /{proxy+}", {"proxy": "pets/dog/1"})


def test_a_route_with_variables_beats_a_greedy_one() -> None:
    routes = ["GET /a/{proxy+}", "GET /{x}/b"]
    assert taken(routes, "GET", "/a/b") == ("GET /{x}/b", {"x": "a"})


def test_a_literal_beats_a_variable_from_the_left() -> None:
    routes = ["GET /{x}/b", "GET /a/{y}"]
    assert taken(routes, "GET", "/a/b") == ("GET /a/{y}", {"y": "b"})


def test_the_longer_literal_prefix_wins_between_greedy_routes() -> None:
    routes = ["ANY /{proxy+}", "ANY /static/{file+}", "ANY /static/img/{file+}"]
    assert taken(routes, "GET", "/static/img/a.png") == ("ANY /static/img/{file+}", {"file": "a.png"})
    assert taken(routes, "GET", "/static/a.css") == ("ANY /static/{file+}", {"file": "a.css"})


def test_the_match_does_not_depend_on_the_order_routes_are_listed_in() -> None:
    routes = ["GET /users/{id}", "GET /users/me", "ANY /users/{id}", "ANY /{proxy+}", "$default"]
    for shift in range(len(routes)):
        rotated = routes[shift:] + routes[:shift]
        assert taken(rotated, "GET", "/users/me") == ("GET /users/me", None)
        assert taken(rotated, "PUT", "/users/7") == ("ANY /users/{id}", {"id": "7"})


def test_a_path_that_is_not_origin_form_takes_only_the_default_route() -> None:
    assert match(["GET /{proxy+}"], "GET", "*") is None
    assert taken(["GET /{proxy+}", DEFAULT], "GET", "*") == ("$default", None)


# -- the grammar ---------------------------------------------------------------------------------

VALID = ["$default", "GET /", "GET /users/{id}", "ANY /{proxy+}", "POST /orders", "DELETE /a/{b}/c/{rest+}",
         "PATCH /v1.2/items_x/{item-id}", "OPTIONS /a:b@c/~x", "HEAD /x/{y.z}"]
INVALID = {
    "get /users": "method must be one of",
    "FETCH /users": "method must be one of",
    "GET": "must be 'METHOD /path'",
    "GET users": "must start with '/'",
    "GET  /users": "must start with '/'",
    " GET /users": "must be 'METHOD /path'",
    "GET /users/": "empty segments",
    "GET /a//b": "empty segments",
    "GET /{proxy+}/x": "must be the last segment",
    "GET /{a}/{a}": "appears twice",
    "GET /files/{name}.txt": "whole segment",
    "GET /{}": "whole segment",
    "GET /{a b}": "whole segment",
    "GET /a b": "may contain only",
    "GET /caf%C3%A9": "may contain only",
    "GET /a?b": "may contain only",
    "GET /a\n": "may contain only",
    "GET /{id}\n": "whole segment",
    "$default\n": "must be 'METHOD /path'",
    "$DEFAULT": "must be 'METHOD /path'",
    "": "must be 'METHOD /path'",
}


@pytest.mark.parametrize("key", VALID)
def test_valid_route_keys_parse_and_fit_the_crd_pattern(key: str) -> None:
    parse_route(key)
    assert re.fullmatch(ROUTE_KEY_PATTERN, key)   # as the API server's RE2 reads it


@pytest.mark.parametrize("key, message", INVALID.items())
def test_an_invalid_route_key_is_refused_with_the_reason(key: str, message: str) -> None:
    with pytest.raises(InvalidRoute, match=re.escape(message)):
        parse_route(key)


@pytest.mark.parametrize("key", [k for k in INVALID if k != "GET /{a}/{a}"])
def test_the_crd_pattern_refuses_what_the_parser_refuses(key: str) -> None:
    # A variable named twice is the model's alone to refuse (the pattern cannot count names).
    assert not re.fullmatch(ROUTE_KEY_PATTERN, key)


@pytest.mark.parametrize("value", [None, 3, ["GET /"]])
def test_a_route_that_is_not_a_string_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRoute, match="must be a string"):
        parse_route(value)


def test_a_route_key_longer_than_512_characters_is_refused() -> None:
    # Each request to the function walks its routes' segments: 300 keys of 4,000 segments each
    # cost the gateway 0.2 s of CPU per request (for every tenant of a shared gateway).
    deep = "GET /" + "/".join(f"{{v{i}}}" for i in range(4000))
    with pytest.raises(InvalidRoute, match="at most 512 characters"):
        parse_route(deep)
    longest = "GET /" + "a" * 507
    assert parse_route(longest) is not None and len(longest) == 512
    with pytest.raises(InvalidRoute, match="at most 512 characters"):
        parse_route(longest + "b")


def test_routes_of_one_shape_are_refused_as_duplicates() -> None:
    with pytest.raises(InvalidRoute, match=re.escape("'GET /u/{name}' matches the same requests as 'GET /u/{id}'")):
        check_routes(["GET /u/{id}", "GET /u/{name}"])
    with pytest.raises(InvalidRoute, match="listed twice"):
        check_routes(["$default", "POST /x", "$default"])


def test_routes_of_different_methods_or_kinds_are_not_duplicates() -> None:
    keys = ["GET /u/{id}", "ANY /u/{id}", "GET /u/{id+}", "GET /u/me", "$default"]
    assert check_routes(keys) == keys


# -- properties ------------------------------------------------------------------------------------

_literal = st.sampled_from(["a", "b", "users"])
_variable = st.sampled_from(["{x}", "{y}", "{z}"])


@st.composite
def route_keys(draw: st.DrawFn) -> str:
    method = draw(st.sampled_from(["GET", "POST", "ANY"]))
    segments = draw(st.lists(_literal | _variable, max_size=3))
    names = iter(["{v1}", "{v2}", "{v3}"])
    segments = [next(names) if s.startswith("{") else s for s in segments]   # names unique in a route
    if draw(st.booleans()):
        segments.append("{rest+}")
    return f"{method} /" + "/".join(segments)


request_paths = st.lists(st.sampled_from(["a", "b", "users", "42", "", "a%2Fb", "%61", "%C3%BC"]), min_size=1,
                         max_size=5).map(lambda parts: "/" + "/".join(parts))


def _distinct(keys: list[str]) -> list[str]:
    try:
        return check_routes(keys)
    except InvalidRoute:
        return []


@settings(max_examples=300, deadline=None)
@given(st.lists(route_keys(), min_size=1, max_size=6).map(_distinct), st.sampled_from(["GET", "POST", "PUT"]),
       request_paths)
def test_the_route_taken_matches_the_path_and_no_matching_route_is_more_specific(
        keys: list[str], method: str, path: str) -> None:
    found = match(keys, method, path)
    alone = {key: match([key], method, path) for key in keys}
    if found is None:
        assert not any(alone.values())
        return
    # Its variables put back into its path give the request's (decoded) path.
    rebuilt = re.sub(r"\{([^}+]+)\+?\}", lambda m: found.parameters[m.group(1)], found.resource)  # type: ignore[index]
    assert rebuilt == unquote(path)
    assert alone[found.route_key] == found
    chosen = parse_route(found.route_key)
    for key, other in alone.items():
        route = parse_route(key)
        if other is not None and route is not None and chosen is not None:
            assert chosen.rank <= route.rank
