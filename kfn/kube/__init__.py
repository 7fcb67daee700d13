"""kfn's one way to the Kubernetes API, on the official `kubernetes` client's asyncio API.

- `connection`: credentials, loaded once per process (and handed to kopf from there);
- `informer`: list + watch of one kind of object, typed, with relists and backoff;
- `pods`: what a function pod says about serving;
- `backend`: `KubernetesBackend`, the instance backend of the gateway and the autoscaler, over
  `mirror` (Functions, Deployments, Pods by informers), `probes` (which pods serve), `rotation`
  (ready instances, failures, problems), `builds` (what a Function's status says of its build),
  `scaling` (the scale subresource and pooled pods) and `logs`;
- `pool`: `PoolClaimer`, the gateway's claims of warm pool pods and their specialisation;
- `keys`: `SecretKeys`, the gateway's API keys from Secrets;
- `peers`: `GatewayPeers`, the gateway's live replicas from its own Service's EndpointSlices (how
  they share async delivery);
- `resources`: writes as JSON patches.
"""
from __future__ import annotations

from kfn.kube.backend import KubernetesBackend
from kfn.kube.connection import configuration_problem, connect, connection_info, load_configuration
from kfn.kube.informer import Backoff, Informer, describe
from kfn.kube.keys import SecretKeys

__all__ = ["Backoff", "Informer", "KubernetesBackend", "SecretKeys", "configuration_problem", "connect",
           "connection_info", "describe", "load_configuration"]
