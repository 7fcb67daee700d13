"""A NATS URL as kfn takes it (`$KFN_NATS_URL`, `--nats-url`, the chart's `async.nats.url`): one
server URL, or several separated by commas (servers of one cluster).

A server URL may carry credentials, `nats://USER:PASSWORD@HOST:4222` (or a token alone,
`nats://TOKEN@HOST:4222`), percent-encoded where they hold characters a URL cannot. kfn gives them
to nats-py apart from the URLs (`credentials`, `bare`), and shows a URL only `masked`: logs and
error messages name the user, never the password or the token.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The platform's NATS credentials, apart from $KFN_NATS_URL (the chart sets them from a Secret):
# `in_environment` puts them into the URL.
ENV_USER = "KFN_NATS_USER"
ENV_PASSWORD = "KFN_NATS_PASSWORD"

# scheme://[user[:password]@]host[:port][/]: what nats-py connects to (a host name, IPv4 or [IPv6]).
_SERVER = re.compile(r"(?:nats|tls|ws|wss)://(?:[^@/\s]*@)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?/?")
# One server URL's parts: scheme, the user information (without its "@") and the rest.
_PARTS = re.compile(r"(?P<scheme>[a-z]+://)(?:(?P<userinfo>[^@/\s]*)@)?(?P<rest>.*)", re.DOTALL)
# RFC 3986's unreserved characters: the only ones `with_credentials` leaves unencoded.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
MASK = "***"


@dataclass(frozen=True)
class Credentials:
    """What a client logs in with: a user and a password, or a token alone (user None)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None


def servers(url: str) -> list[str]:
    """The server URLs in `url`, as nats-py's connect takes them (a list). Raises ValueError,
    naming the part (with any password masked), for a URL that does not look like nats://HOST[:PORT]."""
    found = [one.strip() for one in url.split(",") if one.strip()]
    if not found:
        raise ValueError("the NATS URL is empty")
    for one in found:
        if not _SERVER.fullmatch(one):
            raise ValueError(f"the NATS URL must look like nats://HOST:4222 (got {masked(one)!r})")
    return found


def credentials(url: str) -> Credentials | None:
    """The credentials the server URLs of `url` carry (decoded), None if none does. Raises
    ValueError when two servers carry different ones (one client logs in one way)."""
    found = {_credentials(userinfo) for userinfo in _userinfos(url) if userinfo}
    if len(found) > 1:
        raise ValueError("the servers of the NATS URL carry different credentials")
    return found.pop() if found else None


def bare(url: str) -> list[str]:
    """The server URLs of `url` without their credentials (see `servers`)."""
    out = []
    for one in servers(url):
        parts = _PARTS.fullmatch(one)
        assert parts is not None   # servers() checked it
        out.append(parts["scheme"] + parts["rest"])
    return out


def masked(url: str) -> str:
    """`url` as logs may show it: each server's password (or token) replaced by `MASK`."""
    out = []
    for one in url.split(","):
        parts = _PARTS.fullmatch(one.strip())
        if parts is None or parts["userinfo"] is None:
            out.append(one)
            continue
        user, colon, _ = parts["userinfo"].partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
        out.append(one.replace(parts.group(0), f"{parts['scheme']}{userinfo}@{parts['rest']}"))
    return ",".join(out)


def with_credentials(url: str, user: str | None, password: str | None) -> str:
    """`url` with `user` and `password` (percent-encoded) in each server URL that carries no
    credentials of its own; `url` unchanged without a password. A password without a user is a
    token. Raises ValueError for a URL that is not one (`servers`)."""
    if not password:
        return url
    userinfo = f"{_encode(user)}:{_encode(password)}" if user else _encode(password)
    out = []
    for one in servers(url):
        parts = _PARTS.fullmatch(one)
        assert parts is not None
        out.append(one if parts["userinfo"] is not None else f"{parts['scheme']}{userinfo}@{parts['rest']}")
    return ",".join(out)


def in_environment(url: str, env: Mapping[str, str]) -> str:
    """`url` with the credentials of $KFN_NATS_USER and $KFN_NATS_PASSWORD (`with_credentials`;
    a password alone is a token); unchanged without a password, or when it is not a NATS URL
    (whoever connects reports that, `servers`). The password is taken as it is, spaces and a
    final newline included: the chart's server takes the Secret's entry as it is (`--pass`)."""
    try:
        return with_credentials(url, env.get(ENV_USER, "").strip() or None,
                                env.get(ENV_PASSWORD) or None)
    except ValueError:
        return url


def _userinfos(url: str) -> list[str | None]:
    out: list[str | None] = []
    for one in servers(url):
        parts = _PARTS.fullmatch(one)
        assert parts is not None
        out.append(parts["userinfo"])
    return out


def _credentials(userinfo: str) -> Credentials:
    user, colon, password = userinfo.partition(":")
    if not colon:
        return Credentials(token=_decode(user))
    return Credentials(user=_decode(user), password=_decode(password))


def _encode(text: str) -> str:
    return "".join(c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _decode(text: str) -> str:
    return _ESCAPE.sub(lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(errors="replace"), text)
