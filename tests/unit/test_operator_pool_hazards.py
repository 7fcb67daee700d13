"""The operator's warm pools against bad input and an unlucky cluster, decided without an API:
claim times that are not a time, Functions being deleted."""
from __future__ import annotations

import pytest
from kubernetes.aio import client

from kfn.core import naming
from kfn_operator import pools


def claimed_pod(claimed_at: str) -> client.V1Pod:
    return client.V1Pod(metadata=client.V1ObjectMeta(
        name="kfn-pool-python3-12-abc", namespace="team-a",
        labels={naming.LABEL_POOL_STATE: naming.POOL_CLAIMED, naming.LABEL_POOL: "python3.12",
                naming.LABEL_FUNCTION: "hello"},
        annotations={naming.ANNOTATION_CLAIMED_AT: claimed_at}))


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_a_claim_time_that_is_not_finite_is_no_claim_time(text: str) -> None:
    seen = pools.pooled_pod(claimed_pod(text))
    assert seen is not None and seen.claimed_at is None


def test_the_reaper_lists_only_pods_kfn_manages() -> None:
    assert f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}" in pools.POOLED_PODS.split(",")
    assert naming.LABEL_POOL_STATE in pools.POOLED_PODS.split(",")
