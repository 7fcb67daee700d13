"""The Helm chart rendered offline (`helm template`), for the chart tests that need it."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kfn"
HELM = ROOT / ".cache" / "bin" / "helm"
RELEASE, NAMESPACE = "kfn", "kfn-system"

Manifest = dict[str, Any]


def helm_path() -> Path:
    """The helm binary, fetched by scripts/get-helm on first use (2 minutes at most)."""
    if not HELM.exists():
        subprocess.run([str(ROOT / "scripts" / "get-helm"), str(HELM.parent)], check=True, timeout=120,
                       capture_output=True)
    return HELM


def render_chart(values: str = "", *, tmp_path: Path | None = None, files: tuple[Path, ...] = ()) -> list[Manifest]:
    """Every object `helm template` renders for `values` (YAML text, written under `tmp_path`) and
    `files`, CRDs included; AssertionError with helm's message when it fails (60 s at most)."""
    args = [str(helm_path()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for path in files:
        args += ["--values", str(path)]
    if values:
        assert tmp_path is not None, "values text needs a tmp_path to be written to"
        path = tmp_path / "values.yaml"
        path.write_text(values + "\n")
        args += ["--values", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[Manifest], kind: str, name: str, *, namespace: str | None = NAMESPACE) -> Manifest:
    """The one object of this kind, name and namespace; AssertionError if not exactly one."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
             and o["metadata"].get("namespace") == namespace]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]
