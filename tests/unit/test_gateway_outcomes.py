"""The dispatch core's outcomes, as each front-end maps them: every reason nothing ran has an
answer in every protocol's table, and the tables say what the gateway has always answered."""
from __future__ import annotations

import pytest

from kfn.core.instances import InvocationResult
from kfn_gateway import http_api, lambda_api
from kfn_gateway.outcomes import InstanceLost, NotRun, Ran, Reason, TimedOut
from kfn_runtime import awslambda


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_nothing_ran_has_an_http_status_and_a_lambda_error(reason: Reason) -> None:
    assert http_api.STATUS[reason] >= 400
    assert lambda_api.NOT_RUN[reason]("message", 1).status >= 400


@pytest.mark.parametrize(("reason", "status"), [
    (Reason.QUEUE_FULL, 429), (Reason.THROTTLED, 429), (Reason.NO_SLOT, 503), (Reason.CANNOT_START, 503),
    (Reason.FUNCTION_GONE, 404), (Reason.UNREACHABLE, 502), (Reason.STORE_FAILED, 503), (Reason.TOO_LARGE, 413),
])
def test_the_http_api_answers_a_reason_with_its_status(reason: Reason, status: int) -> None:
    assert http_api.status_of(NotRun(reason, "m")) == status


@pytest.mark.parametrize(("reason", "code"), [
    (Reason.QUEUE_FULL, "TooManyRequestsException"), (Reason.THROTTLED, "TooManyRequestsException"),
    (Reason.NO_SLOT, "ResourceNotReadyException"), (Reason.CANNOT_START, "ResourceNotReadyException"),
    (Reason.FUNCTION_GONE, "ResourceNotFoundException"), (Reason.UNREACHABLE, "ServiceException"),
    (Reason.NO_STORE, "ServiceException"),
])
def test_the_invoke_api_answers_a_reason_with_lambdas_modeled_error(reason: Reason, code: str) -> None:
    assert lambda_api.NOT_RUN[reason]("m", None).code == code


def test_a_function_that_ran_is_200_its_error_500_and_its_timeout_504() -> None:
    assert http_api.status_of(Ran(InvocationResult(payload=b"{}"))) == 200
    assert http_api.status_of(Ran(InvocationResult(payload=b"{}", function_error=awslambda.UNHANDLED,
                                                   error_type="ValueError"))) == 500
    assert http_api.status_of(Ran(InvocationResult(payload=b"{}", function_error=awslambda.UNHANDLED,
                                                   error_type=awslambda.ERROR_TIMED_OUT))) == 504


def test_an_instance_that_timed_out_is_504_and_one_lost_is_502() -> None:
    assert http_api.status_of(TimedOut("late")) == 504
    assert http_api.status_of(InstanceLost("gone")) == 502
