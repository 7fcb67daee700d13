"""One mechanism for mirroring a kind of object: list, then watch from the list's resourceVersion.

The gateway's backend, the autoscaler and the operator's helpers all follow the cluster through
`Informer`: typed objects (the official client's models; custom resources stay dicts), a relist
when the API says the watch's resourceVersion is too old (410 Gone), and reconnection with
bounded backoff after any other error, keeping what was known meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import watch
from kubernetes.aio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

# The API server ends each watch after this long; the informer continues from where it was.
WATCH_TIMEOUT_SECONDS = 300
# A watch that hears nothing at all for this long past its own timeout is a dead connection.
WATCH_STALL_MARGIN = 30.0

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: `initial`, doubling, never above `maximum`."""

    initial: float = 0.5
    maximum: float = 15.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * 2)


def items_of(listing: Any) -> list[Any]:
    """The objects of a list response: a typed `...List` or a custom resource's dict."""
    if isinstance(listing, dict):
        return [item for item in listing.get("items") or () if isinstance(item, dict)]
    return list(listing.items or ())


def resource_version_of(listing: Any) -> str | None:
    if isinstance(listing, dict):
        return (listing.get("metadata") or {}).get("resourceVersion")
    metadata = listing.metadata
    return metadata.resource_version if metadata is not None else None


def describe(error: BaseException) -> str:
    """One line for a log: the API's status and reason, or the exception's type and message."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Informer:
    """Keeps one kind of object (in one namespace, or all) mirrored through list + watch.

    `list_method` is a list call of the official client's async API (e.g.
    `CoreV1Api(api).list_namespaced_pod`), called with `list_args` and the label selector; its
    return annotation gives the watch events their model type. `on_replace(items)` receives
    every object after each successful list; `on_event(type, obj)` each ADDED, MODIFIED or
    DELETED event after that. Both run on the event loop, between awaits.
    """

    def __init__(self, what: str, list_method: Callable[..., Any], *list_args: Any,
                 on_replace: Callable[[list[Any]], None], on_event: Callable[[str, Any], None],
                 label_selector: str | None = None, field_selector: str | None = None,
                 backoff: Backoff = Backoff(), watch_timeout: int = WATCH_TIMEOUT_SECONDS) -> None:
        self.what = what
        self._list_method = list_method
        self._list_args = list_args
        self._on_replace = on_replace
        self._on_event = on_event
        self._selector = label_selector
        self._field_selector = field_selector
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self.synced = asyncio.Event()

    def _kwargs(self) -> dict[str, Any]:
        kwargs = {"label_selector": self._selector} if self._selector else {}
        if self._field_selector:
            kwargs["field_selector"] = self._field_selector
        return kwargs

    async def run(self) -> None:
        """Runs until cancelled. API and network errors are logged and retried with backoff;
        the mirrored state stays as it was until the next list or event."""
        delays = self._backoff.delays()
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list()
                    delays = self._backoff.delays()
                started = time.monotonic()
                resource_version = await self._watch(resource_version)
                delays = self._backoff.delays()
                if time.monotonic() - started < 1.0:
                    # The server ends watches after minutes; one that ends at once is a
                    # misbehaving server or proxy: do not spin.
                    await asyncio.sleep(self._backoff.initial)
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:
                    logger.info("watch of %s expired, relisting", self.what)
                    resource_version = None
                    continue
                await self._pause(e, next(delays))
            except Exception as e:  # noqa: BLE001 - whatever broke the stream, reconnecting is the cure
                await self._pause(e, next(delays))

    async def _pause(self, error: BaseException, delay: float) -> None:
        logger.warning("watching %s failed (%s); retrying in %.1fs", self.what, describe(error), delay)
        await asyncio.sleep(delay)

    async def _list(self) -> str | None:
        listing = await self._list_method(*self._list_args, **self._kwargs())
        self._on_replace(items_of(listing))
        self.synced.set()
        return resource_version_of(listing)

    async def _watch(self, resource_version: str | None) -> str | None:
        """Follows events until the server ends the watch; returns where to continue from."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        kwargs = self._kwargs()
        if resource_version:
            kwargs["resource_version"] = resource_version
        async with asyncio.timeout(self._watch_timeout + WATCH_STALL_MARGIN):
            async with stream.stream(  # type: ignore[no-untyped-call]
                    self._list_method, *self._list_args, timeout_seconds=self._watch_timeout,
                    allow_watch_bookmarks=True, **kwargs) as events:
                async for event in events:
                    kind = event.get("type")
                    if kind in (ADDED, MODIFIED, DELETED):
                        self._on_event(kind, event["object"])
        return stream.resource_version or resource_version
