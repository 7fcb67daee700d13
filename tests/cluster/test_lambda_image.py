"""A Lambda container image, unchanged, as spec.image: examples/lambda-image, whose entrypoint is
AWS's runtime interface client (awslambdaric from PyPI), on the real cluster through the gateway."""
from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import platform
from tests.cluster.platform import Release

MANIFEST = Path(platform.EXAMPLES / "lambda-image" / "function.yaml")


def manifest(**spec: Any) -> dict[str, Any]:
    document = yaml.safe_load(MANIFEST.read_text())
    document["spec"].update(spec)
    return document  # type: ignore[no-any-return]


@pytest.fixture(scope="module", autouse=True)
def lambda_image(release: Release, fn_ns: str) -> Iterator[None]:
    release.deploy(manifest(), fn_ns, timeout=90)
    yield
    platform.kubectl("delete", "function", "lambda-image", "--ignore-not-found", "--wait=false", namespace=fn_ns,
                     check=False)


def test_awslambdaric_in_an_unchanged_image_answers_through_the_gateway(release: Release, fn_ns: str) -> None:
    answer = platform.http_get(release.url("lambda-image", fn_ns) + "/orders")
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["function"] == "lambda-image"
    assert body["path"] == "/orders"
    assert body["region"] == "us-east-1"
    assert 0 < body["remainingMs"] <= 5000
    assert answer.headers["x-kfn-request-id"] == body["requestId"]


def test_an_images_environments_keep_state_and_run_in_parallel(release: Release, fn_ns: str) -> None:
    url = release.url("lambda-image", fn_ns, "sleep=0.5")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: platform.http_get(url), range(2)))
    assert [a.status for a in answers] == [200, 200], [a.text for a in answers]
    assert len({a.json()["pid"] for a in answers}) == 2    # concurrency 2: two environments at once


def test_a_handler_error_in_an_image_is_api_gateways_500(release: Release, fn_ns: str) -> None:
    answer = platform.http_get(release.url("lambda-image", fn_ns, "fail=1"))
    assert answer.status == 500
    assert answer.json() == {"message": "Internal Server Error"}
    assert answer.headers["x-kfn-error-type"] == "RuntimeError"


def test_an_image_environment_that_times_out_is_replaced(release: Release, fn_ns: str) -> None:
    before = {platform.http_get(release.url("lambda-image", fn_ns)).json()["pid"] for _ in range(3)}
    timed_out = platform.http_get(release.url("lambda-image", fn_ns, "sleep=10"), timeout=30)
    assert timed_out.status == 504, timed_out.text
    assert json.loads(timed_out.text) == {"message": "Endpoint request timed out"}
    after = [platform.http_get(release.url("lambda-image", fn_ns)) for _ in range(4)]
    assert all(a.status == 200 for a in after), [a.text for a in after]
    # The environment that ran over its time was killed; a new one (a new process) took its slot.
    assert {a.json()["pid"] for a in after} - before
