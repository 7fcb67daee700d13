"""The Function model's building blocks: the strict base every part of it derives from, how a part
says a value is wrong, the field types that read durations and quantities, and what a name may be.

Every module of the model (`functions`, `codespec`, `httpspec`, `scalespec`, `asyncspec`, `triggerspec`)
builds on these, so a manifest's errors read the same whichever part they are in.
"""
from __future__ import annotations

import re
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from kfn.core import units

# Kubernetes object names that also work as DNS labels (Services need that).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63


def invalid(message: str) -> PydanticCustomError:
    """The error a validator raises: `message` reaches the user as it is (see `functions.parse_function`)."""
    return PydanticCustomError("kfn", message)


def _duration(value: object) -> float:
    try:
        return units.parse_duration(value)
    except ValueError as e:
        raise invalid(str(e)) from None


def _quantity(value: object) -> str:
    try:
        units.parse_quantity(value)
    except ValueError as e:
        raise invalid(str(e)) from None
    return str(value)


# Durations are seconds inside kfn; manifests may say "30s" or 30. The CRD accepts both shapes
# and leaves the grammar to this model (see the operator's InvalidSpec condition).
Duration = Annotated[
    float,
    pydantic.BeforeValidator(_duration),
    pydantic.WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
Quantity = Annotated[
    str,
    pydantic.BeforeValidator(_quantity),
    pydantic.WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


class StrictModel(BaseModel):
    # Unknown fields are errors, so a typo such as `minReplica` is reported instead of ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
