"""Ports on 127.0.0.1 for tests."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picked it; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
