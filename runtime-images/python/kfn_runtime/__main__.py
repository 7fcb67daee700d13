"""`python -m kfn_runtime`: serve one function, configured by the KFN_* environment (see `contract`)."""
from __future__ import annotations

import sys
import time

from kfn_runtime import contract
from kfn_runtime.config import Config, ConfigError


def main() -> int:
    started = time.monotonic()
    for stream in (sys.stdout, sys.stderr):
        # Handler print() output must reach the log at once even without PYTHONUNBUFFERED.
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    try:
        config = Config.from_env()
    except ConfigError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return contract.EXIT_BAD_CONFIG
    from kfn_runtime.runtime import Runtime  # after the config check, so a bad environment fails fast

    return Runtime(config, started=started).run()


if __name__ == "__main__":
    from kfn_runtime.runtime import exit_process

    exit_process(main())
