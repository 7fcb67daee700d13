"""A stand-in for the Deployment controller and the kubelet.

kmock stores Deployments but nothing runs them. `Kubelet` watches kfn's Deployments through the
emulated API (HTTP, like a real node would) and, for each wanted replica, runs the function's
container as a local process: `python -m kfn_runtime` with the container's KFN_* environment,
listening on its own loopback address (127.0.0.2, 127.0.0.3, …) and one shared port, with the
code written from the ConfigMap volume. It then writes what a cluster would:

- a Pod per replica (the template's labels and containers), whose status gets the pod's address
  and, once its readinessProbe path (/_/ready) answers 200, the Ready condition;
- the Deployment's status (replicas, readyReplicas, updatedReplicas, availableReplicas).

Scale-down marks the pod deleted (deletionTimestamp) before it sends SIGTERM, and SIGKILL after
the pod's terminationGracePeriodSeconds; the Pod object goes once the process has exited. A
changed pod template replaces pods surge-first (maxUnavailable 0), like the rolling update kfn's
Deployments ask for.

Not emulated: scheduling, resources/limits, securityContext, init containers (requirements are
not installed), liveness probes, image pulls.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kfn.core import naming

logger = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtime-images" / "python"


@dataclass
class Pod:
    name: str
    namespace: str
    deployment: str
    template_hash: str
    address: str
    process: asyncio.subprocess.Process
    ready: bool = False
    terminating: bool = False
    grace: float = 30.0
    probe: asyncio.Task[None] | None = None
    log_path: Path | None = None
    published: tuple[bool, bool] | None = None   # (ready, terminating) last written to the API


@dataclass
class _Deployment:
    namespace: str
    name: str
    function: str
    body: dict[str, Any]
    pods: list[Pod] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    published_status: dict[str, Any] | None = None


def _template_hash(deployment: dict[str, Any]) -> str:
    template = (deployment.get("spec") or {}).get("template") or {}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class Kubelet:
    """Runs kfn Deployments of the emulated cluster at `api_url` as local processes."""

    def __init__(self, api_url: str, *, workdir: Path, port: int = naming.RUNTIME_PORT,
                 first_address: int = 2, probe_interval: float = 0.05) -> None:
        self.api_url = api_url.rstrip("/")
        self.workdir = workdir
        self.port = port
        self._free = [f"127.0.0.{i}" for i in range(first_address, 255)]
        self._probe_interval = probe_interval
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._names = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self.started_pods = 0
        self.stopped_pods = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._watch(), name="kubelet-watch")

    async def close(self) -> None:
        """Stop watching, then stop every pod (SIGTERM, SIGKILL after 5 s); waits for all."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        pods = [pod for d in self._deployments.values() for pod in d.pods]
        await asyncio.gather(*(self._kill(pod, grace=5.0) for pod in pods), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def pods(self, name: str, namespace: str = "default") -> list[Pod]:
        d = self._deployments.get((namespace, name))
        return list(d.pods) if d else []

    # ---- watching

    async def _watch(self) -> None:
        assert self._session is not None
        selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        while True:
            try:
                async with self._session.get(f"{self.api_url}/apis/apps/v1/deployments",
                                             params={"watch": "true", "labelSelector": selector},
                                             timeout=aiohttp.ClientTimeout(total=None)) as response:
                    async for line in response.content:
                        if line.strip():
                            event = json.loads(line)
                            self._spawn(self._on_event(event["type"], event["object"]))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the emulator's API restarting: watch again
                logger.warning("kubelet watch failed: %s", e)
                await asyncio.sleep(0.2)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_event(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        d = self._deployments.get(key)
        if d is None:
            function = (meta.get("labels") or {}).get(naming.LABEL_FUNCTION, meta["name"])
            d = self._deployments[key] = _Deployment(namespace=key[0], name=key[1], function=function, body=body)
        seen = int(d.body["metadata"].get("resourceVersion") or 0)
        if kind != "DELETED" and int(meta.get("resourceVersion") or 0) < seen:
            return  # stale: a later version was already seen
        d.body = body
        try:
            async with d.lock:
                if kind == "DELETED":
                    await self._sync(d, wanted=0)
                    self._deployments.pop(key, None)
                else:
                    await self._sync(d, wanted=int((body.get("spec") or {}).get("replicas") or 0))
        except Exception:
            logger.exception("kubelet: syncing %s failed", key)

    # ---- the controller's job: pods to match replicas and template

    async def _sync(self, d: _Deployment, *, wanted: int) -> None:
        current_hash = _template_hash(d.body)
        live = [p for p in d.pods if not p.terminating]
        new = [p for p in live if p.template_hash == current_hash]
        old = [p for p in live if p.template_hash != current_hash]
        # Surge first: start the pods of the new template, retire old ones as new ones get ready.
        for _ in range(max(0, wanted - len(new))):
            await self._start_pod(d, current_hash)
        new = [p for p in d.pods if not p.terminating and p.template_hash == current_hash]
        # Scale-down removes pods that are not ready first, then the youngest (like ReplicaSets).
        order = {id(p): i for i, p in enumerate(new)}
        for pod in sorted(new, key=lambda p: (p.ready, -order[id(p)]))[:max(0, len(new) - wanted)]:
            self._terminate(d, pod)
        ready_new = sum(1 for p in new if p.ready and not p.terminating)
        still_needed = max(0, wanted - ready_new)   # old pods kept while new ones get ready
        for pod in old[:max(0, len(old) - still_needed)]:
            self._terminate(d, pod)
        await self._publish(d)

    async def _start_pod(self, d: _Deployment, template_hash: str) -> None:
        template = d.body["spec"]["template"]
        container = template["spec"]["containers"][0]
        name = f"{d.name}-{template_hash[:5]}-{next(self._names)}"
        address = self._free.pop(0)
        root = self.workdir / name
        code_dir, deps_dir = root / "code", root / "deps"
        code_dir.mkdir(parents=True)
        deps_dir.mkdir()
        for volume in template["spec"].get("volumes") or ():
            if volume.get("name") == "code" and "configMap" in volume:
                data = await self._get(f"/api/v1/namespaces/{d.namespace}/configmaps/{volume['configMap']['name']}")
                for file_name, content in (data.get("data") or {}).items():
                    (code_dir / file_name).write_text(content)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        for var in container.get("env") or ():
            if "value" in var:
                env[var["name"]] = var["value"]
        env.update({
            "KFN_HOST": address, "KFN_PORT": str(self.port),
            "KFN_CODE_DIR": str(code_dir), "KFN_DEPS_DIR": str(deps_dir),
            "PYTHONPATH": str(RUNTIME_DIR), "PYTHONUNBUFFERED": "1",
        })
        log_path = root / "pod.log"
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, once per pod
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kfn_runtime", env=env, cwd=str(root),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
        pod = Pod(name=name, namespace=d.namespace, deployment=d.name, template_hash=template_hash, address=address,
                  process=process, grace=float(template["spec"].get("terminationGracePeriodSeconds") or 30),
                  log_path=log_path)
        d.pods.append(pod)
        self.started_pods += 1
        logger.info("kubelet: started pod %s on %s:%d (pid %d)", name, address, self.port, process.pid)
        pod.probe = asyncio.create_task(self._probe(d, pod))
        self._background.add(pod.probe)
        pod.probe.add_done_callback(self._background.discard)

    async def _probe(self, d: _Deployment, pod: Pod) -> None:
        """The readinessProbe: /_/ready every `probe_interval` until it answers 200 (or the pod dies)."""
        assert self._session is not None
        url = f"http://{pod.address}:{self.port}/_/ready"
        while pod.process.returncode is None and not pod.terminating:
            try:
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        pod.ready = True
                        logger.info("kubelet: pod %s ready", pod.name)
                        break
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(self._probe_interval)
        async with d.lock:
            if pod.ready:
                # A new pod is ready: old-template pods may go now.
                await self._sync(d, wanted=int((d.body.get("spec") or {}).get("replicas") or 0))
            else:
                await self._publish(d)

    def _terminate(self, d: _Deployment, pod: Pod) -> None:
        if pod.terminating:
            return
        pod.terminating = True
        pod.ready = False
        self._spawn(self._reap(d, pod))

    async def _reap(self, d: _Deployment, pod: Pod) -> None:
        async with d.lock:
            await self._publish(d)   # watchers see the pod terminating before it gets SIGTERM
        await self._kill(pod, grace=pod.grace)
        async with d.lock:
            if pod in d.pods:
                d.pods.remove(pod)
            self._free.append(pod.address)
            await self._delete_pod(pod)
            await self._publish(d)

    async def _kill(self, pod: Pod, *, grace: float) -> None:
        logger.info("kubelet: stopping pod %s", pod.name)
        if pod.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                pod.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(pod.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    pod.process.kill()
                await pod.process.wait()
            self.stopped_pods += 1
            logger.info("kubelet: pod %s exited with %s", pod.name, pod.process.returncode)
        if pod.process.returncode == 0:  # keep a failed pod's directory and log for debugging
            shutil.rmtree(self.workdir / pod.name, ignore_errors=True)

    # ---- what the cluster reports

    async def _publish(self, d: _Deployment) -> None:
        # Only what changed is written, like real controllers: a status write is a watch event,
        # and this kubelet reacts to Deployment events.
        for pod in d.pods:
            state = (pod.ready, pod.terminating)
            if state != pod.published:
                await self._write_pod(d, pod)
                pod.published = state
        await self._write_status(d)

    def _pod_path(self, pod: Pod) -> str:
        return f"/api/v1/namespaces/{pod.namespace}/pods"

    async def _write_pod(self, d: _Deployment, pod: Pod) -> None:
        assert self._session is not None
        template = d.body["spec"]["template"]
        status = {
            "phase": "Running",
            "podIP": pod.address,
            "podIPs": [{"ip": pod.address}],
            "conditions": [{"type": "Ready", "status": "True" if pod.ready and not pod.terminating else "False"}],
        }
        metadata: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace,
                                    "labels": dict((template.get("metadata") or {}).get("labels") or {})}
        if pod.terminating:
            metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        url = f"{self.api_url}{self._pod_path(pod)}"
        if pod.published is None:
            # The pod listens on this kubelet's port, whatever port the template names.
            containers = [{**c, "ports": [{**p, "containerPort": self.port} for p in c.get("ports") or ()]}
                          for c in template["spec"]["containers"]]
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                    "spec": {"containers": containers}, "status": status}
            async with self._session.post(url, json=body) as r:
                r.raise_for_status()
            return
        # Status first: a deletionTimestamp ends the emulated pod (it has no finalizer to keep it).
        for path, patch in ((f"{url}/{pod.name}/status", {"status": status}),
                            (f"{url}/{pod.name}", {"metadata": metadata})):
            async with self._session.patch(path, json=patch,
                                           headers={"Content-Type": "application/merge-patch+json"}) as r:
                if r.status != 404:
                    r.raise_for_status()

    async def _delete_pod(self, pod: Pod) -> None:
        assert self._session is not None
        async with self._session.delete(f"{self.api_url}{self._pod_path(pod)}/{pod.name}") as r:
            if r.status not in (200, 202, 404):
                r.raise_for_status()

    async def _write_status(self, d: _Deployment) -> None:
        current_hash = _template_hash(d.body)
        live = [p for p in d.pods if not p.terminating]
        ready = sum(1 for p in live if p.ready)
        status = {
            "observedGeneration": d.body["metadata"].get("generation"),
            "replicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": sum(1 for p in live if p.template_hash == current_hash),
            "conditions": [{"type": "Available", "status": "True" if ready or not live else "False",
                            "reason": "MinimumReplicasAvailable"}],
        }
        if status == d.published_status:
            return
        d.published_status = status
        assert self._session is not None
        url = f"{self.api_url}/apis/apps/v1/namespaces/{d.namespace}/deployments/{d.name}/status"
        async with self._session.patch(url, json={"status": status},
                                       headers={"Content-Type": "application/merge-patch+json"}) as r:
            if r.status not in (200, 404):
                r.raise_for_status()

    async def _get(self, path: str) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(f"{self.api_url}{path}") as r:
            r.raise_for_status()
            return await r.json()
