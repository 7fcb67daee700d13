"""Requirements built once, against an emulated API server and a fake archive store: a Function with
requirements waits for its build Job, then its pods fetch the archive; a failed build is reported."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kfn.core import naming
from kfn_operator import builders, builds
from kfn_operator.config import OperatorConfig
from kfn_runtime import archive
from kfn_runtime import build as building
from tests.support import kube
from tests.support.builds import DIGEST, REQUIREMENTS, SECRET, FakeStore, build_jobs, key_of, patch_status, serving
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, function_status, ready_condition
from tests.support.operator import running_operator
from tests.support.waiting import eventually


@pytest.fixture
async def store() -> AsyncIterator[FakeStore]:
    async with serving(FakeStore()) as fake:
        yield fake


@pytest.fixture
async def builder(cluster: kube.Cluster, store: FakeStore) -> AsyncIterator[None]:
    config = OperatorConfig(standalone=True, autoscaler=False, archive_url=store.url, archive_key=SECRET)
    async with running_operator(config):
        yield


def instance_env(dep: dict[str, Any]) -> dict[str, str]:
    """The instance container's env: it fetches the archive itself (no init container)."""
    pod = dep["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    (container,) = pod["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


async def test_a_function_whose_archive_is_not_stored_waits_for_its_build_job(cluster, store, builder) -> None:
    manifest = function_manifest(requirements=REQUIREMENTS)
    await create_function(cluster, manifest)
    cond = await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "Building" and c,
                            what="Building")
    (job,) = build_jobs(cluster)
    key = key_of(manifest)
    assert job["metadata"]["name"] == builders.build_job_name(key)
    assert job["metadata"]["labels"][naming.LABEL_ARCHIVE] == key
    assert job["metadata"]["name"] in cond["message"]
    assert function_status(cluster)["build"] == {"key": key, "job": job["metadata"]["name"], "state": "Building"}
    assert deployment(cluster) is None

    # The Job stores the archive and completes: the Function is deployed, its pods fetching it.
    store.archives[("default", key)] = DIGEST
    await patch_status(cluster, f"/apis/batch/v1/namespaces/default/jobs/{job['metadata']['name']}/status",
                       {"conditions": [{"type": "Complete", "status": "True"}]})
    dep = await eventually(lambda: deployment(cluster), what="the Deployment")
    assert instance_env(dep)[building.ENV_DIGEST] == DIGEST
    await eventually(lambda: function_status(cluster)["build"]["state"] == "Stored", what="Stored")


async def test_a_stored_archive_is_fetched_by_the_pods_without_a_build(cluster, store, builder) -> None:
    manifest = function_manifest(requirements=REQUIREMENTS)
    key = key_of(manifest)
    store.archives[("default", key)] = DIGEST
    await create_function(cluster, manifest)
    dep = await eventually(lambda: deployment(cluster), what="the Deployment")
    env = instance_env(dep)
    assert env[building.ENV_URL] == f"{store.url}/system/archives/default/{key}"
    assert archive.token_matches(SECRET, archive.VERB_GET, "default", key, env[building.ENV_TOKEN])
    assert not any(name.startswith("PIP_") for name in env)
    await eventually(lambda: function_status(cluster).get("build", {}).get("state") == "Stored", what="Stored")
    assert function_status(cluster)["build"]["digest"] == DIGEST
    assert build_jobs(cluster) == []


async def test_a_failed_build_is_reported_with_the_installers_lines(cluster, store, builder) -> None:
    await create_function(cluster, function_manifest(requirements=["no-such-package-kfn"]))
    (job,) = await eventually(lambda: build_jobs(cluster), what="the build Job")
    name = job["metadata"]["name"]
    async with cluster.post("/api/v1/namespaces/default/pods", json={
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-x1", "labels": {"job-name": name}},
            "spec": {"containers": [{"name": "build", "image": "x"}], "restartPolicy": "Never"}}) as r:
        assert r.status == 201, await r.text()
    message = "kfn-build: pip could not install the requirements (exit code 1); its last lines:\n" \
              "ERROR: No matching distribution found for no-such-package-kfn"
    await patch_status(cluster, f"/api/v1/namespaces/default/pods/{name}-x1/status", {
        "phase": "Failed", "containerStatuses": [{
            "name": "build", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}]})
    await patch_status(cluster, f"/apis/batch/v1/namespaces/default/jobs/{name}/status", {
        "failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    cond = await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "BuildFailed" and c,
                            what="BuildFailed")
    assert "No matching distribution found for no-such-package-kfn" in cond["message"]
    build = function_status(cluster)["build"]
    assert build["state"] == "Failed" and "no-such-package-kfn" in build["message"]
    events = await eventually(lambda: [e for e in cluster.list_objects(kube.EVENTS, "default")
                                          if e.get("reason") == "BuildFailed"], what="a Warning event")
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert deployment(cluster) is None
    assert len(build_jobs(cluster)) == 1   # not retried


async def test_functions_with_the_same_requirements_share_one_build(cluster, store, builder) -> None:
    first, second = (function_manifest(name, requirements=REQUIREMENTS) for name in ("hello", "other"))
    await create_function(cluster, first)
    await eventually(lambda: build_jobs(cluster), what="the build Job")
    await create_function(cluster, second)
    await eventually(lambda: (c := ready_condition(cluster, "other")) and c["reason"] == "Building",
                     what="the second Function Building")
    (job,) = build_jobs(cluster)
    assert function_status(cluster, "other")["build"]["job"] == job["metadata"]["name"]

    store.archives[("default", key_of(first))] = DIGEST
    await patch_status(cluster, f"/apis/batch/v1/namespaces/default/jobs/{job['metadata']['name']}/status",
                       {"conditions": [{"type": "Complete", "status": "True"}]})
    await eventually(lambda: deployment(cluster) and deployment(cluster, "other"), what="both Deployments")
    assert len(build_jobs(cluster)) == 1


async def test_a_build_that_fails_before_the_function_names_its_key_is_reported_by_the_recheck(
        cluster, store, monkeypatch) -> None:
    # kopf writes a reconcile's status once the reconcile returns: a Job failing before that finds no
    # Function naming its key, and a finished Job sends no more events. The leader's recheck of the
    # Functions still Building, which runs outside kopf's handlers, must then report the failure.
    monkeypatch.setattr(builds, "BUILDING_RECHECK", 0.5)
    config = OperatorConfig(standalone=True, autoscaler=False, archive_url=store.url, archive_key=SECRET)
    async with running_operator(config):
        await create_function(cluster, function_manifest(requirements=["no-such-package-kfn"]))
        await eventually(lambda: (function_status(cluster).get("build") or {}).get("state") == "Building",
                         what="Building")
        (job,) = build_jobs(cluster)
        await patch_status(cluster, f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/default/functions/hello/status",
                           {"build": {"key": "deps-" + "0" * 32, "state": "Building", "job": "kfn-build-elsewhere"}})
        await patch_status(cluster, f"/apis/batch/v1/namespaces/default/jobs/{job['metadata']['name']}/status", {
            "failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
        cond = await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "BuildFailed" and c,
                                what="BuildFailed, once the Function is looked at again")
        events = await eventually(lambda: [e for e in cluster.list_objects(kube.EVENTS, "default")
                                              if e.get("reason") == "BuildFailed"], what="a Warning event")
    assert job["metadata"]["name"] in cond["message"]
    assert function_status(cluster)["build"]["state"] == "Failed"
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert events[0]["involvedObject"]["name"] == "hello"
