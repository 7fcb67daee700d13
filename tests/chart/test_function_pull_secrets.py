"""functions.imagePullSecrets reach the operator, which puts them on every pod it makes."""
from __future__ import annotations

import subprocess
from pathlib import Path

from kfn_operator.builders import RuntimeImages
from tests.support.charts import CHART, NAMESPACE, RELEASE, Manifest, find, helm_path, render_chart


def _operator_env(objects: list[Manifest]) -> dict[str, str]:
    (c,) = find(objects, "Deployment", "kfn-operator")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def test_function_pull_secrets_of_the_values_reach_the_operator(tmp_path: Path) -> None:
    env = _operator_env(render_chart("functions: {imagePullSecrets: [{name: regcred}, {name: mirror}]}",
                                     tmp_path=tmp_path))
    assert RuntimeImages.from_environment(env).pull_secrets == ("regcred", "mirror")


def test_without_function_pull_secrets_the_operator_gets_none() -> None:
    assert "KFN_IMAGE_PULL_SECRETS" not in _operator_env(render_chart())


def test_the_platforms_own_pull_secrets_are_not_the_functions(tmp_path: Path) -> None:
    objects = render_chart("imagePullSecrets: [{name: platform-only}]", tmp_path=tmp_path)
    assert "KFN_IMAGE_PULL_SECRETS" not in _operator_env(objects)
    spec = find(objects, "Deployment", "kfn-operator")["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "platform-only"}]


def test_a_function_pull_secret_that_is_no_secret_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("functions: {imagePullSecrets: [{name: Reg_Cred}]}\n")
    result = subprocess.run([str(helm_path()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                             "--values", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "/functions/imagePullSecrets/0/name" in result.stderr
