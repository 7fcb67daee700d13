"""The chart README's values table is the reference of values.schema.json and values.yaml.

A row's first cell names one value or more: `a.b.c`, a sibling of the value before it as `.d`, or
any component's `*.resources`. A row naming an object documents what is under it.
"""
from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.support.charts import CHART

# Helm's own (subcharts' shared values): not a value of this chart.
HELM_RESERVED = {"global"}
_CODE = re.compile(r"`([^`]+)`")


def schema_leaves() -> set[str]:
    """Every value the schema describes: the paths of properties without properties of their own."""
    out: set[str] = set()

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        properties = node.get("properties")
        if not properties:
            out.add(".".join(path))
            return
        for key, child in properties.items():
            if not path and key in HELM_RESERVED:
                continue
            walk(child, (*path, key))

    walk(json.loads((CHART / "values.schema.json").read_text()), ())
    return out


def table_keys() -> set[str]:
    """The values the README's values table names (first cells of the rows under `## Values`)."""
    text = (CHART / "README.md").read_text()
    section = text.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "Value":
            continue
        previous = ""
        for name in _CODE.findall(cells[0]):
            if name.startswith("."):
                name = previous.rsplit(".", 1)[0] + name
            keys.add(name)
            previous = name
    return keys


def covers(key: str, leaf: str) -> bool:
    """Whether the table's `key` documents the schema's `leaf` (itself or an object above it)."""
    if key.startswith("*."):
        suffix = key[1:]
        return f".{leaf}".find(suffix + ".") >= 0 or f".{leaf}".endswith(suffix)
    return leaf == key or leaf.startswith(key + ".")


def values_yaml_has(path: str) -> bool:
    node = yaml.safe_load((CHART / "values.yaml").read_text())
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_value_of_the_schema_is_in_the_readmes_table() -> None:
    keys = table_keys()
    missing = sorted(leaf for leaf in schema_leaves() if not any(covers(key, leaf) for key in keys))
    assert missing == [], f"values.schema.json values missing from charts/kfn/README.md's table: {missing}"


def test_every_value_of_the_readmes_table_is_in_the_schema_and_in_values_yaml() -> None:
    leaves = schema_leaves()
    unknown = sorted(key for key in table_keys() if not any(covers(key, leaf) for leaf in leaves))
    assert unknown == [], f"charts/kfn/README.md's table names values the schema does not have: {unknown}"
    absent = sorted(key for key in table_keys() if not key.startswith("*.") and not values_yaml_has(key))
    assert absent == [], f"charts/kfn/README.md's table names values values.yaml does not set: {absent}"


def test_a_key_the_table_does_not_know_is_found_missing() -> None:
    assert not any(covers(key, "gateway.noSuchValue") for key in table_keys())
