"""A small HTTP client of a running gateway, for the CLI's commands.

It uses urllib rather than aiohttp: a command that makes one request should start in a blink,
and importing the stdlib's HTTP client costs a fraction of importing an async framework.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

from kfn.core import naming
from kfn.core.errors import CommandError


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: BinaryIO

    def read(self) -> bytes:
        return self.body.read()


class GatewayClient:
    """Requests to one gateway, with the errors a user can act on turned into CommandError."""

    def __init__(self, url: str, *, timeout: float = 60.0, api_key: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.api_key = api_key
        # No proxies: the gateway is usually on 127.0.0.1, and an HTTP_PROXY meant for the internet
        # would swallow the request.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        headers = dict(headers or {})
        if self.api_key and not any(name.lower() in ("authorization", "x-api-key") for name in headers):
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            response = self._opener.open(request, timeout=timeout if timeout is not None else self.timeout)
        except urllib.error.HTTPError as e:
            return Response(e.code, e.reason, e.headers, e)  # type: ignore[arg-type]  # an HTTPError is its response
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise CommandError(f"the kfn gateway at {self.url} did not answer in time") from None
            raise CommandError(
                f"cannot reach the kfn gateway at {self.url}: is `kfn local` running? ({reason})") from None
        except TimeoutError:
            raise CommandError(f"the kfn gateway at {self.url} did not answer in time") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise CommandError(f"lost the connection to the kfn gateway at {self.url}: {e}") from None
        return Response(response.status, response.reason, response.headers, response)

    def refused(self, status: int) -> CommandError | None:
        """The error to stop with when the gateway refused the credentials (401/403), else None."""
        if status == 401:
            hint = ("the API key was not accepted" if self.api_key else
                    f"it needs an API key: pass --api-key or set ${naming.ENV_API_KEY}")
            return CommandError(f"the gateway at {self.url} answered 401 Unauthorized: {hint}")
        if status == 403:
            return CommandError(f"the gateway at {self.url} answered 403 Forbidden: the API key may not do this "
                                "(/system/* needs an admin key; a function, a key of its namespace)")
        return None

    def get_json(self, path: str) -> tuple[int, Any]:
        response = self.request("GET", path, headers={"Accept": "application/json"})
        if (error := self.refused(response.status)) is not None:
            raise error
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            raise CommandError(f"the gateway at {self.url} answered {path} with something that is not JSON "
                               f"(HTTP {response.status}): is it a kfn gateway?") from None

    def function_exists(self, name: str) -> bool:
        status, _ = self.get_json(f"{naming.SYSTEM_FUNCTIONS_PATH}/{urllib.parse.quote(name)}")
        return status != 404
