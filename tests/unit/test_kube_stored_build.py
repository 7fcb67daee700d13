"""Which stored archive of a function's requirements a pool pod may be specialised with: only the
build of its current spec (kfn.kube.builds.stored_build)."""
from __future__ import annotations

from typing import Any

from kfn.core import naming
from kfn.core.functions import Function, parse_function
from kfn.kube.builds import stored_build
from tests.support.functions import function_manifest


def with_build(*, generation: int, observed: int | None, state: str = naming.BUILD_STORED) -> Function:
    manifest: dict[str, Any] = function_manifest(requirements=["six"], metadata={"generation": generation})
    ready: dict[str, Any] = {"type": naming.CONDITION_READY, "status": "True", "reason": "Deployed"}
    if observed is not None:
        ready["observedGeneration"] = observed
    manifest["status"] = {"build": {"key": "k1", "digest": "sha256:abc", "state": state}, "conditions": [ready]}
    return parse_function(manifest)


def test_the_stored_build_of_the_current_generation_is_used() -> None:
    assert stored_build(with_build(generation=2, observed=2)) == ("k1", "sha256:abc")


def test_a_build_stored_for_an_older_generation_is_not_used() -> None:
    assert stored_build(with_build(generation=3, observed=2)) is None


def test_a_build_still_running_is_not_used() -> None:
    assert stored_build(with_build(generation=2, observed=2, state=naming.BUILD_BUILDING)) is None
