"""Requirements built once under a careless operator and unlucky timing: Jobs deleted while they run,
Functions deleted or changed while their build runs, a store that cannot answer when a build ends, an
operator whose signing key is not the gateway's. No Function is left Building with nothing building."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kfn_operator import builds
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.builds import DIGEST, REQUIREMENTS, SECRET, FakeStore, build_jobs, key_of, patch_status, serving
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, function_status, ready_condition
from tests.support.operator import running_operator
from tests.support.waiting import eventually

FUNCTIONS = "/apis/kfn.dev/v1alpha1/namespaces/default/functions"


class FlakyStore(FakeStore):
    """The fake store, answering 503 while `down`."""

    down = False
    refused = 0   # HEADs answered 503

    async def head(self, request: web.Request) -> web.Response:
        if self.down:
            self.refused += 1
            return web.Response(status=503)
        return await super().head(request)


@pytest.fixture
async def store() -> AsyncIterator[FlakyStore]:
    async with serving(FlakyStore()) as fake:
        yield fake


@pytest.fixture
async def builder(cluster: kube.Cluster, store: FlakyStore, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setattr(builds, "STORE_RETRY", 0.5)
    monkeypatch.setattr(builds, "BUILDING_RECHECK", 0.5)
    config = OperatorConfig(standalone=True, autoscaler=False, archive_url=store.url, archive_key=SECRET)
    async with running_operator(config):
        yield


def job_path(name: str) -> str:
    return f"/apis/batch/v1/namespaces/default/jobs/{name}"


async def complete(cluster: kube.Cluster, name: str) -> None:
    await patch_status(cluster, job_path(name) + "/status", {"conditions": [{"type": "Complete", "status": "True"}]})


async def delete(cluster: kube.Cluster, path: str) -> None:
    async with cluster.delete(path) as r:
        assert r.status in (200, 202), await r.text()


async def building(cluster: kube.Cluster) -> list[dict[str, Any]]:
    """The build Jobs, once the Function says it is Building (a Job ending earlier concerns no Function yet)."""
    await eventually(lambda: (function_status(cluster).get("build") or {}).get("state") == "Building",
                     what="Building")
    return build_jobs(cluster)


def built_key(cluster: kube.Cluster) -> str | None:
    return (function_status(cluster).get("build") or {}).get("key")


def uid(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("uid"))


async def test_a_build_job_deleted_while_it_runs_is_started_again(cluster, store, builder) -> None:
    await create_function(cluster, function_manifest(requirements=REQUIREMENTS))
    (job,) = await building(cluster)
    await delete(cluster, job_path(job["metadata"]["name"]))
    (again,) = await eventually(lambda: [j for j in build_jobs(cluster) if uid(j) != uid(job)],
                                what="a new build Job", timeout=10)
    assert again["metadata"]["name"] == job["metadata"]["name"]
    assert ready_condition(cluster)["reason"] == "Building"


async def test_a_job_that_succeeded_without_its_archive_is_built_again(cluster, store, builder) -> None:
    await create_function(cluster, function_manifest(requirements=REQUIREMENTS))
    (job,) = await building(cluster)
    await complete(cluster, job["metadata"]["name"])   # and stored nothing
    (again,) = await eventually(lambda: [j for j in build_jobs(cluster) if uid(j) != uid(job)],
                                what="a new build Job", timeout=10)
    assert function_status(cluster)["build"]["state"] == "Building"
    assert deployment(cluster) is None

    store.archives[("default", key_of(function_manifest(requirements=REQUIREMENTS)))] = DIGEST
    await complete(cluster, again["metadata"]["name"])
    await eventually(lambda: deployment(cluster), what="the Deployment")


async def test_a_job_that_succeeded_while_the_store_could_not_answer_deploys_once_it_can(
        cluster, store, builder) -> None:
    manifest = function_manifest(requirements=REQUIREMENTS)
    await create_function(cluster, manifest)
    (job,) = await building(cluster)
    store.archives[("default", key_of(manifest))] = DIGEST
    store.down = True
    await complete(cluster, job["metadata"]["name"])
    # Asked before the Job (does it have the archive?) and after (did the Job store it?): no answer either time.
    await eventually(lambda: store.refused >= 2, what="the operator to ask the store when the Job ended")
    await asyncio.sleep(0.3)
    store.down = False
    await eventually(lambda: deployment(cluster), what="the Deployment", timeout=10)
    await eventually(lambda: function_status(cluster)["build"].get("state") == "Stored", what="Stored")


async def test_requirements_changed_while_building_the_old_jobs_end_does_not_store_the_new_key(
        cluster, store, builder) -> None:
    old, new = function_manifest(requirements=REQUIREMENTS), function_manifest(requirements=["idna==3.7"])
    await create_function(cluster, old)
    await eventually(lambda: built_key(cluster) == key_of(old), what="the first key")
    (old_job,) = build_jobs(cluster)
    async with cluster.patch(f"{FUNCTIONS}/hello", json={"spec": {"requirements": ["idna==3.7"]}},
                             headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()
    await eventually(lambda: built_key(cluster) == key_of(new), what="the new key")
    store.archives[("default", key_of(old))] = DIGEST
    await complete(cluster, old_job["metadata"]["name"])
    await eventually(lambda: len(build_jobs(cluster)) == 2, what="both Jobs")
    await asyncio.sleep(1.0)
    build = function_status(cluster)["build"]
    assert (build["key"], build["state"]) == (key_of(new), "Building")
    assert deployment(cluster) is None


async def test_a_function_deleted_while_its_build_runs_leaves_the_job_to_the_others(cluster, store, builder) -> None:
    first, second = (function_manifest(name, requirements=REQUIREMENTS) for name in ("hello", "other"))
    await create_function(cluster, first)
    (job,) = await building(cluster)
    await create_function(cluster, second)
    await eventually(lambda: (c := ready_condition(cluster, "other")) and c["reason"] == "Building",
                     what="the second Function Building")
    await delete(cluster, f"{FUNCTIONS}/hello")
    await eventually(lambda: cluster.object("kfn.dev/v1alpha1/functions", "default", "hello") is None,
                     what="the first Function gone")
    assert [uid(j) for j in build_jobs(cluster)] == [uid(job)]
    store.archives[("default", key_of(first))] = DIGEST
    await complete(cluster, job["metadata"]["name"])
    await eventually(lambda: deployment(cluster, "other"), what="the second Function's Deployment")


async def test_an_operator_whose_key_the_store_refuses_says_so_and_starts_no_build(cluster, store) -> None:
    config = OperatorConfig(standalone=True, autoscaler=False, archive_url=store.url, archive_key=b"x" * 32)
    async with running_operator(config):
        await create_function(cluster, function_manifest(requirements=REQUIREMENTS))
        cond = await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "BuildFailed" and c,
                                what="BuildFailed", timeout=10)
    assert "signing key" in cond["message"] and "403" in cond["message"]
    assert function_status(cluster)["build"]["state"] == "Failed"
    assert build_jobs(cluster) == []


async def test_a_job_that_ends_before_the_function_names_its_key_is_still_noticed(cluster, store, builder) -> None:
    # kopf writes a reconcile's status once the reconcile returns: a Job ending before that finds no
    # Function naming its key, and a finished Job sends no more events. Here the status names another
    # key when the Job ends, as it would (or names none) in that moment.
    manifest = function_manifest(requirements=REQUIREMENTS)
    await create_function(cluster, manifest)
    (job,) = await building(cluster)
    await patch_status(cluster, f"{FUNCTIONS}/hello/status",
                       {"build": {"key": "deps-" + "0" * 32, "state": "Building", "job": "kfn-build-elsewhere"}})
    store.archives[("default", key_of(manifest))] = DIGEST
    await complete(cluster, job["metadata"]["name"])
    await eventually(lambda: deployment(cluster), what="the Deployment, once the Function is looked at again")
    await eventually(lambda: function_status(cluster)["build"]["state"] == "Stored", what="status.build Stored")
