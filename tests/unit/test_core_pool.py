"""Warm pools as pure decisions (kfn.core.pool): which functions a pool serves, what a claim and a
specialisation write and send, which pools are kept, which pooled pods go."""
from __future__ import annotations

import json

from kfn.core import naming, pool
from kfn.core.functions import FunctionRef
from kfn.core.instancespec import Archive, runtime_env
from tests.support.functions import make_function

HELLO = FunctionRef("team-a", "hello")
ARCHIVE = Archive(url="http://gw/system/archives/team-a/k", token="t", digest="sha256:" + "a" * 64)
NOW = 1_700_000_000.0


def pooled(state: str = naming.POOL_SPECIALIZED, *, function: FunctionRef | None = HELLO, claimed_at: float | None
           = NOW - 1, specialized_hash: str | None = "h1", restarts: int = 0,
           terminating: bool = False) -> pool.PooledPod:
    return pool.PooledPod(namespace="team-a", name="p", state=state, runtime="python3.12", function=function,
                          claimed_at=claimed_at, specialized_hash=specialized_hash, restarts=restarts,
                          terminating=terminating)


# ---- ineligible

def test_a_plain_function_with_inline_code_is_eligible() -> None:
    assert pool.ineligible(make_function(env=[{"name": "A", "value": "1"}], requirements=["six"])) is None


def test_a_container_image_function_is_not_eligible() -> None:
    assert "spec.image" in (pool.ineligible(make_function(image="registry.example/fn:1")) or "")


def test_a_function_with_code_from_a_configmap_is_not_eligible() -> None:
    assert "configMap" in (pool.ineligible(make_function(source={"configMap": {"name": "code"}})) or "")


def test_a_function_with_an_env_value_from_a_secret_is_not_eligible() -> None:
    fn = make_function(env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    assert "valueFrom" in (pool.ineligible(fn) or "")


def test_a_function_with_resources_of_its_own_is_not_eligible() -> None:
    fn = make_function(resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}})
    assert "resources" in (pool.ineligible(fn) or "")


# ---- specialize_body

def test_the_specialize_body_has_a_deployments_variables_in_order_then_spec_env_then_the_archive() -> None:
    fn = make_function(namespace="team-a", env=[{"name": "Z", "value": "last"}, {"name": "A", "value": "first"}],
                       requirements=["six"])
    body = json.loads(pool.specialize_body(fn, region="eu-west-1", archive=ARCHIVE))
    names = list(body["env"])
    runtime = list(runtime_env(fn, region="eu-west-1"))
    assert names[:len(runtime)] == runtime
    assert names[len(runtime):len(runtime) + 2] == ["Z", "A"]
    assert body["env"]["KFN_ARCHIVE_DIGEST"] == ARCHIVE.digest
    assert fn.spec.source is not None and body["files"] == fn.spec.source.files


def test_the_specialize_body_without_an_archive_names_none() -> None:
    body = json.loads(pool.specialize_body(make_function(), region="us-east-1", archive=None))
    assert not any(name.startswith("KFN_ARCHIVE") for name in body["env"])


# ---- specialized_hash

def test_the_specialized_hash_changes_with_the_spec_and_the_archive() -> None:
    fn = make_function()
    assert pool.specialized_hash(fn, None) == pool.specialized_hash(make_function(), None)
    assert pool.specialized_hash(fn, None) != pool.specialized_hash(make_function(timeout="9s"), None)
    assert pool.specialized_hash(fn, None) != pool.specialized_hash(fn, ARCHIVE)


# ---- claim_patch and promote_patch

def test_a_claim_is_conditional_relabels_the_pod_and_makes_the_function_its_owner() -> None:
    fn = make_function(namespace="team-a", metadata={"uid": "u-1"})
    patch = pool.claim_patch(fn, resource_version="41", claimed_by="gw-1", now=NOW)
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "41"
    assert meta["labels"] == {naming.LABEL_POOL_STATE: naming.POOL_CLAIMED, naming.LABEL_FUNCTION: "hello"}
    assert meta["annotations"] == {naming.ANNOTATION_CLAIMED_AT: f"{NOW:.3f}", naming.ANNOTATION_CLAIMED_BY: "gw-1"}
    assert meta["ownerReferences"] == [{"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": "hello",
                                        "uid": "u-1"}]


def test_a_claim_for_a_function_without_a_uid_removes_the_pods_owners() -> None:
    patch = pool.claim_patch(make_function(), resource_version="41", claimed_by="gw-1", now=NOW)
    assert patch["metadata"]["ownerReferences"] is None


def test_a_promoted_pod_is_one_of_the_functions_and_says_what_it_runs() -> None:
    fn = make_function()
    meta = pool.promote_patch(fn, ARCHIVE)["metadata"]
    assert meta["labels"] == {naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION,
                              naming.LABEL_POOL_STATE: naming.POOL_SPECIALIZED}
    assert meta["annotations"] == {naming.ANNOTATION_SPECIALIZED_HASH: pool.specialized_hash(fn, ARCHIVE)}


# ---- wanted_pools

def test_each_namespace_with_an_eligible_function_wants_a_pool_of_its_runtime() -> None:
    functions = [make_function("a", namespace="team-a"), make_function("b", namespace="team-a"),
                 make_function("c", namespace="team-b", runtime="python3.13")]
    assert pool.wanted_pools(functions, size=2, runtimes=["python3.12", "python3.13"]) == {
        ("team-a", "python3.12"): 2, ("team-b", "python3.13"): 2}


def test_an_ineligible_function_wants_no_pool() -> None:
    functions = [make_function(namespace="team-a", image="registry.example/fn:1")]
    assert pool.wanted_pools(functions, size=1, runtimes=["python3.12"]) == {}


def test_a_runtime_without_an_image_gets_no_pool() -> None:
    assert pool.wanted_pools([make_function(runtime="python3.13")], size=1, runtimes=["python3.12"]) == {}


def test_a_pool_size_of_zero_wants_no_pool() -> None:
    assert pool.wanted_pools([make_function()], size=0, runtimes=["python3.12"]) == {}


# ---- reap

def test_an_idle_pod_is_left_to_its_deployment() -> None:
    assert pool.reap([pooled(naming.POOL_IDLE, function=None)], {}, now=NOW) == []


def test_a_terminating_pod_is_left_alone() -> None:
    assert pool.reap([pooled(function=None, terminating=True)], {}, now=NOW) == []


def test_a_pod_claimed_for_a_function_that_is_gone_is_deleted() -> None:
    (reaped,) = pool.reap([pooled(naming.POOL_CLAIMED)], {}, now=NOW)
    assert reaped == pool.Reap("team-a", "p", HELLO, "its function is gone")


def test_a_pod_claimed_recently_is_left_to_its_claimer() -> None:
    assert pool.reap([pooled(naming.POOL_CLAIMED, claimed_at=NOW - 10)], {HELLO: "h1"}, now=NOW) == []


def test_a_pod_claimed_long_ago_and_never_specialised_is_deleted_without_a_replacement() -> None:
    claimed = pooled(naming.POOL_CLAIMED, claimed_at=NOW - pool.CLAIM_DEADLINE_SECONDS - 1)
    (reaped,) = pool.reap([claimed], {HELLO: "h1"}, now=NOW)
    assert not reaped.replace and "not specialised" in reaped.reason


def test_a_claimed_pod_without_a_claim_time_is_deleted() -> None:
    assert len(pool.reap([pooled(naming.POOL_CLAIMED, claimed_at=None)], {HELLO: "h1"}, now=NOW)) == 1


def test_a_specialised_pod_of_the_current_spec_is_kept() -> None:
    assert pool.reap([pooled()], {HELLO: "h1"}, now=NOW) == []


def test_a_specialised_pod_of_an_older_spec_is_replaced() -> None:
    (reaped,) = pool.reap([pooled(specialized_hash="h0")], {HELLO: "h1"}, now=NOW)
    assert reaped.replace and reaped.reason == "its function changed"


def test_a_specialised_pod_that_restarted_is_replaced() -> None:
    (reaped,) = pool.reap([pooled(restarts=1)], {HELLO: "h1"}, now=NOW)
    assert reaped.replace and reaped.reason == "its instance restarted"
