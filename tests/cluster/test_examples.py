"""The repository's examples/*.yaml, applied as a user would, into a namespace of their own."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.cluster import platform
from tests.cluster.platform import Release

EXAMPLES = sorted(platform.EXAMPLES.glob("*.yaml"))
NAMES = [yaml.safe_load(path.read_text())["metadata"]["name"] for path in EXAMPLES]


@pytest.fixture(scope="module")
def examples_ns(release: Release) -> Iterator[str]:
    namespace = platform.create_namespace("ex")
    platform.kubectl("apply", "-f", str(platform.EXAMPLES), namespace=namespace)
    yield namespace
    platform.delete_namespace(namespace)


def test_every_example_becomes_ready(examples_ns: str) -> None:
    for name in NAMES:
        fn = platform.wait_ready(name, examples_ns, timeout=60)
        assert fn["status"]["url"] == f"/function/{name}"


def printer_table(namespace: str) -> list[dict[str, str]]:
    """`kubectl get fn -o wide` as rows of {COLUMN: cell}, cut at the header's column starts."""
    lines = platform.kubectl("get", "functions", "-o", "wide", namespace=namespace).stdout.splitlines()
    header = lines[0]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def test_every_printer_column_is_filled(examples_ns: str) -> None:
    for name in NAMES:
        platform.wait_ready(name, examples_ns, timeout=60)

    def table() -> list[dict[str, str]] | None:
        rows = printer_table(examples_ns)
        # DESIRED is the autoscaler's first decision: wait for it, then judge every cell.
        return rows if len(rows) == len(NAMES) and all(row.get("DESIRED") for row in rows) else None

    rows = platform.wait_until("every example's DESIRED column", table, timeout=20, interval=0.5)
    columns = [c["name"].upper() for c in platform.get("crd", platform.CRD_NAME)["spec"]["versions"][0]
               ["additionalPrinterColumns"]]
    assert set(columns) <= set(rows[0]), rows[0]
    empty = {row["NAME"]: [c for c in columns if not row[c]] for row in rows}
    assert not any(empty.values()), f"empty printer columns: {empty}"
