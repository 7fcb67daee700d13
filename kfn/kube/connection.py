"""Credentials and the API client: loaded once per process, shared by everything in it.

In a pod the service account's token and CA (the token file is re-read as it rotates); elsewhere
$KUBECONFIG or ~/.kube/config. kopf, which keeps its own HTTP client for the operator's watches,
is handed the same credentials (`connection_info`) instead of loading them a second way.
"""
from __future__ import annotations

import os
from typing import Any

from kubernetes.aio import client, config

ENV_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"


def _kubeconfig_paths() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def configuration_problem() -> str | None:
    """Why no Kubernetes client can be configured here, or None if one probably can."""
    if os.environ.get(ENV_SERVICE_HOST):
        return None
    paths = _kubeconfig_paths()
    if not any(os.path.exists(p) for p in paths.split(os.pathsep) if p):
        return f"not in a pod ({ENV_SERVICE_HOST} is unset) and no kubeconfig at {paths}"
    return None


async def load_configuration() -> client.Configuration:
    """The cluster's address and credentials; FileNotFoundError or the loader's error if none.

    Returns after reading files (and, for kubeconfigs with an exec plugin, running it once).
    """
    configuration = client.Configuration()
    if os.environ.get(ENV_SERVICE_HOST):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    if (problem := configuration_problem()) is not None:
        raise FileNotFoundError(problem)
    # $KUBECONFIG is read now, not when the library was imported.
    await config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=_kubeconfig_paths(), client_configuration=configuration)
    return configuration


async def connect() -> client.ApiClient:
    """An API client for this process: close it (or use `async with`) when done."""
    return client.ApiClient(await load_configuration())


async def connection_info(configuration: client.Configuration) -> dict[str, Any]:
    """The keyword arguments of a `kopf.ConnectionInfo` for the same cluster and credentials.

    A rotated service account token is read again here (the client's refresh hook runs).
    """
    header = (await configuration.get_api_key_with_prefix("BearerToken")
              or await configuration.get_api_key_with_prefix("authorization"))
    scheme: str | None = None
    token: str | None = None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return {
        "server": configuration.host,
        "ca_path": configuration.ssl_ca_cert,
        "insecure": not configuration.verify_ssl,
        "username": configuration.username or None,
        "password": configuration.password or None,
        "scheme": scheme,
        "token": token,
        "certificate_path": configuration.cert_file,
        "private_key_path": configuration.key_file,
    }
