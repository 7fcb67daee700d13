"""How many instances a function runs (scaling, to zero too) and what compute each one gets."""
from __future__ import annotations

import math

import pydantic
from pydantic import Field, field_validator

from kfn.core import units
from kfn.core.fields import Duration, Quantity, StrictModel, invalid


class ScaleSpec(StrictModel):
    minReplicas: int = Field(default=0, ge=0, description="Instances kept even when idle; 0 allows scale to zero.")
    maxReplicas: int = Field(default=10, description="Upper bound on instances (at least 1).")
    targetConcurrency: float | None = Field(
        default=None, gt=0,
        description="In-flight requests per instance the autoscaler aims for; default 70% of concurrency.")
    idleTimeout: Duration = Field(
        default=60.0, description="Time with no requests before scaling to zero (when minReplicas is 0).")
    stableWindow: Duration = Field(
        default=60.0, description="Window over which average concurrency is taken for scaling decisions.")

    @field_validator("maxReplicas")
    @classmethod
    def _max_at_least_min(cls, value: int, info: pydantic.ValidationInfo) -> int:
        low = info.data.get("minReplicas")
        if low is not None and value < low:
            raise invalid(f"must be >= minReplicas (got {value} < {low})")
        if value < 1:
            raise invalid(f"must be >= 1 (got {value})")
        return value

    @field_validator("idleTimeout", "stableWindow")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            raise invalid(f"must be a positive duration (got {units.format_duration(value)})")
        if value > 24 * 3600:
            raise invalid(f"must be at most 24h (got {units.format_duration(value)})")
        return value


class Resources(StrictModel):
    """Compute resources of one instance, in the Kubernetes shape."""

    requests: dict[str, Quantity] = Field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: dict[str, Quantity] = Field(default_factory=lambda: {"memory": "256Mi"})

    @property
    def memory_limit_mb(self) -> int:
        memory = self.limits.get("memory") or self.requests.get("memory") or "256Mi"
        return max(1, units.quantity_to_mebibytes(memory))
