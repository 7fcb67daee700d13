"""A real Prometheus (Debian's 2.42, runtime-images/prometheus) next to a release, scraping its gateways.

It scrapes as Prometheus Operator's ServiceMonitor of the chart does: every ready gateway pod
(one target each), the release namespace as the `namespace` target label, and `honor_labels: true`
so that the gateways' own `namespace` wins. Debian builds Prometheus without Kubernetes service
discovery, so the pods are found through DNS: a headless Service selecting the gateway pods
(`dns_sd_configs`, A records, refreshed every second). Scrapes every second, so that the
autoscaler's view lags little. `break_scrape()` points the gateway job at a closed port (up == 0
for every gateway target), as a wrong port in a scrape configuration or a NetworkPolicy would.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

import yaml

from tests.cluster import platform

IMAGE = "ghcr.io/kfn-dev/prometheus:2.42"
NAME = "prometheus"
PORT = 9090
JOB = "kfn-gateway"
GATEWAY_PODS = "prometheus-gateway-pods"   # the headless Service whose A records are the gateway pods
# A port nothing listens on: the scrape fails, Prometheus records up == 0.
CLOSED_PORT = 9


def _config(release: platform.Release, *, broken: bool) -> str:
    port = CLOSED_PORT if broken else int((release.values.get("gateway") or {}).get("port", 8080))
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": JOB,
            "honor_labels": True,
            "dns_sd_configs": [{"names": [f"{GATEWAY_PODS}.{release.namespace}.svc.cluster.local"],
                                "type": "A", "port": port, "refresh_interval": "1s"}],
            # As a ServiceMonitor labels its targets: the namespace they run in.
            "relabel_configs": [{"target_label": "namespace", "replacement": release.namespace}],
        }],
    })


def manifests(release: platform.Release) -> list[dict[str, Any]]:
    """The headless Service of the gateway pods, the two configurations (working and broken),
    the Deployment (the working one) and its Service."""
    labels = {"app.kubernetes.io/name": NAME, platform.RUN_LABEL: platform.RUN_ID}
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                  "readOnlyRootFilesystem": True}
    gateway_pods = dict(part.split("=", 1) for part in release.selector("gateway").split(","))
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": GATEWAY_PODS, "labels": labels},
         "spec": {"clusterIP": "None", "selector": gateway_pods,
                  "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{NAME}-working", "labels": labels},
         "data": {"prometheus.yml": _config(release, broken=False)}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{NAME}-broken", "labels": labels},
         "data": {"prometheus.yml": _config(release, broken=True)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "labels": labels},
         "spec": {
             "replicas": 1,
             "strategy": {"type": "Recreate"},   # never two Prometheus servers behind the Service
             "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 1,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                         "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": NAME, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                         "args": ["--config.file=/etc/prometheus/prometheus.yml",
                                  "--storage.tsdb.path=/prometheus", f"--web.listen-address=:{PORT}"],
                         "ports": [{"name": "http", "containerPort": PORT}],
                         "readinessProbe": {"httpGet": {"path": "/-/ready", "port": PORT}, "periodSeconds": 1},
                         "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                       "limits": {"memory": "512Mi"}},
                         "securityContext": restricted,
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/prometheus"},
                                          {"name": "data", "mountPath": "/prometheus"}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": f"{NAME}-working"}},
                                 {"name": "data", "emptyDir": {}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "labels": labels},
         "spec": {"selector": {"app.kubernetes.io/name": NAME},
                  "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]}},
    ]


def url(release: platform.Release) -> str:
    """The URL the operator is given (operator.prometheusUrl): the Service's DNS name."""
    return f"http://{NAME}.{release.namespace}.svc:{PORT}"


def install(release: platform.Release) -> None:
    """Apply the manifests into the release namespace and wait for a ready Prometheus."""
    platform.apply(manifests(release), namespace=release.namespace)
    _wait_ready(release)


def break_scrape(release: platform.Release) -> None:
    """Restart Prometheus (fresh TSDB) with the gateway job pointed at a closed port."""
    platform.kubectl("patch", "deployment", NAME, "--type=json", "-p",
                     '[{"op": "replace", "path": "/spec/template/spec/volumes/0/configMap/name", '
                     f'"value": "{NAME}-broken"}}]', namespace=release.namespace)
    platform.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=60s", namespace=release.namespace,
                     timeout=70)
    _wait_ready(release)


def _wait_ready(release: platform.Release) -> None:
    platform.wait_until(f"Prometheus ready in {release.namespace}",
                        lambda: len(platform.ready_pods(release.namespace, f"app.kubernetes.io/name={NAME}")) == 1
                        and len(platform.pods(release.namespace, f"app.kubernetes.io/name={NAME}")) == 1,
                        timeout=60)


def query(release: platform.Release, promql: str) -> list[dict[str, Any]]:
    """An instant query's result items, asked from this machine (it reaches pod IPs)."""
    (pod,) = platform.ready_pods(release.namespace, f"app.kubernetes.io/name={NAME}")
    answer = platform.http_get(f"http://{pod['status']['podIP']}:{PORT}/api/v1/query?"
                               + urllib.parse.urlencode({"query": promql}), timeout=5)
    assert answer.status == 200, answer.text
    return answer.json()["data"]["result"]  # type: ignore[no-any-return]


def gateway_targets_up(release: platform.Release) -> list[str]:
    """`up` of every gateway target Prometheus scrapes ("1" or "0" each)."""
    return [item["value"][1] for item in query(release, f'up{{job="{JOB}"}}')]
