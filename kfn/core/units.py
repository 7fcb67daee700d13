"""Durations ("30s", "1m30s", "500ms") and Kubernetes resource quantities ("256Mi", "500m")."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_QUANTITY_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_duration(value: object) -> float:
    """Seconds from a number (taken as seconds) or a Go-style duration string.

    Raises ValueError with a message meant for people, e.g. for "abc".
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like '30s' or a number of seconds (got {value!r})")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a duration like '30s' or a number of seconds (got {value!r})")
    text = value.strip()
    try:
        return float(Decimal(text))  # a bare number in a string: seconds
    except InvalidOperation:
        pass
    total = Decimal(0)
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"must be a duration like '30s', '1m30s' or '500ms' (got {value!r})")
    return float(total)


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def parse_quantity(value: object) -> Decimal:
    """The value of a Kubernetes quantity: 256Mi → 268435456, 500m → 0.5. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"must be a quantity like '256Mi' or '500m' (got {value!r})")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    if not isinstance(value, str):
        raise ValueError(f"must be a quantity like '256Mi' or '500m' (got {value!r})")
    match = _QUANTITY.fullmatch(value.strip())
    if not match:
        raise ValueError(f"must be a quantity like '256Mi' or '500m' (got {value!r})")
    number = Decimal(match.group(1))
    if match.group(2):
        return number * (Decimal(10) ** int(match.group(2)[1:]))
    return number * _QUANTITY_SUFFIXES[match.group(3) or ""]


def quantity_to_mebibytes(value: object) -> int:
    return int(parse_quantity(value) / Decimal(2**20))
