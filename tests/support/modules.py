"""Python modules a test writes, for the runtime to import as a function's handler."""
from __future__ import annotations

from pathlib import Path


def write_module(module_path: Path, source: str) -> str:
    """Write `source` as the module at `module_path` (+ .py); returns the module's name."""
    module_path.with_suffix(".py").write_text(source)
    return module_path.name
