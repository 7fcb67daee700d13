"""X-Call-Id through a real `kfn local` (issue 15, items 2 and 3): an id is its function's own (the
same id sent to another function, in another namespace, is its own event), and a retry after the
event ran is answered 202 with the same id and does not run the function again.

Functions record each run in a file of the test's temporary directory; every wait is bounded."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localmode import FAST_ASYNC, LocalMode, http, lines, post_async, recording, write_manifest
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMode, Path]]:
    root = tmp_path_factory.mktemp("ids")
    directory = root / "functions"
    directory.mkdir()
    log = root / "runs.log"
    # Each run logs its event's body, which the tests make say which function it was sent to.
    write_manifest(directory, "public", recording(log))
    write_manifest(directory, "billing", recording(log))
    other = write_manifest(directory, "billing", recording(log), file="team-b.yaml")
    other.write_text(other.read_text().replace("  name: billing\n", "  name: billing\n  namespace: team-b\n", 1))
    server = LocalMode(directory, extra_args=FAST_ASYNC)
    try:
        yield server.start(), log
    finally:
        server.stop()


def started(log: Path) -> list[str]:
    return lines(log, "start")


def test_the_same_x_call_id_sent_to_other_functions_runs_each_of_them(local: tuple[LocalMode, Path]) -> None:
    server, log = local
    for name in ("public", "billing", "billing.team-b"):
        assert post_async(server, name, f"shared-for-{name}", headers={"X-Call-Id": "invoice-1001"}) == "invoice-1001"
    wanted = {"shared-for-public", "shared-for-billing", "shared-for-billing.team-b"}
    wait_until(lambda: wanted <= set(started(log)), timeout=30, what="all three functions ran")


def test_an_x_call_id_retried_after_its_event_ran_is_202_and_does_not_run_again(
        local: tuple[LocalMode, Path]) -> None:
    server, log = local
    assert post_async(server, "public", "order-first", headers={"X-Call-Id": "order-42"}) == "order-42"
    wait_until(lambda: "order-first" in started(log), timeout=60, what="the first run")
    retried = http("POST", f"{server.url}/async-function/public", body=b"order-retry",
                   headers={"Content-Type": "text/plain", "X-Call-Id": "order-42"}, timeout=30)
    assert (retried.status, retried.json()) == (202, {"requestId": "order-42"})
    # Whatever the engine would do with the retry, it has done once a later event ran.
    assert post_async(server, "public", "order-next", headers={"X-Call-Id": "order-43"}) == "order-43"
    wait_until(lambda: "order-next" in started(log), timeout=60, what="the next run")
    assert "order-retry" not in started(log)
