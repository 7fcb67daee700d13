"""spec.requirements, built once: a build Job installs them from the package index the chart names into
an archive kept in the gateway's store (NATS JetStream); every pod's instance fetches and unpacks that
archive before it initialises the function (no init container), and no pod runs pip.

Pods have no internet: the session serves a wheel of `six` on the node address
(conftest.index_url), and the cluster-wide release is installed with functions.pip.indexUrl and
functions.pip.trustedHosts pointing at it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

USES_SIX = """
import six


def handler(event, context):
    return {"six": six.__version__}
"""
BUILD_TIMEOUT = 120


def test_chart_gives_the_operator_the_package_index(release: Release, index_url: str) -> None:
    deployment = platform.get("deployment", release.operator, namespace=release.namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KFN_PIP_INDEX_URL"] == index_url
    assert env["KFN_PIP_TRUSTED_HOST"] == platform.NODE_IP
    assert "KFN_PIP_EXTRA_INDEX_URL" not in env and "KFN_PIP_FIND_LINKS" not in env  # empty lists: not set


def stored_build_status(name: str, namespace: str) -> dict[str, Any]:
    """The Function once its status names its stored build. Ready may come first, from the
    Deployment's own status (scaled to zero), and status.build with the operator's write a moment
    later: they are separate writes."""
    def stored() -> dict[str, Any] | None:
        found = platform.get("function", name, namespace=namespace)
        build = (found or {}).get("status", {}).get("build") or {}
        return found if build.get("state") == "Stored" else None

    return platform.wait_until(f"{name}'s status naming its stored build", stored, timeout=30)


@pytest.fixture(scope="module")
def built_six(release: Release, fn_ns: str) -> Iterator[dict[str, Any]]:
    """`uses-six`, deployed and built: the Function as it is once Ready (its archive stored)."""
    name = "uses-six"
    started = time.monotonic()
    release.deploy(platform.function(name, USES_SIX, requirements=["six"]), fn_ns, timeout=BUILD_TIMEOUT)
    platform.record("requirements (six) built: apply → Ready, the archive stored", time.monotonic() - started, "s")
    yield stored_build_status(name, fn_ns)
    platform.kubectl("delete", "function", name, "--ignore-not-found", "--wait=false", namespace=fn_ns, check=False)


def test_a_function_with_requirements_is_ready_once_its_archive_is_stored(built_six: dict[str, Any],
                                                                          fn_ns: str) -> None:
    build = built_six["status"]["build"]
    assert build["state"] == "Stored", build
    assert build["digest"].startswith("sha256:") and build["key"].startswith("deps-"), build
    # Ready follows the stored archive, which the Job's last step PUTs: the Job itself is marked
    # succeeded a moment later, once the job controller sees its pod end.
    job = platform.wait_until(f"build Job {build['job']} succeeded", lambda: (
        (found := platform.get("job", build["job"], namespace=fn_ns)) and found["status"].get("succeeded") == 1
        and found), timeout=30)
    assert not job["status"].get("failed"), job["status"]


def test_pods_fetch_the_archive_and_never_run_pip(release: Release, built_six: dict[str, Any], fn_ns: str) -> None:
    name = built_six["metadata"]["name"]
    started = time.monotonic()
    answer = platform.http_get(release.url(name, fn_ns))   # from zero: a pod starts and fetches
    assert answer.status == 200, answer.text
    platform.record("cold start with requirements, the archive fetched (six)", time.monotonic() - started, "s")
    assert list(answer.json()) == ["six"], answer.text
    (pod, *_) = platform.function_pods(name, fn_ns)
    # The instance fetches the archive itself: no init container (the kubelet notices its end late).
    assert not pod["spec"].get("initContainers"), pod["spec"]["initContainers"]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "function"]
    assert not any(e["name"].startswith("PIP_") for e in container.get("env") or ()), container["env"]
    log = platform.kubectl("logs", pod["metadata"]["name"], "-c", "function", namespace=fn_ns).stdout
    fetched = [line for line in log.splitlines() if '"requirements fetched"' in line]
    assert fetched and json.loads(fetched[0])["key"] == built_six["status"]["build"]["key"], log


def test_a_second_function_with_the_same_requirements_reuses_the_archive(
        release: Release, built_six: dict[str, Any], fn_ns: str, deployed: list[str]) -> None:
    deployed.append("uses-six-too")
    release.deploy(platform.function("uses-six-too", USES_SIX, requirements=["six"]), fn_ns)
    fn = stored_build_status("uses-six-too", fn_ns)
    key = built_six["status"]["build"]["key"]
    assert fn["status"]["build"]["key"] == key
    assert fn["status"]["build"]["digest"] == built_six["status"]["build"]["digest"]
    jobs = platform.items("jobs", namespace=fn_ns, selector=f"kfn.dev/archive={key}")
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    answer = platform.http_get(release.url("uses-six-too", fn_ns))
    assert answer.status == 200 and list(answer.json()) == ["six"], answer.text


def test_a_requirement_that_cannot_be_installed_fails_the_build_with_the_installer_s_words(
        release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "missing-requirement"
    deployed.append(name)
    platform.apply(platform.function(name, USES_SIX, requirements=["kfn-no-such-package==1.0"]), namespace=fn_ns)

    def failed() -> dict[str, Any] | None:
        condition = platform.ready_condition(platform.get("function", name, namespace=fn_ns))
        return condition if condition and condition.get("reason") == "BuildFailed" else None

    condition = platform.wait_until(f"{name} BuildFailed", failed, timeout=BUILD_TIMEOUT)
    assert "kfn-no-such-package" in condition["message"], condition
    fn = platform.get("function", name, namespace=fn_ns)
    assert fn["status"]["build"]["state"] == "Failed", fn["status"]["build"]
    assert platform.get("deployment", name, namespace=fn_ns) is None   # nothing to run until it builds
    logs = release.kfn("logs", platform.cli_name(name, fn_ns), "--build")
    assert logs.returncode == 0, logs.stderr
    assert "kfn-no-such-package" in logs.stdout, logs.stdout


def test_a_failed_build_answers_callers_at_once(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "missing-requirement-called"
    deployed.append(name)
    platform.apply(platform.function(name, USES_SIX, requirements=["kfn-no-such-package==2.0"]), namespace=fn_ns)
    release.wait_known(name, fn_ns)
    platform.wait_until(f"{name} BuildFailed", lambda: (platform.ready_condition(
        platform.get("function", name, namespace=fn_ns)) or {}).get("reason") == "BuildFailed", timeout=BUILD_TIMEOUT)
    started = time.monotonic()
    answer = platform.http_get(release.url(name, fn_ns))
    assert time.monotonic() - started < 30, "held until the queue timeout instead of answered"
    assert answer.status >= 500, answer.text
    assert "requirements" in answer.text, answer.text
