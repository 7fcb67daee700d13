"""Each Python runtime runs in its own image (the chart's runtimeImages) on the Python that image
really has, and says which: python3.13 on Python 3.13 (a trixie base when built by `make images`),
python3.11 on 3.11; python3.12 on whatever its image holds (3.11 when built here, see the chart
README), with an AWS_EXECUTION_ENV that names it."""
from __future__ import annotations

from tests.cluster import platform
from tests.cluster.platform import Release

WHICH = """
import os, sys


def handler(event, context):
    return {"version": "%d.%d" % sys.version_info[:2], "executionEnv": os.environ.get("AWS_EXECUTION_ENV")}
"""


def test_each_python_runtime_runs_on_the_python_of_its_image_and_names_it(release: Release, fn_ns: str,
                                                                           deployed: list[str]) -> None:
    seen = {}
    for version in ("3.11", "3.12", "3.13"):
        name = f"runs-py{version.replace('.', '')}"
        deployed.append(name)
        release.deploy(platform.function(name, WHICH, runtime=f"python{version}"), fn_ns)
        answer = platform.http_get(release.url(name, fn_ns), timeout=60)
        assert answer.status == 200, answer.text
        seen[version] = answer.json()
        images = {c["image"] for pod in platform.function_pods(name, fn_ns) for c in pod["spec"]["containers"]}
        assert any(image.endswith(f"/runtime-python:{version}") for image in images), images
    assert seen["3.11"] == {"version": "3.11", "executionEnv": "AWS_Lambda_python3.11"}
    assert seen["3.13"] == {"version": "3.13", "executionEnv": "AWS_Lambda_python3.13"}
    assert seen["3.12"]["executionEnv"] == f"AWS_Lambda_python{seen['3.12']['version']}"
