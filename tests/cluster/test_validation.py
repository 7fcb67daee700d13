"""Bad manifests: rejected at apply by the CRD (OpenAPI schema and CEL) wherever a rule can say it;
what no rule can say becomes Ready=False, reason InvalidSpec, and a Warning Event."""
from __future__ import annotations

from typing import Any

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

CODE = "def handler(event, context):\n    return {}\n"


REJECTED = [
    pytest.param({"scale": {"minReplicas": 3, "maxReplicas": 1}}, "spec.scale.maxReplicas", id="inverted-scale"),
    pytest.param({"handler": "handler"}, "spec.handler", id="handler-without-module"),
    pytest.param({"runtime": "python2.7"}, "spec.runtime", id="unknown-runtime"),
    pytest.param({"timeout": "abc"}, "spec.timeout", id="malformed-timeout"),
    pytest.param({"scale": {"idleTimeout": "10 parsecs"}}, "spec.scale.idleTimeout", id="malformed-idle-timeout"),
    pytest.param({"scale": {"stableWindow": "abc"}}, "spec.scale.stableWindow", id="malformed-stable-window"),
    pytest.param({"source": {"files": {"main.py": CODE}}, "image": "registry.example.com/x:1"}, "spec",
                 id="source-and-image"),
]


@pytest.mark.parametrize(("spec", "field"), REJECTED)
def test_apply_rejects_the_manifest_naming_the_field(release: Release, fn_ns: str, spec: dict[str, Any],
                                                     field: str) -> None:
    result = platform.apply(platform.function("rejected", CODE, **spec), namespace=fn_ns, dry_run=True, check=False)
    assert result.returncode != 0, f"the API server accepted spec {spec}"
    assert field in result.stderr, result.stderr


# No CEL rule can say these (a Python keyword is a valid identifier to a pattern; env names are
# unique only in the model; a rule over every key of the files map exceeds the API server's cost
# budget), so the operator reports them.
INVALID_SPEC = [
    pytest.param({"handler": "class.handler"}, "spec.handler", id="keyword-as-module"),
    pytest.param({"source": {"files": {"main.py": CODE, "lib/util.py": ""}}}, "spec.source.files",
                 id="file-name-with-slash"),
    pytest.param({"source": {"files": {"main.py": CODE, "..util.py": ""}}}, "spec.source.files",
                 id="file-name-starting-with-dotdot"),
    pytest.param({"env": [{"name": "GREETING", "value": "hi"}, {"name": "GREETING", "value": "ho"}]}, "spec.env",
                 id="duplicate-env-name"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID_SPEC)
def test_operator_reports_an_invalid_spec_with_an_event(release: Release, fn_ns: str, deployed: list[str],
                                                        spec: dict[str, Any], field: str,
                                                        request: pytest.FixtureRequest) -> None:
    name = "invalid-" + request.node.callspec.id
    deployed.append(name)
    platform.apply(platform.function(name, CODE, **spec), namespace=fn_ns)

    def invalid() -> dict[str, Any] | None:
        condition = platform.ready_condition(platform.get("function", name, namespace=fn_ns))
        return condition if condition and condition.get("reason") == "InvalidSpec" else None

    condition = platform.wait_until(f"{name}: Ready=False, reason InvalidSpec", invalid, timeout=30)
    assert condition["status"] == "False"
    assert field in condition["message"], condition
    def invalid_spec_events() -> list[dict[str, Any]]:
        return [e for e in platform.items("events", namespace=fn_ns)
                if e["involvedObject"].get("name") == name and e.get("reason") == "InvalidSpec"]

    events = platform.wait_until(f"an InvalidSpec Event for {name}", invalid_spec_events, timeout=20)
    assert events[0]["type"] == "Warning"
    assert field in events[0]["message"], events[0]
    assert platform.get("deployment", name, namespace=fn_ns) is None
