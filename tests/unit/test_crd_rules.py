"""The CRD's CEL rules, evaluated the way the API server would (cel-python stands in for cel-go).

`kubectl apply` rejects what these rules forbid before the operator ever sees it, so each rule
must accept every example and reject the input it was written for.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from kfn.core import crd
from kfn.manifests import manifest_files
from tests.support.functions import function_manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def rules_at(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, rule, self) for every rule whose node is present in `value`, typed like the API server."""
    typed = _typed(schema, value)
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule["rule"], typed
    if isinstance(value, dict):
        for key, child in schema.get("properties", {}).items():
            if key in value:
                yield from rules_at(child, value[key], f"{path}.{key}")


def _typed(schema: dict[str, Any], value: Any) -> Any:
    # A `number` field holds a double even when YAML wrote an integer.
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _typed(props.get(k, {}), v) for k, v in value.items()}
    return value


def failing_rules(document: dict[str, Any]) -> list[str]:
    env = celpy.Environment()
    failed = []
    for path, rule, value in rules_at(crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"], document):
        result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"rule at {path or '<root>'} did not evaluate to a bool: {rule} → {result!r}")
        if not result:
            failed.append(f"{path or '<root>'}: {rule}")
    return failed


@pytest.mark.parametrize("path", manifest_files(EXAMPLES), ids=lambda p: p.name)
def test_examples_pass_every_rule(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert failing_rules(document) == []


def test_min_replicas_above_the_default_max_is_rejected() -> None:
    [failure] = failing_rules(function_manifest(scale={"minReplicas": 20}))
    assert failure.startswith(".spec.scale:")


def test_inverted_scale_bounds_are_rejected() -> None:
    assert len(failing_rules(function_manifest(scale={"minReplicas": 3, "maxReplicas": 2}))) == 1


def test_target_concurrency_above_concurrency_is_rejected() -> None:
    [failure] = failing_rules(function_manifest(concurrency=2, scale={"targetConcurrency": 5}))
    assert "targetConcurrency" in failure


def test_target_concurrency_within_the_default_concurrency_is_accepted() -> None:
    assert failing_rules(function_manifest(scale={"targetConcurrency": 7})) == []


def test_no_code_is_rejected() -> None:
    document = function_manifest()
    del document["spec"]["source"]
    assert len(failing_rules(document)) == 1


def test_files_and_config_map_together_are_rejected() -> None:
    [failure] = failing_rules(function_manifest(source={"files": {"a.py": ""}, "configMap": {"name": "c"}}))
    assert failure.startswith(".spec.source:")


def test_long_names_are_rejected() -> None:
    document = function_manifest()
    document["metadata"]["name"] = "a" * 64
    assert failing_rules(document) == ["<root>: size(self.metadata.name) <= 63"]


def test_a_handler_without_a_module_is_rejected() -> None:
    [failure] = failing_rules(function_manifest(handler="no_module"))
    assert "self.handler.matches" in failure


def test_a_missing_handler_is_rejected_unless_an_image_is_set() -> None:
    document = function_manifest()
    del document["spec"]["handler"]
    assert len(failing_rules(document)) == 1
    del document["spec"]["source"]
    document["spec"]["image"] = "registry.example.com/orders:1"
    assert failing_rules(document) == []


def test_a_node_handler_with_a_directory_is_accepted() -> None:
    assert failing_rules(function_manifest(runtime="nodejs20", handler="src/index.handler")) == []


def test_a_node_style_handler_is_rejected_for_python() -> None:
    assert len(failing_rules(function_manifest(handler="src/index.handler"))) == 1


def test_source_and_image_together_are_rejected() -> None:
    [failure] = failing_rules(function_manifest(image="registry.example.com/orders:1",
                                                source={"files": {"main.py": ""}}))
    assert "has(self.source) && has(self.image)" in failure


def test_image_config_without_an_image_is_rejected() -> None:
    [failure] = failing_rules(function_manifest(imageConfig={"entryPoint": ["x"]}))
    assert "imageConfig" in failure


@pytest.mark.parametrize("timeout", ["30s", "1m30s", "500ms", "45", 45, "2.5s", " 10s "])
def test_durations_pass_their_rule(timeout: Any) -> None:
    scale = {"idleTimeout": timeout, "stableWindow": timeout}
    assert failing_rules(function_manifest(timeout=timeout, scale=scale)) == []


@pytest.mark.parametrize("field", ["timeout", "idleTimeout", "stableWindow"])
def test_a_malformed_duration_is_rejected(field: str) -> None:
    spec = {"timeout": "abc"} if field == "timeout" else {"scale": {field: "10 parsecs"}}
    [failure] = failing_rules(function_manifest(**spec))
    assert "matches" in failure
