"""The API server's refusals the Kubernetes access layer tells apart (bodies as the API server sends them)."""
from __future__ import annotations

import json

from kubernetes.aio.client.exceptions import ApiException

from kfn.kube.resources import namespace_terminating


def refusal(status: int, reason: str, causes: list[dict[str, str]]) -> ApiException:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason,
            "message": "configmaps \"hello-code-85891b6721\" is forbidden: ...",
            "details": {"name": "hello-code-85891b6721", "kind": "configmaps", "causes": causes}, "code": status}
    return ApiException(status=status, reason=reason, body=json.dumps(body))


def test_a_create_in_a_namespace_being_deleted_is_namespace_terminating() -> None:
    cause = {"reason": "NamespaceTerminating", "message": "namespace team-a is being terminated",
             "field": "metadata.namespace"}
    error = refusal(403, "Forbidden", [cause])
    assert namespace_terminating(error)


def test_a_missing_permission_is_not_namespace_terminating() -> None:
    # RBAC's 403 has no causes: it is a real problem, retried and reported.
    assert not namespace_terminating(refusal(403, "Forbidden", []))


def test_other_statuses_are_not_namespace_terminating() -> None:
    assert not namespace_terminating(refusal(409, "AlreadyExists", []))
    assert not namespace_terminating(ApiException(status=403, reason="Forbidden"))
