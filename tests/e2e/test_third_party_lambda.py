"""Real third-party Lambda code, unchanged, in `kfn local`, installed through spec.requirements.

Each library is used as its own documentation shows for AWS Lambda behind an API Gateway HTTP API
(payload 2.0; aws-wsgi reads 1.0), and called with real HTTP through the gateway:

- aws-lambda-powertools: APIGatewayHttpResolver routes + Logger with the Lambda context;
- Mangum + FastAPI (an ASGI app; Mangum needs an event loop on the main thread);
- apig-wsgi + Flask (a WSGI app; url_for behind X-Forwarded-Prefix via werkzeug's ProxyFix);
- aws-wsgi + Flask with payload format 1.0.

The first run installs the requirements from PyPI into kfn local's cache (~/.cache/kfn); later
runs reuse it.
"""
from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localmode import LocalMode, http, write_manifest
from tests.support.waiting import wait_until

POWERTOOLS = """
    import time

    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.logging import correlation_paths

    logger = Logger(service="orders")
    app = APIGatewayHttpResolver()


    @app.get("/slow/<key>")
    def slow(key: str):
        who = app.current_event.get_query_string_value(name="who", default_value="")
        time.sleep(0.05)   # long enough for requests to overlap
        logger.info("served", extra={"key": key})
        return {"key": key, "who": who, "path": app.current_event.path,
                "requestId": app.lambda_context.aws_request_id}


    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
    def handler(event, context):
        return app.resolve(event, context)
"""

FASTAPI = """
    from fastapi import FastAPI
    from mangum import Mangum

    app = FastAPI()


    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None):
        return {"item_id": item_id, "q": q}


    @app.post("/items/")
    async def create_item(item: dict):
        return {"created": item}


    @app.get("/things/")
    async def things():
        return ["a", "b"]


    handler = Mangum(app, lifespan="off")
"""

FLASK = """
    from apig_wsgi import make_lambda_handler
    from flask import Flask, redirect, request, url_for
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = Flask(__name__)
    # Behind a proxy that says where it mounted the app, as Flask's documentation shows.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)


    @app.get("/hello/<name>")
    def hello(name):
        return {"hello": name, "self": url_for("hello", name=name), "agent": request.headers.get("User-Agent")}


    @app.get("/go")
    def go():
        return redirect(url_for("hello", name="redirected"))


    handler = make_lambda_handler(app)
"""

AWS_WSGI = """
    import awsgi
    from flask import Flask, jsonify, request

    app = Flask(__name__)


    @app.route("/echo", methods=["GET", "POST"])
    def echo():
        return jsonify(method=request.method, path=request.path, args=request.args.to_dict(flat=False),
                       body=request.get_data(as_text=True))


    def handler(event, context):
        return awsgi.response(app, event, context)
"""

FUNCTIONS = ("powertools", "fastapi", "flask", "awswsgi")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("third-party")
    always_on = {"minReplicas": 1, "maxReplicas": 5}
    write_manifest(directory, "powertools", POWERTOOLS, requirements=["aws-lambda-powertools==3.*"], scale=always_on)
    write_manifest(directory, "fastapi", FASTAPI, requirements=["fastapi==0.*", "mangum==0.*"], scale=always_on)
    write_manifest(directory, "flask", FLASK, requirements=["flask==3.*", "apig-wsgi==2.*"], scale=always_on)
    write_manifest(directory, "awswsgi", AWS_WSGI, requirements=["flask==3.*", "aws-wsgi==0.2.*"], scale=always_on,
                   http={"payloadFormat": "1.0"})
    server = LocalMode(directory)
    try:
        server.start()
        # The first start of each function installs its requirements with pip.
        wait_until(lambda: all(server.ready(name) for name in FUNCTIONS), timeout=600, interval=0.5,
                   what="the functions' requirements to install and their instances to start")
        yield server
    finally:
        server.stop()


def test_powertools_routes_and_its_logger_see_only_their_own_invocation_under_50_parallel_requests(
        local: LocalMode) -> None:
    def call(i: int) -> tuple[int, dict[str, str], dict[str, str]]:
        result = local.invoke("powertools", path=f"/slow/key-{i}?who=caller-{i}", timeout=60)
        return result.status, result.headers, result.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(call, range(50)))
    for i, (status, headers, body) in enumerate(answers):
        assert status == 200, body
        assert body == {"key": f"key-{i}", "who": f"caller-{i}", "path": f"/slow/key-{i}",
                        "requestId": headers["X-Kfn-Request-Id"]}
    assert len({body["requestId"] for _, _, body in answers}) == 50
    # Logger's lines carry the Lambda context of the invocation that wrote them.
    logs = http("GET", f"{local.url}/system/logs/powertools?tail=1000").body.decode()
    records = [json.loads(line.split("] ", 1)[1]) for line in logs.splitlines() if '"message":"served"' in line
               or '"message": "served"' in line]
    by_key = {record["key"]: record["function_request_id"] for record in records}
    for _, headers, body in answers:
        assert by_key[body["key"]] == headers["X-Kfn-Request-Id"]


def test_powertools_answers_404_for_an_unknown_route(local: LocalMode) -> None:
    result = local.invoke("powertools", path="/nope")
    assert result.status == 404
    assert result.json()["message"] == "Not found"


def test_fastapi_through_mangum_answers_path_and_query_parameters(local: LocalMode) -> None:
    result = local.invoke("fastapi", path="/items/42?q=kfn")
    assert result.status == 200
    assert result.json() == {"item_id": 42, "q": "kfn"}


def test_fastapi_through_mangum_validates_and_reads_json_bodies(local: LocalMode) -> None:
    created = local.invoke("fastapi", path="/items/", method="POST", body=b'{"name": "pen"}',
                           headers={"Content-Type": "application/json"})
    assert created.status == 200 and created.json() == {"created": {"name": "pen"}}
    invalid = local.invoke("fastapi", path="/items/not-a-number")
    assert invalid.status == 422
    assert invalid.json()["detail"][0]["loc"] == ["path", "item_id"]


def test_flask_through_apig_wsgi_builds_urls_under_the_functions_mount(local: LocalMode) -> None:
    result = local.invoke("flask", path="/hello/kfn", headers={"User-Agent": "kfn-test"})
    assert result.status == 200
    assert result.json() == {"hello": "kfn", "self": "/function/flask/hello/kfn", "agent": "kfn-test"}


def test_a_flask_redirect_stays_inside_the_function(local: LocalMode) -> None:
    result = local.invoke("flask", path="/go", follow_redirects=False)
    assert result.status == 302
    location = result.headers["Location"]
    assert location.endswith("/function/flask/hello/redirected")
    followed = http("GET", location if location.startswith("http") else local.url + location)
    assert followed.status == 200 and followed.json()["hello"] == "redirected"


def test_aws_wsgi_reads_payload_format_1_0(local: LocalMode) -> None:
    result = local.invoke("awswsgi", path="/echo?tag=a&tag=b", method="POST", body=b"payload",
                          headers={"Content-Type": "text/plain"})
    assert result.status == 200, result.body
    # aws-wsgi reads queryStringParameters, where 1.0 keeps the last of repeated keys (as on AWS);
    # multiValueQueryStringParameters has both, for code that reads it.
    assert result.json() == {"method": "POST", "path": "/echo", "args": {"tag": ["b"]}, "body": "payload"}


def test_fastapi_redirects_stay_on_a_host_that_serves_it_at_the_root(tmp_path: Path) -> None:
    write_manifest(tmp_path, "api", FASTAPI, requirements=["fastapi==0.*", "mangum==0.*"],
                   http={"hosts": ["api.example.test"]}, scale={"minReplicas": 1})
    server = LocalMode(tmp_path)
    try:
        server.start()
        wait_until(lambda: server.ready("api"), timeout=600, interval=0.5, what="the function to start")
        host = {"Host": "api.example.test"}
        redirected = http("GET", f"{server.url}/things", headers=host, follow_redirects=False)
        assert redirected.status == 307   # FastAPI adds the trailing slash...
        assert redirected.headers["location"] == "http://api.example.test/things/"   # ...on the same host
        answered = http("GET", f"{server.url}/things/", headers=host)
        assert answered.status == 200 and answered.json() == ["a", "b"]
    finally:
        server.stop()
