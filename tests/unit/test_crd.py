"""The CRD is generated from the model; the committed copy must not drift from it."""
from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kfn.core import crd
from kfn.core.functions import InvalidFunction, parse_function
from kfn.manifests import load_file, manifest_files

KUBERNETES_VERSIONS = ["1.29.0", "1.31.0", "1.33.0", "1.35.0", "1.37.0"]


def openapi_schema() -> dict[str, Any]:
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_model() -> None:
    assert crd.CRD_PATH.read_text() == crd.render_crd_yaml(), "run `make crd` to regenerate the CRD"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(crd.render_crd_yaml()), version, strict=True)


def test_crd_has_status_subresource_and_printer_columns() -> None:
    version = crd.crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["Runtime", "Ready", "Replicas", "Desired"]


# Defaults the API server fills in on purpose; anything else with a default is a model leak.
DEFAULTED = {".properties.spec.properties.runtime"}


def _no_forbidden_structural_keys(node: Any, path: str = "") -> None:
    if isinstance(node, dict):
        for key in ("$ref", "title", "additionalProperties" if "properties" in node else "\0", "const", "default"):
            if key == "default" and path in DEFAULTED:
                continue
            assert key not in node, f"{path} has {key}"
        if node.get("additionalProperties") is False:
            raise AssertionError(f"{path}: additionalProperties: false is not structural")
        for key, value in node.items():
            _no_forbidden_structural_keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            _no_forbidden_structural_keys(item, path)


def test_schema_is_structural() -> None:
    _no_forbidden_structural_keys(openapi_schema())


def test_the_api_server_refuses_a_route_listed_twice() -> None:
    routes = openapi_schema()["properties"]["spec"]["properties"]["http"]["properties"]["routes"]
    assert routes["x-kubernetes-list-type"] == "set"


def test_the_api_server_fills_in_the_default_runtime() -> None:
    assert openapi_schema()["properties"]["spec"]["properties"]["runtime"]["default"] == "python3.12"


def _as_json_schema(node: Any) -> Any:
    # OpenAPI v3.0 → JSON Schema for jsonschema: int-or-string and boolean exclusiveMinimum.
    if isinstance(node, dict):
        out = {k: _as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        if node.get("exclusiveMinimum") is True:
            out["exclusiveMinimum"] = out.pop("minimum")
        return out
    if isinstance(node, list):
        return [_as_json_schema(v) for v in node]
    return node


def test_examples_satisfy_the_crd_schema() -> None:
    schema = _as_json_schema(openapi_schema())
    for path in manifest_files(crd.CRD_PATH.parents[3] / "examples"):
        for document in yaml.safe_load_all(path.read_text()):
            jsonschema.validate(document, schema)
        assert load_file(path)


@pytest.mark.parametrize("spec", [
    {"handler": "a.b", "runtime": "ruby", "source": {"files": {"a.py": ""}}},
    {"handler": "a.b", "concurrency": 0, "source": {"files": {"a.py": ""}}},
    {"handler": "a.b", "source": {"files": {}}},
    {"handler": "a.b", "source": {"files": {"a.py": ""}}, "http": {"routes": ["ANY /{proxy+}/x"]}},
    {"handler": "a.b", "source": {"files": {"a.py": ""}}, "http": {"routes": ["get /x"]}},
    {"handler": "a.b", "source": {"files": {"a.py": ""}}, "http": {"routes": []}},
])
def test_what_the_schema_rejects_the_model_rejects_too(spec: dict[str, Any]) -> None:
    document = {"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, _as_json_schema(openapi_schema()))
    with pytest.raises(InvalidFunction):
        parse_function(document)
