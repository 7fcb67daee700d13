"""A NATS URL as kfn takes it (`$KFN_NATS_URL`, `--nats-url`, the chart's `async.nats.url`): one
server URL, or several separated by commas (servers of one cluster)."""
from __future__ import annotations

import re

# scheme://[user[:password]@]host[:port][/]: what nats-py connects to (a host name, IPv4 or [IPv6]).
_SERVER = re.compile(r"(?:nats|tls|ws|wss)://(?:[^@/\s]*@)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?/?")


def servers(url: str) -> list[str]:
    """The server URLs in `url`, as nats-py's connect takes them (a list). Raises ValueError,
    naming the part, for a URL that does not look like nats://HOST[:PORT]."""
    found = [one.strip() for one in url.split(",") if one.strip()]
    if not found:
        raise ValueError("the NATS URL is empty")
    for one in found:
        if not _SERVER.fullmatch(one):
            raise ValueError(f"the NATS URL must look like nats://HOST:4222 (got {one!r})")
    return found
