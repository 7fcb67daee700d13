"""Ports on 127.0.0.1 for tests.

A test that needs a port before its server binds it (a nats-server it kills and starts again on the
same port, a command given `--port`) takes one with `free_port`. The suite runs in several pytest-xdist
workers at once, and a port one worker was handed must not go to another while the first is not yet
(or no longer, for a moment) listening on it. So ports come from below the kernel's ephemeral range,
which `bind(0)` never hands out, each worker from a block of its own, in turn: a port comes back
only after its worker has handed out the whole block.
"""
from __future__ import annotations

import itertools
import os
import socket

FIRST_PORT = 20000    # below the ephemeral range (Linux: 32768-60999), above common services
BLOCK = 2000          # ports per worker: 6 workers fit below 32768
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_INDEX = int(_WORKER[2:]) % 6 if _WORKER[2:].isdigit() else 0
_next = itertools.cycle(range(FIRST_PORT + _INDEX * BLOCK, FIRST_PORT + (_INDEX + 1) * BLOCK))


def free_port() -> int:
    """A port nothing listens on right now, that no other worker of this run is handed; OSError if the
    whole block is taken."""
    for _ in range(BLOCK):
        port = next(_next)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in 127.0.0.1:{FIRST_PORT + _INDEX * BLOCK}-{FIRST_PORT + (_INDEX + 1) * BLOCK - 1}")
