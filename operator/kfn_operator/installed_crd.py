"""The installed Function CRD, checked once at the operator's start against the one it was built with.

Helm installs the chart's `crds/` once and never upgrades them: after `helm upgrade` the operator
may be newer than the CRD, and the API server then drops the fields added since (pruning). The
operator reads the installed CRD, asks `kfn.core.crd.installed_problem` whether it is this build's,
and when it is not logs a warning and posts a Warning Event about the CRD in the operator's
namespace (`kubectl get events -n NAMESPACE` shows it). It goes on running either way: an older
CRD still serves every Function whose fields it knows.
"""
from __future__ import annotations

import asyncio
import datetime
import logging

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core import crd, naming
from kfn.kube.resources import manifest

logger = logging.getLogger(__name__)

REASON_OUTDATED = "CRDOutdated"
REPORTER = "kfn-operator"
# The whole check (a read and maybe an Event) gives up after this, logging why.
CHECK_TIMEOUT = 10.0


async def check(api: client.ApiClient, *, event_namespace: str, reporter: str = REPORTER) -> str | None:
    """Read the installed CRD and report it if it is not this build's (a warning, and a Warning
    Event in `event_namespace` from `reporter`); returns the problem, or None. Runs CHECK_TIMEOUT
    at most, and never raises: a CRD that cannot be read (a namespaced install has no permission
    for it) or an Event that cannot be posted is logged and the check ends."""
    try:
        return await asyncio.wait_for(_check(api, event_namespace=event_namespace, reporter=reporter),
                                      CHECK_TIMEOUT)
    except TimeoutError:
        logger.info("could not check the installed CRD %s within %.0f s", naming.CRD_NAME, CHECK_TIMEOUT)
    except (ApiException, OSError) as e:
        logger.info("could not check the installed CRD %s: %s", naming.CRD_NAME, _why(e))
    return None


async def _check(api: client.ApiClient, *, event_namespace: str, reporter: str) -> str | None:
    installed = manifest(await client.ApiextensionsV1Api(api).read_custom_resource_definition(naming.CRD_NAME))
    problem = crd.installed_problem(installed)
    if problem is None:
        logger.info("the installed CRD %s is revision %d, this operator's", naming.CRD_NAME, crd.REVISION)
        return None
    logger.warning("%s", problem)
    try:
        await _post_event(api, installed, problem, namespace=event_namespace, reporter=reporter)
    except (ApiException, OSError) as e:
        logger.info("could not post an Event about the CRD %s: %s", naming.CRD_NAME, _why(e))
    return problem


async def _post_event(api: client.ApiClient, installed: dict[str, object], message: str, *, namespace: str,
                      reporter: str) -> None:
    meta = installed.get("metadata") or {}
    assert isinstance(meta, dict)
    now = datetime.datetime.now(datetime.UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{naming.CRD_NAME}.", namespace=namespace),
        involved_object=client.V1ObjectReference(api_version="apiextensions.k8s.io/v1",
                                                 kind="CustomResourceDefinition", name=naming.CRD_NAME,
                                                 uid=meta.get("uid")),
        reason=REASON_OUTDATED, message=message[:1024], type="Warning",
        first_timestamp=now, last_timestamp=now, count=1,
        source=client.V1EventSource(component=reporter), reporting_component=reporter)
    await client.CoreV1Api(api).create_namespaced_event(namespace, event)


def _why(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return str(error) or type(error).__name__
