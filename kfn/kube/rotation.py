"""Which instances of a function take requests: its serving pods, less those that just failed.

An instance is a pod's own IP, so requests go straight to pods. A pod the gateway could not talk
to leaves rotation for `failure_cooldown`; while no pod serves, a failed build of its requirements
(`kfn.kube.builds`) or the first problem a pod reports (`kfn.kube.pods`) says why.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from kfn.core.functions import FunctionRef
from kfn.core.instances import Instance, StartProblem
from kfn.kube.builds import build_problem
from kfn.kube.mirror import ClusterMirror

logger = logging.getLogger(__name__)


class Rotation:
    """The ready instances of each function, from `mirror`, cached until the mirror notifies a
    change of the function (it must be the mirror's first listener: `__init__` adds it)."""

    def __init__(self, mirror: ClusterMirror, *, failure_cooldown: float, clock: Callable[[], float]) -> None:
        self._mirror = mirror
        self._failure_cooldown = failure_cooldown
        self._clock = clock
        self._failed: dict[tuple[FunctionRef, str], float] = {}  # (function, pod) → out of rotation until
        self._cache: dict[FunctionRef, list[Instance]] = {}
        mirror.add_listener(self._forget)

    def _forget(self, ref: FunctionRef) -> None:
        self._cache.pop(ref, None)

    def ready(self, ref: FunctionRef) -> list[Instance]:
        """The function's serving pods as instances, by pod name, without those in their cooldown."""
        now = self._clock()
        expired = [key for key, until in self._failed.items() if key[0] == ref and until <= now]
        for key in expired:
            del self._failed[key]
            self._cache.pop(ref, None)
        cached = self._cache.get(ref)
        if cached is not None:
            return list(cached)
        fn = self._mirror.functions.get(ref)
        if fn is None:
            return []
        instances = [
            Instance(function=ref, id=pod.name, host=pod.ip, port=pod.port, capacity=fn.spec.concurrency)
            for pod in self._mirror.pods.values()
            if pod.function == ref and self._mirror.probes.serving(pod) and (ref, pod.name) not in self._failed
            and pod.ip is not None
        ]
        instances.sort(key=lambda i: i.id)
        self._cache[ref] = instances
        return list(instances)

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """While none of the function's pods serves: its failed build (the operator's word in its
        status, `kfn.kube.builds`), else the first problem a pod of it reports."""
        if self.ready(ref):
            return None
        fn = self._mirror.functions.get(ref)
        if fn is not None and (failed := build_problem(fn)) is not None:
            return failed
        for pod in self._mirror.pods.values():
            if pod.function == ref and not pod.terminating and pod.problem:
                return pod.problem
        return None

    def report_failure(self, instance: Instance, *, error: str) -> None:
        """Take `instance` out of rotation for `failure_cooldown` and tell the listeners."""
        logger.warning("instance %s of %s failed (%s): out of rotation for %.0fs",
                       instance.id, instance.function, error, self._failure_cooldown)
        self._failed[(instance.function, instance.id)] = self._clock() + self._failure_cooldown
        self._mirror.notify({instance.function})
