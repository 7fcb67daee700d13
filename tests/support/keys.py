"""Keys for the gateway's authentication tests: an admin, two namespaces' app keys, a rotatable key source."""
from __future__ import annotations

from dataclasses import dataclass, field

from kfn.core.keys import KeyRing, parse_key_file

ADMIN = "admin-secret-0123456789"
TEAM = "team-secret-0123456789ab"
OTHER = "other-secret-0123456789a"


@dataclass
class MutableKeys:
    """A key source whose keys a test replaces, as a rotated Secret or file does."""

    ring: KeyRing = field(default_factory=lambda: parse_key_file(
        {"admin": {"ops": ADMIN}, "namespaces": {"team": {"app": TEAM}, "other": {"app": OTHER}}}))

    def keys(self) -> KeyRing:
        return self.ring


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
