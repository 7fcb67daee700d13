"""A Function's status as computed from what the operator observes (pure functions)."""
from __future__ import annotations

import pytest

from kfn.core.functions import FieldError, InvalidFunction
from kfn_operator import status

BODY = {"metadata": {"name": "hello", "generation": 4}, "status": {}}


def deployment(replicas: int, ready: int, *conditions: dict) -> dict:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready, "conditions": list(conditions)}}


def test_the_transition_time_stays_while_the_status_does() -> None:
    first = status.set_condition([], type="Ready", status=False, reason="Deploying", message="0/1",
                                 observed_generation=1, now="2026-01-01T00:00:00Z")
    second = status.set_condition(first, type="Ready", status=False, reason="DeploymentFailed", message="x",
                                  observed_generation=1, now="2026-01-01T00:05:00Z")
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second[0]["reason"] == "DeploymentFailed"
    third = status.set_condition(second, type="Ready", status=True, reason="Ready", message="1/1",
                                 observed_generation=1, now="2026-01-01T00:06:00Z")
    assert third[0]["lastTransitionTime"] == "2026-01-01T00:06:00Z"


def test_other_conditions_are_kept() -> None:
    out = status.set_condition([{"type": "Other", "status": "True"}], type="Ready", status=True, reason="Ready",
                               message="", observed_generation=None, now="t")
    assert [c["type"] for c in out] == ["Other", "Ready"]


@pytest.mark.parametrize(("dep", "expected"), [
    (None, (False, "Deploying")),
    (deployment(0, 0), (True, "ScaledToZero")),
    (deployment(2, 0), (False, "Deploying")),
    (deployment(2, 1), (True, "Ready")),
    (deployment(1, 0, {"type": "ReplicaFailure", "status": "True", "message": "quota"}), (False, "DeploymentFailed")),
    (deployment(1, 1, {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}),
     (False, "DeploymentFailed")),
])
def test_readiness_follows_the_deployment(dep, expected) -> None:
    state = status.ready_from_deployment(dep)
    assert (state.status, state.reason) == expected


def test_deployment_status_has_replicas_url_and_the_condition() -> None:
    out = status.deployment_status(BODY, deployment(3, 2), now="t")
    assert (out["replicas"], out["readyReplicas"], out["url"]) == (3, 2, "/function/hello")
    assert out["conditions"] == [{"type": "Ready", "status": "True", "reason": "Ready",
                                  "message": "2/3 instances ready", "lastTransitionTime": "t",
                                  "observedGeneration": 4}]


def test_an_invalid_spec_names_every_field() -> None:
    error = InvalidFunction([FieldError("spec.handler", "must be module.function"),
                             FieldError("spec.timeout", "must be more than 0")])
    out = status.invalid_status(BODY, error, now="t")
    (cond,) = out["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"] == "spec.handler: must be module.function; spec.timeout: must be more than 0"
    assert out["observedGeneration"] == 4
