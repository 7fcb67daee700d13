"""The gateway's own refusals: what it answers when no function did (a leaf module, so every
part of the gateway can raise and recognise them)."""
from __future__ import annotations


class GatewayError(Exception):
    """No function answered: the gateway's own error response. `nothing_ran` says the function
    certainly did not run (no slot, no instance reached, turned away): worth trying again later."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None,
                 nothing_ran: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.nothing_ran = nothing_ran
