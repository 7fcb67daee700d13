"""Attacks on the production chart (issue 18): what a careless operator or a hostile tenant does to it.

Rendered offline (`helm template`); the NATS server of the chart is started on 127.0.0.1 with the
rendered configuration, arguments and environment, as the kubelet would start it.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from kfn.core import natsurl
from tests.support.charts import CHART, NAMESPACE, RELEASE, Manifest, find, helm_path, render_chart
from tests.support.nats import nats_server_binary
from tests.support.ports import free_port

NATS = f"{RELEASE}-nats"

pytestmark = [pytest.mark.timeout(120)]


def kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """`$(VAR)` in a container's args replaced by the container's env, as the kubelet does."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


async def logs_in(port: int, user: str, password: str) -> bool:
    """Whether a client logs in with the credentials kfn takes from $KFN_NATS_USER and
    $KFN_NATS_PASSWORD (what the gateway and the operator get from the Secret)."""
    import nats
    import nats.errors

    url = natsurl.in_environment(f"nats://127.0.0.1:{port}", {natsurl.ENV_USER: user, natsurl.ENV_PASSWORD: password})
    login = natsurl.credentials(url) or natsurl.Credentials()
    try:
        client = await nats.connect(natsurl.bare(url), user=login.user, password=login.password, token=login.token,
                                    connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    except (nats.errors.Error, OSError, TimeoutError):   # refused (Authorization Violation), or away
        return False
    await client.close()
    return True


def start_chart_nats(objects: list[Manifest], tmp_path: Path, password: str) -> tuple[subprocess.Popen[bytes], int]:
    """The chart's nats-server on 127.0.0.1 (its ConfigMap, args and env, the Secret's entry = `password`)."""
    binary = nats_server_binary()
    port, monitor = free_port(), free_port()
    text = find(objects, "ConfigMap", NATS)["data"]["nats.conf"]
    text = (text.replace("/data", str(tmp_path / "store")).replace("0.0.0.0:4222", f"127.0.0.1:{port}")
            .replace("0.0.0.0:8222", f"127.0.0.1:{monitor}"))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    if version.startswith("nats-server: v2.9."):   # this host's test server: sync_interval came with 2.10
        text = "\n".join(line for line in text.splitlines() if "sync_interval" not in line)
    (tmp_path / "nats.conf").write_text(text)
    (c,) = find(objects, "StatefulSet", NATS)["spec"]["template"]["spec"]["containers"]
    env = {"POD_NAME": f"{NATS}-0"}
    for entry in c.get("env") or ():
        if "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = password
        elif "value" in entry:
            env[entry["name"]] = kubelet_expand(entry["value"], env)
    args = [kubelet_expand(a, env).replace("/etc/nats/nats.conf", str(tmp_path / "nats.conf")) for a in c["args"]]
    log = open(tmp_path / "nats.log", "wb")
    process = subprocess.Popen([binary, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process, port


async def wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    for _ in range(100):   # 10 s at most
        if process.poll() is not None:
            return
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


@pytest.mark.parametrize("password", ["123456", "true", "two words", "semi;colon", "comma,here", "brace}x",
                                      "$HOME", "it's", 'quo"te', "hash#tag",
                                      "p@ss:w/rd%", "from-a-file\n", " spaced "])
async def test_a_password_of_your_own_with_any_characters_admits_the_platform_user(
        tmp_path: Path, password: str) -> None:
    """async.nats.auth.existingSecret holds what you chose; the server must take it literally (its
    configuration language would read 123456 as a number, cut `a;b` at the `;`, expand `$HOME`), and
    the clients must send it as it is (a Secret made from a file often ends with a newline)."""
    objects = render_chart("async: {nats: {auth: {existingSecret: my-nats}}}", tmp_path=tmp_path)
    process, port = start_chart_nats(objects, tmp_path, password)
    try:
        await wait_listening(process, port)
        assert process.poll() is None, (tmp_path / "nats.log").read_text()
        assert await logs_in(port, "kfn", password)
        assert not await logs_in(port, "kfn", "wrong")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def test_the_nats_password_is_not_literal_in_the_pod_spec(tmp_path: Path) -> None:
    """`kubectl describe pod` shows the spec: the password only by reference."""
    objects = render_chart("async: {nats: {auth: {existingSecret: my-nats}}}", tmp_path=tmp_path)
    (c,) = find(objects, "StatefulSet", NATS)["spec"]["template"]["spec"]["containers"]
    (password,) = [e for e in c["env"] if e["name"] == "NATS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "my-nats", "key": "password"}


def test_the_install_hook_may_mark_kept_only_the_secrets_it_names(tmp_path: Path) -> None:
    """Upgrading from a chart that rendered kfn-admin-keys, the archive and pool keys itself: Helm
    deletes them (no longer rendered) unless annotated keep, which the hook does before (patch)."""
    objects = render_chart("", tmp_path=tmp_path)
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == f"{RELEASE}-secrets"]
    (named,) = [r for r in role["rules"] if "resourceNames" in r]
    assert "patch" in named["verbs"]
    assert sorted(named["resourceNames"]) == sorted(["kfn-admin-keys", f"{RELEASE}-archive-key",
                                                     f"{RELEASE}-pool-key", f"{RELEASE}-nats-auth"])
    assert not [r for r in role["rules"] if "patch" in r["verbs"] and "resourceNames" not in r]


def gateway_egress(objects: list[Manifest]) -> list[Manifest]:
    return list(find(objects, "NetworkPolicy", f"{RELEASE}-gateway")["spec"]["egress"])


def test_no_egress_rule_of_the_gateway_reaches_everywhere_by_default(tmp_path: Path) -> None:
    for rule in gateway_egress(render_chart("", tmp_path=tmp_path)):
        assert rule.get("to") or rule.get("ports"), rule


def test_api_server_ports_removed_fail_the_render_rather_than_open_the_gateways_egress(tmp_path: Path) -> None:
    """`--set networkPolicy.apiServer.ports=null` removes the key (the schema's minItems never sees
    it): rendered, `- ports:` with nothing would be an egress rule that allows every destination."""
    result = subprocess.run([str(helm_path()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                             "--set", "networkPolicy.apiServer.ports=null"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, gateway_egress([d for d in yaml.safe_load_all(result.stdout) if d])
    assert "networkPolicy.apiServer.ports must name the API server's ports" in result.stderr


def hook_options(objects: list[Manifest]):   # type: ignore[no-untyped-def]
    from kfn.cli import build_parser, options

    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == f"{RELEASE}-secrets"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return options.secrets_ensure(build_parser().parse_args(c["args"]))


def test_the_generated_secrets_may_be_adopted_by_the_release_when_a_value_later_names_one(tmp_path: Path) -> None:
    """Installed without gateway.auth.adminKey, then upgraded (or reinstalled) with it: the chart now
    renders kfn-admin-keys, which the hook made. Helm adopts an existing object only if it carries
    the release's ownership label and annotations; else the upgrade fails ("invalid ownership metadata")."""
    ensure = hook_options(render_chart("", tmp_path=tmp_path))
    assert ("app.kubernetes.io/managed-by", "Helm") in ensure.labels
    annotations = dict(ensure.annotations)
    assert annotations["meta.helm.sh/release-name"] == RELEASE
    assert annotations["meta.helm.sh/release-namespace"] == NAMESPACE
    # Never deleted by Helm once adopted (uninstall, adminKey removed again).
    assert annotations["helm.sh/resource-policy"] == "keep"


def test_the_generated_secrets_are_not_pruned_by_argo_cd(tmp_path: Path) -> None:
    """They carry app.kubernetes.io/instance, which Argo CD's label tracking reads as "part of the
    application": without these, a sync with pruning deletes them and the next one makes new keys."""
    annotations = dict(hook_options(render_chart("", tmp_path=tmp_path)).annotations)
    assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
    assert annotations["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"


def test_the_gateways_autoscaler_without_a_cpu_request_fails_the_render(tmp_path: Path) -> None:
    """A CPU utilization target is a share of the pods' CPU request: without a request the
    HorizontalPodAutoscaler reports FailedGetResourceMetric and never scales."""
    result = subprocess.run([str(helm_path()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                             "--set", "gateway.autoscaling.enabled=true",
                             "--set", "gateway.resources.requests.cpu=null"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, "rendered an autoscaler on a gateway without a CPU request"
    assert "gateway.autoscaling needs gateway.resources.requests.cpu" in result.stderr


def test_the_gateways_autoscaler_renders_with_the_default_resources(tmp_path: Path) -> None:
    objects = render_chart("gateway: {autoscaling: {enabled: true}}", tmp_path=tmp_path)
    assert find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-gateway")["spec"]["minReplicas"] == 2
