"""`kfn secrets ensure` (the chart's install and upgrade hook) as a process against the emulated API:
it creates each missing Secret with random values and never changes one that exists."""
from __future__ import annotations

import base64
import string
import sys
from typing import Any

import pytest

from tests.support import kube

pytestmark = [pytest.mark.timeout(60)]

SECRETS = "v1/secrets"
NS = "kfn-system"


async def ensure(cluster: kube.Cluster, *args: str) -> tuple[int, str, str]:
    """`kfn secrets ensure --namespace kfn-system ARGS`: exit code, stdout, stderr."""
    assert cluster.kubeconfig is not None
    return await kube.run_command(sys.executable, "-m", "kfn", "secrets", "ensure", "--namespace", NS, *args,
                                  env=kube.env_with_kubeconfig(cluster.kubeconfig), timeout=40)


def decoded(secret: dict[str, Any] | None) -> dict[str, bytes]:
    assert secret is not None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


async def create_secret(cluster: kube.Cluster, name: str, data: dict[str, bytes]) -> None:
    await kube.post(cluster, f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()}})


async def test_missing_secrets_are_created_with_a_random_value_of_each_format(cluster: kube.Cluster) -> None:
    code, out, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin", "--secret", "kfn-pool-key:key:bytes",
                                  "--secret", "kfn-nats-auth:password:letters",
                                  "--label", "app.kubernetes.io/part-of=kfn")
    assert code == 0, err
    admin = decoded(cluster.object(SECRETS, NS, "kfn-admin-keys"))["admin"].decode()
    assert len(admin) == 40 and admin.isalnum() and admin.isascii()
    assert len(decoded(cluster.object(SECRETS, NS, "kfn-pool-key"))["key"]) == 32
    password = decoded(cluster.object(SECRETS, NS, "kfn-nats-auth"))["password"].decode()
    assert len(password) == 40 and set(password) <= set(string.ascii_letters)
    secret = cluster.object(SECRETS, NS, "kfn-admin-keys")
    assert secret is not None and secret["metadata"]["labels"] == {"app.kubernetes.io/part-of": "kfn"}
    assert "created Secret kfn-system/kfn-admin-keys (admin)" in out


async def test_the_generated_values_are_never_printed(cluster: kube.Cluster) -> None:
    code, out, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin")
    assert code == 0, err
    admin = decoded(cluster.object(SECRETS, NS, "kfn-admin-keys"))["admin"].decode()
    assert admin not in out + err


async def test_entries_of_one_secret_are_created_together(cluster: kube.Cluster) -> None:
    code, _, err = await ensure(cluster, "--secret", "kfn-keys:a", "--secret", "kfn-keys:b:bytes")
    assert code == 0, err
    data = decoded(cluster.object(SECRETS, NS, "kfn-keys"))
    assert set(data) == {"a", "b"} and len(data["b"]) == 32


async def test_an_existing_secret_is_kept_as_it_is(cluster: kube.Cluster) -> None:
    await create_secret(cluster, "kfn-admin-keys", {"admin": b"my-own-admin-key-0123456789", "alice": b"k" * 20})
    before = cluster.object(SECRETS, NS, "kfn-admin-keys")
    code, out, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin")
    assert code == 0, err
    assert cluster.object(SECRETS, NS, "kfn-admin-keys") == before
    assert "kept Secret kfn-system/kfn-admin-keys" in out


async def test_a_second_run_keeps_the_values_of_the_first(cluster: kube.Cluster) -> None:
    assert (await ensure(cluster, "--secret", "kfn-archive-key:key:bytes"))[0] == 0
    first = cluster.object(SECRETS, NS, "kfn-archive-key")
    assert (await ensure(cluster, "--secret", "kfn-archive-key:key:bytes"))[0] == 0
    assert cluster.object(SECRETS, NS, "kfn-archive-key") == first


async def test_an_existing_secret_without_the_entry_is_kept_and_the_lack_reported(cluster: kube.Cluster) -> None:
    await create_secret(cluster, "kfn-nats-auth", {"user": b"kfn"})
    before = cluster.object(SECRETS, NS, "kfn-nats-auth")
    code, _, err = await ensure(cluster, "--secret", "kfn-nats-auth:password:letters")
    assert code == 0, err
    assert cluster.object(SECRETS, NS, "kfn-nats-auth") == before
    assert "kfn-system/kfn-nats-auth has no entry password" in err


async def test_an_api_refusal_is_reported_with_a_non_zero_exit_and_nothing_created(cluster: kube.Cluster) -> None:
    cluster.fail_requests(SECRETS, 10, status=403)
    code, _, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin")
    assert code == 1
    assert "kfn secrets: could not create the Secret kfn-system/kfn-admin-keys: HTTP 403" in err
    assert "Traceback" not in err
    assert cluster.pending_failures(SECRETS) == 9   # a refusal is not tried again
    assert cluster.object(SECRETS, NS, "kfn-admin-keys") is None


async def test_an_api_failing_longer_than_the_attempts_is_reported_with_a_non_zero_exit(
        cluster: kube.Cluster) -> None:
    cluster.fail_requests(SECRETS, 10, status=503)
    code, _, err = await ensure(cluster, "--attempts", "2", "--secret", "kfn-admin-keys:admin")
    assert code == 1
    assert "could not create the Secret kfn-system/kfn-admin-keys: HTTP 503" in err
    assert cluster.pending_failures(SECRETS) == 8


async def test_a_transient_api_failure_is_tried_again(cluster: kube.Cluster) -> None:
    cluster.fail_requests(SECRETS, 1, status=503)
    code, _, err = await ensure(cluster, "--secret", "kfn-admin-keys:admin")
    assert code == 0, err
    assert cluster.object(SECRETS, NS, "kfn-admin-keys") is not None


async def test_an_unreachable_api_is_reported_with_a_non_zero_exit(cluster: kube.Cluster, tmp_path) -> None:
    kubeconfig = kube.write_kubeconfig(tmp_path / "unreachable", "http://127.0.0.1:9")
    code, _, err = await kube.run_command(
        sys.executable, "-m", "kfn", "secrets", "ensure", "--namespace", NS, "--attempts", "1",
        "--secret", "kfn-admin-keys:admin", env=kube.env_with_kubeconfig(kubeconfig), timeout=40)
    assert code == 1
    assert "could not create the Secret kfn-system/kfn-admin-keys" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--secret", "Bad_Name:key"], "--secret must be NAME:KEY[:FORMAT]"),
    (["--secret", "kfn-keys"], "--secret must be NAME:KEY[:FORMAT]"),
    (["--secret", "kfn-keys:key:hex"], "FORMAT must be one of alnum, letters, bytes"),
    (["--secret", "kfn-keys:key", "--label", "novalue"], "--label must be KEY=VALUE"),
])
async def test_a_bad_argument_is_a_usage_error(cluster: kube.Cluster, args: list[str], message: str) -> None:
    code, _, err = await ensure(cluster, *args)
    assert code == 2
    assert message in err
