"""Function instances as local processes (the instance backend of `kfn local`).

- `plan`: what to start and stop, a pure function of observed and wanted instances;
- `supervisor`: one instance process, from spawn to reap;
- `code`: code directories and pip installs;
- `interpreters`: the Python each function runs on (its declared version, or a substitute it reports);
- `logs`: a function's recent output, bounded;
- `setup`: an instance's configuration and host builder (code written, requirements installed);
- `fleet`: one function's instances, reconciled to the plan, and what the backend's fleets share;
- `backend`: `ProcessBackend`, which puts them together behind `kfn.core.instances.InstanceBackend`.
"""
from __future__ import annotations

from kfn.processes.backend import ProcessBackend
from kfn.processes.logs import LogBuffer

__all__ = ["LogBuffer", "ProcessBackend"]
