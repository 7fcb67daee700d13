"""Requirements built once: the build Job, the pods that fetch the archive, status.build (all pure)."""
from __future__ import annotations

import functools
from typing import Any

import kubernetes_validate
import pytest

from kfn.core import instancespec, naming
from kfn_operator import builders, builds, status
from kfn_operator.builders import Archive, PipSettings, RuntimeImages
from kfn_runtime import archive, contract
from kfn_runtime import build as building
from tests.support.functions import make_function
from tests.support.schemas import supported_versions

IMAGES = RuntimeImages()
PIP = PipSettings(index_url="http://pypi.internal/simple", trusted_hosts="pypi.internal")
REGION = "us-east-1"
SECRET = b"k" * 32
STORE = "http://kfn-gateway.kfn.svc:8080"
CODE = "def handler(event, context):\n    return 'hi'\n"
make = functools.partial(make_function, "hello", CODE, namespace="team-a", metadata={"generation": 3})
FN = make(requirements=["requests==2.32.3", "six"])
KEY = builders.archive_key(FN, images=IMAGES, pip=PIP)
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def job(fn: Any = FN, key: str = KEY) -> dict[str, Any]:
    url = instancespec.archive_url(STORE, fn.namespace, key)
    return builders.build_job(fn, key, images=IMAGES, pip=PIP, archive_url=url,
                              token=archive.token(SECRET, archive.VERB_PUT, fn.namespace, key), timeout=600,
                              resources=RESOURCES)


def fetched(digest: str = "sha256:" + "a" * 64) -> Archive:
    return Archive(instancespec.archive_url(STORE, FN.namespace, KEY),
                   archive.token(SECRET, archive.VERB_GET, FN.namespace, KEY), digest)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


# ---- the key

def test_the_key_follows_requirements_runtime_image_and_index_but_not_the_namespace_or_code() -> None:
    assert archive.valid_key(KEY)
    same = make(requirements=["requests==2.32.3", "six"], namespace="team-b", source={"files": {"x.py": "x = 1\n"}})
    assert builders.archive_key(same, images=IMAGES, pip=PIP) == KEY
    assert builders.archive_key(make(requirements=["six"]), images=IMAGES, pip=PIP) != KEY
    assert builders.archive_key(make(requirements=["requests==2.32.3", "six"], runtime="python3.13"),
                                images=IMAGES, pip=PIP) != KEY
    assert builders.archive_key(FN, images=IMAGES, pip=PipSettings()) != KEY
    other = RuntimeImages(images={**IMAGES.images, FN.spec.runtime: "elsewhere/runtime:2"})
    assert builders.archive_key(FN, images=other, pip=PIP) != KEY


# ---- the Job

@pytest.mark.parametrize("version", supported_versions())
def test_the_job_validates_against_the_kubernetes_schema(version: str) -> None:
    kubernetes_validate.validate(job(), version, strict=True)


def test_the_job_is_named_and_labelled_by_its_key_in_the_functions_namespace() -> None:
    manifest = job()
    meta = manifest["metadata"]
    assert meta["name"] == f"kfn-build-{KEY[5:17]}" == builders.build_job_name(KEY)
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                              naming.LABEL_COMPONENT: builders.COMPONENT_BUILD, naming.LABEL_ARCHIVE: KEY,
                              naming.LABEL_FUNCTION: "hello"}
    # Its pods are not the function's: no function label (the backends would count them as instances).
    assert manifest["spec"]["template"]["metadata"]["labels"] == {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_COMPONENT: builders.COMPONENT_BUILD,
        naming.LABEL_ARCHIVE: KEY}
    assert "ownerReferences" not in meta


def test_the_job_runs_the_build_once_within_its_deadline() -> None:
    spec = job()["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == builders.BUILD_JOB_TTL_SECONDS
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "kfn_runtime.build"]
    assert container["image"] == IMAGES.image_for(FN)
    assert container["resources"] == RESOURCES
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_job_carries_the_requirements_and_the_put_token_of_its_namespace_and_key() -> None:
    env = env_of(job()["spec"]["template"]["spec"]["containers"][0])
    assert env[contract.ENV_REQUIREMENTS] == "requests==2.32.3\nsix"
    assert env[contract.ENV_RUNTIME] == FN.spec.runtime
    assert env[building.ENV_KEY] == KEY
    assert env[building.ENV_URL] == f"{STORE}/system/archives/team-a/{KEY}"
    assert archive.token_matches(SECRET, archive.VERB_PUT, "team-a", KEY, env[building.ENV_TOKEN])
    assert not archive.token_matches(SECRET, archive.VERB_GET, "team-a", KEY, env[building.ENV_TOKEN])
    assert not archive.token_matches(SECRET, archive.VERB_PUT, "team-b", KEY, env[building.ENV_TOKEN])
    assert env["HOME"] == "/tmp"
    assert env["PIP_INDEX_URL"] == "http://pypi.internal/simple"
    assert env["PIP_TRUSTED_HOST"] == "pypi.internal"


def test_the_job_meets_the_restricted_profile_like_the_functions_pods() -> None:
    pod = job()["spec"]["template"]["spec"]
    function_pod = builders.build_pod_template(FN, images=IMAGES, pip=PIP, region=REGION)["spec"]
    assert pod["securityContext"] == function_pod["securityContext"]
    assert pod["containers"][0]["securityContext"] == function_pod["containers"][0]["securityContext"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


# ---- the pods that fetch

def test_with_an_archive_the_instance_fetches_it_itself_and_no_init_container_runs() -> None:
    pod = builders.build_pod_template(FN, images=IMAGES, pip=PIP, region=REGION, archive=fetched())["spec"]
    assert pod["initContainers"] == []   # an explicit empty list: a merge patch removes an old one
    (container,) = pod["containers"]
    env = env_of(container)
    assert {name: env[name] for name in (building.ENV_URL, building.ENV_TOKEN, building.ENV_DIGEST)} == {
        building.ENV_URL: f"{STORE}/system/archives/team-a/{KEY}",
        building.ENV_TOKEN: archive.token(SECRET, archive.VERB_GET, "team-a", KEY),
        building.ENV_DIGEST: "sha256:" + "a" * 64}
    assert env[contract.ENV_DEPS_DIR] == contract.DEFAULT_DEPS_DIR
    assert not any(name.startswith("PIP_") for name in env)
    (deps,) = [m for m in container["volumeMounts"] if m["name"] == "deps"]
    assert deps["mountPath"] == contract.DEFAULT_DEPS_DIR and not deps.get("readOnly")
    assert {"name": "deps", "emptyDir": {}} in pod["volumes"]



def test_the_deployment_with_an_archive_validates() -> None:
    deployment = builders.build_deployment(FN, images=IMAGES, pip=PIP, region=REGION, replicas=1, archive=fetched())
    kubernetes_validate.validate(deployment, supported_versions()[-1], strict=True)


def test_the_deployed_hash_changes_with_the_archive_and_its_digest() -> None:
    plain = builders.deployed_hash(FN, images=IMAGES, pip=PIP, region=REGION)
    first = builders.deployed_hash(FN, images=IMAGES, pip=PIP, region=REGION, archive=fetched())
    second = builders.deployed_hash(FN, images=IMAGES, pip=PIP, region=REGION, archive=fetched("sha256:" + "b" * 64))
    assert len({plain, first, second}) == 3
    template = builders.build_pod_template(FN, images=IMAGES, pip=PIP, region=REGION, archive=fetched())
    assert template["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH] == first


def test_without_an_archive_the_pods_are_what_they_were() -> None:
    pod = builders.build_pod_template(FN, images=IMAGES, pip=PIP, region=REGION)["spec"]
    assert pod["initContainers"][0]["command"] == list(builders.REQUIREMENTS_COMMAND)
    assert not any(name.startswith("KFN_ARCHIVE_") for name in env_of(pod["containers"][0]))


# ---- a Job's outcome

@pytest.mark.parametrize(("conditions", "outcome"), [
    ([], None),
    ([{"type": "Complete", "status": "True"}], True),
    ([{"type": "SuccessCriteriaMet", "status": "True"}], True),
    ([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], False),
    ([{"type": "FailureTarget", "status": "True"}], False),
    ([{"type": "Failed", "status": "False"}], None),
])
def test_a_jobs_outcome_comes_from_its_conditions(conditions: list[dict[str, str]], outcome: bool | None) -> None:
    assert builds.job_outcome({"status": {"conditions": conditions}}) is outcome


# ---- status

BODY = {"metadata": {"name": "hello", "namespace": "team-a", "generation": 3}, "status": {}}


def test_build_records_leave_out_what_is_not_known() -> None:
    assert status.build_record(key=KEY, state=status.BUILD_BUILDING, job="kfn-build-x") == {
        "key": KEY, "job": "kfn-build-x", "state": "Building"}
    assert status.build_record(key=KEY, state=status.BUILD_STORED, digest="sha256:ab") == {
        "key": KEY, "digest": "sha256:ab", "state": "Stored"}


def test_a_function_waiting_for_its_build_is_not_ready_and_names_the_job() -> None:
    build = status.build_record(key=KEY, state=status.BUILD_BUILDING, job="kfn-build-x")
    out = status.build_status(BODY, build, now="t")
    assert out["build"] == build
    assert out["observedGeneration"] == 3
    (ready,) = out["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", status.REASON_BUILDING)
    assert "kfn-build-x" in ready["message"]
    assert "replicas" not in out   # the previous spec's Deployment still says those


def test_a_failed_build_is_build_failed_with_the_installers_lines() -> None:
    build = status.build_record(key=KEY, state=status.BUILD_FAILED, job="kfn-build-x",
                                message="pip could not install\nERROR: No matching distribution")
    (ready,) = status.build_status(BODY, build, now="t")["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", status.REASON_BUILD_FAILED)
    assert "No matching distribution" in ready["message"]


def test_a_build_in_progress_outweighs_the_running_deployment() -> None:
    deployment = {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    building = status.build_record(key=KEY, state=status.BUILD_BUILDING, job="kfn-build-x")
    out = status.deployment_status(BODY, deployment, build=building, now="t")
    assert out["conditions"][0]["reason"] == status.REASON_BUILDING
    assert (out["replicas"], out["readyReplicas"]) == (1, 1)
    stored = status.build_record(key=KEY, state=status.BUILD_STORED, digest="sha256:ab")
    assert status.deployment_status(BODY, deployment, build=stored, now="t")["conditions"][0]["reason"] == "Ready"


# ---- settings

def test_builds_are_on_only_with_a_store_and_its_key(tmp_path: Any) -> None:
    from kfn_operator.config import OperatorConfig

    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET)
    assert not OperatorConfig.build(env={}).builds
    assert not OperatorConfig.build(archive_url=STORE, env={}).builds
    config = OperatorConfig.build(archive_url=STORE + "/", archive_key_file=str(key_file), build_timeout=60,
                                  env={"KFN_BUILD_RESOURCES": '{"limits": {"memory": "2Gi"}}'})
    assert config.builds and config.archive_key == SECRET and config.archive_url == STORE
    assert config.build_timeout == 60 and config.build_resources == {"limits": {"memory": "2Gi"}}
    assert "kkkk" not in repr(config)
    for bad in ({"archive_url": "kfn-gateway:8080"}, {"archive_key_file": str(tmp_path / "absent")},
                {"build_timeout": 0}):
        with pytest.raises(ValueError):
            OperatorConfig.build(env={}, **bad)
