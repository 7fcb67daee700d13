"""An emulated Kubernetes API for tests: kmock 0.8 plus every workaround kfn's tests need.

kmock's `KubernetesEmulator` keeps objects, lists, watches and merge-patches. What a real API
server (and its controllers) does beyond that, and kfn relies on, is added here and only here:

- metadata on create: uid, resourceVersion, creationTimestamp, generation, the namespace from the
  URL (a namespaced watch misses objects without it), names from `generateName`; 201 Created;
- resourceVersion bumps on every change (a no-op patch changes nothing and sends no event), and a
  resourceVersion in a PATCH or PUT body is a precondition (409 Conflict when stale);
  generation bumps on spec changes;
- the status subresource writes only status, and a main-resource write never changes status;
- the scale subresource (GET/PATCH as `autoscaling/v1` Scale);
- PUT (replace), used by the official client's Lease lock;
- JSON Patch (RFC 6902: add, replace, remove, test), which the official client sends for built-in
  kinds, on objects and on the scale subresource;
- `?watch=True`/`1` (the official client sends `True`; kmock knows only `true`);
- list responses with kind/apiVersion and a numeric resourceVersion;
- label selectors on list and watch (equality, inequality, existence, `in`/`notin`);
- `/api/v1` discovery answering `groupVersion: v1`;
- the garbage collector: deleting an owner deletes the objects whose ownerReferences name it.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import os
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal import enums as kmock_enums
from kmock._internal import rendering as kmock_rendering

from kfn.core import naming

FUNCTIONS = f"{naming.GROUP}/{naming.VERSION}/{naming.PLURAL}"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
SERVICES = "v1/services"
EVENTS = "v1/events"
LEASES = "coordination.k8s.io/v1/leases"


# ---- label selectors -------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def matches_selector(labels: Mapping[str, str] | None, selector: str | None) -> bool:
    """Kubernetes label selector semantics for the forms clients send in `?labelSelector=`."""
    if not selector:
        return True
    labels = labels or {}
    for term in _split_selector(selector):
        if m := _SET_RE.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            ok = (labels.get(key) in values) if op == "in" else (labels.get(key) not in values)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "==" in term or "=" in term:
            key, value = (s.strip() for s in re.split("==?", term, maxsplit=1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the emulator ------------------------------------------------------------------------------

class Cluster(kmock.KubernetesEmulator):
    """kmock's emulator with the behaviours of a real API server that kmock 0.8 lacks."""

    kubeconfig: Path | None = None   # set by `running_cluster`: a kubeconfig pointing here

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1000)
        self._faults: dict[kmock.resource, tuple[int, int]] = {}   # resource → (remaining, status)
        # Every PUT is ours: kmock does not route it (it answers 404).
        self[kmock.method.PUT] << self._serve_put

    # -- helpers

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        try:
            return "status" in self.resources[resource].subresources
        except KeyError:
            return False

    def _list_kind(self, resource: kmock.resource) -> tuple[str, str]:
        api_version = resource.version if not resource.group else f"{resource.group}/{resource.version}"
        try:
            kind = self.resources[resource].kind or resource.plural.capitalize()
        except KeyError:
            kind = (resource.plural or "").capitalize()
        return api_version, f"{kind}List"

    @property
    def served(self) -> list[kmock_rendering.Request]:
        """Every request served so far, oldest first."""
        return list(self._requests)

    def object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object as a plain dict, or None if absent (for assertions)."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list_objects(self, resource: str, namespace: str | None = None, *,
                     selector: str | None = None) -> list[dict[str, Any]]:
        res = kmock.resource(resource)
        out = []
        for (r, ns, _), obj in list(self.objects.items()):
            if r == res and not obj.deleted and (namespace is None or ns == namespace):
                raw = obj.raw
                if matches_selector((raw.get("metadata") or {}).get("labels"), selector):
                    out.append(copy.deepcopy(raw))
        return out

    # -- fault injection (an API server restarting, a flaky network)

    def fail_requests(self, resource: str, count: int, *, status: int = 500) -> None:
        """Answer the next `count` requests for `resource` with `status`."""
        self._faults[kmock.resource(resource)] = (count, status)

    def pending_failures(self, resource: str) -> int:
        return self._faults.get(kmock.resource(resource), (0, 0))[0]

    async def interrupt_watches(self, resource: str, *, code: int = 500) -> None:
        """End every open watch of `resource` with an ERROR event, as an API server going away would."""
        await self._buses[kmock.resource(resource)].put(
            {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                         "reason": "InternalError", "message": "injected by the test"}})

    # -- request interception

    async def _handle(self, request: kmock_rendering.Request) -> aiohttp.web.StreamResponse:
        # The API server parses booleans like Go does; kmock knows only `watch=true`.
        if (request.method == kmock.method.GET and request.action != kmock_enums.action.WATCH
                and request.params.get("watch", "").lower() in ("true", "1", "t")):
            object.__setattr__(request, "action", kmock_enums.action.WATCH)
        fault = self._faults.get(request.resource) if request.resource is not None else None
        if fault is not None and fault[0] > 0:
            self._faults[request.resource] = (fault[0] - 1, fault[1])
            return _status_response(fault[1], "InternalError", "injected by the test")
        if request.resource is not None and request.subresource == "scale" and request.name:
            return await self._serve_scale(request)
        if request.method == kmock.method.PATCH and isinstance(request.data, list) and request.name:
            return await self._serve_json_patch(request)

        if request.action == kmock_enums.action.CREATE and isinstance(request.data, dict):
            self._prepare_create(request)
        elif request.action == kmock_enums.action.UPDATE and isinstance(request.data, dict) and request.name:
            unchanged = await self._prepare_update(request)
            if unchanged is not None:
                # A no-op write changes nothing: same resourceVersion, no watch event.
                return aiohttp.web.json_response(unchanged)

        deleted_uid: str | None = None
        if request.action == kmock_enums.action.DELETE and request.name:
            existing = self.object(_resource_str(request.resource), request.namespace, request.name)
            deleted_uid = ((existing or {}).get("metadata") or {}).get("uid")

        response = await super()._handle(request)

        if request.action == kmock_enums.action.CREATE and response.status == 200:
            response.set_status(201)
        if deleted_uid is not None and response.status < 300:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                await self._collect_garbage({deleted_uid})
        return response

    def _prepare_create(self, request: kmock_rendering.Request) -> None:
        data = request.data
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_version()
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        if request.resource is not None:
            api_version, kind = self._list_kind(request.resource)
            data.setdefault("apiVersion", api_version)
            data.setdefault("kind", kind.removesuffix("List"))

    async def _prepare_update(self, request: kmock_rendering.Request) -> dict[str, Any] | None:
        """Make the patch what an API server would apply; the current object if it changes nothing."""
        data = request.data
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return None  # kmock answers 404
            old = copy.deepcopy(self.objects[key].raw)
        # A resourceVersion sent along is a precondition.
        _check_precondition(data.get("metadata"), old)
        if request.subresource == "status":
            for field in list(data):
                if field not in ("status", "metadata", "apiVersion", "kind"):
                    del data[field]
            data.pop("metadata", None)
        elif request.subresource is None and self._has_status_subresource(request.resource):
            data.pop("status", None)
        # Identity is the server's: clients may echo it but never change it.
        meta = data.get("metadata")
        if isinstance(meta, dict):
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion", "name", "namespace"):
                meta.pop(field, None)
        new = kmock_dicts.patch_dict(old, data)
        if new == old:
            return old
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_version()
        if request.subresource is None and new.get("spec") != old.get("spec"):
            meta["generation"] = int((old.get("metadata") or {}).get("generation") or 1) + 1
        return None

    async def _serve_put(self, request: kmock_rendering.Request) -> kmock_rendering.Payload:
        if request.resource is None or not request.name or not isinstance(request.data, dict):
            raise kmock.KubernetesNotFoundError()
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self.objects[key]
            old = copy.deepcopy(obj.raw)
            _check_precondition(request.data.get("metadata"), old)
            new = copy.deepcopy(request.data)
            meta = new.setdefault("metadata", {})
            old_meta = old.get("metadata") or {}
            for field in ("uid", "creationTimestamp", "namespace", "name"):
                if field in old_meta:
                    meta[field] = old_meta[field]
            meta["resourceVersion"] = self._next_version()
            generation = int(old_meta.get("generation") or 1)
            meta["generation"] = generation + 1 if new.get("spec") != old.get("spec") else generation
            obj.delete()
            obj.create(new)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            return copy.deepcopy(obj.raw)

    async def _serve_json_patch(self, request: kmock_rendering.Request) -> aiohttp.web.StreamResponse:
        """A JSON Patch, applied to the stored object (or its status), written back as a replace."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return _status_response(404, "NotFound", f"{request.name} not found")
            obj = self.objects[key]
            old = copy.deepcopy(obj.raw)
            try:
                new = apply_json_patch(old, request.data)
            except JsonPatchTestFailed as e:
                return _status_response(422, "Invalid", f"the server rejected our request: test failed: {e}")
            except (KeyError, IndexError, ValueError, TypeError) as e:
                return _status_response(422, "Invalid", f"the patch cannot be applied: {e}")
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
            elif self._has_status_subresource(request.resource):
                new["status"] = old.get("status")
            meta = new.setdefault("metadata", {})
            old_meta = old.get("metadata") or {}
            for field in ("uid", "creationTimestamp", "namespace", "name", "resourceVersion", "generation"):
                if field in old_meta:
                    meta[field] = old_meta[field]
            if new == old:
                return aiohttp.web.json_response(old)
            meta["resourceVersion"] = self._next_version()
            if request.subresource is None and new.get("spec") != old.get("spec"):
                meta["generation"] = int(old_meta.get("generation") or 1) + 1
            obj.delete()
            obj.create(new)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            return aiohttp.web.json_response(copy.deepcopy(obj.raw))

    async def _serve_scale(self, request: kmock_rendering.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return _status_response(404, "NotFound", f"{request.name} not found")
            obj = self.objects[key]
            if request.method == kmock.method.PATCH or request.method == kmock.method.PUT:
                data = request.data
                if isinstance(data, list):  # a JSON Patch of the Scale object
                    data = apply_json_patch({"spec": {"replicas": (obj.raw.get("spec") or {}).get("replicas")}},
                                            data)
                replicas = ((data or {}).get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    return _status_response(422, "Invalid", "spec.replicas must be a non-negative integer")
                if (obj.raw.get("spec") or {}).get("replicas") != replicas:
                    obj.patch({"spec": {"replicas": replicas}, "metadata": {"resourceVersion": self._next_version()}})
                    await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            elif request.method != kmock.method.GET:
                return _status_response(405, "MethodNotAllowed", "scale supports GET, PATCH and PUT")
            raw = obj.raw
        meta = raw.get("metadata") or {}
        match_labels = (((raw.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        selector = ",".join(f"{k}={v}" for k, v in match_labels.items())
        return aiohttp.web.json_response({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": int((raw.get("spec") or {}).get("replicas") or 0)},
            "status": {"replicas": int((raw.get("status") or {}).get("replicas") or 0), "selector": selector},
        })

    async def _collect_garbage(self, uids: set[str]) -> None:
        """Delete dependents of deleted owners, transitively (foreground order does not matter here)."""
        while uids:
            next_uids: set[str] = set()
            async with self._lock:
                for (resource, _namespace, _name), obj in list(self.objects.items()):
                    if obj.deleted:
                        continue
                    raw = obj.raw
                    owners = {ref.get("uid") for ref in (raw.get("metadata") or {}).get("ownerReferences") or ()}
                    if not owners & uids:
                        continue
                    if (raw.get("metadata") or {}).get("finalizers"):
                        obj.patch({"metadata": {"deletionTimestamp": _now()}})
                        await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                        continue
                    last = copy.deepcopy(raw)
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": last})
                    if uid := (last.get("metadata") or {}).get("uid"):
                        next_uids.add(uid)
            uids = next_uids

    # -- responses kmock shapes differently from a real API server

    async def _serve_list(self, request: kmock_rendering.Request) -> kmock_rendering.Payload:
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        assert request.resource is not None
        api_version, kind = self._list_kind(request.resource)
        return {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": [item for item in payload["items"]
                      if matches_selector((item.get("metadata") or {}).get("labels"), selector)],
        }

    async def _serve_watch(self, request: kmock_rendering.Request) -> AsyncIterator[kmock_rendering.Payload]:
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == "ERROR":
                yield event
                return  # an API server ends the stream after an error
            if isinstance(event, dict):
                obj = event.get("object") or {}
                if not matches_selector((obj.get("metadata") or {}).get("labels"), selector):
                    continue
            yield event

    async def _serve_version(self, request: kmock_rendering.Request) -> kmock_rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and request.resource is not None and request.resource.group == "":
            payload["groupVersion"] = request.resource.version
        return payload


class JsonPatchTestFailed(ValueError):
    pass


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove/test, as far as kfn uses them."""
    doc = copy.deepcopy(document)
    for op in operations:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise JsonPatchTestFailed(f"{op['path']} is {current!r}, not {op.get('value')!r}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise KeyError(op["path"])
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise ValueError(f"unsupported JSON Patch operation {kind!r}")
    return doc


def _check_precondition(meta: Any, current: Mapping[str, Any]) -> None:
    wanted = meta.get("resourceVersion") if isinstance(meta, dict) else None
    have = (current.get("metadata") or {}).get("resourceVersion")
    if wanted and wanted != have:
        raise kmock.KubernetesError(status=409, reason="Conflict", message=(
            f"the object has been modified (resourceVersion {wanted} != {have}); "
            "please apply your changes to the latest version and try again"))


def _resource_str(resource: kmock.resource | None) -> str:
    assert resource is not None
    if resource.group:
        return f"{resource.group}/{resource.version}/{resource.plural}"
    return f"{resource.version}/{resource.plural}"


def _status_response(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                      "code": code, "reason": reason, "message": message}, status=code)


def declare_resources(cluster: Cluster) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock uses importlib.resources.read_binary
        cluster.resources.load_bundled()
    cluster.resources[FUNCTIONS] = kmock.ResourceInfo(
        kind=naming.KIND, singular=naming.SINGULAR, namespaced=True, shortnames=set(naming.SHORT_NAMES),
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})


def write_kubeconfig(path: Path, url: str, *, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Path]]:
    """An emulated API server on 127.0.0.1 and a kubeconfig pointing at it."""
    cluster = Cluster()
    declare_resources(cluster)
    async with cluster, kmock.Server(cluster, host="127.0.0.1") as server:
        url = f"http://{server.host}:{server.port}"
        cluster.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        yield cluster, cluster.kubeconfig


def env_with_kubeconfig(kubeconfig: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


async def run_command(*argv: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a command to its end (killed by PID after `timeout` seconds): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -- Functions in the cluster -----------------------------------------------------------------------

async def create_function(cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    """Create a Function from its manifest, in its namespace ("default" if it names none), as kubectl
    would; asserts the API server's 201 and returns the stored object."""
    namespace = body["metadata"].get("namespace") or naming.DEFAULT_NAMESPACE
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    path = f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/{namespace}/{naming.PLURAL}"
    async with cluster.post(path, json=body) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


def deployment(cluster: Cluster, name: str = "hello") -> dict[str, Any] | None:
    """The Deployment of function `name` in the default namespace, if there is one."""
    return cluster.object(DEPLOYMENTS, naming.DEFAULT_NAMESPACE, name)


def function_status(cluster: Cluster, name: str = "hello") -> dict[str, Any]:
    """The status of Function `name` in the default namespace (empty if none)."""
    return (cluster.object(FUNCTIONS, naming.DEFAULT_NAMESPACE, name) or {}).get("status") or {}


def ready_condition(cluster: Cluster, name: str = "hello") -> dict[str, Any] | None:
    """The Ready condition of Function `name` in the default namespace, if it has one."""
    return next((c for c in function_status(cluster, name).get("conditions") or () if c["type"] == "Ready"), None)


def deployment_manifest(name: str, replicas: int) -> dict[str, Any]:
    """A function's Deployment in `default` as the operator would label it, at `replicas`."""
    labels = naming.function_labels(name)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "function", "image": "x"}]}}}}


async def post(cluster: Cluster, path: str, body: dict[str, Any]) -> None:
    """Create `body` at `path` on the emulated API (201 asserted)."""
    async with cluster.post(path, json=body) as r:
        assert r.status == 201, await r.text()
