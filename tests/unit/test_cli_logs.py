"""`kfn logs NAME --build`: the flag, what it prints, and a function without a build."""
from __future__ import annotations

import asyncio

import pytest

from kfn.cli import build_parser, options
from kfn.cli.options import LogsOptions
from kfn.cli.remote import logs
from kfn.core.errors import CommandError
from tests.support.backend import FakeBackend, ref
from tests.support.functions import make_function
from tests.support.gateway import running_gateway


def parsed(*args: str) -> LogsOptions:
    return options.logs(build_parser().parse_args(["logs", *args]))


def test_build_is_a_flag_of_kfn_logs_and_off_by_default() -> None:
    assert parsed("hello").build is False
    given = parsed("hello", "--build", "--tail", "5")
    assert (given.name, given.build, given.tail, given.follow) == ("hello", True, 5, False)


def test_the_build_flag_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["logs", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--build the output of the function's latest build of its requirements" in usage


async def run_logs(backend: FakeBackend, name: str) -> int:
    async with backend, running_gateway(backend) as gw:
        given = options.logs(build_parser().parse_args(["logs", name, "--build", "--gateway", gw.base]))
        return await asyncio.to_thread(logs, given)


async def test_kfn_logs_build_prints_the_builds_output(capsys: pytest.CaptureFixture[str]) -> None:
    backend = FakeBackend(make_function("hello", requirements=["six"]))
    backend.build_lines[ref("hello")] = ["Collecting six", "Successfully installed six"]
    assert await run_logs(backend, "hello") == 0
    assert capsys.readouterr().out == "Collecting six\nSuccessfully installed six\n"


async def test_a_function_without_a_build_is_one_line_and_exit_1() -> None:
    with pytest.raises(CommandError) as caught:
        await run_logs(FakeBackend(make_function("hello")), "hello")
    assert caught.value.exit_code == 1
    assert str(caught.value) == "'hello' has no build: it has no requirements, or they have not been built yet"


async def test_an_unknown_function_with_the_build_flag_says_there_is_no_such_function() -> None:
    with pytest.raises(CommandError) as caught:
        await run_logs(FakeBackend(make_function("hello")), "nope")
    assert "no function named 'nope'" in str(caught.value)
