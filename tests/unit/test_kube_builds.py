"""What a Function's status says about the build of its requirements (kfn.kube.builds)."""
from __future__ import annotations

from typing import Any

from kfn.core.functions import Function
from kfn.core.instances import StartReason
from kfn.kube.builds import build_job, build_problem
from tests.support.functions import make_function

JOB = "kfn-build-0123456789ab"


def with_build(state: str | None, *, reason: str = "BuildFailed", message: str = "ERROR: no nope==0",
               observed: int | None = 1, generation: int = 1) -> Function:
    """A function at `generation` whose status the operator wrote about its build."""
    status: dict[str, Any] = {}
    if state is not None:
        status["build"] = {"key": "deps-" + "0" * 32, "job": JOB, "state": state, "message": message}
        condition = {"type": "Ready", "status": "False", "reason": reason, "message": message}
        if observed is not None:
            condition["observedGeneration"] = observed
        status["conditions"] = [condition]
    function = make_function("hello", requirements=["nope==0"], metadata={"generation": generation})
    return function.model_copy(update={"status": status})


def test_a_failed_build_is_a_requirements_problem_whose_detail_is_the_installers_message() -> None:
    problem = build_problem(with_build("Failed"))
    assert problem is not None
    assert (problem.reason, problem.detail, problem.init_error) == (StartReason.REQUIREMENTS, "ERROR: no nope==0", None)


def test_a_build_in_progress_or_stored_is_no_problem() -> None:
    assert build_problem(with_build("Building", reason="Building")) is None
    assert build_problem(with_build("Stored", reason="Ready")) is None


def test_a_function_without_a_build_has_no_problem_and_no_job() -> None:
    function = with_build(None)
    assert build_problem(function) is None
    assert build_job(function) is None


def test_a_failed_build_the_ready_condition_does_not_report_is_no_problem() -> None:
    assert build_problem(with_build("Failed", reason="Deploying")) is None


def test_a_failed_build_of_an_older_generation_is_no_problem_yet() -> None:
    assert build_problem(with_build("Failed", observed=1, generation=2)) is None
    assert build_problem(with_build("Failed", observed=None, generation=2)) is not None


def test_the_build_job_is_the_one_the_status_names() -> None:
    assert build_job(with_build("Building", reason="Building")) == JOB
