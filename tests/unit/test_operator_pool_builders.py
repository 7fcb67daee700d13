"""A warm pool's Deployment, and the operator's pure decisions about pools: schema-valid, hardened
like a function's pods, selecting idle pods only; what to create, patch and delete; pods as
`kfn.core.pool.reap` sees them; the pool settings."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.aio import client

from kfn.core import naming, pool
from kfn.core.functions import FunctionRef
from kfn.core.instancespec import TERMINATION_MARGIN_SECONDS
from kfn_operator import builders, pools
from kfn_operator.builders import RuntimeImages
from kfn_operator.config import OperatorConfig
from kfn_runtime import contract, specialize
from tests.support.functions import make_function
from tests.support.schemas import supported_versions

IMAGES = RuntimeImages()
REGION = "us-east-1"
KEY = specialize.namespace_key(b"k" * 32, "team-a")


def pool_deployment(runtime: str = "python3.12", *, size: int = 2, namespace: str = "team-a",
                    images: RuntimeImages = IMAGES) -> dict[str, Any]:
    return builders.build_pool_deployment(namespace, runtime, images=images, size=size, key=KEY)


def instance(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


@pytest.mark.parametrize("version", supported_versions())
@pytest.mark.parametrize("runtime", ["python3.12", "nodejs20"])
def test_a_pool_deployment_validates_against_the_kubernetes_schema(runtime: str, version: str) -> None:
    kubernetes_validate.validate(pool_deployment(runtime), version, strict=True)


def test_a_pool_deployment_is_named_after_its_runtime_with_size_replicas() -> None:
    deployment = pool_deployment("python3.13", size=3)
    assert deployment["metadata"]["name"] == "kfn-pool-python3-13" == pool.deployment_name("python3.13")
    assert deployment["metadata"]["namespace"] == "team-a"
    assert deployment["spec"]["replicas"] == 3


def test_a_pool_deployment_selects_only_its_idle_pods() -> None:
    deployment = pool_deployment()
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {naming.LABEL_COMPONENT: naming.COMPONENT_POOL, naming.LABEL_POOL: "python3.12",
                        naming.LABEL_POOL_STATE: naming.POOL_IDLE}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {**selector, naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
    assert deployment["metadata"]["labels"] == labels


def test_pool_pods_are_hardened_like_a_functions_pods() -> None:
    fn = make_function()
    function_pod = builders.build_pod_template(fn, images=IMAGES, region=REGION)["spec"]
    pool_pod = pool_deployment()["spec"]["template"]["spec"]
    for field in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert pool_pod[field] == function_pod[field]
    (mine,), (theirs,) = pool_pod["containers"], function_pod["containers"]
    for field in ("name", "image", "imagePullPolicy", "ports", "readinessProbe", "livenessProbe", "securityContext",
                  "terminationMessagePolicy"):
        assert mine[field] == theirs[field], field


def test_a_pool_instance_is_told_it_is_pooled_its_key_and_its_pod_uid_and_nothing_of_a_function() -> None:
    env = instance(pool_deployment())["env"]
    assert [e["name"] for e in env] == [
        contract.ENV_POOL, contract.ENV_POOL_KEY, contract.ENV_POD_UID, contract.ENV_RUNTIME, contract.ENV_HOST,
        contract.ENV_PORT, contract.ENV_CODE_DIR, contract.ENV_DEPS_DIR]
    values = {e["name"]: e.get("value") for e in env}
    assert values[contract.ENV_POOL] == "1"
    assert values[contract.ENV_POOL_KEY] == KEY
    assert values[contract.ENV_RUNTIME] == "python3.12"
    assert values[contract.ENV_PORT] == str(naming.RUNTIME_PORT)
    assert values[contract.ENV_CODE_DIR] == contract.DEFAULT_CODE_DIR
    assert values[contract.ENV_DEPS_DIR] == contract.DEFAULT_DEPS_DIR
    uid = next(e for e in env if e["name"] == contract.ENV_POD_UID)
    assert uid["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}


def test_a_pool_instances_code_deps_and_tmp_are_writable_empty_dirs() -> None:
    deployment = pool_deployment()
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": name, "emptyDir": {}} for name in ("tmp", "deps", "code")]
    mounts = {m["name"]: m for m in instance(deployment)["volumeMounts"]}
    assert mounts["code"]["mountPath"] == contract.DEFAULT_CODE_DIR
    assert mounts["deps"]["mountPath"] == contract.DEFAULT_DEPS_DIR
    assert not any(m.get("readOnly") for m in mounts.values())


def test_a_pool_instance_has_the_pools_resources() -> None:
    assert instance(pool_deployment())["resources"] == {"requests": dict(pool.POOL_RESOURCES.requests),
                                                        "limits": dict(pool.POOL_RESOURCES.limits)}


def test_a_pool_pod_may_drain_as_long_as_the_longest_function() -> None:
    grace = pool_deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 900 + int(contract.DEFAULT_DRAIN_EXTRA) + TERMINATION_MARGIN_SECONDS


def test_a_pool_deployment_for_an_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="no runtime image configured for 'cobol'"):
        pool_deployment("cobol")


def test_another_runtime_image_changes_the_pools_spec_hash() -> None:
    before = builders.pool_hash(pool_deployment())
    other = RuntimeImages(images={**IMAGES.images, "python3.12": "elsewhere/runtime:2"})
    assert before is not None
    assert builders.pool_hash(pool_deployment(images=other)) != before
    assert builders.pool_hash(pool_deployment()) == before
    assert builders.pool_hash(pool_deployment(size=5)) == before   # the size is not the template


# ---- plan_pools

def stored(deployment: dict[str, Any], **meta: Any) -> dict[str, Any]:
    """`deployment` as the API gives it back."""
    return {**deployment, "metadata": {**deployment["metadata"], "resourceVersion": "7", **meta}}


def test_a_wanted_pool_that_is_missing_is_created() -> None:
    wanted = pool_deployment()
    assert pools.plan_pools([wanted], []) == pools.PoolPlan(create=[wanted])


def test_a_pool_as_wanted_is_left_alone() -> None:
    wanted = pool_deployment()
    assert pools.plan_pools([wanted], [stored(wanted)]) == pools.PoolPlan()


def test_a_pool_with_another_spec_hash_is_patched() -> None:
    wanted = pool_deployment()
    old = stored(wanted, annotations={naming.ANNOTATION_SPEC_HASH: "old"})
    assert pools.plan_pools([wanted], [old]) == pools.PoolPlan(patch=[(old, wanted)])


def test_a_pool_of_another_size_is_patched() -> None:
    wanted = pool_deployment(size=3)
    old = stored(pool_deployment(size=1))
    assert pools.plan_pools([wanted], [old]).patch == [(old, wanted)]


def test_a_pool_nobody_wants_is_deleted() -> None:
    there = stored(pool_deployment(namespace="gone"))
    assert pools.plan_pools([], [there]) == pools.PoolPlan(delete=[("gone", "kfn-pool-python3-12")])


# ---- pooled_pod

def pod(state: str = naming.POOL_SPECIALIZED, *, function: str | None = "hello", annotations: dict[str, str] | None
        = None, restarts: int = 0, phase: str = "Running", deleting: bool = False) -> client.V1Pod:
    labels = {naming.LABEL_POOL_STATE: state, naming.LABEL_POOL: "python3.12"}
    if function:
        labels[naming.LABEL_FUNCTION] = function
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="kfn-pool-python3-12-abc", namespace="team-a", labels=labels, annotations=annotations,
            deletion_timestamp=datetime.datetime.now(datetime.UTC) if deleting else None),
        status=client.V1PodStatus(phase=phase, container_statuses=[
            client.V1ContainerStatus(name="other", restart_count=9, image="x", image_id="", ready=True),
            client.V1ContainerStatus(name=builders.CONTAINER_NAME, restart_count=restarts, image="x", image_id="",
                                     ready=True)]))


def test_a_pod_from_a_pool_reads_its_state_function_claim_and_hash_from_labels_and_annotations() -> None:
    seen = pools.pooled_pod(pod(annotations={naming.ANNOTATION_CLAIMED_AT: "1700000000.500",
                                             naming.ANNOTATION_SPECIALIZED_HASH: "abc"}, restarts=2))
    assert seen == pool.PooledPod(namespace="team-a", name="kfn-pool-python3-12-abc", state=naming.POOL_SPECIALIZED,
                                  runtime="python3.12", function=FunctionRef("team-a", "hello"),
                                  claimed_at=1700000000.5, specialized_hash="abc", restarts=2, terminating=False)


def test_an_idle_pool_pod_names_no_function() -> None:
    seen = pools.pooled_pod(pod(naming.POOL_IDLE, function=None))
    assert seen is not None and seen.function is None and seen.claimed_at is None


def test_a_claim_time_that_is_not_a_number_is_no_claim_time() -> None:
    seen = pools.pooled_pod(pod(naming.POOL_CLAIMED, annotations={naming.ANNOTATION_CLAIMED_AT: "soon"}))
    assert seen is not None and seen.claimed_at is None


@pytest.mark.parametrize("kwargs", [{"deleting": True}, {"phase": "Succeeded"}, {"phase": "Failed"}])
def test_a_pod_being_deleted_or_ended_is_terminating(kwargs: dict[str, Any]) -> None:
    seen = pools.pooled_pod(pod(**kwargs))
    assert seen is not None and seen.terminating


def test_a_pod_in_a_pool_state_kfn_does_not_know_is_not_considered() -> None:
    assert pools.pooled_pod(pod("borrowed")) is None


# ---- settings

def test_the_pool_size_defaults_to_one_and_pools_need_a_key(tmp_path: Path) -> None:
    config = OperatorConfig.build(env={})
    assert config.pool_size == 1 and config.pool_key is None and not config.pools
    key = tmp_path / "pool.key"
    key.write_bytes(b"s" * 32)
    config = OperatorConfig.build(pool_key_file=str(key), env={})
    assert config.pool_key == b"s" * 32 and config.pools


def test_the_pool_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    key = tmp_path / "pool.key"
    key.write_bytes(b"s" * 16)
    config = OperatorConfig.build(env={"KFN_POOL_SIZE": "3", "KFN_POOL_KEY_FILE": str(key)})
    assert config.pool_size == 3 and config.pool_key == b"s" * 16


def test_a_pool_size_of_zero_turns_pools_off(tmp_path: Path) -> None:
    key = tmp_path / "pool.key"
    key.write_bytes(b"s" * 32)
    assert not OperatorConfig.build(pool_size=0, pool_key_file=str(key), env={}).pools


@pytest.mark.parametrize(("size", "env"), [(-1, {}), (101, {}), (None, {"KFN_POOL_SIZE": "many"})])
def test_a_pool_size_out_of_range_is_refused(size: int | None, env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="KFN_POOL_SIZE|--pool-size"):
        OperatorConfig.build(pool_size=size, env=env)


def test_a_short_pool_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "pool.key"
    key.write_bytes(b"s" * (specialize.MIN_KEY_BYTES - 1))
    with pytest.raises(ValueError, match=r"--pool-key-file .*15 bytes"):
        OperatorConfig.build(pool_key_file=str(key), env={})


def test_a_missing_pool_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--pool-key-file"):
        OperatorConfig.build(pool_key_file=str(tmp_path / "absent"), env={})
