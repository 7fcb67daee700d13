"""Functions for tests: a Function manifest (the dict a user writes), or the parsed Function.

    make_function("hello")                                     # main.py's handler returns its event
    make_function("hello", namespace="team-a", concurrency=1, http={"routes": ["GET /"]})
    function_manifest("hello", "def handler(event, context):\n    return 1\n", scale={"idleTimeout": "2s"})
    make_function("orders", image="registry.example.com/orders:1")   # a container image, no source

Any keyword beyond name, code, namespace and handler is a field of `spec` (as a manifest spells
it) and overrides the default; `image` replaces the inline source.
"""
from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pytest

from kfn.core import naming
from kfn.core.functions import Function, InvalidFunction, parse_function

ECHO = """
    def handler(event, context):
        return event
"""


def function_manifest(name: str = "hello", code: str = ECHO, *, namespace: str | None = None,
                      handler: str | None = "main.handler", metadata: Mapping[str, Any] | None = None,
                      **spec: Any) -> dict[str, Any]:
    """A Function manifest with `code` (dedented) as its main.py, or with `spec["image"]` and no source.

    Without `namespace` the manifest names none (the default one applies); `handler=None` leaves the
    handler out (an image function may run its image's own command); `metadata` adds fields to the
    metadata (a creationTimestamp, a generation).
    """
    meta: dict[str, Any] = {"name": name, **(metadata or {})}
    if namespace is not None:
        meta["namespace"] = namespace
    body: dict[str, Any] = {} if handler is None else {"handler": handler}
    if "image" not in spec:
        body["source"] = {"files": {"main.py": textwrap.dedent(code)}}
    body.update(spec)
    return {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": meta, "spec": body}


def make_function(name: str = "hello", code: str = ECHO, *, namespace: str | None = None,
                  handler: str | None = "main.handler", metadata: Mapping[str, Any] | None = None,
                  **spec: Any) -> Function:
    """The Function `function_manifest` describes, parsed (InvalidFunction if the fields are invalid)."""
    return parse_function(function_manifest(name, code, namespace=namespace, handler=handler, metadata=metadata,
                                            **spec))


def errors_of(document: Any) -> list[str]:
    """The errors parsing `document` reports; fails the test if it parses."""
    with pytest.raises(InvalidFunction) as info:
        parse_function(document)
    return [str(e) for e in info.value.errors]


# The autoscaler's tests count ticks against these: a 10 s stable window, 30 s to idle, 10 per instance.
TICK_SCALE = {"targetConcurrency": 10, "stableWindow": 10, "idleTimeout": 30}
