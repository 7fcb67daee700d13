"""The objects a Function becomes: pure, schema-valid on every supported Kubernetes, hardened."""
from __future__ import annotations

import functools
from typing import Any

import kubernetes_validate
import pytest

from kfn.core import naming
from kfn.core.functions import Function
from kfn_operator import builders
from kfn_operator.builders import RuntimeImages
from kfn_runtime import contract
from tests.support.functions import make_function
from tests.support.schemas import supported_versions

IMAGES = RuntimeImages()
REGION = "us-east-1"
BUILD: dict[str, Any] = {"images": IMAGES, "region": REGION}


CODE = "def handler(event, context):\n    return 'hi'\n"
# Every function here is hello in team-a, at generation 3.
make = functools.partial(make_function, "hello", CODE, namespace="team-a", metadata={"generation": 3})


FULL = make(
    runtime="python3.13",
    requirements=["requests==2.32.3"],
    env=[{"name": "GREETING", "value": "hi"},
         {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}],
    timeout="45s",
    concurrency=4,
    scale={"minReplicas": 2, "maxReplicas": 7},
    resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi", "cpu": "1"}},
)
MINIMAL = make()
FROM_CONFIGMAP = make(source={"configMap": {"name": "my-code"}})
FROM_IMAGE = make(source=None, image="registry.example/team/fn:1.0")


def every_object(fn: Function) -> list[dict[str, Any]]:
    objs = [builders.build_deployment(fn, **BUILD, replicas=fn.spec.scale.minReplicas)]
    if (cm := builders.build_code_configmap(fn)) is not None:
        objs.append(cm)
    return objs


@pytest.mark.parametrize("version", supported_versions())
@pytest.mark.parametrize("fn", [FULL, MINIMAL, FROM_CONFIGMAP, FROM_IMAGE],
                         ids=["full", "minimal", "configmap", "image"])
def test_objects_validate_against_the_kubernetes_schema(fn: Function, version: str) -> None:
    for obj in every_object(fn):
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_deployment_an_update_brings_about_validates_without_replicas() -> None:
    update = builders.build_deployment(FULL, **BUILD, replicas=None)
    assert "replicas" not in update["spec"]
    kubernetes_validate.validate(update, supported_versions()[-1], strict=True)


def test_an_operator_setting_that_changes_the_pods_changes_the_deployed_hash() -> None:
    digest = builders.deployed_hash(FULL, **BUILD)
    other = builders.RuntimeImages(images={**IMAGES.images, FULL.spec.runtime: "elsewhere/runtime:2"})
    assert builders.deployed_hash(FULL, images=other, region=REGION) != digest
    assert builders.deployed_hash(FULL, **BUILD, pip=builders.PipSettings(index_url="http://pypi")) != digest
    assert builders.deployed_hash(FULL, **BUILD) == digest


def test_pip_settings_reach_the_init_container_as_pips_own_variables() -> None:
    pip = builders.PipSettings.from_environment({"KFN_PIP_INDEX_URL": "http://10.88.0.1:9000/simple",
                                                 "KFN_PIP_TRUSTED_HOST": " 10.88.0.1  other "})
    pod = builders.build_deployment(FULL, **BUILD, pip=pip)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
    assert env["PIP_INDEX_URL"] == "http://10.88.0.1:9000/simple"
    assert env["PIP_TRUSTED_HOST"] == "10.88.0.1 other"
    assert "PIP_FIND_LINKS" not in env and "PIP_EXTRA_INDEX_URL" not in env


def test_pods_meet_the_restricted_pod_security_profile() -> None:
    pod = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod["volumes"])
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged")
        assert not any(p.get("hostPort") for p in container.get("ports", ()))


def test_writable_paths_are_empty_dirs() -> None:
    pod = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts[contract.DEFAULT_DEPS_DIR]["name"]]
    assert mounts[contract.DEFAULT_CODE_DIR]["readOnly"] is True


def test_inline_code_goes_into_a_configmap_named_by_its_content_hash() -> None:
    cm = builders.build_code_configmap(MINIMAL)
    assert cm is not None
    assert cm["metadata"]["name"] == f"hello-code-{MINIMAL.code_hash()}"
    assert cm["data"] == {"main.py": "def handler(event, context):\n    return 'hi'\n"}
    assert cm["immutable"] is True
    volume = next(v for v in builders.build_deployment(MINIMAL, **BUILD)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "code")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


def test_a_code_change_changes_the_configmap_name_and_the_pod_template() -> None:
    changed = make(source={"files": {"main.py": "def handler(event, context):\n    return 'bye'\n"}})
    assert builders.code_configmap_name(changed) != builders.code_configmap_name(MINIMAL)
    before = builders.build_deployment(MINIMAL, **BUILD)["spec"]["template"]["metadata"]["annotations"]
    after = builders.build_deployment(changed, **BUILD)["spec"]["template"]["metadata"]["annotations"]
    assert before[naming.ANNOTATION_CODE_HASH] != after[naming.ANNOTATION_CODE_HASH]


def test_a_scale_change_does_not_change_the_code_configmap() -> None:
    rescaled = make(scale={"maxReplicas": 3})
    assert builders.code_configmap_name(rescaled) == builders.code_configmap_name(MINIMAL)


def test_source_configmap_is_mounted_instead_of_a_generated_one() -> None:
    assert builders.build_code_configmap(FROM_CONFIGMAP) is None
    volumes = builders.build_deployment(FROM_CONFIGMAP, **BUILD)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "code", "configMap": {"name": "my-code"}} in volumes


def containers_of(fn: Function) -> dict[str, dict[str, Any]]:
    pod = builders.build_deployment(fn, **BUILD)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_a_lambda_image_runs_unchanged_beside_an_instance_of_the_default_runtime() -> None:
    containers = containers_of(FROM_IMAGE)
    assert containers[builders.CONTAINER_NAME]["image"] == IMAGES.images["python3.12"]
    assert env_of(containers[builders.CONTAINER_NAME])[contract.ENV_RUNTIME] == contract.RUNTIME_IMAGE
    environments = containers[builders.ENVIRONMENTS_CONTAINER_NAME]
    assert environments["image"] == "registry.example/team/fn:1.0"
    pod = builders.build_deployment(FROM_IMAGE, **BUILD)["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    assert all(v["name"] != "code" for v in pod["volumes"])


def test_a_lambda_images_entrypoint_and_command_run_under_the_launcher() -> None:
    fn = make(source=None, image="registry.example/team/fn:1.0", concurrency=3,
              imageConfig={"entryPoint": ["python", "-m", "awslambdaric"], "workingDirectory": "/app"})
    environments = containers_of(fn)[builders.ENVIRONMENTS_CONTAINER_NAME]
    assert environments["command"] == ["/bin/sh", "-c", contract.LAUNCHER, "kfn-environments",
                                       builders.ENVIRONMENTS_DIR, "3", "python", "-m", "awslambdaric", "main.handler"]
    assert environments["workingDir"] == "/app"


def test_a_lambda_image_gets_lambdas_variables_and_spec_env_but_keeps_its_own_path() -> None:
    fn = make(source=None, image="registry.example/team/fn:1.0", env=[{"name": "GREETING", "value": "hi"}])
    env = env_of(containers_of(fn)[builders.ENVIRONMENTS_CONTAINER_NAME])
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "hello"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["_HANDLER"] == "main.handler"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["GREETING"] == "hi"
    assert "PATH" not in env and "AWS_LAMBDA_LOG_STREAM_NAME" not in env
    assert "GREETING" not in env_of(containers_of(fn)[builders.CONTAINER_NAME])


def test_the_region_reaches_the_instance() -> None:
    pod = builders.build_deployment(MINIMAL, images=IMAGES, region="eu-west-1")["spec"]["template"]["spec"]
    assert env_of(pod["containers"][0])[contract.ENV_REGION] == "eu-west-1"
    assert builders.deployed_hash(MINIMAL, images=IMAGES, region="eu-west-1") != builders.deployed_hash(
        MINIMAL, **BUILD)


def test_node_functions_run_the_node_runtime_image() -> None:
    fn = make(runtime="nodejs20", handler="index.handler", source={"files": {"index.mjs": "export const handler = 1"}})
    assert containers_of(fn)[builders.CONTAINER_NAME]["image"] == "ghcr.io/kfn-dev/runtime-nodejs:20"
    assert env_of(containers_of(fn)[builders.CONTAINER_NAME])[contract.ENV_RUNTIME] == "nodejs20"


def test_runtime_images_come_from_the_configuration() -> None:
    images = RuntimeImages.from_environment({builders.ENV_RUNTIME_IMAGES: "python3.13=reg.local/py:3.13"},
                                            overrides={"python3.12": "other/py:3.12"})
    assert images.image_for(FULL) == "reg.local/py:3.13"
    assert images.image_for(MINIMAL) == "other/py:3.12"
    assert RuntimeImages().image_for(MINIMAL) == "ghcr.io/kfn-dev/runtime-python:3.12"


def test_a_malformed_runtime_image_map_is_an_error() -> None:
    with pytest.raises(ValueError, match="RUNTIME=IMAGE"):
        builders.parse_image_map("python3.12")


def test_initial_replicas_are_min_replicas_and_updates_never_set_them() -> None:
    assert builders.build_deployment(FULL, **BUILD, replicas=2)["spec"]["replicas"] == 2
    assert "replicas" not in builders.build_deployment(FULL, **BUILD)["spec"]


def test_requirements_are_installed_by_an_init_container_into_the_shared_deps_dir() -> None:
    pod = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", contract.REQUIREMENTS_MODULE]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env[contract.ENV_REQUIREMENTS] == "requests==2.32.3"
    assert env[contract.ENV_DEPS_DIR] == contract.DEFAULT_DEPS_DIR
    assert {"name": "deps", "mountPath": contract.DEFAULT_DEPS_DIR} in init["volumeMounts"]
    assert builders.build_deployment(MINIMAL, **BUILD)["spec"]["template"]["spec"]["initContainers"] == []


def test_the_container_gets_the_runtime_contract_and_the_users_env() -> None:
    container = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env[contract.ENV_HANDLER]["value"] == "main.handler"
    assert env[contract.ENV_PORT]["value"] == str(naming.RUNTIME_PORT)
    assert env[contract.ENV_TIMEOUT]["value"] == "45"
    assert env[contract.ENV_CONCURRENCY]["value"] == "4"
    assert env[contract.ENV_MEMORY_MB]["value"] == "512"
    assert env["GREETING"] == {"name": "GREETING", "value": "hi"}
    assert env["TOKEN"] == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "512Mi", "cpu": "1"}}


def test_probes_use_the_runtime_paths_on_the_runtime_port() -> None:
    container = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": contract.PATH_READY, "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": contract.PATH_HEALTH, "port": "http"}
    assert {"name": "http", "containerPort": naming.RUNTIME_PORT, "protocol": "TCP"} in container["ports"]


def test_the_grace_period_outlasts_the_runtimes_drain() -> None:
    pod = builders.build_deployment(FULL, **BUILD)["spec"]["template"]["spec"]
    drain = float(next(e["value"] for e in pod["containers"][0]["env"] if e["name"] == contract.ENV_DRAIN_TIMEOUT))
    assert drain >= FULL.spec.timeout
    assert pod["terminationGracePeriodSeconds"] > drain


def test_everything_carries_the_function_labels() -> None:
    labels = naming.function_labels("hello")
    for obj in every_object(FULL):
        assert labels.items() <= obj["metadata"]["labels"].items()
        assert obj["metadata"]["namespace"] == "team-a"
    deployment = builders.build_deployment(FULL, **BUILD)
    assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_a_function_has_no_service_the_gateway_reaches_its_pods_at_their_ips() -> None:
    assert not hasattr(builders, "build_service")


def test_builders_do_not_modify_their_input() -> None:
    before = FULL.model_dump()
    every_object(FULL)
    builders.build_deployment(FULL, **BUILD, replicas=None)
    assert FULL.model_dump() == before
