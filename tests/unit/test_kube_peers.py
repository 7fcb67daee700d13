"""The gateway replicas counted from the EndpointSlices of the gateway's Service (`ready_replicas`)."""
from __future__ import annotations

from kubernetes.client import V1EndpointSlice, V1ObjectMeta, V1ObjectReference
from kubernetes.client.models import V1Endpoint, V1EndpointConditions

from kfn.kube.peers import ready_replicas


def endpoint(pod: str | None, address: str, *, ready: bool | None = True) -> V1Endpoint:
    return V1Endpoint(addresses=[address], conditions=V1EndpointConditions(ready=ready),
                      target_ref=None if pod is None else V1ObjectReference(kind="Pod", name=pod))


def endpoint_slice(name: str, *endpoints: V1Endpoint, family: str = "IPv4") -> V1EndpointSlice:
    return V1EndpointSlice(address_type=family, metadata=V1ObjectMeta(name=name), endpoints=list(endpoints))


def test_each_ready_endpoint_is_a_replica() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1"), endpoint("gw-2", "10.0.0.2"))]
    assert ready_replicas(slices) == 2


def test_an_endpoint_not_ready_is_not_a_replica() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1"), endpoint("gw-2", "10.0.0.2", ready=False))]
    assert ready_replicas(slices) == 1


def test_an_endpoint_without_a_ready_condition_is_ready() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1", ready=None))]
    assert ready_replicas(slices) == 1


def test_a_pod_in_two_slices_of_a_dual_stack_service_is_one_replica() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1")),
              endpoint_slice("gw-b", endpoint("gw-1", "fd00::1"), family="IPv6")]
    assert ready_replicas(slices) == 1


def test_endpoints_without_a_pod_are_told_apart_by_address() -> None:
    slices = [endpoint_slice("gw-a", endpoint(None, "10.0.0.1"), endpoint(None, "10.0.0.2"))]
    assert ready_replicas(slices) == 2


def test_this_replica_counts_even_before_it_is_ready() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1"), endpoint("gw-2", "10.0.0.2", ready=False))]
    assert ready_replicas(slices, own_pod="gw-2") == 2


def test_this_replica_counts_once_when_ready() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1"))]
    assert ready_replicas(slices, own_pod="gw-1") == 1


def test_no_slices_are_no_count() -> None:
    assert ready_replicas([], own_pod="gw-1") == 0


def test_without_any_ready_endpoint_this_replica_alone_is_no_count() -> None:
    slices = [endpoint_slice("gw-a", endpoint("gw-1", "10.0.0.1", ready=False), endpoint("gw-2", "10.0.0.2",
                                                                                          ready=False))]
    assert ready_replicas(slices, own_pod="gw-1") == 0
