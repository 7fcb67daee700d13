"""Route templates (spec.http.routes) in `kfn local`, with a framework that routes on them.

Chalice routes on what API Gateway puts in the event: requestContext.resourcePath (the route's
template, "/users/{id}") and pathParameters (payload format 1.0). Its app runs unchanged,
installed from PyPI through spec.requirements, and is called with real HTTP through the gateway.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.localmode import LocalMode, write_manifest
from tests.support.waiting import wait_until

CHALICE = """
    from chalice import Chalice

    app = Chalice(app_name="users")


    @app.route("/users/{user_id}")
    def get_user(user_id):
        return {"id": user_id, "path": app.current_request.path}


    @app.route("/users/{user_id}/orders", methods=["POST"])
    def add_order(user_id):
        return {"user": user_id, "order": app.current_request.json_body}


    @app.route("/")
    def index():
        return {"hello": "chalice"}


    handler = app   # a Chalice app is its own Lambda handler
"""
ROUTES = ["GET /users/{user_id}", "POST /users/{user_id}/orders", "GET /"]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("routes")
    write_manifest(directory, "users", CHALICE, requirements=["chalice==1.*"],
                   scale={"minReplicas": 1}, http={"payloadFormat": "1.0", "routes": ROUTES})
    server = LocalMode(directory)
    try:
        server.start()

        def started() -> bool:
            problems = server.errors()
            if problems["manifests"]:
                raise AssertionError(f"the manifest was refused: {problems['manifests']}")
            return server.ready("users") > 0

        # The first start installs Chalice with pip.
        wait_until(started, timeout=300, interval=0.5, what="Chalice to install and its instance to start")
        yield server
    finally:
        server.stop()


def test_chalice_answers_a_route_with_a_path_variable(local: LocalMode) -> None:
    result = local.invoke("users", path="/users/42")
    assert result.status == 200, result.body
    assert result.json() == {"id": "42", "path": "/users/{user_id}"}


def test_chalice_gets_path_variables_percent_decoded(local: LocalMode) -> None:
    result = local.invoke("users", path="/users/ann%20lee")
    assert result.status == 200, result.body
    assert result.json()["id"] == "ann lee"


def test_chalice_answers_a_post_route_with_a_variable_and_a_json_body(local: LocalMode) -> None:
    result = local.invoke("users", path="/users/7/orders", method="POST", body=b'{"item": "pen"}',
                          headers={"Content-Type": "application/json"})
    assert result.status == 200, result.body
    assert result.json() == {"user": "7", "order": {"item": "pen"}}


def test_chalice_answers_the_root_route(local: LocalMode) -> None:
    result = local.invoke("users", path="/")
    assert result.status == 200, result.body
    assert result.json() == {"hello": "chalice"}


def test_a_request_no_declared_route_takes_is_404_from_the_gateway(local: LocalMode) -> None:
    result = local.invoke("users", path="/users/42", method="DELETE")
    assert result.status == 404
    assert result.json() == {"message": "Not Found"}
