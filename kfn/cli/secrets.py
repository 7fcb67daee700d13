"""`kfn secrets ensure`: create each missing Secret with random values; never change one that exists.

The chart runs it in a Helm hook Job (pre-install, pre-upgrade) for the keys it used to generate
in its templates, so that every `helm template` renders the same objects. Values are generated
here (`generate`: `secrets`, the OS's randomness) and never printed; what the command prints is
which Secrets it created and which it kept.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import string
import sys
from collections.abc import Sequence

from kfn.cli.options import SecretEntry, SecretsEnsureOptions
from kfn.core.errors import CommandError

logger = logging.getLogger(__name__)

_LENGTH = 40          # characters of an alnum or letters value
_BYTES = 32           # bytes of a bytes value


def generate(format_: str) -> bytes:
    """A new random value of `format_` (`kfn.cli.options.SECRET_FORMATS`)."""
    if format_ == "bytes":
        return secrets.token_bytes(_BYTES)
    alphabet = string.ascii_letters if format_ == "letters" else string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(_LENGTH)).encode()


def secret_data(entries: Sequence[SecretEntry]) -> dict[str, dict[str, bytes]]:
    """Secret name → its entries, each with a new value (the first of a repeated NAME:KEY counts)."""
    out: dict[str, dict[str, bytes]] = {}
    for entry in entries:
        out.setdefault(entry.name, {}).setdefault(entry.key, generate(entry.format))
    return out


def ensure_secrets(options: SecretsEnsureOptions) -> int:
    """Create the missing Secrets of `options`; 0 once each exists, else CommandError (exit 1)
    at the first the API refused (those before it are created or kept, those after untouched)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_ensure(options))


async def _ensure(options: SecretsEnsureOptions) -> int:
    from kfn.kube import connect
    from kfn.kube.secrets import SecretsUnavailable, ensure

    try:
        api = await connect()
    except Exception as e:   # the loader's own errors: no kubeconfig, a bad one, no service account
        raise CommandError(f"no Kubernetes API client: {e}") from e
    try:
        for name, data in secret_data(options.entries).items():
            try:
                outcome = await ensure(api, options.namespace, name, data, labels=dict(options.labels),
                                       annotations=dict(options.annotations), attempts=options.attempts)
            except SecretsUnavailable as e:
                raise CommandError(str(e)) from e
            where = f"{options.namespace}/{name}"
            if outcome.created:
                print(f"created Secret {where} ({', '.join(data)})")
            else:
                print(f"kept Secret {where} (it exists)")
                if outcome.kept_from_helm:
                    print(f"marked Secret {where} helm.sh/resource-policy=keep (a release of an older chart "
                          "rendered it: the upgrade would have deleted it)")
                if outcome.missing:
                    print(f"warning: the Secret {where} has no entry {', '.join(outcome.missing)}; left as it is "
                          "(add it, or delete the Secret to have it generated)", file=sys.stderr)
    finally:
        await api.close()  # type: ignore[no-untyped-call]
    return 0
