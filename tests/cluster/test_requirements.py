"""spec.requirements, installed by the init container from the package index the chart names.

Pods have no internet: the session serves a wheel of `six` on the node address
(conftest.index_url), and the cluster-wide release is installed with functions.pip.indexUrl and
functions.pip.trustedHosts pointing at it.
"""
from __future__ import annotations

import time

from tests.cluster import platform
from tests.cluster.platform import Release

USES_SIX = """
import six


def handler(event, context):
    return {"six": six.__version__}
"""


def test_chart_gives_the_operator_the_package_index(release: Release, index_url: str) -> None:
    deployment = platform.get("deployment", release.operator, namespace=release.namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KFN_PIP_INDEX_URL"] == index_url
    assert env["KFN_PIP_TRUSTED_HOST"] == platform.NODE_IP
    assert "KFN_PIP_EXTRA_INDEX_URL" not in env and "KFN_PIP_FIND_LINKS" not in env  # empty lists: not set


def test_requirements_install_from_the_configured_index(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "uses-six"
    deployed.append(name)
    release.deploy(platform.function(name, USES_SIX, requirements=["six"]), fn_ns)
    started = time.monotonic()
    first = platform.get_in_background(release.url(name, fn_ns))  # starts an instance: pip runs first
    platform.wait_until("the first answer, or the init container failing",
                        lambda: first.done() or _init_failure(name, fn_ns), timeout=60)
    failure = _init_failure(name, fn_ns)
    assert failure is None, failure
    answer = first.result()
    assert answer.status == 200, answer.text
    platform.record("cold start with pip install of six from the node's index", time.monotonic() - started, "s")
    assert list(answer.json()) == ["six"], answer.text


def _init_failure(name: str, namespace: str) -> str | None:
    """The init container's exit and last log lines when it failed, else None."""
    for pod in platform.function_pods(name, namespace):
        for status in pod.get("status", {}).get("initContainerStatuses") or ():
            for state in (status.get("state") or {}, status.get("lastState") or {}):
                terminated = state.get("terminated")
                if terminated and terminated.get("exitCode"):
                    logs = platform.kubectl("logs", pod["metadata"]["name"], "-c", status["name"], "--tail=15",
                                            namespace=namespace, check=False)
                    return f"init container {status['name']} exited {terminated['exitCode']}:\n{logs.stdout[-2000:]}"
    return None
