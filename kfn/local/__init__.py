"""`kfn local`: the gateway, the autoscaler and local instances in one process (see `app`)."""
from __future__ import annotations

from kfn.local.app import LocalMode, LocalSettings

__all__ = ["LocalMode", "LocalSettings"]
