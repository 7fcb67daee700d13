"""The gateway's limits and choices, each with a safe default (`GatewaySettings`)."""
from __future__ import annotations

from dataclasses import dataclass

from kfn.core import naming
from kfn.core.asyncpolicy import MAX_ASYNC_PAYLOAD_BYTES
from kfn_gateway.connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SEND_TIMEOUT,
    ConnectionLimits,
)
from kfn_runtime import awslambda

# Lambda's limit on a synchronous invocation's payload.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
# A build archive PUT to the archive store (`kfn_gateway.archives_api`): Lambda's own limit on a
# function's unpacked code and layers is 250 MB, and archives are compressed.
DEFAULT_ARCHIVE_MAX_BYTES = 256 * 1024 * 1024
# Archives arriving at once: each is spooled to the gateway's temporary directory while it arrives,
# so this times the largest is the most disk they take. More are answered 503 (builds retry).
DEFAULT_ARCHIVE_UPLOADS = 2


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_limit: int = 100          # per function: requests waiting for a free instance slot
    queue_timeout: float = 30.0     # seconds a request may wait for a slot / a cold start before 503
    retry_after: int = 1
    upstream_timeout_margin: float = 5.0  # added to spec.timeout: the instance's own timeout comes first
    default_namespace: str = naming.DEFAULT_NAMESPACE  # what /function/NAME means
    trusted_hops: int = 0           # proxies in front whose X-Forwarded-For entries are believed
    header_timeout: float = DEFAULT_HEADER_TIMEOUT   # a request head must arrive within this
    body_timeout: float = DEFAULT_BODY_TIMEOUT       # a request body must arrive within this (408)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT       # an idle client connection is closed after this
    send_timeout: float = DEFAULT_SEND_TIMEOUT       # a client taking none of its answer this long is cut off
    max_connections: int = DEFAULT_MAX_CONNECTIONS   # open client connections; more are answered 503
    system_auth: bool = False       # /system/* needs an admin key (kfn gateway: on by default)
    max_async_payload_bytes: int = MAX_ASYNC_PAYLOAD_BYTES  # an asynchronous invocation's event (Lambda: 1 MB)
    region: str = awslambda.DEFAULT_REGION   # the functions' region: ARNs, events, unsigned Invoke calls
    archive_max_bytes: int = DEFAULT_ARCHIVE_MAX_BYTES   # a build archive stored (PUT /system/archives/...)
    archive_uploads: int = DEFAULT_ARCHIVE_UPLOADS       # archives arriving at once; more are 503

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                                idle_timeout=self.idle_timeout, send_timeout=self.send_timeout,
                                max_connections=self.max_connections)
