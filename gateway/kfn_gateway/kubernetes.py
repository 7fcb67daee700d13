"""The gateway's Kubernetes backend: instances are ready pods, scaling is the Deployment's scale.

`KubernetesBackend` implements `kfn.instances.InstanceBackend` from three informers (list, then
watch from the list's resourceVersion; relist on 410 Gone; reconnect with bounded backoff after
any error while keeping what it knew):

- Functions (`kfn.dev/v1alpha1`), parsed with `kfn.functions.parse_function`; invalid ones are
  ignored with a log line (the operator reports them in their status);
- EndpointSlices labelled `kfn.dev/function` (or core Endpoints where the cluster has no
  EndpointSlice API): each ready address is an `Instance` on the pod IP, so requests go
  straight to pods, not through the Service's virtual IP;
- Deployments managed by kfn: `desired()` is their spec.replicas; `scale()` patches their
  `scale` subresource (scale from zero is one PATCH; the Deployment controller does the rest).

Functions are known by name: names must be unique across the namespaces one gateway watches.
`main(args)` runs the gateway with this backend for `kfn gateway`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from kfn import naming
from kfn.aiotasks import stop_tasks
from kfn.functions import Function, InvalidFunction, parse_function
from kfn.instances import Instance, Listener

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# Servers end watches after this long; the informer then continues from its last resourceVersion.
WATCH_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: `initial`, doubling, never above `maximum`."""

    initial: float = 0.5
    maximum: float = 15.0

    def delays(self) -> Iterable[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * 2)


class WatchGone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


Lister = Callable[..., Awaitable[Any]]


class Informer:
    """Keeps one resource kind (in one namespace or all) mirrored through list + watch.

    `on_list(items)` replaces the state after each successful list; `on_event(type, obj)` applies
    each watch event. Both receive plain dicts as the API sent them.
    """

    def __init__(self, what: str, lister: Lister, *, on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], backoff: Backoff,
                 label_selector: str | None = None) -> None:
        self.what = what
        self._lister = lister
        self._on_list = on_list
        self._on_event = on_event
        self._backoff = backoff
        self._selector = label_selector
        self.synced = asyncio.Event()
        self.failures = 0

    def _kwargs(self) -> dict[str, Any]:
        return {"label_selector": self._selector} if self._selector else {}

    async def run(self) -> None:
        """Runs until cancelled. API and network errors are logged and retried with backoff; the
        mirrored state stays as it was until a relist succeeds."""
        delays = iter(self._backoff.delays())
        while True:
            try:
                resource_version = await self._list()
                delays = iter(self._backoff.delays())
                while True:
                    started = time.monotonic()
                    resource_version = await self._watch(resource_version)
                    if time.monotonic() - started < 1.0:
                        # Servers end watches after minutes; one that ends at once is a misbehaving
                        # server or proxy: do not spin.
                        await asyncio.sleep(self._backoff.initial)
            except asyncio.CancelledError:
                raise
            except WatchGone:
                logger.info("watch of %s expired, relisting", self.what)
                continue
            except Exception as e:  # noqa: BLE001 - whatever broke the stream, reconnecting is the cure
                self.failures += 1
                delay = next(delays)
                logger.warning("watching %s failed (%s); retrying in %.1fs", self.what, _describe(e), delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str | None:
        body = await read_json(await self._lister(_preload_content=False, **self._kwargs()))
        self._on_list([item for item in body.get("items") or () if isinstance(item, dict)])
        self.synced.set()
        return (body.get("metadata") or {}).get("resourceVersion")

    async def _watch(self, resource_version: str | None) -> str | None:
        kwargs = self._kwargs()
        if resource_version:
            kwargs["resource_version"] = resource_version
        response = await self._lister(watch=True, timeout_seconds=WATCH_TIMEOUT_SECONDS, allow_watch_bookmarks=True,
                                      _preload_content=False, _request_timeout=WATCH_TIMEOUT_SECONDS + 30, **kwargs)
        try:
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=(await response.text())[:500])
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchGone()
                    raise ApiException(status=obj.get("code") or 500, reason=obj.get("message") or "watch error")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    resource_version = version
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue  # BOOKMARK, or anything newer than this code
                self._on_event(kind, obj)
        finally:
            response.release()
        return resource_version


@dataclass(frozen=True)
class _Address:
    id: str
    host: str
    port: int


@dataclass
class _Endpoints:
    function: str
    namespace: str
    addresses: list[_Address]


class KubernetesBackend:
    """Functions, ready pods and replica counts as the Kubernetes API reports them.

    `api` is owned by the caller (one ApiClient per component). `namespaces` empty = all.
    """

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str] = (), backoff: Backoff = Backoff(),
                 failure_cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 sync_timeout: float = 30.0) -> None:
        self._api = api
        self._namespaces = tuple(dict.fromkeys(namespaces))
        self._backoff = backoff
        self._failure_cooldown = failure_cooldown
        self._clock = clock
        self._sync_timeout = sync_timeout
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)
        self._core = client.CoreV1Api(api)

        # (namespace, name) → Function; `_by_name` is the view the protocol needs.
        self._functions: dict[tuple[str, str], Function] = {}
        self._by_name: dict[str, Function] = {}
        self._slices: dict[tuple[str, str], _Endpoints] = {}
        self._replicas: dict[tuple[str, str], int] = {}
        self._failed: dict[tuple[str, str], float] = {}   # (function, instance id) → until
        self._ready_cache: dict[str, list[Instance]] = {}
        self._listeners: list[Listener] = []
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._use_endpoints = False

    # ---- lifecycle

    async def start(self) -> None:
        """Start the informers; returns once each has listed once (or raises TimeoutError after
        `sync_timeout`, with the informers still retrying in the background until `close`)."""
        self._use_endpoints = not await self._has_endpointslices()
        scopes: Sequence[str | None] = self._namespaces or (None,)
        for ns in scopes:
            self._informers.append(Informer(
                f"functions{_in(ns)}", self._function_lister(ns), backoff=self._backoff,
                on_list=lambda items, ns=ns: self._replace_functions(ns, items), on_event=self._function_event))
            self._informers.append(Informer(
                f"deployments{_in(ns)}", self._deployment_lister(ns), backoff=self._backoff,
                label_selector=f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}",
                on_list=lambda items, ns=ns: self._replace_deployments(ns, items), on_event=self._deployment_event))
            self._informers.append(Informer(
                f"{'endpoints' if self._use_endpoints else 'endpointslices'}{_in(ns)}", self._endpoints_lister(ns),
                backoff=self._backoff, label_selector=naming.LABEL_FUNCTION,
                on_list=lambda items, ns=ns: self._replace_slices(ns, items), on_event=self._slice_event))
        self._tasks = [asyncio.create_task(i.run(), name=f"kfn-informer-{i.what}") for i in self._informers]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self._informers)), self._sync_timeout)

    async def close(self) -> None:
        """Cancel the informers and wait for them; does not close the ApiClient (the caller's)."""
        await stop_tasks(self._tasks, what="kubernetes backend")
        self._tasks.clear()
        self._informers.clear()

    async def _has_endpointslices(self) -> bool:
        ns = self._namespaces[0] if self._namespaces else None
        try:
            if ns is None:
                await self._discovery.list_endpoint_slice_for_all_namespaces(limit=1)
            else:
                await self._discovery.list_namespaced_endpoint_slice(ns, limit=1)
        except ApiException as e:
            if e.status == 404:
                logger.info("no discovery.k8s.io/v1 EndpointSlices: using core Endpoints")
                return False
            raise
        return True

    # ---- listers (plain dicts over HTTP: parse_function takes the manifest as sent)

    def _function_lister(self, ns: str | None) -> Lister:
        if ns is None:
            return lambda **kw: self._custom.list_cluster_custom_object(naming.GROUP, naming.VERSION, naming.PLURAL, **kw)
        return lambda **kw: self._custom.list_namespaced_custom_object(naming.GROUP, naming.VERSION, ns, naming.PLURAL, **kw)

    def _deployment_lister(self, ns: str | None) -> Lister:
        if ns is None:
            return self._apps.list_deployment_for_all_namespaces
        return lambda **kw: self._apps.list_namespaced_deployment(ns, **kw)

    def _endpoints_lister(self, ns: str | None) -> Lister:
        if self._use_endpoints:
            if ns is None:
                return self._core.list_endpoints_for_all_namespaces
            return lambda **kw: self._core.list_namespaced_endpoints(ns, **kw)
        if ns is None:
            return self._discovery.list_endpoint_slice_for_all_namespaces
        return lambda **kw: self._discovery.list_namespaced_endpoint_slice(ns, **kw)

    # ---- state updates

    def _replace_functions(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        keep = {k: v for k, v in self._functions.items() if ns is not None and k[0] != ns}
        fresh: dict[tuple[str, str], Function] = {}
        for item in items:
            if (fn := self._parse(item)) is not None:
                fresh[(fn.namespace, fn.name)] = fn
        changed = {k[1] for k in set(self._functions) ^ set(fresh) if ns is None or k[0] == ns}
        changed |= {k[1] for k, fn in fresh.items() if k in self._functions and self._functions[k].spec != fn.spec}
        self._functions = {**keep, **fresh}
        self._reindex(changed)

    def _function_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        if kind == "DELETED":
            if self._functions.pop(key, None) is None:
                return
        else:
            fn = self._parse(obj)
            # An edit that makes a Function invalid is not rolled out by the operator either: the
            # running pods still serve the last valid definition, so keep routing to them.
            if fn is None:
                return
            previous = self._functions.get(key)
            self._functions[key] = fn
            if previous is not None and previous.spec == fn.spec:
                return  # a status or metadata write: nothing the data path cares about
        self._reindex({key[1]})

    def _parse(self, item: dict[str, Any]) -> Function | None:
        try:
            return parse_function(item)
        except InvalidFunction as e:
            meta = item.get("metadata") or {}
            logger.warning("ignoring invalid Function %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
            return None

    def _reindex(self, changed: set[str]) -> None:
        by_name: dict[str, Function] = {}
        for (ns, name), fn in sorted(self._functions.items()):
            if name in by_name:
                logger.warning("Function %r exists in namespaces %s and %s; serving the first",
                               name, by_name[name].namespace, ns)
                continue
            by_name[name] = fn
        self._by_name = by_name
        self._notify(changed)

    def _replace_deployments(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        before = dict(self._replicas)
        self._replicas = {k: v for k, v in self._replicas.items() if ns is not None and k[0] != ns}
        for item in items:
            self._store_deployment(item)
        self._notify({k[1] for k in set(before) | set(self._replicas) if before.get(k) != self._replicas.get(k)})

    def _deployment_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        before = self._replicas.get(key)
        if kind == "DELETED":
            self._replicas.pop(key, None)
        else:
            self._store_deployment(obj)
        if self._replicas.get(key) != before:
            self._notify({key[1]})

    def _store_deployment(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(naming.LABEL_FUNCTION) or meta.get("name")
        self._replicas[(meta.get("namespace") or "default", name)] = int((obj.get("spec") or {}).get("replicas") or 0)

    def _replace_slices(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        before = self._slices
        self._slices = {k: v for k, v in self._slices.items() if ns is not None and k[0] != ns}
        for item in items:
            self._store_slice(item)
        changed = {e.function for k, e in before.items() if self._slices.get(k) != e}
        changed |= {e.function for k, e in self._slices.items() if before.get(k) != e}
        self._notify(changed)

    def _slice_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        old = self._slices.pop(key, None)
        if kind != "DELETED":
            self._store_slice(obj)
        new = self._slices.get(key)
        if old != new:
            self._notify({e.function for e in (old, new) if e is not None})

    def _store_slice(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        function = (meta.get("labels") or {}).get(naming.LABEL_FUNCTION)
        if not function:
            return
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        addresses = _endpoints_addresses(obj) if self._use_endpoints else _slice_addresses(obj)
        self._slices[key] = _Endpoints(function=function, namespace=key[0], addresses=addresses)
        # A failed pod that Kubernetes also took out of rotation starts afresh when it is ready again.
        listed = {a.id for e in self._slices.values() if e.function == function for a in e.addresses}
        for failed in [f for f in self._failed if f[0] == function and f[1] not in listed]:
            del self._failed[failed]

    def _notify(self, names: Iterable[str]) -> None:
        for name in set(names):
            self._ready_cache.pop(name, None)
            for listener in list(self._listeners):
                try:
                    listener(name)
                except Exception:
                    logger.exception("instance listener failed for %s", name)

    # ---- InstanceBackend

    def function(self, name: str) -> Function | None:
        return self._by_name.get(name)

    def functions(self) -> list[Function]:
        return list(self._by_name.values())

    def ready(self, name: str) -> list[Instance]:
        now = self._clock()
        expired = [k for k, until in self._failed.items() if k[0] == name and until <= now]
        for k in expired:
            del self._failed[k]
            self._ready_cache.pop(name, None)
        cached = self._ready_cache.get(name)
        if cached is not None:
            return list(cached)
        fn = self._by_name.get(name)
        if fn is None:
            return []
        seen: set[str] = set()
        instances: list[Instance] = []
        for endpoints in self._slices.values():
            if endpoints.function != name or endpoints.namespace != fn.namespace:
                continue
            for address in endpoints.addresses:
                if address.id in seen or (name, address.id) in self._failed:
                    continue
                seen.add(address.id)
                instances.append(Instance(function=name, id=address.id, host=address.host, port=address.port,
                                          capacity=fn.spec.concurrency))
        instances.sort(key=lambda i: i.id)
        self._ready_cache[name] = instances
        return list(instances)

    def desired(self, name: str) -> int:
        fn = self._by_name.get(name)
        if fn is None:
            return 0
        return self._replicas.get((fn.namespace, name), fn.spec.scale.minReplicas)

    async def scale(self, name: str, replicas: int, *, reason: str = "") -> None:
        """One PATCH of the Deployment's scale subresource (skipped if already asked for).
        Failures are logged, not raised: the caller sees no new instances and times out."""
        fn = self._by_name.get(name)
        if fn is None:
            logger.warning("cannot scale unknown function %r", name)
            return
        key = (fn.namespace, name)
        if self._replicas.get(key) == replicas:
            return
        try:
            await self._apps.patch_namespaced_deployment_scale(
                name, fn.namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            logger.error("scaling %s/%s to %d failed: %s", fn.namespace, name, replicas, _describe(e))
            return
        logger.info("scaled %s/%s to %d%s", fn.namespace, name, replicas, f" ({reason})" if reason else "")
        self._replicas[key] = replicas
        self._notify({name})

    def report_failure(self, instance: Instance, *, error: str) -> None:
        logger.warning("instance %s of %s failed (%s): out of rotation for %.0fs",
                       instance.id, instance.function, error, self._failure_cooldown)
        self._failed[(instance.function, instance.id)] = self._clock() + self._failure_cooldown
        self._notify({instance.function})

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ---- for operators and tests

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._informers)


def _slice_addresses(obj: Mapping[str, Any]) -> list[_Address]:
    port = naming.RUNTIME_PORT
    for p in obj.get("ports") or ():
        if p.get("port") and (p.get("name") in (None, "", "http") or len(obj.get("ports") or ()) == 1):
            port = int(p["port"])
            break
    out: list[_Address] = []
    for endpoint in obj.get("endpoints") or ():
        conditions = endpoint.get("conditions") or {}
        # Unset `ready` means ready (API docs); terminating pods take no new requests.
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        ref = endpoint.get("targetRef") or {}
        for address in endpoint.get("addresses") or ():
            out.append(_Address(id=ref.get("name") or address, host=address, port=port))
    return out


def _endpoints_addresses(obj: Mapping[str, Any]) -> list[_Address]:
    out: list[_Address] = []
    for subset in obj.get("subsets") or ():
        ports = subset.get("ports") or ()
        port = int(ports[0]["port"]) if ports and ports[0].get("port") else naming.RUNTIME_PORT
        for address in subset.get("addresses") or ():  # notReadyAddresses are skipped
            ref = address.get("targetRef") or {}
            out.append(_Address(id=ref.get("name") or address["ip"], host=address["ip"], port=port))
    return out


async def read_json(response: Any) -> dict[str, Any]:
    """The JSON body of a `_preload_content=False` response, or ApiException for an HTTP error
    (kubernetes-asyncio checks the status only when it reads the body itself)."""
    try:
        data = await response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=data.decode(errors="replace")[:500])
        return json.loads(data)
    finally:
        response.release()


def _in(ns: str | None) -> str:
    return f" in {ns}" if ns else ""


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _kubeconfig_paths() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def configuration_problem() -> str | None:
    """Why no Kubernetes client can be configured here, or None if one probably can."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    paths = _kubeconfig_paths()
    if not any(os.path.exists(p) for p in paths.split(os.pathsep) if p):
        return f"not in a pod (KUBERNETES_SERVICE_HOST is unset) and no kubeconfig at {paths}"
    return None


async def connect() -> client.ApiClient:
    """An ApiClient for in-cluster use, or for $KUBECONFIG / ~/.kube/config elsewhere."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        if (problem := configuration_problem()) is not None:
            raise FileNotFoundError(problem)
        # Read $KUBECONFIG now: kubernetes-asyncio captured its default at import time.
        await config.load_kube_config(config_file=_kubeconfig_paths(), client_configuration=configuration)
    return client.ApiClient(configuration)


def main(args: argparse.Namespace) -> int:
    """`kfn gateway`: serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from kfn.cli import CommandError
    from kfn_gateway.server import Gateway, serve

    try:
        api = await connect()
    except Exception as e:  # noqa: BLE001 - missing files, bad YAML, bad certificates: all one message
        raise CommandError(f"cannot configure the Kubernetes client: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with api:
        backend = KubernetesBackend(api, namespaces=args.namespace)
        await backend.start()
        try:
            # serve() starts the gateway, and runner.cleanup() closes it.
            runner = await serve(Gateway(backend), host=args.host, port=args.port)
            logger.info("kfn gateway listening on %s:%d", args.host, args.port)
            try:
                await stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await backend.close()
