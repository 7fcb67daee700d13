"""The Kubernetes objects a Function is made of: pure functions from a Function to manifests.

Nothing here talks to the API. `kfn_operator.handlers` creates and patches what these return;
tests validate the output against the real Kubernetes schemas of several versions.

A Function becomes:
- a ConfigMap `NAME-code-HASH` holding inline files (content-addressed, so a code change creates
  a new ConfigMap and rolls the pods; the handler garbage-collects old ones);
- a Deployment running the runtime image, hardened for the Pod Security "restricted" profile;
- a ClusterIP Service in front of the pods (the gateway routes to pod IPs, but the Service gives
  the pods EndpointSlices and a stable in-cluster name).

Where requirements are built once (the operator has an archive store), a build Job
(`build_job`, shared by every Function of a namespace whose requirements give the same
`archive_key`) installs them into an archive, and each pod's instance fetches that archive before it
initialises the function (`build_pod_template(archive=...)`) instead of an init container running pip.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kfn.core import naming, pool
from kfn.core.codespec import DEFAULT_RUNTIME, RUNTIMES
from kfn.core.functions import MAX_TIMEOUT_SECONDS, Function
from kfn.core.instancespec import (
    ENVIRONMENTS_DIR,
    FUNCTION_VERSION,
    TERMINATION_MARGIN_SECONDS,
    Archive,
    archive_env,
    runtime_env,
    termination_grace_seconds,
)
from kfn_runtime import archive as archives
from kfn_runtime import build as building
from kfn_runtime import contract
from kfn_runtime.variables import reserved_variables

Manifest = dict[str, Any]

CONTAINER_NAME = "function"          # the instance: `python -m kfn_runtime`, whose log is the function's
ENVIRONMENTS_CONTAINER_NAME = "environments"   # a Lambda container image's environments (spec.image)
INIT_CONTAINER_NAME = "requirements"   # pip, where requirements are not built once
# The instance beside a Lambda container image is small: it only relays invocations.
HOST_RESOURCES = {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}
PORT_NAME = "http"
# A numeric non-root user: "restricted" needs runAsNonRoot, and a numeric uid lets the kubelet
# verify it without reading the image's /etc/passwd. 65532 is distroless' "nonroot".
RUN_AS_USER = 65532
# Bumped when what the builders make changes shape, so an operator upgrade rolls existing pods.
LAYOUT_VERSION = 3
# LAMBDA_RUNTIME_DIR of AWS's base images.
IMAGE_RUNTIME_DIR = "/var/runtime"
# The pip install mode of the runtime image, run as the init container.
REQUIREMENTS_COMMAND = ("python", "-m", contract.REQUIREMENTS_MODULE)
# Where requirements are built once: the build Job makes the archive (the instance fetches it itself).
BUILD_COMMAND = ("python", "-m", "kfn_runtime.build")
BUILD_CONTAINER_NAME = "build"
# A finished build Job (and its pod, with the installer's log) is kept this long, then deleted by
# Kubernetes; while a failed one exists its key is not built again.
BUILD_JOB_TTL_SECONDS = 3600

COMPONENT_FUNCTION = naming.COMPONENT_FUNCTION
COMPONENT_CODE = "code"
COMPONENT_BUILD = "build"
COMPONENT_POOL = naming.COMPONENT_POOL
# A pool instance may become any function, so it may drain as long as the longest one: the pod
# deleter passes the function's own grace period, this is the ceiling.
POOL_GRACE_SECONDS = math.ceil(MAX_TIMEOUT_SECONDS + contract.DEFAULT_DRAIN_EXTRA) + TERMINATION_MARGIN_SECONDS

DEFAULT_IMAGE_REGISTRY = "ghcr.io/kfn-dev"
ENV_RUNTIME_IMAGES = "KFN_RUNTIME_IMAGES"
# Secrets (of the function's namespace) the kubelet pulls function, pool and build images with:
# names separated by spaces or commas, as the chart's functions.imagePullSecrets gives them.
ENV_IMAGE_PULL_SECRETS = "KFN_IMAGE_PULL_SECRETS"
# A Secret's name is a DNS subdomain.
MAX_SECRET_NAME_LENGTH = 253
# Where init containers install spec.requirements from: the chart passes its values here, and the
# operator hands them to pip in the pod as pip's own variables (space-separated lists).
ENV_PIP = {"index_url": "KFN_PIP_INDEX_URL", "extra_index_urls": "KFN_PIP_EXTRA_INDEX_URL",
           "find_links": "KFN_PIP_FIND_LINKS", "trusted_hosts": "KFN_PIP_TRUSTED_HOST"}
PIP_ENV = {"index_url": "PIP_INDEX_URL", "extra_index_urls": "PIP_EXTRA_INDEX_URL",
           "find_links": "PIP_FIND_LINKS", "trusted_hosts": "PIP_TRUSTED_HOST"}


def _default_images() -> dict[str, str]:
    # "python3.12" → "ghcr.io/kfn-dev/runtime-python:3.12", "nodejs20" → "ghcr.io/kfn-dev/runtime-nodejs:20"
    out = {}
    for runtime in RUNTIMES:
        language = runtime.rstrip("0123456789.")
        out[runtime] = f"{DEFAULT_IMAGE_REGISTRY}/runtime-{language}:{runtime[len(language):]}"
    return out


@dataclass(frozen=True)
class PipSettings:
    """The package index (and other sources) init containers install requirements from."""

    index_url: str = ""
    extra_index_urls: str = ""
    find_links: str = ""
    trusted_hosts: str = ""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> PipSettings:
        return cls(**{key: " ".join(env.get(var, "").split()) for key, var in ENV_PIP.items()})

    def _set(self) -> list[tuple[str, str]]:
        return [(key, value) for key, value in (
            ("index_url", self.index_url), ("extra_index_urls", self.extra_index_urls),
            ("find_links", self.find_links), ("trusted_hosts", self.trusted_hosts)) if value]

    def env(self) -> list[Manifest]:
        """The init container's env entries for pip (none for what is not set)."""
        return [{"name": PIP_ENV[key], "value": value} for key, value in self._set()]

    def sources(self) -> list[str]:
        """What is set, as `name=value` strings: part of an archive's key (another index, another build)."""
        return [f"{key}={value}" for key, value in self._set()]


@dataclass(frozen=True)
class RuntimeImages:
    """Which image runs each spec.runtime; spec.image overrides it per function."""

    images: Mapping[str, str] = field(default_factory=_default_images)
    pull_policy: str = "IfNotPresent"
    # imagePullSecrets of every pod the operator makes (Secrets in the function's own namespace).
    pull_secrets: tuple[str, ...] = ()

    def pull_secrets_field(self) -> dict[str, list[Manifest]]:
        """A pod spec's imagePullSecrets entry, or nothing when there are none (so that pods, and
        the spec hashes over them, stay as they were without any)."""
        return {"imagePullSecrets": [{"name": name} for name in self.pull_secrets]} if self.pull_secrets else {}

    def image_for(self, fn: Function) -> str:
        """The image of the instance's container: the runtime's (for an image function, the
        default runtime's, which hosts the instance beside the function's own image)."""
        runtime = DEFAULT_RUNTIME if fn.spec.image else fn.spec.runtime
        try:
            return self.images[runtime]
        except KeyError:
            raise ValueError(f"no runtime image configured for {runtime!r}") from None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, *,
                         overrides: Mapping[str, str] | None = None) -> RuntimeImages:
        """Defaults, then $KFN_RUNTIME_IMAGES (JSON object or `rt=image,rt=image`), then `overrides`;
        the pull secrets from $KFN_IMAGE_PULL_SECRETS. ValueError when either is malformed."""
        env = os.environ if env is None else env
        images = _default_images()
        images.update(parse_image_map(env.get(ENV_RUNTIME_IMAGES, "")))
        images.update(overrides or {})
        return cls(images=images, pull_secrets=parse_pull_secrets(env.get(ENV_IMAGE_PULL_SECRETS, "")))


_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_pull_secrets(text: str) -> tuple[str, ...]:
    """`regcred other` or `regcred,other` → ("regcred", "other") (repeats dropped, order kept);
    ValueError naming a name that is not a Secret's (a DNS subdomain)."""
    names: list[str] = []
    for name in text.replace(",", " ").split():
        if len(name) > MAX_SECRET_NAME_LENGTH or not _SECRET_NAME.match(name):
            raise ValueError(f"${ENV_IMAGE_PULL_SECRETS}: {name[:80]!r} is not a Secret name "
                             "(lowercase letters, digits, '-' and '.')")
        if name not in names:
            names.append(name)
    return tuple(names)


def parse_image_map(text: str) -> dict[str, str]:
    """`{"python3.12": "img"}` or `python3.12=img,python3.13=img2` → a dict; ValueError when malformed."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
            raise ValueError("runtime images must be a JSON object of runtime → image name")
        return dict(value)
    out: dict[str, str] = {}
    for item in text.split(","):
        runtime, eq, image = item.strip().partition("=")
        if not eq or not runtime.strip() or not image.strip():
            raise ValueError(f"expected RUNTIME=IMAGE (got {item.strip()!r})")
        out[runtime.strip()] = image.strip()
    return out


def labels(fn: Function, component: str) -> dict[str, str]:
    return {**naming.function_labels(fn.name), naming.LABEL_COMPONENT: component}


def selector(fn: Function) -> dict[str, str]:
    """What the Deployment and Service select pods by. Immutable once created: keep it minimal."""
    return {naming.LABEL_FUNCTION: fn.name, naming.LABEL_COMPONENT: COMPONENT_FUNCTION}


def code_configmap_name(fn: Function) -> str | None:
    """The ConfigMap with the function's code: its own for inline files, the user's for source.configMap."""
    source = fn.spec.source
    if source is None:
        return None
    if source.configMap is not None:
        return source.configMap.name
    return f"{fn.name}-code-{fn.code_hash()}"


def build_code_configmap(fn: Function) -> Manifest | None:
    """The ConfigMap holding inline files, or None when the code lives elsewhere."""
    if fn.spec.source is None or fn.spec.source.files is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": code_configmap_name(fn),
            "namespace": fn.namespace,
            "labels": labels(fn, COMPONENT_CODE),
            "annotations": {naming.ANNOTATION_CODE_HASH: fn.code_hash()},
        },
        # Never edited: a new hash is a new ConfigMap, so running pods keep a consistent view.
        "immutable": True,
        "data": dict(fn.spec.source.files),
    }


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _runtime_env(fn: Function, *, region: str) -> list[Manifest]:
    return [{"name": k, "value": v} for k, v in runtime_env(fn, region=region).items()]


def _image_env(fn: Function, *, region: str) -> list[Manifest]:
    """A Lambda container image's environment: Lambda's reserved variables, then spec.env. The
    image keeps its own PATH and the rest of its ENV; each environment's log stream name comes
    from the launcher."""
    reserved = reserved_variables(function_name=fn.name, version=FUNCTION_VERSION,
                                  memory_mb=fn.spec.resources.memory_limit_mb, region=region, handler=fn.spec.handler,
                                  task_root=contract.DEFAULT_CODE_DIR, runtime_dir=IMAGE_RUNTIME_DIR)
    return [*({"name": k, "value": v} for k, v in reserved.items()),
            *(v.model_dump(mode="json", exclude_none=True) for v in fn.spec.env)]


def deployed_hash(fn: Function, *, images: RuntimeImages, pip: PipSettings = PipSettings(),
                  region: str, archive: Archive | None = None) -> str:
    """A digest of everything the Deployment is built from: the spec, the operator's settings (an
    upgrade that changes the runtime image rolls the pods, too) and the archive its pods fetch."""
    parts: list[Any] = [fn.spec_hash(), images.image_for(fn), images.pull_policy, pip.env(), region, LAYOUT_VERSION]
    if archive is not None:
        parts.append(list(archive))
    if images.pull_secrets:
        # Only when set: an upgrade that adds none leaves every Deployment's hash as it was.
        parts.append(["pull-secrets", *images.pull_secrets])
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def archive_key(fn: Function, *, images: RuntimeImages, pip: PipSettings) -> str:
    """The key of the archive of `fn`'s requirements: equal for every Function installing the same
    requirements for the same runtime in the same image from the same sources."""
    return archives.deps_key(runtime=fn.spec.runtime, image=images.image_for(fn),
                             requirements=fn.spec.requirements, sources=pip.sources())


def build_job_name(key: str) -> str:
    """`kfn-build-` and 12 hex digits of the key: one Job per archive and namespace."""
    return f"kfn-build-{key[len(archives.KEY_PREFIX):len(archives.KEY_PREFIX) + 12]}"


def _pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_job(fn: Function, key: str, *, images: RuntimeImages, pip: PipSettings, archive_url: str, token: str,
              timeout: int, resources: Mapping[str, Any]) -> Manifest:
    """The Job that installs `fn`'s requirements once and stores them as archive `key` at
    `archive_url` (this archive's URL) with `token` (its put token). It belongs to no Function:
    every Function of the namespace with this key waits for it. One attempt, `timeout` seconds at
    most; its pod's termination message says why it failed."""
    job_labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_COMPONENT: COMPONENT_BUILD,
                  naming.LABEL_ARCHIVE: key}
    container: Manifest = {
        "name": BUILD_CONTAINER_NAME,
        "image": images.image_for(fn),
        "imagePullPolicy": images.pull_policy,
        "command": list(BUILD_COMMAND),
        "env": [
            {"name": contract.ENV_REQUIREMENTS, "value": "\n".join(fn.spec.requirements)},
            {"name": contract.ENV_RUNTIME, "value": fn.spec.runtime},
            {"name": building.ENV_KEY, "value": key},
            {"name": building.ENV_URL, "value": archive_url},
            {"name": building.ENV_TOKEN, "value": token},
            # pip writes caches and build files under HOME; the root filesystem is read-only.
            {"name": "HOME", "value": "/tmp"},
            {"name": "PIP_DISABLE_PIP_VERSION_CHECK", "value": "1"},
            *pip.env(),
        ],
        "resources": {kind: dict(values) for kind, values in resources.items()},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": build_job_name(key),
            "namespace": fn.namespace,
            # The Function that asked first (for people reading the Job; others may wait for it too).
            "labels": {**job_labels, naming.LABEL_FUNCTION: fn.name},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout,
            "ttlSecondsAfterFinished": BUILD_JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": job_labels},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    "restartPolicy": "Never",
                    "securityContext": _pod_security(),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **images.pull_secrets_field(),
                },
            },
        },
    }


def _init_container(fn: Function, *, image: str, images: RuntimeImages, pip: PipSettings) -> Manifest:
    """What runs before the instance where requirements are not built once: pip installing spec.requirements."""
    return {
        "name": INIT_CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "command": list(REQUIREMENTS_COMMAND),
        "env": [
            {"name": contract.ENV_REQUIREMENTS, "value": "\n".join(fn.spec.requirements)},
            {"name": contract.ENV_DEPS_DIR, "value": contract.DEFAULT_DEPS_DIR},
            # pip writes caches and build files under HOME; the root filesystem is read-only.
            {"name": "HOME", "value": "/tmp"},
            {"name": "PIP_NO_CACHE_DIR", "value": "1"},
            {"name": "PIP_DISABLE_PIP_VERSION_CHECK", "value": "1"},
            *pip.env(),
        ],
        "resources": {"requests": dict(fn.spec.resources.requests), "limits": dict(fn.spec.resources.limits)},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "deps", "mountPath": contract.DEFAULT_DEPS_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _probes() -> Manifest:
    return {
        # Readiness is polled every second: scale-from-zero waits on it.
        "readinessProbe": {
            "httpGet": {"path": contract.PATH_READY, "port": PORT_NAME},
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": contract.PATH_HEALTH, "port": PORT_NAME},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
        },
    }


def _instance_container(image: str, *, images: RuntimeImages, env: list[Manifest],
                        resources: Mapping[str, Any]) -> Manifest:
    """What every instance's container has, a Deployment's or a pool's: the runtime image on its
    port, its env and resources, the probes, the hardened security context (callers add mounts)."""
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "ports": [{"name": PORT_NAME, "containerPort": naming.RUNTIME_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        **_probes(),
        "securityContext": _container_security(),
    }


def build_pod_template(fn: Function, *, images: RuntimeImages, pip: PipSettings = PipSettings(),
                       region: str, archive: Archive | None = None) -> Manifest:
    """The pods of `fn`'s Deployment. With `archive`, the instance fetches the requirements built once
    into its deps volume before it initialises the function (no init container: the kubelet would
    notice its end only at its next relist, up to a second of every cold start); without, an init
    container runs pip when there are requirements."""
    image = images.image_for(fn)
    code_cm = code_configmap_name(fn)
    mounts: list[Manifest] = [
        {"name": "tmp", "mountPath": "/tmp"},
        # Written by the init container's pip or, with an archive, by the instance's own fetch.
        {"name": "deps", "mountPath": contract.DEFAULT_DEPS_DIR, "readOnly": not fn.spec.requirements},
    ]
    volumes: list[Manifest] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "deps", "emptyDir": {}},
    ]
    if code_cm is not None:
        mounts.append({"name": "code", "mountPath": contract.DEFAULT_CODE_DIR, "readOnly": True})
        volumes.append({"name": "code", "configMap": {"name": code_cm}})
    if fn.spec.image:
        mounts.append({"name": "environments", "mountPath": ENVIRONMENTS_DIR})
        volumes.append({"name": "environments", "emptyDir": {}})

    env = [*_runtime_env(fn, region=region),
           # An image's environments get spec.env in their own container.
           *(() if fn.spec.image else (v.model_dump(mode="json", exclude_none=True) for v in fn.spec.env))]
    if archive is not None:
        env += [{"name": k, "value": v} for k, v in archive_env(archive).items()]
    container: Manifest = {
        **_instance_container(image, images=images, env=env, resources=(
            HOST_RESOURCES if fn.spec.image else
            {"requests": dict(fn.spec.resources.requests), "limits": dict(fn.spec.resources.limits)})),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    containers = [container]
    if fn.spec.image:
        containers.append(_environments_container(fn, images=images, region=region))
    pod_spec: Manifest = {
        "containers": containers,
        # Merge patches replace lists wholesale; an explicit empty list removes an old init container.
        "initContainers": [],
        "volumes": volumes,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": termination_grace_seconds(fn),
        # Functions never talk to the Kubernetes API on kfn's behalf.
        "automountServiceAccountToken": False,
        # Service links put one env var per Service in the namespace into every container.
        "enableServiceLinks": False,
        **images.pull_secrets_field(),
    }
    if fn.spec.image:
        # The instance kills an environment that timed out, in the image's container, by its PID.
        pod_spec["shareProcessNamespace"] = True
    if fn.spec.requirements and archive is None:
        pod_spec["initContainers"] = [_init_container(fn, image=image, images=images, pip=pip)]
    return {
        "metadata": {
            "labels": labels(fn, COMPONENT_FUNCTION),
            "annotations": {
                naming.ANNOTATION_CODE_HASH: fn.code_hash(),
                naming.ANNOTATION_SPEC_HASH: deployed_hash(fn, images=images, pip=pip, region=region,
                                                           archive=archive),
            },
        },
        "spec": pod_spec,
    }


def _environments_container(fn: Function, *, images: RuntimeImages, region: str) -> Manifest:
    """The Lambda container image, unchanged, its entrypoint run by `contract.LAUNCHER`."""
    assert fn.spec.image is not None
    container: Manifest = {
        "name": ENVIRONMENTS_CONTAINER_NAME,
        "image": fn.spec.image,
        "imagePullPolicy": images.pull_policy,
        "command": ["/bin/sh", "-c", contract.LAUNCHER, "kfn-environments", ENVIRONMENTS_DIR,
                    str(fn.spec.concurrency), *fn.spec.image_command],
        "env": _image_env(fn, region=region),
        "resources": {"requests": dict(fn.spec.resources.requests), "limits": dict(fn.spec.resources.limits)},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "environments", "mountPath": ENVIRONMENTS_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    working_directory = fn.spec.imageConfig.workingDirectory if fn.spec.imageConfig else None
    if working_directory:
        container["workingDir"] = working_directory
    return container


def build_deployment(fn: Function, *, images: RuntimeImages, pip: PipSettings = PipSettings(),
                     region: str, replicas: int | None = None, archive: Archive | None = None) -> Manifest:
    """The function's Deployment (its pods fetching `archive`, when given). `replicas` is set only
    when creating it: afterwards the autoscaler owns the count, so updates built with
    `replicas=None` leave it alone."""
    spec: Manifest = {
        "selector": {"matchLabels": selector(fn)},
        "revisionHistoryLimit": 2,
        # Never fewer ready pods than asked for while rolling new code.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "progressDeadlineSeconds": 120,
        "template": build_pod_template(fn, images=images, pip=pip, region=region, archive=archive),
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": fn.name,
            "namespace": fn.namespace,
            "labels": labels(fn, COMPONENT_FUNCTION),
            "annotations": {naming.ANNOTATION_SPEC_HASH: deployed_hash(fn, images=images, pip=pip, region=region,
                                                                       archive=archive)},
        },
        "spec": spec,
    }


def pool_selector(runtime: str) -> dict[str, str]:
    """What a pool Deployment selects its pods by: idle ones only, so a pod a gateway relabels
    claimed leaves its ReplicaSet, which starts another."""
    return {naming.LABEL_COMPONENT: COMPONENT_POOL, naming.LABEL_POOL: runtime,
            naming.LABEL_POOL_STATE: naming.POOL_IDLE}


def pool_hash(deployment: Manifest) -> str | None:
    """The spec hash a pool Deployment was built with (None if it has none)."""
    value = ((deployment.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_SPEC_HASH)
    return value if isinstance(value, str) else None


def build_pool_deployment(namespace: str, runtime: str, *, images: RuntimeImages, size: int, key: str) -> Manifest:
    """The warm pool of `runtime` in `namespace` (`kfn.core.pool`): `size` generic instances of the
    runtime's image, each waiting for one signed specialisation (`key`: the namespace's pool key,
    `kfn_runtime.specialize.namespace_key`). Its pods are a plain Python or Node.js function's in
    all but their code, which comes later into the writable code volume; the spec hash annotation
    (over the pod template) tells the operator when an upgrade changed what it would build."""
    try:
        image = images.images[runtime]
    except KeyError:
        raise ValueError(f"no runtime image configured for {runtime!r}") from None
    pool_labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, **pool_selector(runtime)}
    env: list[Manifest] = [
        {"name": contract.ENV_POOL, "value": "1"},
        {"name": contract.ENV_POOL_KEY, "value": key},
        {"name": contract.ENV_POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": contract.ENV_RUNTIME, "value": runtime},
        {"name": contract.ENV_HOST, "value": "0.0.0.0"},
        {"name": contract.ENV_PORT, "value": str(naming.RUNTIME_PORT)},
        {"name": contract.ENV_CODE_DIR, "value": contract.DEFAULT_CODE_DIR},
        {"name": contract.ENV_DEPS_DIR, "value": contract.DEFAULT_DEPS_DIR},
    ]
    container: Manifest = {
        **_instance_container(image, images=images, env=env, resources={
            "requests": dict(pool.POOL_RESOURCES.requests), "limits": dict(pool.POOL_RESOURCES.limits)}),
        # Not the image's WORKDIR (the code volume): `python -m` imports from the working directory
        # first, and the function can write there (kfn_runtime refuses to start a pool instance so).
        "workingDir": "/",
        # All written once specialised: the code it is sent, the requirements it fetches.
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "deps", "mountPath": contract.DEFAULT_DEPS_DIR},
            {"name": "code", "mountPath": contract.DEFAULT_CODE_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    template: Manifest = {
        "metadata": {"labels": dict(pool_labels)},
        "spec": {
            "containers": [container],
            "volumes": [{"name": name, "emptyDir": {}} for name in ("tmp", "deps", "code")],
            "securityContext": _pod_security(),
            "terminationGracePeriodSeconds": POOL_GRACE_SECONDS,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            **images.pull_secrets_field(),
        },
    }
    digest = hashlib.sha256(json.dumps([template, LAYOUT_VERSION], sort_keys=True).encode()).hexdigest()[:10]
    template["metadata"]["annotations"] = {naming.ANNOTATION_SPEC_HASH: digest}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": pool.deployment_name(runtime),
            "namespace": namespace,
            "labels": dict(pool_labels),
            "annotations": {naming.ANNOTATION_SPEC_HASH: digest},
        },
        "spec": {
            "replicas": size,
            "selector": {"matchLabels": pool_selector(runtime)},
            "revisionHistoryLimit": 2,
            "template": template,
        },
    }


# The NetworkPolicy the operator keeps in each function namespace (kfn_operator.network_policies).
NETWORK_POLICY_NAME = "kfn-functions"
COMPONENT_NETWORK_POLICY = "network-policy"
# The label every namespace carries with its own name (Kubernetes sets it, 1.22 and later).
LABEL_NAMESPACE_NAME = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class FunctionIngress:
    """Who may reach function and warm pool pods: the gateway's pods (by their labels, in their
    namespace) and any further peers (NetworkPolicyPeer objects, as the chart's
    networkPolicy.functions.extraFrom gives them)."""

    gateway_namespace: str
    gateway_labels: Mapping[str, str]
    extra_from: tuple[Mapping[str, Any], ...] = ()


def network_policy_selector() -> Manifest:
    """The pods the function namespace's policy is about: function pods and warm pool pods (a
    claimed pool pod becomes a function pod), not build Jobs' pods (they serve nothing)."""
    return {"matchLabels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
            "matchExpressions": [{"key": naming.LABEL_COMPONENT, "operator": "In",
                                  "values": [COMPONENT_FUNCTION, COMPONENT_POOL]}]}


def build_network_policy(namespace: str, ingress: FunctionIngress) -> Manifest:
    """The NetworkPolicy `kfn-functions` of `namespace`: function and pool pods take connections on
    the instance's port from the gateway's pods (and `ingress.extra_from`) only. Ingress only: what
    functions may reach is the namespace's own policies' business."""
    peers: list[Manifest] = [{
        "namespaceSelector": {"matchLabels": {LABEL_NAMESPACE_NAME: ingress.gateway_namespace}},
        "podSelector": {"matchLabels": dict(ingress.gateway_labels)},
    }, *(dict(peer) for peer in ingress.extra_from)]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_COMPONENT: COMPONENT_NETWORK_POLICY},
        },
        "spec": {
            "podSelector": network_policy_selector(),
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": naming.RUNTIME_PORT}]}],
        },
    }
