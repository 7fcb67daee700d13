"""API keys as data: a key ring finds keys by their secret, scopes them, and refuses weak ones."""
from __future__ import annotations

import pytest

from kfn.core.keys import ApiKey, InvalidKeys, KeyRing, parse_key_file

ADMIN_SECRET = "admin-secret-0123456789"
TEAM_SECRET = "team-secret-0123456789ab"


def ring() -> KeyRing:
    return parse_key_file({"admin": {"ops": ADMIN_SECRET}, "namespaces": {"team": {"app": TEAM_SECRET}}})


def test_a_secret_finds_its_key_and_scope() -> None:
    keys = ring()
    assert keys.match(ADMIN_SECRET) == ApiKey("ops", None)
    assert keys.match(TEAM_SECRET) == ApiKey("app", "team")
    assert keys.match("team-secret-0123456789ac") is None
    assert keys.match("") is None


def test_an_admin_key_may_call_every_namespace_and_a_namespace_key_only_its_own() -> None:
    assert ApiKey("ops", None).may_call("anything")
    assert ApiKey("app", "team").may_call("team")
    assert not ApiKey("app", "team").may_call("other")


def test_a_secret_listed_under_two_scopes_keeps_the_broader_one() -> None:
    keys = KeyRing.of([("a", "team", TEAM_SECRET), ("b", None, TEAM_SECRET)])
    assert keys.match(TEAM_SECRET) == ApiKey("b", None)


def test_signatures_find_the_secrets_of_a_key_id() -> None:
    assert ring().secrets_of("app") == ((ApiKey("app", "team"), TEAM_SECRET),)
    assert ring().secrets_of("nobody") == ()


@pytest.mark.parametrize(("data", "message"), [
    ({"admin": {"ops": "short"}}, "16 to 4096 characters"),
    ({"admin": {"bad id!": ADMIN_SECRET}}, "key id"),
    ({"admin": {"ops": "has a space in it here"}}, "spaces"),
    ({"namespaces": {"Not_A_Namespace": {"a": TEAM_SECRET}}}, "not a namespace name"),
    ({"namespaces": ["team"]}, "map each namespace"),
    ({"keys": {}}, "unknown field"),
    (["admin"], "must be a mapping"),
    ({"admin": {"ops": 12345678901234567890}}, "must be strings"),
])
def test_a_keys_file_that_cannot_be_used_says_why_without_showing_a_key(data: object, message: str) -> None:
    with pytest.raises(InvalidKeys, match=message) as raised:
        parse_key_file(data, file="keys.yaml")
    assert "keys.yaml" in str(raised.value)
    assert ADMIN_SECRET not in str(raised.value) and TEAM_SECRET not in str(raised.value)


def test_an_empty_keys_file_has_no_keys() -> None:
    assert len(parse_key_file(None)) == 0
    assert len(parse_key_file({})) == 0
