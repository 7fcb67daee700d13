"""Errors every layer may raise and the command line reports: a leaf module, importing nothing."""
from __future__ import annotations


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit, without a traceback.

    `exit_code` is 2 for a usage problem (a bad flag, a missing file, a missing extra) and 1 for
    everything else, as argparse and most Unix tools do.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
