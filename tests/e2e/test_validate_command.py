"""Manifest files and `kfn validate`: every error names the file, the document and the field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kfn.manifests import ManifestError, load_file, load_text, manifest_files

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
apiVersion: kfn.dev/v1alpha1
kind: Function
metadata: {name: NAME}
spec:
  handler: main.handler
  source: {files: {main.py: "def handler(e, c): return 1"}}
"""


def kfn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kfn", *args], capture_output=True, text=True, timeout=60)


def test_examples_are_valid() -> None:
    files = manifest_files(REPO / "examples")
    assert {f.name for path in files for f in load_file(path)} >= {"hello", "async-hello", "greeter", "echo"}


def test_multi_document_file_yields_every_function() -> None:
    text = GOOD.replace("NAME", "one") + "---\n" + GOOD.replace("NAME", "two")
    assert [f.name for f in load_text(text)] == ["one", "two"]


def test_multi_document_error_names_the_document() -> None:
    text = GOOD.replace("NAME", "one") + "---\n" + GOOD.replace("NAME", "two").replace("main.handler", "nope")
    with pytest.raises(ManifestError) as info:
        load_text(text, file="fns.yaml")
    assert str(info.value) == "fns.yaml[1]: spec.handler: must be module.function, e.g. main.handler (got 'nope')"


def test_duplicate_names_in_one_file_are_reported() -> None:
    text = GOOD.replace("NAME", "one") + "---\n" + GOOD.replace("NAME", "one")
    with pytest.raises(ManifestError, match=r"\[1\]: metadata.name: duplicate Function 'one'"):
        load_text(text)


def test_yaml_that_is_not_a_mapping_is_reported() -> None:
    with pytest.raises(ManifestError, match="must be a mapping \\(got a string\\)"):
        load_text("just words")


def test_malformed_yaml_is_reported_with_its_line() -> None:
    with pytest.raises(ManifestError, match=r"not valid YAML at line \d+, column \d+"):
        load_text("a: [\nb: c\n")


def test_empty_file_is_reported() -> None:
    with pytest.raises(ManifestError, match="no Function manifest"):
        load_text("---\n")


def test_missing_file_is_reported() -> None:
    with pytest.raises(ManifestError, match="cannot read: No such file"):
        load_file("/nonexistent/fn.yaml")


def test_validate_exits_zero_for_the_examples() -> None:
    result = kfn("validate", *map(str, manifest_files(REPO / "examples")))
    assert result.returncode == 0, result.stderr
    assert "examples/hello.yaml: ok (hello)" in result.stdout


def test_validate_prints_field_errors_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("NAME", "x") + "  scale: {minReplicas: 1, maxReplicas: 0}\n")
    result = kfn("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{bad}: spec.scale.maxReplicas: must be >= minReplicas (got 0 < 1)"


def test_validate_json_output_lists_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("NAME", "x").replace("main.handler", "handler"))
    result = kfn("validate", "-o", "json", str(bad))
    assert result.returncode == 1
    [entry] = json.loads(result.stdout)
    assert entry["valid"] is False
    assert entry["errors"][0]["path"] == "spec.handler"
