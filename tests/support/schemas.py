"""The Kubernetes versions whose schemas the objects kfn writes are validated against."""
from __future__ import annotations

from kubernetes_validate.utils import all_versions


def supported_versions() -> list[str]:
    """Every version kubernetes_validate knows from 1.29 on, oldest first."""
    versions = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    return [v for v in versions if tuple(int(p) for p in v.split(".")[:2]) >= (1, 29)]
