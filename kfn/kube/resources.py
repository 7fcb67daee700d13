"""Writing to the API the same way everywhere, with the content types the client picks itself.

The official client sends a PATCH with a content type chosen from what the API lists: JSON Patch
(RFC 6902) for built-in kinds, JSON merge patch for custom resources. kfn builds each accordingly
and never forces another: `add` operations that set members whether or not they exist (with a
`test` of metadata.resourceVersion to make a write conditional on what was read), and merge
patches that carry metadata.resourceVersion for the same purpose. The API answers a conditional
write that lost the race with 409 (or, for a failed `test`, 422); the caller reads again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from kubernetes.aio import client

from kfn.core import naming
from kfn.core.functions import FunctionRef

Operation = dict[str, Any]


class _Model(Protocol):
    @classmethod
    def from_dict(cls, obj: dict[str, Any] | None) -> Any: ...


M = TypeVar("M", bound=_Model)


def typed(model: type[M], data: Mapping[str, Any]) -> M:
    """A manifest (dict) as the client's typed object of `model`, e.g. `typed(V1Deployment, d)`."""
    obj = model.from_dict(dict(data))
    if obj is None:
        raise ValueError(f"not a {model.__name__}: {data!r:.200}")
    return obj  # type: ignore[no-any-return]


class _Serializer(client.ApiClient):
    """The client's own conversion of typed objects to manifests, without a client: a real
    ApiClient builds an HTTP session and an SSL context (loading the system's certificates) when
    made, which cost most of the operator's time in a batch of Functions when made per call."""

    def __init__(self) -> None:   # sanitize_for_serialization needs no configuration nor session
        pass


_SERIALIZER = _Serializer()


def manifest(obj: Any) -> dict[str, Any]:
    """A typed object of the client as the API writes it (camelCase keys, no unset fields)."""
    return dict(_SERIALIZER.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


def pointer(*parts: str) -> str:
    """A JSON Pointer (RFC 6901) to `parts`: `pointer("metadata", "annotations", "kfn.dev/x")`."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def set_ops(values: Mapping[str, Any], *, resource_version: str | None = None) -> list[Operation]:
    """`add` operations for pointer → value, preceded by a resourceVersion test when given."""
    ops: list[Operation] = []
    if resource_version is not None:
        ops.append({"op": "test", "path": pointer("metadata", "resourceVersion"), "value": resource_version})
    ops.extend({"op": "add", "path": path, "value": value} for path, value in values.items())
    return ops


def conflicted(error: client.ApiException) -> bool:
    """Whether a conditional write failed only because the object changed since it was read."""
    if error.status == 409:
        return True
    return error.status == 422 and "test" in str(error.body or error.reason or "").lower()


def namespace_terminating(error: client.ApiException) -> bool:
    """Whether a create was refused because its namespace is being deleted (403 with the cause
    NamespaceTerminating): nothing is missing, there is nothing left to build there."""
    return error.status == 403 and "NamespaceTerminating" in str(error.body or "")


async def patch_function_status(api: client.ApiClient, ref: FunctionRef, fields: Mapping[str, Any], *,
                                resource_version: str | None = None) -> None:
    """Merge `fields` into a Function's status (a merge patch of the status subresource).

    With `resource_version` the write happens only if the Function is unchanged since it was
    read (ApiException 409 otherwise). Fields set to None are removed.
    """
    body: dict[str, Any] = {"status": dict(fields)}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    await client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        naming.GROUP, naming.VERSION, ref.namespace, naming.PLURAL, ref.name, body)
