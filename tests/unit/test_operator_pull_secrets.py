"""imagePullSecrets of the pods the operator makes: function Deployments, warm pools, build Jobs."""
from __future__ import annotations

from typing import Any

import pytest

from kfn_operator import builders
from kfn_operator.builders import PipSettings, RuntimeImages, parse_pull_secrets
from kfn_operator.config import OperatorConfig
from tests.support.functions import make_function

REGION = "us-east-1"
SECRETS = RuntimeImages(pull_secrets=("regcred", "mirror.example"))
FN = make_function(requirements=["requests"])


def _pod_specs(images: RuntimeImages) -> dict[str, dict[str, Any]]:
    return {
        "deployment": builders.build_deployment(FN, images=images, region=REGION)["spec"]["template"]["spec"],
        "pool": builders.build_pool_deployment(FN.namespace, "python3.12", images=images, size=1,
                                               key="k" * 32)["spec"]["template"]["spec"],
        "build": builders.build_job(FN, "deps-" + "0" * 64, images=images, pip=PipSettings(), archive_url="http://g",
                                    token="t", timeout=60, resources={})["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("kind", ["deployment", "pool", "build"])
def test_every_pod_the_operator_makes_gets_the_pull_secrets(kind: str) -> None:
    assert _pod_specs(SECRETS)[kind]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror.example"}]


@pytest.mark.parametrize("kind", ["deployment", "pool", "build"])
def test_without_pull_secrets_pods_have_no_such_field(kind: str) -> None:
    assert "imagePullSecrets" not in _pod_specs(RuntimeImages())[kind]


def test_pull_secrets_added_later_roll_the_functions_pods() -> None:
    before = builders.deployed_hash(FN, images=RuntimeImages(), region=REGION)
    assert builders.deployed_hash(FN, images=SECRETS, region=REGION) != before


def test_no_pull_secrets_leave_the_spec_hash_as_it_was_before_they_existed() -> None:
    # An operator upgrade without pull secrets must not roll every function's pods.
    assert builders.deployed_hash(FN, images=RuntimeImages(), region=REGION) == builders.deployed_hash(
        FN, images=RuntimeImages(pull_secrets=()), region=REGION)


@pytest.mark.parametrize(("text", "names"), [
    ("", ()), ("regcred", ("regcred",)), ("a, b  c,a", ("a", "b", "c")),
    ("registry.example.com", ("registry.example.com",)),
])
def test_pull_secrets_are_read_as_names_separated_by_spaces_or_commas(text: str, names: tuple[str, ...]) -> None:
    assert parse_pull_secrets(text) == names


@pytest.mark.parametrize("bad", ["RegCred", "reg_cred", "-x", "a" * 254])
def test_a_pull_secret_that_is_no_secret_name_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ValueError, match="KFN_IMAGE_PULL_SECRETS"):
        parse_pull_secrets(bad)


def test_the_operator_reads_its_pull_secrets_from_the_environment() -> None:
    config = OperatorConfig.build(env={builders.ENV_IMAGE_PULL_SECRETS: "regcred other"})
    assert config.images.pull_secrets == ("regcred", "other")
