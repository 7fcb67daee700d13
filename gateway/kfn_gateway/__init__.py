"""kfn's gateway: routes /function/{name} to instances, queues, scales from zero, exports metrics.

It only talks to a `kfn.core.instances.InstanceBackend`, so the same gateway runs in local mode
(processes on 127.0.0.1, `kfn.processes`) and on Kubernetes (pods, `kfn.kube`).
"""
from __future__ import annotations

from kfn_gateway.metrics import FunctionStats
from kfn_gateway.server import Gateway, serve, serve_health
from kfn_gateway.settings import GatewaySettings

__all__ = ["FunctionStats", "Gateway", "GatewaySettings", "serve", "serve_health"]
