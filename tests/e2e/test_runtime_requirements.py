"""An instance whose requirements were built once: `python -m kfn_runtime` with KFN_ARCHIVE_URL fetches
the archive from the store (here a local HTTP server) into its deps directory before it initialises
the function, or exits EXIT_LOAD_FAILED saying so in its termination message."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfn_runtime import archive, contract
from tests.e2e.runtimes import invoke, launch
from tests.support.archives import KEY, TOKEN, Store, packed

pytestmark = [pytest.mark.timeout(60)]

APP = '''
import six_like


def handler(event, context):
    return six_like.answer()
'''


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    served = Store(*packed(tmp_path))
    try:
        yield served
    finally:
        served.close()


def test_the_instance_fetches_its_requirements_before_it_initialises_the_function(tmp_path: Path,
                                                                                 store: Store) -> None:
    workdir = tmp_path / "pod"
    workdir.mkdir()
    rt = launch(workdir, source=APP, wait=False, archive_url=store.url, archive_token=TOKEN,
                archive_digest=store.digest)
    try:
        rt.wait_ready()
        status, _, body = invoke(rt, {})
        assert (status, json.loads(body)) == (200, "from six_like")
        (fetched,) = [line for line in rt.log_lines() if line.get("msg") == "requirements fetched"]
        assert fetched["key"] == KEY and fetched["ms"] >= 0
        assert (workdir / "deps" / "six_like" / "__init__.py").is_file()
    finally:
        rt.stop()


def test_an_archive_the_store_cannot_give_ends_the_instance_saying_its_requirements_failed(tmp_path: Path) -> None:
    store = Store(None)
    termination_log = tmp_path / "termination-log"
    termination_log.write_bytes(b"")   # the kubelet's: mounted empty
    workdir = tmp_path / "pod"
    workdir.mkdir()
    rt = launch(workdir, source=APP, wait=False, archive_url=store.url, archive_token=TOKEN,
                archive_digest=archive.DIGEST_PREFIX + "a" * 64, termination_log=str(termination_log))
    try:
        assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
        assert "404" in rt.stderr()
        message = json.loads(termination_log.read_bytes())
        assert message[contract.TERMINATION_MARK] is True
        assert message["requirements"] is True and message["platform"] is True
        assert "404" in message["errorMessage"]
        assert not any(line.get("msg") == "ready" for line in rt.log_lines())
    finally:
        rt.stop()
        store.close()
