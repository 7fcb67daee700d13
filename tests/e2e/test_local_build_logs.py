"""`kfn logs NAME --build` against `kfn local`: the installer's output of a function's last build."""
from __future__ import annotations

from pathlib import Path

from tests.support.localmode import HELLO, kfn, make_wheel, running, write_manifest
from tests.support.waiting import wait_until


def test_kfn_logs_build_prints_the_last_builds_installer_output_and_a_function_without_one_exits_1(
        tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "kfnprobe", "VALUE = 'from a wheel'\n")
    functions = tmp_path / "functions"
    functions.mkdir()
    write_manifest(functions, "deps", """
        import kfnprobe
        def handler(event, context):
            return kfnprobe.VALUE
    """, requirements=[str(wheel)])
    write_manifest(functions, "hello", HELLO)
    with running(functions) as local:
        assert local.invoke("deps", timeout=120).status == 200
        built = kfn("logs", "deps", "--build", gateway=local.url)
        assert built.returncode == 0, built.stderr
        assert "kfnprobe" in built.stdout

        none = kfn("logs", "hello", "--build", gateway=local.url)
        assert none.returncode == 1
        assert none.stderr.strip().splitlines() == [
            "kfn logs: 'hello' has no build: it has no requirements, or they have not been built yet"]


def test_kfn_logs_build_shows_why_a_build_failed(tmp_path: Path) -> None:
    write_manifest(tmp_path, "nodeps", HELLO, requirements=[str(tmp_path / "missing-1.0-py3-none-any.whl")],
                   scale={"minReplicas": 1})
    with running(tmp_path) as local:
        wait_until(lambda: local.errors()["functions"], timeout=60, what="the pip failure")
        result = kfn("logs", "nodeps", "--build", gateway=local.url)
        assert result.returncode == 0, result.stderr
        assert "missing-1.0-py3-none-any.whl" in result.stdout
