"""The runtime's own account of the Python that runs (AWS_EXECUTION_ENV), whatever the function
declares: an image or a machine without the declared version says which one it has."""
from __future__ import annotations

import sys

from kfn_runtime.config import Config
from kfn_runtime.launch import running_runtime

OWN = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_runtime_names_the_python_that_really_runs_whatever_the_function_declares() -> None:
    config = Config.from_env({"KFN_HANDLER": "main.handler", "KFN_RUNTIME": "python3.13"})
    assert running_runtime(config) == f"python{OWN}"
    assert running_runtime(config, "3.13") == "python3.13"
    node = Config.from_env({"KFN_HANDLER": "index.handler", "KFN_RUNTIME": "nodejs22"})
    assert running_runtime(node) == "nodejs22"
