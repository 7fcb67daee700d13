"""Functions of the same name in two namespaces: /function/NAME.NAMESPACE (OpenFaaS's form).

/function/NAME means the gateway's default namespace (chart value gateway.defaultNamespace).
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

NAME = "twin"
CODE = """
import os


def handler(event, context):
    return {"namespace": os.environ["HOME_NAMESPACE"]}
"""


@pytest.fixture(scope="module")
def twins(release: Release) -> Iterator[tuple[str, str]]:
    namespaces = (platform.create_namespace("twin"), platform.create_namespace("twin"))
    for namespace in namespaces:
        platform.apply(platform.function(NAME, CODE, env=[{"name": "HOME_NAMESPACE", "value": namespace}]),
                       namespace=namespace)
    for namespace in namespaces:
        platform.wait_ready(NAME, namespace)
    yield namespaces
    for namespace in namespaces:
        platform.delete_namespace(namespace)


def test_same_name_in_two_namespaces_answers_per_namespace(release: Release, twins: tuple[str, str]) -> None:
    for namespace in twins:
        answer = platform.http_get(f"{release.gateway}/function/{NAME}.{namespace}")
        assert answer.status == 200, answer.text
        assert answer.json() == {"namespace": namespace}


def test_kfn_list_shows_each_functions_namespace(release: Release, twins: tuple[str, str]) -> None:
    result = release.kfn("list")
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split() for line in result.stdout.splitlines()]
    assert header[:2] == ["NAMESPACE", "NAME"], header
    assert sorted(row[0] for row in rows if row[1] == NAME) == sorted(twins)
