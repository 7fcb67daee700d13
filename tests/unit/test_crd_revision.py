"""The CRD's revision: what the operator compares the installed CRD with (Helm never upgrades crds/)."""
from __future__ import annotations

import copy
from typing import Any

import yaml

from kfn.core import crd


def _installed(**annotations: str) -> dict[str, Any]:
    manifest = copy.deepcopy(crd.crd_manifest())
    manifest["metadata"]["annotations"] = dict(annotations)
    return manifest


def test_the_revision_names_the_definition_it_was_raised_for() -> None:
    assert crd.definition_digest() == crd.REVISION_DIGEST, (
        "the CRD changed: raise crd.REVISION by one and set crd.REVISION_DIGEST to crd.definition_digest(), "
        "then `make crd`")


def test_the_committed_crd_carries_its_revision_and_digest() -> None:
    annotations = yaml.safe_load(crd.CRD_PATH.read_text())["metadata"]["annotations"]
    assert annotations == {crd.ANNOTATION_REVISION: str(crd.REVISION), crd.ANNOTATION_DIGEST: crd.REVISION_DIGEST}


def test_this_builds_crd_is_no_problem() -> None:
    assert crd.installed_problem(yaml.safe_load(crd.render_crd_yaml())) is None


def test_a_crd_of_an_older_revision_is_older_and_says_how_to_upgrade() -> None:
    problem = crd.installed_problem(_installed(**{crd.ANNOTATION_REVISION: str(crd.REVISION - 1)}))
    assert problem is not None and "older" in problem
    assert "kubectl apply --server-side -f charts/kfn/crds/" in problem


def test_a_crd_without_a_revision_predates_revisions() -> None:
    problem = crd.installed_problem(_installed())
    assert problem is not None and "older" in problem and "predates" in problem


def test_a_crd_of_a_newer_revision_asks_for_a_newer_operator() -> None:
    problem = crd.installed_problem(_installed(**{crd.ANNOTATION_REVISION: str(crd.REVISION + 1)}))
    assert problem is not None and "newer" in problem and "upgrade the operator" in problem


def test_a_crd_of_this_revision_with_another_definition_is_reported() -> None:
    problem = crd.installed_problem(_installed(**{crd.ANNOTATION_REVISION: str(crd.REVISION),
                                                  crd.ANNOTATION_DIGEST: "0" * 16}))
    assert problem is not None and "another definition" in problem


def test_a_revision_that_is_no_number_counts_as_none() -> None:
    problem = crd.installed_problem(_installed(**{crd.ANNOTATION_REVISION: "three"}))
    assert problem is not None and "older" in problem
