"""`kfn secrets ensure` on an upgrade from a chart that rendered its Secrets itself (with `lookup`):
Helm deletes what a release no longer renders unless it is annotated helm.sh/resource-policy=keep,
so the hook, which runs before Helm deletes anything, marks those Secrets kept (their data untouched)."""
from __future__ import annotations

import base64
import sys

import pytest

from tests.support import kube

pytestmark = [pytest.mark.timeout(60)]

SECRETS = "v1/secrets"
NS = "kfn-system"
KEY = b"0123456789abcdef0123456789abcdef"


async def ensure(cluster: kube.Cluster, *args: str) -> tuple[int, str, str]:
    assert cluster.kubeconfig is not None
    return await kube.run_command(sys.executable, "-m", "kfn", "secrets", "ensure", "--namespace", NS, *args,
                                  env=kube.env_with_kubeconfig(cluster.kubeconfig), timeout=40)


async def create_secret(cluster: kube.Cluster, name: str, annotations: dict[str, str]) -> None:
    await kube.post(cluster, f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations,
                     "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "data": {"key": base64.b64encode(KEY).decode()}})


async def test_a_secret_an_older_chart_rendered_is_marked_kept_with_its_data_untouched(cluster: kube.Cluster) -> None:
    await create_secret(cluster, "kfn-archive-key", {"meta.helm.sh/release-name": "kfn",
                                                     "meta.helm.sh/release-namespace": NS})
    code, out, err = await ensure(cluster, "--secret", "kfn-archive-key:key:bytes")
    assert code == 0, err
    secret = cluster.object(SECRETS, NS, "kfn-archive-key")
    assert secret is not None
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert base64.b64decode(secret["data"]["key"]) == KEY
    assert "marked Secret kfn-system/kfn-archive-key helm.sh/resource-policy=keep" in out


async def test_a_helm_secret_already_kept_is_left_as_it_is(cluster: kube.Cluster) -> None:
    await create_secret(cluster, "kfn-admin-keys", {"meta.helm.sh/release-name": "kfn",
                                                    "helm.sh/resource-policy": "keep"})
    before = cluster.object(SECRETS, NS, "kfn-admin-keys")
    code, out, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin")
    assert code == 0, err
    assert cluster.object(SECRETS, NS, "kfn-admin-keys") == before
    assert "marked" not in out


async def test_annotations_are_put_on_each_secret_created(cluster: kube.Cluster) -> None:
    code, _, err = await ensure(cluster, "--secret", "kfn-pool-key:key:bytes",
                                "--annotation", "meta.helm.sh/release-name=kfn",
                                "--annotation", "helm.sh/resource-policy=keep")
    assert code == 0, err
    secret = cluster.object(SECRETS, NS, "kfn-pool-key")
    assert secret is not None
    assert secret["metadata"]["annotations"] == {"meta.helm.sh/release-name": "kfn", "helm.sh/resource-policy": "keep"}


async def test_a_secret_created_kept_is_not_patched_on_the_next_run(cluster: kube.Cluster) -> None:
    args = ("--secret", "kfn-pool-key:key:bytes", "--annotation", "meta.helm.sh/release-name=kfn",
            "--annotation", "helm.sh/resource-policy=keep")
    assert (await ensure(cluster, *args))[0] == 0
    first = cluster.object(SECRETS, NS, "kfn-pool-key")
    code, out, err = await ensure(cluster, *args)
    assert code == 0, err
    assert cluster.object(SECRETS, NS, "kfn-pool-key") == first and "marked" not in out


async def test_a_bad_annotation_is_a_usage_error(cluster: kube.Cluster) -> None:
    code, _, err = await ensure(cluster, "--secret", "kfn-keys:key", "--annotation", "novalue")
    assert code == 2 and "--annotation must be KEY=VALUE" in err
