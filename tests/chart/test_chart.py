"""The Helm chart (charts/kfn): what `helm install` would send to the API server.

Rendered offline with `helm template`, and every object checked against the OpenAPI schemas of
several Kubernetes releases (kubernetes-validate), so a field that one release drops or renames
fails here, not at install time. Objects of other APIs (Prometheus Operator) are checked by shape.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kfn.cli import build_parser, options
from kfn.core import crd, naming
from kfn.core.functions import parse_function

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kfn"
HELM = ROOT / ".cache" / "bin" / "helm"
CUSTOM_VALUES = Path(__file__).with_name("values-custom.yaml")
RELEASE, NAMESPACE = "kfn", "kfn-system"
CUSTOM_NAMESPACES = ["team-a", "team-b"]

# The oldest release the chart supports (Chart.yaml kubeVersion), some between, the newest bundled.
KUBERNETES_VERSIONS = sorted({"1.29.0", "1.31.0", "1.33.0", kubernetes_validate.latest_version()},
                             key=lambda v: tuple(int(p) for p in v.split(".")))
PROMETHEUS_OPERATOR_API = "monitoring.coreos.com/v1"

Manifest = dict[str, Any]

# With the operator's tests: `make test-k8s` runs `pytest -m k8s tests/k8s tests/chart`.


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run([str(ROOT / "scripts" / "get-helm"), str(HELM.parent)], check=True, timeout=120,
                       capture_output=True)
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def render(helm: Path, *values: Path) -> list[Manifest]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for path in values:
        args += ["--values", str(path)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def default_objects(helm: Path) -> list[Manifest]:
    return render(helm)


@pytest.fixture(scope="session")
def custom_objects(helm: Path) -> list[Manifest]:
    return render(helm, CUSTOM_VALUES)


@pytest.fixture(params=["default", "custom"])
def objects(request: pytest.FixtureRequest) -> list[Manifest]:
    return request.getfixturevalue(f"{request.param}_objects")


def find(objects: list[Manifest], kind: str, name: str, *, namespace: str | None = NAMESPACE) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
               and o["metadata"].get("namespace") == namespace]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name}, found {len(matches)}"
    return matches[0]


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def is_hook(obj: Manifest) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def release_objects(objects: list[Manifest]) -> list[Manifest]:
    """The objects of the release itself, without Helm hooks (which Helm deletes once they ran)."""
    return [o for o in objects if not is_hook(o)]


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def container(objects: list[Manifest], deployment: str) -> Manifest:
    (c,) = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) applied to `labels`."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


# --- helm itself ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, CUSTOM_VALUES, ROOT / "hack" / "kind-values.yaml"],
                         ids=["default", "custom", "kind"])
def test_chart_passes_strict_lint(helm: Path, values: Path | None) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *(["--values", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("values", "field"), [
    ("gateway: {replicas: three}", "/gateway/replicas"),
    ("gateway: {service: {type: Ingress}}", "/gateway/service/type"),
    ("watchNamespaces: default", "/watchNamespaces"),
    ("watchNamespaces: [Team_A]", "/watchNamespaces/0"),
    ("operator: {prometheusUrl: prometheus:9090}", "/operator/prometheusUrl"),
    ("image: {pullPolicy: Sometimes}", "/image/pullPolicy"),
    ("gatway: {replicas: 3}", "gatway"),
    ("runtimeImages: {ruby3.3: ruby:3.3}", "/runtimeImages"),
    ("async: {nats: {url: kfn-nats:4222}}", "/async/nats/url"),
    ("async: {nats: {persistence: {enabled: maybe}}}", "/async/nats/persistence/enabled"),
    ("async: {nats: {maxFileStore: lots}}", "/async/nats/maxFileStore"),
    ("gateway: {autoscaling: {enabled: true, minReplicas: 0}}", "/gateway/autoscaling/minReplicas"),
    ("gateway: {autoscaling: {enabled: yes please}}", "/gateway/autoscaling/enabled"),
])
def test_bad_values_are_rejected_naming_the_field(helm: Path, tmp_path: Path, values: str, field: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(values + "\n")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(bad))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr, result.stderr


# --- every object is valid Kubernetes --------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(objects: list[Manifest], version: str) -> None:
    checked = 0
    for obj in objects:
        if obj["apiVersion"] == PROMETHEUS_OPERATOR_API:
            continue  # not a Kubernetes API: see test_prometheus_operator_objects_*
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


def test_default_install_renders_these_kinds(default_objects: list[Manifest]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == sorted([
        "CustomResourceDefinition", "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Deployment", "Service", "PodDisruptionBudget",
        "Role", "RoleBinding",   # the gateway's, reading its admin keys
        # The NATS server of asynchronous invocations (async.nats.install).
        "StatefulSet", "Service", "Service", "ConfigMap", "ServiceAccount",
        # The install hook that creates the generated Secrets (admin, archive and pool keys, NATS password).
        "ServiceAccount", "Role", "RoleBinding", "Job",
        "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",   # NATS, the gateway, the operator (networkPolicy)
        "FlowSchema",   # the gateway's instance-starting requests at their own priority (apiPriority)
    ])


def test_objects_are_in_the_release_namespace(objects: list[Manifest]) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "FlowSchema"}
    for obj in objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        elif obj["kind"] not in ("Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


# --- the CRD ---------------------------------------------------------------------------------------

def test_crd_in_chart_is_generated_from_the_model() -> None:
    path = CHART / "crds" / f"{naming.CRD_NAME}.yaml"
    assert path.read_text() == crd.render_crd_yaml(), "stale CRD: run `kfn crd > charts/kfn/crds/...`"


def test_crd_is_installed_from_the_chart(default_objects: list[Manifest]) -> None:
    crd = find(default_objects, "CustomResourceDefinition", naming.CRD_NAME, namespace=None)
    assert crd["spec"]["group"] == naming.GROUP
    assert crd["spec"]["names"]["kind"] == naming.KIND


# --- the restricted Pod Security profile -----------------------------------------------------------

def test_every_pod_follows_the_restricted_profile(objects: list[Manifest]) -> None:
    specs = list(pod_specs(objects))
    assert len(specs) == 4   # operator, gateway, NATS, the install hook's Job
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["runAsNonRoot"] is True, (name, c["name"])
            assert not sc.get("privileged"), (name, c["name"])
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, (name, volume)


def test_every_container_has_resources_and_probes(objects: list[Manifest]) -> None:
    for name, spec in pod_specs(objects):
        for c in spec["containers"]:
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
            if name == f"{RELEASE}-secrets":
                continue   # a Job that ends: bounded by its activeDeadlineSeconds, not probed
            assert c["livenessProbe"]["httpGet"]["path"].partition("?")[0] == "/healthz", name
            assert c["imagePullPolicy"] == "IfNotPresent", name


# --- operator and gateway: the command lines they are started with ----------------------------------

def test_both_components_run_the_one_platform_image(objects: list[Manifest]) -> None:
    images = {container(objects, f"{RELEASE}-{c}")["image"] for c in ("operator", "gateway")}
    assert len(images) == 1


def test_default_image_is_tagged_with_the_app_version(default_objects: list[Manifest]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(default_objects, "kfn-operator")["image"] == f"ghcr.io/kfn-dev/kfn:{chart['appVersion']}"


def test_chart_version_follows_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject


@pytest.mark.parametrize("component", ["operator", "gateway"])
def test_component_arguments_are_accepted_by_the_kfn_command_line(objects: list[Manifest], component: str) -> None:
    c = container(objects, f"{RELEASE}-{component}")
    args = c.get("command", []) + c["args"]
    assert args[0] == component
    parsed = build_parser().parse_args(args)  # exits (SystemExit) on an argument kfn does not know
    assert parsed.command == component


def test_operator_watches_all_namespaces_by_default(default_objects: list[Manifest]) -> None:
    args = build_parser().parse_args(container(default_objects, "kfn-operator")["args"])
    assert args.namespace == []
    assert args.standalone is True
    assert args.prometheus_url is None


def test_operator_watches_the_listed_namespaces_and_reads_prometheus(custom_objects: list[Manifest]) -> None:
    args = build_parser().parse_args(container(custom_objects, "kfn-operator")["args"])
    assert args.namespace == CUSTOM_NAMESPACES
    assert args.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"


def test_operator_liveness_endpoint_is_the_probed_port(objects: list[Manifest]) -> None:
    c = container(objects, "kfn-operator")
    args = build_parser().parse_args(c["args"])
    (port,) = [p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"]]
    assert args.health_port == port["containerPort"]


def test_operator_serves_its_metrics_when_asked(default_objects: list[Manifest],
                                                custom_objects: list[Manifest]) -> None:
    assert build_parser().parse_args(container(default_objects, "kfn-operator")["args"]).metrics_port is None
    c = container(custom_objects, "kfn-operator")
    assert build_parser().parse_args(c["args"]).metrics_port == 9090
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]


def test_operator_finds_the_gateway_replicas_by_its_default_selector(objects: list[Manifest]) -> None:
    config = pytest.importorskip("kfn_operator.config")
    # EndpointSlices carry their Service's labels: the autoscaler scrapes what the selector matches.
    key, _, value = config.DEFAULT_GATEWAY_SELECTOR.partition("=")
    labelled = [o["metadata"]["name"] for o in of_kind(objects, "Service") if o["metadata"]["labels"].get(key) == value]
    assert labelled == ["kfn-gateway"]
    assert container(objects, "kfn-gateway")["ports"][0]["name"] == config.OperatorConfig().gateway_port_name


def test_operator_rollout_strategy_is_explicit_for_one_replica_and_for_more(
        default_objects: list[Manifest], helm: Path, tmp_path: Path) -> None:
    # helm upgrade removes only fields the chart rendered before: a RollingUpdate Deployment's
    # defaulted rollingUpdate would otherwise stay and make the Recreate of one replica invalid.
    one = find(default_objects, "Deployment", f"{RELEASE}-operator")["spec"]["strategy"]
    assert one == {"type": "Recreate"}
    more = find(render_values(helm, tmp_path, "operator: {replicas: 2}"), "Deployment", f"{RELEASE}-operator")
    assert more["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_operator_knows_its_namespace_and_name_for_the_lease(objects: list[Manifest]) -> None:
    env = {e["name"]: e for e in container(objects, "kfn-operator")["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_gateway_watches_the_same_namespaces_as_the_operator(objects: list[Manifest]) -> None:
    parser = build_parser()
    operator = parser.parse_args(container(objects, "kfn-operator")["args"])
    gateway = parser.parse_args(container(objects, "kfn-gateway")["args"])
    assert gateway.namespace == operator.namespace


def test_operator_reads_the_runtime_image_map_of_the_values(custom_objects: list[Manifest]) -> None:
    builders = pytest.importorskip("kfn_operator.builders")
    env = {e["name"]: e["value"] for e in container(custom_objects, "kfn-operator")["env"] if "value" in e}
    images = builders.RuntimeImages.from_environment(env).images
    custom = yaml.safe_load(CUSTOM_VALUES.read_text())["runtimeImages"]
    assert dict(images) == custom


def test_default_runtime_images_are_the_operators_defaults(default_objects: list[Manifest]) -> None:
    builders = pytest.importorskip("kfn_operator.builders")
    env = {e["name"]: e["value"] for e in container(default_objects, "kfn-operator")["env"] if "value" in e}
    assert json.loads(env["KFN_RUNTIME_IMAGES"]) == dict(builders.RuntimeImages().images)


# --- the gateway: replicas, Service, disruption budget, Ingress --------------------------------------

def test_gateway_names_the_functions_region_as_the_operator_gives_it_to_them(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "functions: {region: eu-west-3}")
    operator_env = {e["name"]: e.get("value") for e in container(objects, f"{RELEASE}-operator")["env"]}
    assert operator_env["KFN_REGION"] == "eu-west-3"
    # Async destination records carry the function's ARN with the gateway's region.
    assert options.gateway(build_parser().parse_args(container(objects, f"{RELEASE}-gateway")["args"])).region \
        == "eu-west-3"


def test_gateway_service_is_cluster_ip_by_default(default_objects: list[Manifest]) -> None:
    service = find(default_objects, "Service", "kfn-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert "nodePort" not in service["spec"]["ports"][0]


def test_gateway_is_reachable_on_the_configured_node_port(custom_objects: list[Manifest]) -> None:
    service = find(custom_objects, "Service", "kfn-gateway")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30080


def test_kind_values_use_the_node_port_the_kind_cluster_maps_to_localhost(helm: Path) -> None:
    objects = render(helm, ROOT / "hack" / "kind-values.yaml")
    node_port = find(objects, "Service", "kfn-gateway")["spec"]["ports"][0]["nodePort"]
    cluster = yaml.safe_load((ROOT / "hack" / "kind.yaml").read_text())
    mappings = [m for node in cluster["nodes"] for m in node.get("extraPortMappings", [])]
    assert {"containerPort": node_port, "hostPort": 8080} in [
        {k: m[k] for k in ("containerPort", "hostPort")} for m in mappings]


def test_kind_loads_every_image_the_chart_runs(default_objects: list[Manifest]) -> None:
    # `make -n` prints the commands without running them: the images `make kind-load` puts on the node.
    result = subprocess.run(["make", "--no-print-directory", "-n", "kind-load"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    (command,) = [line for line in result.stdout.splitlines() if "load docker-image" in line]
    loaded = {word for word in command.split() if ":" in word}
    env = {e["name"]: e.get("value") for e in container(default_objects, "kfn-operator")["env"]}
    needed = {container(default_objects, "kfn-operator")["image"], *json.loads(env["KFN_RUNTIME_IMAGES"]).values()}
    (nats,) = find(default_objects, "StatefulSet", "kfn-nats")["spec"]["template"]["spec"]["containers"]
    needed.add(nats["image"])
    assert loaded == needed


def test_gateway_replicas_follow_the_values(custom_objects: list[Manifest]) -> None:
    assert find(custom_objects, "Deployment", "kfn-gateway")["spec"]["replicas"] == 3


def test_selectors_select_their_own_pods(objects: list[Manifest]) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in of_kind(objects, "Deployment")}
    for name, labels in pods.items():
        assert matches(find(objects, "Deployment", name)["spec"]["selector"], labels), name
    gateway = find(objects, "Service", "kfn-gateway")["spec"]["selector"]
    assert [n for n, labels in pods.items() if matches({"matchLabels": gateway}, labels)] == ["kfn-gateway"]
    budget = find(objects, "PodDisruptionBudget", "kfn-gateway")["spec"]["selector"]
    assert [n for n, labels in pods.items() if matches(budget, labels)] == ["kfn-gateway"]


def test_service_targets_the_gateway_container_port(objects: list[Manifest]) -> None:
    (port,) = find(objects, "Service", "kfn-gateway")["spec"]["ports"]
    assert port["targetPort"] in [p["name"] for p in container(objects, "kfn-gateway")["ports"]]


def test_disruption_budget_uses_min_available_when_set(default_objects: list[Manifest],
                                                       custom_objects: list[Manifest]) -> None:
    assert find(default_objects, "PodDisruptionBudget", "kfn-gateway")["spec"]["maxUnavailable"] == 1
    custom = find(custom_objects, "PodDisruptionBudget", "kfn-gateway")["spec"]
    assert custom["minAvailable"] == 2 and "maxUnavailable" not in custom


def test_ingress_routes_the_host_to_the_gateway_service(custom_objects: list[Manifest]) -> None:
    ingress = find(custom_objects, "Ingress", "kfn-gateway")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "functions.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "kfn-gateway", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "functions-tls"


def test_optional_objects_are_off_by_default(default_objects: list[Manifest]) -> None:
    kinds = {o["kind"] for o in default_objects}
    assert not kinds & {"Ingress", "ServiceMonitor", "PodMonitor"}
    # The one Role of a cluster-wide install: the gateway's, for its admin keys (and the install hook's).
    assert [o["metadata"]["name"] for o in release_objects(default_objects) if o["kind"] in ("Role", "RoleBinding")] \
        == [f"{RELEASE}-gateway", f"{RELEASE}-gateway"]


# --- Prometheus Operator objects (checked by shape: not a Kubernetes API) -----------------------------

def test_prometheus_operator_objects_are_well_formed(custom_objects: list[Manifest]) -> None:
    monitors = [o for o in custom_objects if o["apiVersion"] == PROMETHEUS_OPERATOR_API]
    assert sorted(o["kind"] for o in monitors) == ["PodMonitor", "PodMonitor", "ServiceMonitor"]
    for m in monitors:
        assert set(m) == {"apiVersion", "kind", "metadata", "spec"}
        assert m["metadata"]["namespace"] == NAMESPACE
        endpoints = m["spec"]["endpoints" if m["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
        assert endpoints and all(e["port"] and e["path"].startswith("/") for e in endpoints)


def test_service_monitor_scrapes_the_gateway_service(custom_objects: list[Manifest]) -> None:
    monitor = find(custom_objects, "ServiceMonitor", "kfn-gateway")
    service = find(custom_objects, "Service", "kfn-gateway")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"


def test_gateway_and_operator_monitors_keep_kfns_own_namespace_label(custom_objects: list[Manifest]) -> None:
    # Without honorLabels Prometheus renames the series' `namespace` to exported_namespace.
    gateway = find(custom_objects, "ServiceMonitor", "kfn-gateway")["spec"]["endpoints"]
    operator = find(custom_objects, "PodMonitor", "kfn-operator")["spec"]["podMetricsEndpoints"]
    assert [e.get("honorLabels") for e in [*gateway, *operator]] == [True, True]


def test_pod_monitor_scrapes_the_function_pods_the_operator_builds(custom_objects: list[Manifest]) -> None:
    builders = pytest.importorskip("kfn_operator.builders")
    contract = pytest.importorskip("kfn_runtime.contract")
    hello = parse_function(yaml.safe_load((ROOT / "examples" / "hello.yaml").read_text()) | {
        "metadata": {"name": "hello", "namespace": CUSTOM_NAMESPACES[0]}})
    pod = builders.build_pod_template(hello, images=builders.RuntimeImages(), region="us-east-1")
    monitor = find(custom_objects, "PodMonitor", "kfn-functions")
    assert matches(monitor["spec"]["selector"], pod["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": CUSTOM_NAMESPACES}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert endpoint["port"] in ports
    assert endpoint["path"] == contract.PATH_METRICS


def test_operator_pod_monitor_scrapes_the_operator_metrics_port(custom_objects: list[Manifest]) -> None:
    monitor = find(custom_objects, "PodMonitor", "kfn-operator")
    operator = find(custom_objects, "Deployment", "kfn-operator")["spec"]["template"]
    gateway = find(custom_objects, "Deployment", "kfn-gateway")["spec"]["template"]
    assert matches(monitor["spec"]["selector"], operator["metadata"]["labels"])
    assert not matches(monitor["spec"]["selector"], gateway["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in [p["name"] for p in operator["spec"]["containers"][0]["ports"]]


# --- RBAC: exactly kfn_operator.rbac's rules ---------------------------------------------------------

def test_chart_rules_file_is_generated_from_kfn_operator_rbac() -> None:
    pytest.importorskip("kfn_operator.rbac")
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "chart-rbac"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _rbac_by_key(objects: list[Manifest]) -> dict[tuple[str, str | None, str], list[Manifest]]:
    """The components' Roles (not the install hook's: see test_the_install_hook_*)."""
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"]
            for o in release_objects(objects) if o["kind"] in ("Role", "ClusterRole")}


def test_cluster_wide_install_has_exactly_the_operator_module_rules(default_objects: list[Manifest]) -> None:
    rbac = pytest.importorskip("kfn_operator.rbac")
    expected = rbac.rbac_objects(namespaced=False, namespace=NAMESPACE, prefix=RELEASE)
    assert _rbac_by_key(default_objects) == _rbac_by_key(expected)


def test_namespaced_install_has_exactly_the_operator_module_rules_in_each_namespace(
        custom_objects: list[Manifest]) -> None:
    rbac = pytest.importorskip("kfn_operator.rbac")
    expected: dict = {}
    for namespace in CUSTOM_NAMESPACES:
        expected |= _rbac_by_key(rbac.rbac_objects(namespaced=True, namespace=namespace, prefix=RELEASE))
    # The operator's also in the release namespace: its Lease and the gateway replicas it scrapes are there.
    # Both components also act in the release namespace: the operator's Lease and the gateway
    # replicas it scrapes are there, and the gateway's admin keys.
    expected |= _rbac_by_key(rbac.rbac_objects(namespaced=True, namespace=NAMESPACE, prefix=RELEASE,
                                               release_namespace=NAMESPACE))
    assert _rbac_by_key(custom_objects) == expected


def test_every_role_is_bound_to_its_components_service_account_only(objects: list[Manifest]) -> None:
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    bindings = {(b["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"]): b
                for b in objects if b["kind"] in ("RoleBinding", "ClusterRoleBinding")}
    accounts = {a["metadata"]["name"] for a in of_kind(objects, "ServiceAccount")}
    assert len(bindings) == len(roles)
    for role in roles:
        name, namespace = role["metadata"]["name"], role["metadata"].get("namespace")
        binding = bindings[(f"{role['kind']}Binding", namespace, name)]
        assert binding["roleRef"]["kind"] == role["kind"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
        assert name in accounts
    for _, spec in pod_specs(objects):
        assert spec["serviceAccountName"] in accounts


# --- the gateway's admin keys -----------------------------------------------------------------------

def _args(objects: list[Manifest]) -> list[str]:
    return container(objects, f"{RELEASE}-gateway")["args"]


def test_the_install_hook_generates_an_admin_key_and_the_gateway_requires_it_for_the_system_paths(
        default_objects: list[Manifest]) -> None:
    assert "kfn-admin-keys:admin:alnum" in generated(default_objects)
    assert not [s for s in of_kind(default_objects, "Secret") if s["metadata"]["name"] == "kfn-admin-keys"]
    args = _args(default_objects)
    assert "--no-system-auth" not in args
    assert f"--admin-namespace={NAMESPACE}" in args


def test_a_given_admin_key_is_the_one_in_the_secret(helm: Path, tmp_path: Path) -> None:
    import base64

    values = tmp_path / "values.yaml"
    values.write_text("gateway: {auth: {adminKey: my-own-admin-key-0123456789}}\n")
    objects = render(helm, values)
    secret = find(objects, "Secret", "kfn-admin-keys")
    assert base64.b64decode(secret["data"]["admin"]).decode() == "my-own-admin-key-0123456789"
    assert not [e for e in generated(objects) if e.startswith("kfn-admin-keys:")]
    # Kept when adminKey is removed later, or the release uninstalled, as a generated key is.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(("values", "secret", "flag"), [
    ("gateway: {auth: {system: false}}", False, True),
    ("gateway: {auth: {existingSecret: true}}", False, False),
])
def test_the_admin_key_secret_can_be_left_out(helm: Path, tmp_path: Path, values: str, secret: bool,
                                              flag: bool) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values + "\n")
    objects = render(helm, path)
    assert bool([s for s in of_kind(objects, "Secret") if s["metadata"]["name"] == "kfn-admin-keys"]) == secret
    assert not [e for e in generated(objects) if e.startswith("kfn-admin-keys:")]
    assert ("--no-system-auth" in _args(objects)) == flag


def test_a_short_admin_key_is_refused(helm: Path, tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("gateway: {auth: {adminKey: short}}\n")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--values", str(path))
    assert result.returncode != 0
    assert "adminKey" in result.stderr


def test_the_gateway_gets_the_timeouts_of_the_values(default_objects: list[Manifest]) -> None:
    args = _args(default_objects)
    assert {"--header-timeout=15s", "--body-timeout=60s", "--idle-timeout=75s"} <= set(args)


def test_the_gateway_gets_the_send_timeout_and_connection_cap_of_the_values(default_objects: list[Manifest]) -> None:
    assert {"--send-timeout=60s", "--max-connections=1024"} <= set(_args(default_objects))


def test_the_gateway_liveness_probe_has_its_own_port_outside_the_cap_and_readiness_the_main_one(
        objects: list[Manifest]) -> None:
    c = container(objects, f"{RELEASE}-gateway")
    args = build_parser().parse_args(c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert (ports["health"], ports["http"]) == (args.health_port, args.port)
    assert args.health_port != args.port
    service = find(objects, "Service", f"{RELEASE}-gateway")
    assert "health" not in {p.get("targetPort") for p in service["spec"]["ports"]}
    assert ports["health"] not in {p.get("targetPort") for p in service["spec"]["ports"]}


def test_a_gateway_health_port_that_is_the_main_port_is_refused(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("gateway: {port: 8080, healthPort: 8080}\n")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values))
    assert result.returncode != 0
    assert "gateway.healthPort must differ from gateway.port" in result.stderr


def test_the_gateway_may_read_only_the_key_secrets_by_name(objects: list[Manifest]) -> None:
    for role in (o for o in release_objects(objects) if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            if "secrets" in rule["resources"]:
                assert role["metadata"]["name"] == f"{RELEASE}-gateway"
                assert set(rule["resourceNames"]) <= {"kfn-api-keys", "kfn-admin-keys"}
                assert set(rule["verbs"]) <= {"get", "list", "watch"}


# --- what `helm install` prints ---------------------------------------------------------------------

def test_install_notes_tell_how_to_reach_the_gateway_on_kind_and_apply_hello(helm: Path) -> None:
    result = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                      "--values", str(ROOT / "hack" / "kind-values.yaml"))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    assert "export KFN_GATEWAY=http://localhost:8080" in notes
    assert "kubectl apply -f examples/hello.yaml" in notes
    assert '"$KFN_GATEWAY/function/hello' in notes
    assert "export KFN_API_KEY=$(kubectl -n kfn-system get secret kfn-admin-keys" in notes


# --- the NATS server of asynchronous invocations (async.nats) ----------------------------------------

NATS = f"{RELEASE}-nats"
NATS_URL = f"nats://{NATS}.{NAMESPACE}.svc:4222"


def render_values(helm: Path, tmp_path: Path, values: str) -> list[Manifest]:
    path = tmp_path / "values.yaml"
    path.write_text(values + "\n")
    return render(helm, path)


def nats_url_of(objects: list[Manifest], component: str) -> str | None:
    env = {e["name"]: e.get("value") for e in container(objects, f"{RELEASE}-{component}").get("env") or ()}
    return env.get("KFN_NATS_URL")


def nats_container(objects: list[Manifest]) -> Manifest:
    (c,) = find(objects, "StatefulSet", NATS)["spec"]["template"]["spec"]["containers"]
    return c


def nats_conf(objects: list[Manifest]) -> dict[str, str]:
    """nats.conf's `key: value` lines (top level and the jetstream block), comments left out."""
    text = find(objects, "ConfigMap", NATS)["data"]["nats.conf"]
    pairs = (line.split("#")[0].strip().partition(":") for line in text.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def test_nats_runs_as_one_server_in_a_statefulset_with_a_claim_for_its_store(default_objects: list[Manifest]) -> None:
    sts = find(default_objects, "StatefulSet", NATS)["spec"]
    assert sts["replicas"] == 1
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "storageClassName" not in claim["spec"]   # the cluster's default class
    mounts = {m["name"]: m["mountPath"] for m in nats_container(default_objects)["volumeMounts"]}
    assert mounts == {"data": "/data", "config": "/etc/nats"}
    assert "data" not in {v["name"] for v in sts["template"]["spec"]["volumes"]}


def test_nats_stores_in_the_volume_and_fsyncs_before_acknowledging(default_objects: list[Manifest]) -> None:
    conf = nats_conf(default_objects)
    assert conf["store_dir"] == "/data"
    assert conf["sync_interval"] == "always"   # a 202'd event survives a crash of the node
    assert conf["max_payload"] == "8MB"
    c = nats_container(default_objects)
    assert c["args"][:2] == ["--config", "/etc/nats/nats.conf"]
    (config,) = [v for v in find(default_objects, "StatefulSet", NATS)["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "config"]
    assert config["configMap"]["name"] == NATS


def test_nats_ports_and_probes_are_those_of_its_configuration(default_objects: list[Manifest]) -> None:
    conf = nats_conf(default_objects)
    c = nats_container(default_objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert conf["listen"] == f"0.0.0.0:{ports['client']}" and conf["http"] == f"0.0.0.0:{ports['monitor']}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz?js-enabled-only=true", "port": "monitor"}, probe


def test_nats_pod_runs_as_the_images_user_without_an_api_token(default_objects: list[Manifest]) -> None:
    spec = find(default_objects, "StatefulSet", NATS)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 65532 and spec["securityContext"]["fsGroup"] == 65532
    assert spec["automountServiceAccountToken"] is False
    account = find(default_objects, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert nats_container(default_objects)["securityContext"]["readOnlyRootFilesystem"] is True


def test_nats_services_select_the_statefulsets_pod(default_objects: list[Manifest]) -> None:
    sts = find(default_objects, "StatefulSet", NATS)["spec"]
    labels = sts["template"]["metadata"]["labels"]
    assert matches(sts["selector"], labels)
    headless = find(default_objects, "Service", sts["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    client = find(default_objects, "Service", NATS)
    container_ports = {p["name"] for p in nats_container(default_objects)["ports"]}
    for service in (headless, client):
        assert matches({"matchLabels": service["spec"]["selector"]}, labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert [(p["port"], p["targetPort"]) for p in client["spec"]["ports"]] == [(4222, "client")]
    # No other workload of the chart answers on the NATS Services.
    others = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(default_objects, "Deployment")]
    assert not any(matches({"matchLabels": client["spec"]["selector"]}, other) for other in others)


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_gateway_and_operator_reach_the_charts_nats_server(default_objects: list[Manifest], component: str) -> None:
    assert nats_url_of(default_objects, component) == NATS_URL
    # The URL's host is the client Service in the release namespace, its port the client port.
    host, _, port = NATS_URL.removeprefix("nats://").partition(":")
    name, namespace, _ = host.split(".")
    service = find(default_objects, "Service", name, namespace=namespace)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_gateways_share_each_async_queue_by_their_replica_count(default_objects: list[Manifest],
                                                               custom_objects: list[Manifest]) -> None:
    for objects in (default_objects, custom_objects):
        replicas = find(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["replicas"]
        assert build_parser().parse_args(_args(objects)).replicas == replicas


def test_gateways_share_each_async_queue_among_the_ready_endpoints_of_their_service(
        objects: list[Manifest]) -> None:
    gateway = options.gateway(build_parser().parse_args(_args(objects)))
    service = find(objects, "Service", f"{RELEASE}-gateway")
    assert (gateway.admin_namespace, gateway.peers_service) == (service["metadata"]["namespace"],
                                                                service["metadata"]["name"])


@pytest.mark.parametrize("rules", ["clusterWide", "namespaced"])
def test_the_gateway_may_watch_the_endpointslices_of_its_own_namespace(default_objects: list[Manifest],
                                                                       custom_objects: list[Manifest],
                                                                       rules: str) -> None:
    objects = default_objects if rules == "clusterWide" else custom_objects
    role = find(objects, "Role", f"{RELEASE}-gateway")
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"]} in role["rules"]


def test_the_gateway_autoscaler_is_off_by_default(objects: list[Manifest]) -> None:
    assert of_kind(objects, "HorizontalPodAutoscaler") == []


def test_an_enabled_gateway_autoscaler_owns_the_gateway_replicas(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "gateway: {replicas: 4, autoscaling: {enabled: true, minReplicas: 2, "
                                            "maxReplicas: 6, targetCPUUtilizationPercentage: 70}}")
    hpa = find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{RELEASE}-gateway"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    # No replicas of the chart's: an upgrade would otherwise reset what the autoscaler chose.
    assert "replicas" not in find(objects, "Deployment", f"{RELEASE}-gateway")["spec"]
    # Until the gateway lists its Service's endpoints, it shares the async queue as if at the minimum.
    assert build_parser().parse_args(_args(objects)).replicas == 2
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-gateway"), version,
                                     strict=True)


def test_a_gateway_autoscaler_minimum_above_its_maximum_is_refused(helm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 3}}\n")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(bad))
    assert result.returncode != 0
    assert "gateway.autoscaling.minReplicas must not exceed gateway.autoscaling.maxReplicas" in result.stderr


def test_nats_image_defaults_to_the_one_scripts_images_builds(default_objects: list[Manifest]) -> None:
    script = (ROOT / "scripts" / "images").read_text()
    registry = script.split("registry=${IMAGE_REGISTRY:-", 1)[1].split("}", 1)[0]
    tag = script.split("nats_image=$registry/nats:${NATS_IMAGE_TAG:-", 1)[1].split("}", 1)[0]
    assert nats_container(default_objects)["image"] == f"{registry}/nats:{tag}"
    assert nats_container(default_objects)["imagePullPolicy"] == "IfNotPresent"


def test_a_nats_url_of_the_values_is_used_and_no_server_is_run(helm: Path, tmp_path: Path) -> None:
    url = "nats://nats.messaging.svc:4222"
    objects = render_values(helm, tmp_path, f"async: {{nats: {{url: '{url}'}}}}")
    assert nats_url_of(objects, "gateway") == url and nats_url_of(objects, "operator") == url
    assert not of_kind(objects, "StatefulSet")
    assert not [o for o in objects if o["metadata"]["name"].startswith(NATS)]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)


def test_without_any_nats_server_neither_component_gets_a_url(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "async: {nats: {install: false}}")
    assert nats_url_of(objects, "gateway") is None and nats_url_of(objects, "operator") is None
    assert not of_kind(objects, "StatefulSet") and not of_kind(objects, "ConfigMap")


def test_nats_without_persistence_keeps_its_store_in_an_empty_dir(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "async: {nats: {persistence: {enabled: false, size: 1Gi}}}")
    sts = find(objects, "StatefulSet", NATS)["spec"]
    assert "volumeClaimTemplates" not in sts
    (data,) = [v for v in sts["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(find(objects, "StatefulSet", NATS), version, strict=True)


@pytest.mark.parametrize(("storage_class", "expected"), [("fast-ssd", "fast-ssd"), ("-", "")])
def test_nats_claim_takes_the_storage_class_of_the_values(helm: Path, tmp_path: Path, storage_class: str,
                                                          expected: str) -> None:
    objects = render_values(helm, tmp_path, f"async: {{nats: {{persistence: {{storageClass: '{storage_class}'}}}}}}")
    (claim,) = find(objects, "StatefulSet", NATS)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == expected


def test_nats_settings_of_the_values_reach_the_server(custom_objects: list[Manifest]) -> None:
    assert nats_conf(custom_objects)["max_file_store"] == "9G"
    sts = find(custom_objects, "StatefulSet", NATS)["spec"]
    assert sts["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert nats_container(custom_objects)["image"] == "registry.example.com/kfn/nats:2.10"


def test_a_change_of_the_nats_configuration_rolls_its_pod(helm: Path, tmp_path: Path,
                                                         default_objects: list[Manifest]) -> None:
    changed = render_values(helm, tmp_path, "async: {nats: {maxPayload: 4MB}}")

    def checksum(objects: list[Manifest]) -> str:
        return str(find(objects, "StatefulSet", NATS)["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(changed) != checksum(default_objects)


# --- requirements built once ------------------------------------------------------------------------

ARCHIVE_KEY_FILE = "/etc/kfn/archive/key"


def _operator_args(objects: list[Manifest]) -> list[str]:
    return container(objects, f"{RELEASE}-operator")["args"]


def _mounts_the_archive_key(objects: list[Manifest], deployment: str) -> bool:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return any(m["mountPath"] == ARCHIVE_KEY_FILE.rsplit("/", 1)[0] and m.get("readOnly")
               and volumes[m["name"]].get("secret", {}).get("secretName") == f"{RELEASE}-archive-key"
               for m in c.get("volumeMounts", ()))


def test_with_nats_requirements_are_built_once_with_a_shared_signing_key(default_objects: list[Manifest]) -> None:
    assert f"{RELEASE}-archive-key:key:bytes" in generated(default_objects)   # 32 random bytes
    assert f"--archive-key-file={ARCHIVE_KEY_FILE}" in _args(default_objects)
    operator = build_parser().parse_args(_operator_args(default_objects))
    assert operator.archive_key_file == ARCHIVE_KEY_FILE
    service = find(default_objects, "Service", f"{RELEASE}-gateway")
    port = service["spec"]["ports"][0]["port"]
    assert operator.archive_url == f"http://{RELEASE}-gateway.{NAMESPACE}.svc:{port}"
    assert operator.build_timeout == 600
    for deployment in (f"{RELEASE}-gateway", f"{RELEASE}-operator"):
        assert _mounts_the_archive_key(default_objects, deployment)
    env = {e["name"]: e.get("value") for e in container(default_objects, f"{RELEASE}-operator")["env"]}
    assert json.loads(env["KFN_BUILD_RESOURCES"]) == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                      "limits": {"memory": "1Gi"}}


def test_without_nats_each_pod_runs_pip_as_before(helm: Path, tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("async: {nats: {install: false}}\n")
    objects = render(helm, path)
    assert not [e for e in generated(objects) if e.startswith(f"{RELEASE}-archive-key:")]
    assert not any(a.startswith("--archive") for a in _args(objects) + _operator_args(objects))
    for deployment in (f"{RELEASE}-gateway", f"{RELEASE}-operator"):
        assert not _mounts_the_archive_key(objects, deployment)


# --- warm pools ---------------------------------------------------------------------------------------

POOL_KEY_FILE = "/etc/kfn/pool/key"


def _mounts_the_pool_key(objects: list[Manifest], deployment: str) -> bool:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return any(m["mountPath"] == POOL_KEY_FILE.rsplit("/", 1)[0] and m.get("readOnly")
               and volumes[m["name"]].get("secret", {}).get("secretName") == f"{RELEASE}-pool-key"
               for m in c.get("volumeMounts", ()))


def _rules(objects: list[Manifest], kind: str, component: str, namespace: str | None = None) -> dict[str, set[str]]:
    """resource → verbs of one component's ClusterRole or Role (in `namespace`)."""
    role = find(objects, kind, f"{RELEASE}-{component}", namespace=namespace)
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


def test_warm_pools_have_a_generated_key_the_gateway_and_the_operator_read(default_objects: list[Manifest]) -> None:
    assert f"{RELEASE}-pool-key:key:bytes" in generated(default_objects)   # 32 random bytes
    for deployment in (f"{RELEASE}-gateway", f"{RELEASE}-operator"):
        assert _mounts_the_pool_key(default_objects, deployment)


def test_the_operator_keeps_pools_of_the_size_in_the_values(default_objects: list[Manifest]) -> None:
    operator = build_parser().parse_args(_operator_args(default_objects))
    assert (operator.pool_size, operator.pool_key_file) == (1, POOL_KEY_FILE)


def test_the_gateway_signs_specialisations_and_names_the_operators_archive_store(
        default_objects: list[Manifest]) -> None:
    gateway = build_parser().parse_args(_args(default_objects))
    operator = build_parser().parse_args(_operator_args(default_objects))
    assert gateway.pool_key_file == POOL_KEY_FILE
    assert gateway.archive_url == operator.archive_url is not None


def test_a_pool_size_in_the_values_reaches_the_operator(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "pool: {size: 3}")
    assert build_parser().parse_args(_operator_args(objects)).pool_size == 3


def test_a_pool_size_of_zero_renders_no_pool_key_and_no_pool_flags(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "pool: {size: 0}")
    assert not [e for e in generated(objects) if e.startswith(f"{RELEASE}-pool-key:")]
    assert not any(a.startswith("--pool") for a in _args(objects) + _operator_args(objects))
    for deployment in (f"{RELEASE}-gateway", f"{RELEASE}-operator"):
        assert not _mounts_the_pool_key(objects, deployment)


def test_a_negative_pool_size_is_rejected_naming_the_field(helm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: {size: -1}\n")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(bad))
    assert result.returncode != 0 and "/pool/size" in result.stderr


@pytest.mark.parametrize("install", ["cluster-wide", "namespaced"])
def test_the_operator_may_delete_pooled_pods_and_pools_and_add_a_replica(
        install: str, default_objects: list[Manifest], custom_objects: list[Manifest]) -> None:
    rules = (_rules(default_objects, "ClusterRole", "operator", None) if install == "cluster-wide"
             else _rules(custom_objects, "Role", "operator", CUSTOM_NAMESPACES[0]))
    assert {"get", "list", "watch", "delete"} <= rules["pods"]
    assert {"create", "patch", "delete"} <= rules["deployments"]
    assert "patch" in rules["deployments/scale"]


@pytest.mark.parametrize("install", ["cluster-wide", "namespaced"])
def test_the_gateway_may_claim_and_delete_pooled_pods(
        install: str, default_objects: list[Manifest], custom_objects: list[Manifest]) -> None:
    rules = (_rules(default_objects, "ClusterRole", "gateway", None) if install == "cluster-wide"
             else _rules(custom_objects, "Role", "gateway", CUSTOM_NAMESPACES[0]))
    assert {"get", "list", "watch", "patch", "delete"} <= rules["pods"]


# --- Secrets the chart generates: an install hook, no random value in any render ----------------------

HOOK = f"{RELEASE}-secrets"


def hook_objects(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if is_hook(o)]


def generated(objects: list[Manifest]) -> list[str]:
    """The NAME:KEY:FORMAT entries the install hook's Job generates (none without a hook)."""
    jobs = [o for o in hook_objects(objects) if o["kind"] == "Job"]
    if not jobs:
        return []
    (c,) = jobs[0]["spec"]["template"]["spec"]["containers"]
    return [a.removeprefix("--secret=") for a in c["args"] if a.startswith("--secret=")]


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES, ROOT / "hack" / "kind-values.yaml"],
                         ids=["default", "custom", "kind"])
def test_two_renders_of_the_chart_are_byte_identical(helm: Path, values: Path | None) -> None:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *(["--values", str(values)] if values else [])]
    first, second = run_helm(helm, *args), run_helm(helm, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_no_template_generates_a_value_or_looks_up_the_cluster() -> None:
    import re

    call = re.compile(r"\{\{[^}]*\b(lookup|randAlphaNum|randAlpha|randBytes|randNumeric|randAscii|uuidv4|now)\b")
    comment = re.compile(r"/\*.*?\*/", re.DOTALL)
    for template in (CHART / "templates").iterdir():
        assert not call.search(comment.sub("", template.read_text())), template.name


def test_the_install_hook_generates_each_secret_the_values_do_not_name(default_objects: list[Manifest]) -> None:
    assert sorted(generated(default_objects)) == sorted([
        "kfn-admin-keys:admin:alnum", f"{RELEASE}-archive-key:key:bytes", f"{RELEASE}-pool-key:key:bytes",
        f"{RELEASE}-nats-auth:password:letters"])
    # None of them is an object of the release (Helm would own, and delete, it).
    assert not of_kind(default_objects, "Secret")


def test_the_install_hook_runs_before_install_and_upgrade_its_rbac_first_and_goes_once_it_succeeded(
        default_objects: list[Manifest]) -> None:
    hooks = {o["kind"]: o["metadata"]["annotations"] for o in hook_objects(default_objects)}
    assert sorted(hooks) == ["Job", "Role", "RoleBinding", "ServiceAccount"]
    for said in hooks.values():
        assert said["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert said["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weight = {kind: int(a["helm.sh/hook-weight"]) for kind, a in hooks.items()}
    assert weight["ServiceAccount"] <= weight["Role"] < weight["RoleBinding"] < weight["Job"]


def test_the_install_hook_may_only_create_secrets_and_read_those_it_makes(default_objects: list[Manifest]) -> None:
    (role,) = [o for o in hook_objects(default_objects) if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = role["rules"]
    assert all(r["apiGroups"] == [""] and r["resources"] == ["secrets"] for r in rules)
    assert sorted(v for r in rules for v in r["verbs"]) == ["create", "get", "patch"]
    (get,) = [r for r in rules if r["verbs"] == ["get", "patch"]]
    assert sorted(get["resourceNames"]) == sorted({e.split(":")[0] for e in generated(default_objects)})
    (binding,) = [o for o in hook_objects(default_objects) if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": HOOK}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": HOOK, "namespace": NAMESPACE}]


def test_the_install_hook_runs_kfn_secrets_ensure_in_the_platform_image(objects: list[Manifest]) -> None:
    (job,) = [o for o in hook_objects(objects) if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == container(objects, f"{RELEASE}-operator")["image"]
    assert pod["serviceAccountName"] == HOOK and pod["restartPolicy"] == "Never"
    parsed = build_parser().parse_args(c["args"])   # exits (SystemExit) on an argument kfn does not know
    ensure = options.secrets_ensure(parsed)
    assert ensure.namespace == NAMESPACE
    assert ("app.kubernetes.io/instance", RELEASE) in ensure.labels
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_secrets_of_your_own_are_used_and_not_generated(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "build: {existingSecret: my-archive-key}\n"
                                            "pool: {existingSecret: my-pool-key}\n"
                                            "async: {nats: {auth: {existingSecret: my-nats}}}")
    assert generated(objects) == ["kfn-admin-keys:admin:alnum"]
    for deployment in (f"{RELEASE}-gateway", f"{RELEASE}-operator"):
        volumes = {v["name"]: v.get("secret", {}).get("secretName")
                   for v in find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["archive-key"] == "my-archive-key" and volumes["pool-key"] == "my-pool-key"
        assert nats_password_secret(objects, deployment) == "my-nats"
    assert nats_password_secret(objects, NATS, kind="StatefulSet", variable="NATS_PASSWORD") == "my-nats"


def test_with_every_secret_given_no_hook_is_rendered(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "gateway: {auth: {existingSecret: true}}\n"
                                            "build: {existingSecret: my-archive-key}\n"
                                            "pool: {existingSecret: my-pool-key}\n"
                                            "async: {nats: {auth: {existingSecret: my-nats}}}")
    assert not hook_objects(objects)


# --- NATS with credentials -----------------------------------------------------------------------------

def nats_password_secret(objects: list[Manifest], workload: str, *, kind: str = "Deployment",
                         variable: str = "KFN_NATS_PASSWORD") -> str | None:
    """The Secret a workload's container takes `variable` from (entry "password"), None if it has none."""
    (c,) = find(objects, kind, workload)["spec"]["template"]["spec"]["containers"]
    for e in c.get("env") or ():
        if e["name"] == variable:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["key"] == "password"
            return str(ref["name"])
    return None


def test_the_nats_server_admits_only_the_platform_user(default_objects: list[Manifest]) -> None:
    # On the command line, not in nats.conf (whose parser would read the password as configuration).
    assert nats_container(default_objects)["args"][2:] == ["--user", "kfn", "--pass", "$(NATS_PASSWORD)"]
    assert nats_password_secret(default_objects, NATS, kind="StatefulSet", variable="NATS_PASSWORD") \
        == f"{RELEASE}-nats-auth"


def test_the_nats_configuration_is_one_nats_server_accepts(default_objects: list[Manifest], tmp_path: Path) -> None:
    from tests.support.nats import nats_server_binary

    binary = nats_server_binary()
    text = find(default_objects, "ConfigMap", NATS)["data"]["nats.conf"].replace("/data", str(tmp_path))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    if version.startswith("nats-server: v2.9."):   # this host's test server: sync_interval came with 2.10
        text = "\n".join(line for line in text.splitlines() if "sync_interval" not in line)
    conf = tmp_path / "nats.conf"
    conf.write_text(text)
    result = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30,
                            env={"POD_NAME": "kfn-nats-0", "NATS_PASSWORD": "a" * 40})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_gateway_and_operator_get_the_platform_users_credentials(default_objects: list[Manifest],
                                                                 component: str) -> None:
    env = {e["name"]: e for e in container(default_objects, f"{RELEASE}-{component}")["env"]}
    assert env["KFN_NATS_USER"]["value"] == "kfn"
    assert nats_password_secret(default_objects, f"{RELEASE}-{component}") == f"{RELEASE}-nats-auth"
    # The URL itself carries none: the pod spec shows no password.
    assert "@" not in env["KFN_NATS_URL"]["value"]


def test_nats_without_auth_takes_any_client(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "async: {nats: {auth: {enabled: false}}}")
    assert "authorization" not in find(objects, "ConfigMap", NATS)["data"]["nats.conf"]
    assert nats_container(objects)["args"] == ["--config", "/etc/nats/nats.conf"]
    assert not [e for e in generated(objects) if "nats-auth" in e]
    for workload, kind, variable in ((f"{RELEASE}-gateway", "Deployment", "KFN_NATS_PASSWORD"),
                                     (f"{RELEASE}-operator", "Deployment", "KFN_NATS_PASSWORD"),
                                     (NATS, "StatefulSet", "NATS_PASSWORD")):
        assert nats_password_secret(objects, workload, kind=kind, variable=variable) is None


def test_a_nats_url_of_your_own_gets_the_password_of_the_secret_named(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "async: {nats: {url: 'nats://nats.messaging.svc:4222', "
                                            "auth: {user: platform, existingSecret: messaging-nats}}}")
    for component in ("gateway", "operator"):
        env = {e["name"]: e for e in container(objects, f"{RELEASE}-{component}")["env"]}
        assert env["KFN_NATS_USER"]["value"] == "platform"
        assert nats_password_secret(objects, f"{RELEASE}-{component}") == "messaging-nats"
    assert not [e for e in generated(objects) if "nats" in e]


def test_a_nats_url_of_your_own_without_a_secret_gets_no_credentials(helm: Path, tmp_path: Path) -> None:
    objects = render_values(helm, tmp_path, "async: {nats: {url: 'nats://nats.messaging.svc:4222'}}")
    for component in ("gateway", "operator"):
        assert nats_password_secret(objects, f"{RELEASE}-{component}") is None


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_the_components_put_the_credentials_into_the_nats_url(default_objects: list[Manifest], component: str) -> None:
    from kfn.core import natsurl

    env = {e["name"]: e.get("value") for e in container(default_objects, f"{RELEASE}-{component}")["env"]}
    env["KFN_NATS_PASSWORD"] = "secret-from-the-Secret"
    url = natsurl.in_environment(str(env["KFN_NATS_URL"]), env)
    assert natsurl.credentials(url) == natsurl.Credentials(user="kfn", password="secret-from-the-Secret")


def test_install_notes_name_the_keys_the_hook_makes_and_the_nats_user(helm: Path) -> None:
    result = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    assert f"Keys made once by the install hook ({HOOK}" in notes
    for line in ("kfn-admin-keys (admin)", f"{RELEASE}-archive-key (key)", f"{RELEASE}-pool-key (key)",
                 f"{RELEASE}-nats-auth (password)"):
        assert line in notes
    assert f"NATS admits only the user kfn (password: Secret {RELEASE}-nats-auth" in notes


# --- API Priority and Fairness ---------------------------------------------------------------------

def test_the_flow_schema_serves_the_gateways_service_account_ahead_of_other_service_accounts(
        default_objects: list[Manifest]) -> None:
    (schema,) = of_kind(default_objects, "FlowSchema")
    gateway = next(d for d in of_kind(default_objects, "Deployment") if d["metadata"]["name"].endswith("-gateway"))
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    (rule,) = schema["spec"]["rules"]
    assert rule["subjects"] == [{"kind": "ServiceAccount",
                                 "serviceAccount": {"name": account, "namespace": NAMESPACE}}]
    assert {(r["apiGroups"][0], r["resources"][0]) for r in rule["resourceRules"]} == {
        ("", "pods"), ("apps", "deployments/scale")}
    assert schema["spec"]["priorityLevelConfiguration"]["name"] == "workload-high"
    # Kubernetes' own catch-all of service accounts (service-accounts) has precedence 9000.
    assert schema["spec"]["matchingPrecedence"] < 9000


def test_without_api_priority_no_flow_schema_is_rendered(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("apiPriority: {enabled: false}\n")
    assert of_kind(render(helm, values), "FlowSchema") == []
