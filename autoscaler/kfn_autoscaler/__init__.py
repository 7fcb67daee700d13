"""The control path from load to replicas: metrics → autoscaler → replicas.

Collection (`sources`: the gateways' metrics, scraped or through PromQL; in local mode the
gateway's in-process figures), the decision (`kfn.core.scaling.decide`, pure and shared) and
actuation (`autoscaler.Autoscaler`, which tells the instance backend) live apart.
"""
from __future__ import annotations

from kfn_autoscaler.autoscaler import Autoscaler

__all__ = ["Autoscaler"]
