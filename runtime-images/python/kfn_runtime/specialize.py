"""Who may turn a warm pool's generic instance into a function's: keys and signatures.

A pool instance (`contract.ENV_POOL`) accepts one `POST contract.PATH_SPECIALIZE`, signed with the
key of its namespace's pools. That key is derived from the platform's pool key (a Secret the
gateway and the operator read) for one namespace, so what a pod of one namespace could learn of
it opens no pool pod of another namespace; a signature covers the body and the pod's uid, so a
request for one pod specialises no other. Standard library only (it ships in the runtime images).

Also what a pool instance is before that request (`PoolSettings`, from its pod's environment) and
what the request's body holds (`Specialization`), checked and merged without I/O; the instance
itself (`python -m kfn_runtime`) writes the files and starts the function.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os

from kfn_runtime import contract
from kfn_runtime.config import Config, ConfigError

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Mapping

# What each signature's message starts with: a key derived here is never an archive token's.
_DOMAIN_KEY = b"kfn-pool-namespace-key\n"
_DOMAIN_SIGNATURE = b"kfn-specialize\n"
MIN_KEY_BYTES = 16


def namespace_key(secret: bytes, namespace: str) -> str:
    """The pool key of `namespace` (hex), as its pool pods are given it (`contract.ENV_POOL_KEY`)."""
    if len(secret) < MIN_KEY_BYTES:
        raise ValueError(f"the pool key must have at least {MIN_KEY_BYTES} bytes")
    return hmac.new(secret, _DOMAIN_KEY + namespace.encode(), hashlib.sha256).hexdigest()


def signature(key: str, pod_uid: str, body: bytes) -> str:
    """The signature (hex) of a specialize request with `body` for the pod `pod_uid`, under `key`
    (a `namespace_key`)."""
    message = _DOMAIN_SIGNATURE + pod_uid.encode() + b"\n" + hashlib.sha256(body).digest()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(key: str, pod_uid: str, body: bytes, presented: str) -> bool:
    """Whether `presented` is the signature of `body` for `pod_uid` (compared in constant time)."""
    if not key or not pod_uid or not presented:
        return False
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters (a header's latin-1).
    return hmac.compare_digest(signature(key, pod_uid, body).encode(),
                               presented.strip().lower().encode("utf-8", "surrogateescape"))


# -- what a pool instance is, and what a specialize request holds ---------------------------------

MARKER = ".kfn-specialized"    # in the code directory: this pod's instance was specialised once
DEFAULT_MAX_FILES = 1000       # code files one request may carry
MAX_FILE_NAME_BYTES = 255
# The pod's own say: where its volumes are, where it listens, and what makes it a pool instance.
POD_OWN = frozenset({contract.ENV_CODE_DIR, contract.ENV_DEPS_DIR, contract.ENV_HOST, contract.ENV_PORT,
                     contract.ENV_POOL, contract.ENV_POOL_KEY, contract.ENV_POD_UID, contract.ENV_TERMINATION_LOG})
_POOL_ONLY = (contract.ENV_POOL, contract.ENV_POOL_KEY, contract.ENV_POD_UID)


class BadSpecialization(ValueError):
    """A specialize request's body this instance cannot use (answered 400); the message says why."""


class PoolSettings:
    """What a pool instance knows before it is specialised, from its pod's environment."""

    __slots__ = ("code_dir", "host", "key", "max_body_bytes", "pod_uid", "port")

    def __init__(self, *, key: str, pod_uid: str, code_dir: str, host: str, port: int, max_body_bytes: int) -> None:
        self.key, self.pod_uid, self.code_dir = key, pod_uid, code_dir
        self.host, self.port, self.max_body_bytes = host, port, max_body_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PoolSettings:
        """Raises ConfigError when the key or the pod's uid is missing, or a setting is malformed."""
        key = environ.get(contract.ENV_POOL_KEY, "").strip()
        pod_uid = environ.get(contract.ENV_POD_UID, "").strip()
        for name, value in ((contract.ENV_POOL_KEY, key), (contract.ENV_POD_UID, pod_uid)):
            if not value:
                raise ConfigError(f"{name} must be set when {contract.ENV_POOL} is 1 (a pool instance)")
        # The settings the pod keeps whatever the function is, read as a function's instance reads them.
        config = Config.from_env({**{k: environ[k] for k in POD_OWN | {contract.ENV_MAX_BODY_BYTES}
                                     if k in environ}, contract.ENV_HANDLER: "pool.pool"})
        return cls(key=key, pod_uid=pod_uid, code_dir=config.code_dir, host=config.host, port=config.port,
                   max_body_bytes=config.max_body_bytes)


class Specialization:
    """A specialize request's body: the function's variables and its code files."""

    __slots__ = ("env", "files")

    def __init__(self, env: dict[str, str], files: dict[str, str]) -> None:
        self.env, self.files = env, files

    @classmethod
    def parse(cls, body: bytes, *, max_files: int = DEFAULT_MAX_FILES) -> Specialization:
        """Raises BadSpecialization unless `body` is JSON {"env": {str: str}, "files": {str: str}}
        with at most `max_files` files, each a plain name (`check_file_name`)."""
        try:
            found = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadSpecialization("the body must be a JSON object") from None
        if not isinstance(found, dict):
            raise BadSpecialization("the body must be a JSON object")
        unknown = set(found) - {"env", "files"}
        if unknown:
            raise BadSpecialization(f"unknown fields in the body: {', '.join(sorted(unknown))}")
        env, files = found.get("env", {}), found.get("files", {})
        for field, value in (("env", env), ("files", files)):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise BadSpecialization(f"{field!r} must be an object of strings")
        if len(files) > max_files:
            raise BadSpecialization(f"at most {max_files} files (got {len(files)})")
        for name in env:
            if not name or "=" in name or "\x00" in name or "\x00" in env[name]:
                raise BadSpecialization(f"not a variable name: {name!r}")
            if not (_os_can_hold(name) and _os_can_hold(env[name])):
                raise BadSpecialization(f"the variable {name!r} holds characters an environment cannot (a lone "
                                        f"surrogate)")
        for name in files:
            check_file_name(name)
        return cls(env, files)


def check_file_name(name: str) -> None:
    """Raises BadSpecialization unless `name` names a file directly in the code directory."""
    if (not name or name in (".", "..") or "/" in name or "\x00" in name or name == MARKER
            or not _os_can_hold(name) or len(os.fsencode(name)) > MAX_FILE_NAME_BYTES):
        raise BadSpecialization(f"not a file name in the code directory: {name!r}")


def _os_can_hold(text: str) -> bool:
    """Whether `text` can be a file name or an environment variable's (os.fsencode: UTF-8, and
    surrogate escapes of undecodable bytes, but no other lone surrogate)."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def merged_env(pod_environ: Mapping[str, str], body_env: Mapping[str, str]) -> dict[str, str]:
    """The environment the function's instance is configured from: the pod's own (without the
    pool's variables) overlaid by the request's, except the variables the pod keeps (`POD_OWN`)."""
    merged = {k: v for k, v in pod_environ.items() if k not in _POOL_ONLY}
    merged.update({k: v for k, v in body_env.items() if k not in POD_OWN})
    return merged
