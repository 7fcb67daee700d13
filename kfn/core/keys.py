"""API keys: who may call what through the gateway, as data (no I/O).

A key is a secret string with an id (a name, not secret) and a scope:

- an **admin** key (scope `None`) may call the gateway's own API (`/system/*`), the Invoke API of
  any function, and every key-protected function;
- a **namespace** key may call the key-protected functions of its namespace, and their Invoke API.

Keys come from Kubernetes Secrets (`SECRET_NAME` in each namespace, `ADMIN_SECRET_NAME` in the
gateway's own; each data entry is one key: its name is the key id, its value the key) or from a
local keys file (`parse_key_file`). A `KeyRing` holds them by the SHA-256 of the secret, so a
presented key is found without comparing it with every key, and the comparison that confirms it
takes the same time whatever the key (`hmac.compare_digest`).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# The Secret, in each namespace, whose entries are that namespace's keys.
SECRET_NAME = "kfn-api-keys"
# The Secret, in the gateway's own namespace, whose entries are admin keys.
ADMIN_SECRET_NAME = "kfn-admin-keys"
# Shorter keys are refused: a key is a password that scripts send, so it should be random.
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 4096
KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class InvalidKeys(ValueError):
    """A key or a keys file that cannot be used; the message says why (never the key itself)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    namespace: str | None     # None: an admin key

    @property
    def admin(self) -> bool:
        return self.namespace is None

    def may_call(self, namespace: str) -> bool:
        """Whether this key may call the functions of `namespace`."""
        return self.namespace is None or self.namespace == namespace

    def __str__(self) -> str:
        return f"admin key {self.id!r}" if self.namespace is None else f"key {self.id!r} of {self.namespace}"


def digest(secret: str | bytes) -> bytes:
    data = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class KeyRing:
    """An immutable set of keys; a new ring replaces the old one when keys rotate."""

    _by_digest: Mapping[bytes, tuple[ApiKey, bytes]] = field(default_factory=dict)   # digest → (key, digest)
    _by_id: Mapping[str, tuple[tuple[ApiKey, str], ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str | None, str]]) -> KeyRing:
        """From (key id, namespace or None for admin, secret); invalid entries are InvalidKeys."""
        by_digest: dict[bytes, tuple[ApiKey, bytes]] = {}
        by_id: dict[str, list[tuple[ApiKey, str]]] = {}
        for key_id, namespace, secret in entries:
            check_key(key_id, secret)
            key = ApiKey(key_id, namespace)
            # The same secret under two scopes: the broader one wins (admin over a namespace).
            secret_digest = digest(secret)
            known = by_digest.get(secret_digest)
            if known is None or (namespace is None and not known[0].admin):
                by_digest[secret_digest] = (key, secret_digest)
            by_id.setdefault(key_id, []).append((key, secret))
        return cls(by_digest, {k: tuple(v) for k, v in by_id.items()})

    def __len__(self) -> int:
        return len(self._by_digest)

    def match(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret`, or None.

        Secrets are looked up by their SHA-256 (what a lookup's timing could tell is about a
        digest, which says nothing usable about a secret), then confirmed with a constant-time
        comparison of the digests.
        """
        presented = digest(secret)
        found = self._by_digest.get(presented)
        if found is None:
            return None
        key, stored = found
        return key if hmac.compare_digest(stored, presented) else None

    def secrets_of(self, key_id: str) -> tuple[tuple[ApiKey, str], ...]:
        """Every (key, secret) with this id: for signatures made with a key (AWS SigV4)."""
        return self._by_id.get(key_id, ())

    def merged(self, other: KeyRing) -> KeyRing:
        entries = [(key.id, key.namespace, secret) for ring in (self, other)
                   for pairs in ring._by_id.values() for key, secret in pairs]
        return KeyRing.of(entries)

    def summary(self) -> str:
        keys = [key for key, _ in self._by_digest.values()]
        admin = sum(1 for key in keys if key.admin)
        namespaces = sorted({key.namespace for key in keys if key.namespace is not None})
        return f"{admin} admin key(s), {len(self) - admin} key(s) in {len(namespaces)} namespace(s)"


def check_key(key_id: str, secret: str) -> None:
    if not KEY_ID.fullmatch(key_id):
        raise InvalidKeys(f"key id {key_id[:64]!r} must be 1 to 128 letters, digits, '.', '_' or '-'")
    if not MIN_KEY_LENGTH <= len(secret) <= MAX_KEY_LENGTH:
        raise InvalidKeys(f"key {key_id!r} must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters long "
                        f"(it has {len(secret)})")
    if any(c.isspace() or not c.isprintable() for c in secret):
        raise InvalidKeys(f"key {key_id!r} must not contain spaces or control characters")


def parse_key_file(data: object, *, file: str = "keys file") -> KeyRing:
    """Keys from a keys file's parsed YAML/JSON (see `kfn local --keys`):

        admin:                  # admin keys: id → key
          ops: 9c1e...
        namespaces:             # keys per namespace: namespace → {id → key}
          default:
            mobile-app: 4f2a...
    """
    if data is None:
        return KeyRing()
    if not isinstance(data, Mapping):
        raise InvalidKeys(f"{file}: must be a mapping with 'admin' and/or 'namespaces'")
    unknown = set(data) - {"admin", "namespaces"}
    if unknown:
        raise InvalidKeys(f"{file}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                        "(expected 'admin' and 'namespaces')")
    entries: list[tuple[str, str | None, str]] = []
    entries.extend((key_id, None, secret) for key_id, secret in _pairs(data.get("admin"), f"{file}: admin"))
    namespaces = data.get("namespaces") or {}
    if not isinstance(namespaces, Mapping):
        raise InvalidKeys(f"{file}: namespaces must map each namespace to its keys")
    for namespace, keys in namespaces.items():
        if not isinstance(namespace, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
            raise InvalidKeys(f"{file}: namespaces: {str(namespace)[:64]!r} is not a namespace name")
        entries.extend((key_id, namespace, secret)
                       for key_id, secret in _pairs(keys, f"{file}: namespaces.{namespace}"))
    try:
        return KeyRing.of(entries)
    except InvalidKeys as e:
        raise InvalidKeys(f"{file}: {e}") from None


def _pairs(value: object, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise InvalidKeys(f"{where} must map key ids to keys")
    out = []
    for key_id, secret in value.items():
        if not isinstance(key_id, str) or not isinstance(secret, str):
            raise InvalidKeys(f"{where}: key ids and keys must be strings")
        out.append((key_id, secret))
    return out


class KeySource(Protocol):
    """Where the gateway finds the current keys (a Secret informer, a watched file)."""

    def keys(self) -> KeyRing:
        """The keys now; cheap (called for every authenticated request)."""


@dataclass(frozen=True)
class StaticKeys:
    """A fixed key ring (tests, and a gateway given no source: no key matches)."""

    ring: KeyRing = field(default_factory=KeyRing)

    def keys(self) -> KeyRing:
        return self.ring
