"""How the operator's replicas decide who acts (the election itself runs in tests/k8s/test_operator_replicas.py)."""
from __future__ import annotations

from typing import Any, cast

from kfn.kube.lease import LeaseElection
from kfn_operator.config import OperatorConfig
from kfn_operator.handlers import make_settings


def test_kopf_never_peers_one_replica_runs_it_at_all() -> None:
    # kopf's peering lets replicas of equal priority act side by side: the Lease elects instead.
    assert make_settings(OperatorConfig(standalone=False)).peering.standalone is True
    assert make_settings(OperatorConfig(standalone=True)).peering.standalone is True


def test_a_leader_that_cannot_renew_stops_kopf_before_a_standby_may_take_the_lease() -> None:
    config = OperatorConfig()
    election = LeaseElection(cast(Any, None), name=config.operator_lease_name, namespace="kfn-system",
                             identity="a", duration=config.lease_duration)
    # The last renewal, a retry period, the renew deadline, then kopf's workers get exit_timeout:
    # within three quarters of the Lease, the rest to spare for the latency of the last renewal.
    stopped = election.retry_period + election.renew_deadline + make_settings(config).queueing.exit_timeout
    assert stopped <= config.lease_duration * 3 / 4
