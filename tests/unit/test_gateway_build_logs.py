"""GET /system/logs/NAME?build=1: the output of a function's latest build, as `kfn logs --build` reads it."""
from __future__ import annotations

from tests.support.backend import FakeBackend, ref
from tests.support.functions import make_function
from tests.support.gateway import running_gateway


async def test_the_build_flag_answers_the_last_lines_of_the_latest_build() -> None:
    backend = FakeBackend(make_function("hello", requirements=["six"]))
    backend.log_lines[ref("hello")] = ["an instance's line"]
    backend.build_lines[ref("hello")] = ["Collecting six", "Installing collected packages: six", "Successfully"]
    async with backend, running_gateway(backend) as gw:
        status, text, _ = await gw.json("GET", "/system/logs/hello?build=1&tail=2")
        instances_status, instances, _ = await gw.json("GET", "/system/logs/hello")
    assert (status, text) == (200, "Installing collected packages: six\nSuccessfully\n")
    assert (instances_status, instances) == (200, "an instance's line\n")


async def test_a_function_without_a_build_answers_404_saying_so() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, headers = await gw.json("GET", "/system/logs/hello?build=true")
    assert (status, body) == (404, {"error": "hello has no build"})
    assert headers["Content-Type"].startswith("application/json")


async def test_an_unknown_function_is_404_whether_or_not_the_build_is_asked_for() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, _ = await gw.json("GET", "/system/logs/nope?build=1")
    assert status == 404 and "no function named 'nope'" in body["error"]
