"""What `kfn local` answered before the gateway was split around a typed dispatch outcome (commit
73becbb), found different afterwards by a differential run of the old and the new one side by side
over real HTTP: each test pins one behaviour of the old one, byte for byte where a client could see
bytes."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.localmode import LocalMode, http, write_manifest

BOOM = """
    def handler(event, context):
        raise ValueError("the handler failed on purpose")
"""


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    functions = tmp_path_factory.mktemp("kept") / "functions"
    functions.mkdir()
    write_manifest(functions, "boom", BOOM)
    server = LocalMode(functions)
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_handlers_exception_reaches_an_invoke_caller_in_awslambdarics_key_order(local: LocalMode) -> None:
    # Before: {"errorMessage", "errorType", "requestId", "stackTrace"}, as awslambdaric writes it.
    answer = http("POST", local.url + "/2015-03-31/functions/boom/invocations", body=b"{}")
    assert (answer.status, answer.headers.get("X-Amz-Function-Error")) == (200, "Unhandled"), answer.body
    assert list(json.loads(answer.body)) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert answer.body.startswith(b'{"errorMessage": "the handler failed on purpose", "errorType": "ValueError"')

