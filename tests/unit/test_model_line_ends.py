"""Every name, key id, handler, host and subject the model checks with a pattern is refused when
it ends with a line feed. (`re.match` with a pattern ending in `$` takes "name\\n": `$` also matches before a
final newline; the model checks whole strings. Schedules are stripped first, on purpose.)"""
from __future__ import annotations

from typing import Any

import pytest

from kfn.core.keys import InvalidKeys, parse_key_file
from tests.support.functions import errors_of, function_manifest

KEY = "k" * 32

CASES: dict[str, dict[str, Any]] = {
    "metadata.name": function_manifest("hello\n"),
    "metadata.namespace": function_manifest("hello", namespace="team-a\n"),
    "spec.env[].name": function_manifest(env=[{"name": "GREETING\n", "value": "hi"}]),
    "spec.source.files name": {**function_manifest(), "spec": {
        "handler": "main.handler", "source": {"files": {"main.py": "x = 1\n", "data.txt\n": "x"}}}},
    "spec.handler (Python)": function_manifest(handler="main.handler\n"),
    "spec.handler (Node.js)": function_manifest(handler="index.handler\n", runtime="nodejs20"),
    "spec.http.hosts": function_manifest(http={"hosts": ["api.example.com\n"]}),
    "spec.async destination function": function_manifest(**{"async": {"onSuccess": {"function": "other\n"}}}),
    "spec.async destination URL": function_manifest(**{"async": {"onFailure": {"url": "https://hooks.example.com/x\n"}}}),
    "spec.triggers nats subject": function_manifest(triggers=[{"nats": {"subject": "orders\n"}}]),
}


@pytest.mark.parametrize("field", list(CASES))
def test_a_field_ending_in_a_line_feed_is_refused(field: str) -> None:
    assert errors_of(CASES[field])


@pytest.mark.parametrize("keys", [
    {"admin": {"ops\n": KEY}},
    {"namespaces": {"team-a\n": {"app": KEY}}},
], ids=["key id", "key namespace"])
def test_a_keys_file_name_ending_in_a_line_feed_is_refused(keys: dict[str, Any]) -> None:
    with pytest.raises(InvalidKeys):
        parse_key_file(keys)


@pytest.mark.parametrize("namespace", ["../../escape", "Team-A", "a" * 64, ""])
def test_a_namespace_that_is_not_a_dns_label_is_refused(namespace: str) -> None:
    assert errors_of(function_manifest("hello", namespace=namespace))
