"""A pool instance's pure parts: its settings, the specialize request's body, and the merged environment."""
from __future__ import annotations

import json

import pytest

from kfn_runtime import contract, specialize
from kfn_runtime.config import ConfigError
from kfn_runtime.specialize import MARKER, BadSpecialization, PoolSettings, Specialization, merged_env

POD = {contract.ENV_POOL: "1", contract.ENV_POOL_KEY: "k" * 64, contract.ENV_POD_UID: "uid-1",
       contract.ENV_CODE_DIR: "/var/task", contract.ENV_DEPS_DIR: "/opt/kfn/deps", contract.ENV_HOST: "0.0.0.0",
       contract.ENV_PORT: "8080", contract.ENV_RUNTIME: "python3.12", "PATH": "/usr/bin"}


def body(env: object = None, files: object = None) -> bytes:
    return json.dumps({"env": {} if env is None else env, "files": {} if files is None else files}).encode()


def test_pool_settings_come_from_the_pods_environment() -> None:
    settings = PoolSettings.from_env(POD)
    assert (settings.key, settings.pod_uid, settings.code_dir, settings.port) == ("k" * 64, "uid-1", "/var/task", 8080)


@pytest.mark.parametrize("missing", [contract.ENV_POOL_KEY, contract.ENV_POD_UID])
def test_a_pool_instance_needs_its_key_and_its_pods_uid(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        PoolSettings.from_env({k: v for k, v in POD.items() if k != missing})


def test_a_body_of_env_and_files_is_taken() -> None:
    parsed = Specialization.parse(body({"A": "1"}, {"main.py": "x = 1\n"}))
    assert (parsed.env, parsed.files) == ({"A": "1"}, {"main.py": "x = 1\n"})


@pytest.mark.parametrize("raw", [b"not json", b"[]", b"\xff", json.dumps({"env": [], "files": {}}).encode(),
                                 body({"A": 1}), body(files={"main.py": None}), body({"A=B": "1"}),
                                 json.dumps({"env": {}, "files": {}, "extra": 1}).encode()])
def test_a_body_not_of_that_shape_is_refused(raw: bytes) -> None:
    with pytest.raises(BadSpecialization):
        Specialization.parse(raw)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/etc/passwd", "a/b", "a\x00b", MARKER, "x" * 256,
                                  "\ud800.py", "é" * 128])
def test_a_file_name_outside_the_code_directory_is_refused(name: str) -> None:
    with pytest.raises(BadSpecialization):
        Specialization.parse(body(files={name: "x"}))


def test_too_many_files_are_refused() -> None:
    with pytest.raises(BadSpecialization, match="at most 2 files"):
        Specialization.parse(body(files={"a": "", "b": "", "c": ""}), max_files=2)


def test_the_request_overlays_the_pods_environment_without_the_pools_variables() -> None:
    env = merged_env(POD, {contract.ENV_HANDLER: "main.handler", "GREETING": "hi", "PATH": "/opt/bin"})
    assert env[contract.ENV_HANDLER] == "main.handler" and env["GREETING"] == "hi" and env["PATH"] == "/opt/bin"
    assert not {contract.ENV_POOL, contract.ENV_POOL_KEY, contract.ENV_POD_UID} & set(env)


@pytest.mark.parametrize("name", [contract.ENV_CODE_DIR, contract.ENV_DEPS_DIR, contract.ENV_HOST, contract.ENV_PORT])
def test_the_request_cannot_override_what_the_pod_keeps(name: str) -> None:
    assert merged_env(POD, {name: "elsewhere"})[name] == POD[name]


@pytest.mark.parametrize("name", [contract.ENV_POOL, contract.ENV_POOL_KEY, contract.ENV_POD_UID])
def test_the_request_cannot_bring_the_pools_variables_back(name: str) -> None:
    assert name not in merged_env(POD, {name: "1"})


@pytest.mark.parametrize("presented", ["\xff" * 64, "é", "\u2603" * 10])
def test_a_signature_of_non_ascii_characters_does_not_match(presented: str) -> None:
    assert specialize.signature_matches("k" * 64, "uid-1", b"{}", presented) is False


def test_a_signature_in_upper_case_or_with_spaces_around_matches() -> None:
    signed = specialize.signature("k" * 64, "uid-1", b"{}")
    assert specialize.signature_matches("k" * 64, "uid-1", b"{}", f"  {signed.upper()} ")


@pytest.mark.parametrize("env", [{"A": "\ud800"}, {"\ud800": "x"}])
def test_a_variable_with_a_lone_surrogate_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(BadSpecialization, match="surrogate"):
        Specialization.parse(body(env))
