"""The Function model: defaults that work for hello-world, and an exact error for each bad input."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from kfn.core.codespec import DEFAULT_RUNTIME
from kfn.core.functions import parse_function
from tests.support.functions import errors_of, function_manifest

IMAGE = "registry.example.com/orders:1"


def test_minimal_manifest_gets_working_defaults() -> None:
    spec = parse_function(function_manifest()).spec
    assert spec.runtime == DEFAULT_RUNTIME
    assert spec.timeout == 30.0
    assert spec.concurrency == 10
    assert (spec.scale.minReplicas, spec.scale.maxReplicas) == (0, 10)
    assert spec.scale.idleTimeout == 60.0
    assert spec.resources.memory_limit_mb == 256


def test_default_target_concurrency_is_seventy_percent_of_concurrency() -> None:
    assert parse_function(function_manifest(concurrency=20)).spec.target_concurrency == 14.0


def test_explicit_target_concurrency_wins() -> None:
    assert parse_function(function_manifest(scale={"targetConcurrency": 3})).spec.target_concurrency == 3.0


@pytest.mark.parametrize("text, seconds",
                         [("30s", 30), ("1m30s", 90), ("500ms", 0.5), (45, 45), ("2", 2), ("1h", 3600)])
def test_timeout_accepts_durations_and_seconds(text: Any, seconds: float) -> None:
    if seconds > 900:
        assert errors_of(function_manifest(timeout=text)) == [
            "spec.timeout: must be more than 0 and at most 15m (got 3600s)"]
    else:
        assert parse_function(function_manifest(timeout=text)).spec.timeout == seconds


def test_memory_limit_comes_from_resources() -> None:
    spec = parse_function(function_manifest(resources={"limits": {"memory": "1Gi"}})).spec
    assert spec.resources.memory_limit_mb == 1024


def test_missing_handler_is_reported() -> None:
    document = function_manifest()
    del document["spec"]["handler"]
    assert errors_of(document) == ["spec.handler: is required"]


def test_handler_without_module_is_reported() -> None:
    assert errors_of(function_manifest(handler="handler")) == [
        "spec.handler: must be module.function, e.g. main.handler (got 'handler')"]


def test_handler_with_a_keyword_is_reported() -> None:
    assert errors_of(function_manifest(handler="main.class")) == [
        "spec.handler: must be module.function made of Python identifiers (got 'main.class')"]


def test_dotted_module_handler_is_accepted() -> None:
    assert parse_function(function_manifest(handler="pkg.api.handler")).spec.handler == "pkg.api.handler"


def test_unknown_runtime_is_reported() -> None:
    assert errors_of(function_manifest(runtime="node18")) == [
        "spec.runtime: must be one of 'python3.11', 'python3.12', 'python3.13', 'nodejs20' or 'nodejs22' "
        "(got 'node18')"]


def test_negative_min_replicas_is_reported() -> None:
    assert errors_of(function_manifest(scale={"minReplicas": -1})) == ["spec.scale.minReplicas: must be >= 0 (got -1)"]


def test_inverted_scale_bounds_are_reported() -> None:
    assert errors_of(function_manifest(scale={"minReplicas": 1, "maxReplicas": 0})) == [
        "spec.scale.maxReplicas: must be >= minReplicas (got 0 < 1)"]


def test_zero_max_replicas_is_reported() -> None:
    assert errors_of(function_manifest(scale={"maxReplicas": 0})) == ["spec.scale.maxReplicas: must be >= 1 (got 0)"]


def test_target_concurrency_above_concurrency_is_reported() -> None:
    assert errors_of(function_manifest(concurrency=2, scale={"targetConcurrency": 5})) == [
        "spec.scale.targetConcurrency: must be <= concurrency (got 5 > 2)"]


def test_non_duration_timeout_is_reported() -> None:
    assert errors_of(function_manifest(timeout="abc")) == [
        "spec.timeout: must be a duration like '30s', '1m30s' or '500ms' (got 'abc')"]


def test_zero_timeout_is_reported() -> None:
    assert errors_of(function_manifest(timeout="0s")) == ["spec.timeout: must be more than 0 and at most 15m (got 0s)"]


def test_zero_idle_timeout_is_reported() -> None:
    assert errors_of(function_manifest(scale={"idleTimeout": 0})) == [
        "spec.scale.idleTimeout: must be a positive duration (got 0s)"]


@pytest.mark.parametrize("name", ["../evil.py", "a/b.py", "/etc/passwd", "..", "x\\y.py"])
def test_file_names_that_escape_the_code_directory_are_reported(name: str) -> None:
    [error] = errors_of(function_manifest(source={"files": {name: "x = 1"}}))
    assert error.startswith("spec.source.files: file names must not")
    assert repr(name) in error


def test_empty_source_is_reported() -> None:
    assert errors_of(function_manifest(source={"files": {}})) == ["spec.source.files: must not be empty"]


def test_no_code_at_all_is_reported() -> None:
    document = function_manifest()
    del document["spec"]["source"]
    assert errors_of(document) == ["spec: must set source.files, source.configMap or image"]


def test_files_and_config_map_together_are_reported() -> None:
    assert errors_of(function_manifest(source={"files": {"a.py": ""}, "configMap": {"name": "code"}})) == [
        "spec.source: must set exactly one of files or configMap"]


def test_config_map_source_is_accepted() -> None:
    spec = parse_function(function_manifest(source={"configMap": {"name": "my-code"}})).spec
    assert spec.source is not None and spec.source.configMap is not None
    assert spec.source.configMap.name == "my-code"


def test_custom_image_without_source_is_accepted() -> None:
    document = function_manifest(image="registry.example/fn:1")
    assert parse_function(document).spec.image == "registry.example/fn:1"


def test_unknown_field_is_reported_not_ignored() -> None:
    assert errors_of(function_manifest(scale={"minReplica": 1})) == ["spec.scale.minReplica: is not a known field"]


def test_env_in_kubernetes_shape_is_accepted() -> None:
    spec = parse_function(function_manifest(env=[
        {"name": "PLAIN", "value": "x"},
        {"name": "NUMBER", "value": 3},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ])).spec
    assert [v.value for v in spec.env] == ["x", "3", None]


def test_env_source_without_a_reference_is_reported() -> None:
    assert errors_of(function_manifest(env=[{"name": "A", "valueFrom": {}}])) == [
        "spec.env[0].valueFrom: must set exactly one of secretKeyRef, configMapKeyRef or fieldRef"]


def test_reserved_env_names_are_reported() -> None:
    assert errors_of(function_manifest(env=[{"name": "KFN_PORT", "value": "1"}])) == [
        "spec.env[0].name: names starting with KFN_ are reserved for the platform (got 'KFN_PORT')"]


def test_requirement_line_smuggling_options_is_reported() -> None:
    [error] = errors_of(function_manifest(requirements=["--index-url=http://evil"]))
    assert error.startswith("spec.requirements: each entry must be one pip requirement")


def test_invalid_name_is_reported() -> None:
    document = function_manifest()
    document["metadata"]["name"] = "Hello_World"
    [error] = errors_of(document)
    assert error.startswith("metadata.name: must be a lowercase DNS label")


def test_wrong_kind_is_reported() -> None:
    document = function_manifest()
    document["kind"] = "Deployment"
    assert errors_of(document) == ["kind: must be one of 'Function' (got 'Deployment')"]


def test_a_non_mapping_document_is_reported() -> None:
    assert errors_of(["a", "b"]) == ["a Function manifest must be a mapping (got a list)"]


def test_every_problem_is_reported_at_once() -> None:
    assert len(errors_of(function_manifest(handler="x", timeout="abc", runtime="go"))) == 3


def test_code_hash_changes_with_code_and_not_with_scale() -> None:
    one = parse_function(function_manifest())
    other_code = parse_function(function_manifest(source={"files": {"main.py": "changed"}}))
    other_scale = parse_function(function_manifest(scale={"maxReplicas": 3}))
    assert one.code_hash() != other_code.code_hash()
    assert one.code_hash() == other_scale.code_hash()
    assert one.spec_hash() != other_scale.spec_hash()


def test_parsing_does_not_modify_the_input() -> None:
    document = function_manifest(timeout="10s")
    before = copy.deepcopy(document)
    parse_function(document)
    assert document == before


def test_an_image_function_runs_the_aws_base_images_entrypoint_with_the_handler() -> None:
    function = parse_function(function_manifest(image=IMAGE, handler="app.handler"))
    assert function.spec.image_command == ["/lambda-entrypoint.sh", "app.handler"]


def test_an_image_function_runs_its_own_entrypoint_and_command() -> None:
    function = parse_function(function_manifest(handler=None, image=IMAGE, imageConfig={
        "entryPoint": ["python", "-m", "awslambdaric"], "command": ["app.handler"]}))
    assert function.spec.image_command == ["python", "-m", "awslambdaric", "app.handler"]


def test_an_image_functions_handler_may_be_anything_its_client_understands() -> None:
    assert parse_function(function_manifest(image=IMAGE, handler="bootstrap")).spec.handler == "bootstrap"


def test_an_image_function_without_a_handler_or_command_is_reported() -> None:
    assert errors_of(function_manifest(handler=None, image=IMAGE)) == [
        "spec.handler: an image needs the handler (its CMD) or imageConfig.command"]


def test_source_and_image_together_are_reported() -> None:
    document = function_manifest(image=IMAGE, handler="app.handler")
    document["spec"]["source"] = {"files": {"a.py": ""}}  # type: ignore[index]
    assert errors_of(document) == ["spec.source: an image carries its own code; set source or image, not both"]


def test_requirements_with_an_image_are_reported() -> None:
    assert errors_of(function_manifest(image=IMAGE, handler="app.handler", requirements=["requests"])) == [
        "spec.requirements: install them in the image"]


def test_image_config_without_an_image_is_reported() -> None:
    assert errors_of(function_manifest(imageConfig={"entryPoint": ["x"]})) == ["spec.imageConfig: only for an image"]


def test_a_node_handler_names_a_file_and_its_export() -> None:
    assert parse_function(function_manifest(runtime="nodejs20", handler="src/index.handler")).spec.handler == \
        "src/index.handler"
    assert errors_of(function_manifest(runtime="nodejs20", handler="../up.handler")) == [
        "spec.handler: must be file.export, e.g. index.handler (got '../up.handler')"]


def test_a_function_answers_every_request_on_the_default_route_unless_it_lists_routes() -> None:
    assert parse_function(function_manifest()).spec.http.routes == ["$default"]
    routes = ["GET /users/{id}", "ANY /{proxy+}"]
    assert parse_function(function_manifest(http={"routes": routes})).spec.http.routes == routes


@pytest.mark.parametrize("routes, error", [
    (["GET /users/{id}", "FETCH /x"],
     "spec.http.routes[1]: the method must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, ANY "
     "(got 'FETCH' in 'FETCH /x')"),
    (["GET users"], "spec.http.routes[0]: the path must start with '/' after one space (got 'GET users')"),
    (["ANY /{proxy+}/edit"],
     "spec.http.routes[0]: a greedy variable such as {proxy+} must be the last segment (got 'ANY /{proxy+}/edit')"),
    (["GET /u/{id}", "GET /u/{name}"], "spec.http.routes: 'GET /u/{name}' matches the same requests as 'GET /u/{id}'"),
    (["POST /orders", "POST /orders"], "spec.http.routes: 'POST /orders' is listed twice"),
    ([], "spec.http.routes: must not be empty"),
    ("GET /x", "spec.http.routes: must be a list (got a string)"),
])
def test_an_invalid_route_is_reported_at_its_field(routes: Any, error: str) -> None:
    assert errors_of(function_manifest(http={"routes": routes})) == [error]


def test_changing_routes_rolls_no_instance() -> None:
    # Routes are the gateway's alone; the hash also stays what it was before routes existed.
    plain = parse_function(function_manifest())
    routed = parse_function(function_manifest(http={"routes": ["GET /users/{id}"]}))
    assert plain.spec_hash() == routed.spec_hash()
