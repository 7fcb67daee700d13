"""The operator's build Jobs seen from the k8s tests: a fake archive store answering the operator's HEADs,
the archive key of a Function, the build Jobs in the emulated cluster, status patches standing in for Kubernetes."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aiohttp import web

from kfn.core import naming
from kfn.core.functions import parse_function
from kfn_operator import builders
from kfn_runtime import archive
from tests.support import kube

SECRET = b"s" * 32
JOBS = "batch/v1/jobs"
REQUIREMENTS = ["requests==2.32.3"]
DIGEST = "sha256:" + "d" * 64

S = TypeVar("S", bound="FakeStore")


class FakeStore:
    """The gateway's archive store as the operator asks it: HEAD with a get token."""

    def __init__(self) -> None:
        self.archives: dict[tuple[str, str], str] = {}
        self.url = ""

    async def head(self, request: web.Request) -> web.Response:
        namespace, key = request.match_info["namespace"], request.match_info["key"]
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not archive.token_matches(SECRET, archive.VERB_GET, namespace, key, presented):
            return web.Response(status=403)
        digest = self.archives.get((namespace, key))
        if digest is None:
            return web.Response(status=404)
        return web.Response(status=200, headers={"X-Kfn-Archive-Digest": digest})


@contextlib.asynccontextmanager
async def serving(fake: S) -> AsyncIterator[S]:
    """`fake` answering HEAD /system/archives/NAMESPACE/KEY on 127.0.0.1 (its `url` set) until exit."""
    app = web.Application()
    app.router.add_route("HEAD", "/system/archives/{namespace}/{key}", fake.head)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def key_of(fn_manifest: dict[str, Any]) -> str:
    """The archive key the operator gives this Function manifest, in the namespace "default"."""
    return builders.archive_key(parse_function({**fn_manifest, "metadata": {**fn_manifest["metadata"],
                                                                            "namespace": "default"}}),
                                images=builders.RuntimeImages(), pip=builders.PipSettings())


def build_jobs(cluster: kube.Cluster) -> list[dict[str, Any]]:
    """The build Jobs in the namespace "default"."""
    return cluster.list_objects(JOBS, "default", selector=f"{naming.LABEL_COMPONENT}={builders.COMPONENT_BUILD}")


async def patch_status(cluster: kube.Cluster, path: str, status: dict[str, Any]) -> None:
    """Merge `status` into the status of the object at `path`, as Kubernetes would; fails the test unless 200."""
    async with cluster.patch(path, json={"status": status},
                             headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()
