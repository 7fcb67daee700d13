"""`kfn logs --build` on Kubernetes: the output of the pods of the Job a Function's status names (kfn.kube.logs)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.aio import client

from kfn.core.functions import FunctionRef
from kfn.core.instances import NoBuild
from kfn.kube import logs as kube_logs
from tests.support.functions import make_function

HELLO = FunctionRef("team", "hello")
JOB = "kfn-build-0123456789ab"


def build_pod(name: str) -> client.V1Pod:
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name, namespace="team"),
                        spec=client.V1PodSpec(containers=[client.V1Container(name="build")]),
                        status=client.V1PodStatus(phase="Failed"))


class FakeCore:
    """The two CoreV1Api calls a build's logs take, answered from `pods` and `texts`."""

    def __init__(self, pods: list[client.V1Pod], texts: dict[str, str]) -> None:
        self.pods, self.texts = pods, texts
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> client.V1PodList:
        self.calls.append(("list", {"namespace": namespace, **kwargs}))
        return client.V1PodList(items=self.pods)

    async def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> str:
        self.calls.append(("read", {"name": name, "namespace": namespace, **kwargs}))
        return self.texts[name]


def mirror_of(*, job: str | None) -> Any:
    function = make_function("hello", namespace="team", requirements=["nope==0"])
    if job is not None:
        function = function.model_copy(update={"status": {"build": {"key": "deps-" + "0" * 32, "job": job,
                                                                    "state": "Failed"}}})
    return SimpleNamespace(functions={HELLO: function})


async def read(mirror: Any, ref: FunctionRef = HELLO, tail: int = 100) -> list[str]:
    async with kube_logs.build_logs(None, mirror, ref, tail=tail, follow=False) as lines:  # type: ignore[arg-type]
        return [line async for line in lines]


async def test_the_build_logs_are_the_job_pods_output_prefixed_with_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeCore([build_pod("job-b"), build_pod("job-a")], {"job-a": "Collecting nope\nERROR: no nope\n",
                                                                "job-b": "again\n"})
    monkeypatch.setattr(kube_logs.client, "CoreV1Api", lambda api: core)
    assert await read(mirror_of(job=JOB), tail=7) == ["[job-a] Collecting nope", "[job-a] ERROR: no nope",
                                                       "[job-b] again"]
    assert core.calls[0] == ("list", {"namespace": "team", "label_selector": f"job-name={JOB}"})
    assert core.calls[1] == ("read", {"name": "job-a", "namespace": "team", "container": "build", "tail_lines": 7})


async def test_a_function_without_a_build_or_unknown_is_no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeCore([], {})
    monkeypatch.setattr(kube_logs.client, "CoreV1Api", lambda api: core)
    with pytest.raises(NoBuild, match="hello has no build"):
        await read(mirror_of(job=None))
    with pytest.raises(NoBuild, match="other has no build"):
        await read(mirror_of(job=JOB), FunctionRef("team", "other"))
    assert core.calls == []
