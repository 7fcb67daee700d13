"""A clock a test sets by hand, for code that takes a `clock() -> float` (monotonic seconds)."""
from __future__ import annotations


class FakeClock:
    """Returns `now`, which starts at 1000.0 and moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
