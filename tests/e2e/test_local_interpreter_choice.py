"""`ProcessBackend` runs a Python function on the interpreter chosen for its runtime: an injected
finder stands for a machine with a Python 3.13, so this runs on any machine."""
from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from kfn.core.functions import parse_function
from kfn.core.instances import Invocation
from kfn.processes import ProcessBackend
from kfn.processes.interpreters import Interpreters
from tests.support.functions import function_manifest
from tests.support.localmode import WHICH


async def test_the_backend_runs_a_python_function_on_the_interpreter_found_for_its_runtime(tmp_path: Path) -> None:
    """A wrapper of this Python stands for a Python 3.13; it records that the zygote started on it."""
    used = tmp_path / "used"
    wrapper = tmp_path / "python3.13"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {used}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    backend = ProcessBackend(work_dir=tmp_path / "work", confine=False, region="us-east-1",
                             interpreters=Interpreters(find=lambda v: str(wrapper) if v == "3.13" else None))
    await backend.start()
    try:
        function = parse_function(function_manifest("py313", WHICH, runtime="python3.13"))
        backend.set_function(function)
        await backend.scale(function.ref, 1)
        deadline = time.monotonic() + 20
        while not backend.ready(function.ref):
            assert time.monotonic() < deadline, backend.status(function.ref)
            await asyncio.sleep(0.05)
        endpoint = backend.ready(function.ref)[0].endpoint
        assert endpoint is not None
        result = await endpoint.invoke(Invocation(payload=b"{}", request_id=str(uuid.uuid4())))
    finally:
        await backend.close()
    assert json.loads(result.payload)["executionEnv"] == "AWS_Lambda_python3.13"
    assert "kfn_runtime.zygote" in used.read_text()
