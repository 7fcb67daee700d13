"""Who may call what through the gateway: API keys on requests (see SECURITY.md).

A request presents a key in one of three ways:

    Authorization: Bearer KEY
    X-Api-Key: KEY                                   (API Gateway's header for API keys)
    Authorization: AWS4-HMAC-SHA256 Credential=ID/…  (AWS Signature V4, as boto3 and the AWS CLI
                                                      sign; ID is a key's id, the key its secret)

`authenticate(request, scope, keys)` says whether the request may act in `scope`:

- `Scope.system()`: the gateway's own API (`/system/*`): admin keys only;
- `Scope.namespace(ns)`: a function of namespace `ns` (a key-protected function, or the Invoke API):
  a key of `ns`, or an admin key.

A request without a usable key gets 401 `{"message": "Unauthorized"}` with `WWW-Authenticate`
(API Gateway's answer); a valid key that does not reach the scope gets 403
`{"message": "Forbidden"}`. Keys are compared in constant time (`kfn.core.keys.KeyRing`), and
the header that carried a key is never passed on to a function.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from multidict import MultiMapping

from kfn.core.keys import ApiKey, KeyRing, KeySource

logger = logging.getLogger(__name__)

SIGV4 = "AWS4-HMAC-SHA256"
# How far a signature's X-Amz-Date may be from the gateway's clock (AWS allows 15 minutes).
SIGV4_MAX_SKEW = datetime.timedelta(minutes=15)
API_KEY_HEADER = "X-Api-Key"
CHALLENGE = 'Bearer realm="kfn", charset="UTF-8"'
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([a-z0-9;_.-]+)")
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")


@dataclass(frozen=True)
class Scope:
    """What a request wants to do: the gateway's own API (`namespace` None) or a namespace's functions."""

    namespace: str | None

    @classmethod
    def system(cls) -> Scope:
        return cls(None)

    @classmethod
    def of_namespace(cls, namespace: str) -> Scope:
        return cls(namespace)

    def allows(self, key: ApiKey) -> bool:
        if self.namespace is None:
            return key.admin
        return key.may_call(self.namespace)


class AuthError(Exception):
    """The request may not do what it asked; `response()` is the answer to give."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason   # for the log only: the client learns nothing of why

    def response(self) -> web.Response:
        if self.status == 401:
            return web.Response(status=401, content_type="application/json",
                                text=json.dumps({"message": "Unauthorized"}), headers={"WWW-Authenticate": CHALLENGE})
        return web.Response(status=403, content_type="application/json", text=json.dumps({"message": "Forbidden"}))


def credential_headers(headers: Mapping[str, str]) -> set[str]:
    """The (lowercase) names of the headers that carry a credential in `headers`."""
    out = set()
    if API_KEY_HEADER in headers:
        out.add(API_KEY_HEADER.lower())
    if "Authorization" in headers:
        out.add("authorization")
    return out


def key_headers(headers: MultiMapping[str], keys: KeyRing) -> frozenset[str]:
    """The (lowercase) names of the headers in `headers` that carry one of `keys` (`Authorization:
    Bearer KEY` or `X-Api-Key: KEY`, any of their values). They are kept from public functions
    too: a client that sends its key with every request (`kfn invoke` with $KFN_API_KEY, an SDK
    set up once) must not hand it to the owner of whatever function it calls. Other values of
    these headers (a function's own tokens) are not kfn's and pass."""
    out = set()
    for value in headers.getall("Authorization", ()):
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() == "bearer" and keys.match(credential.strip()) is not None:
            out.add("authorization")
    if any(keys.match(value.strip()) is not None for value in headers.getall(API_KEY_HEADER, ())):
        out.add(API_KEY_HEADER.lower())
    return frozenset(out)


def authenticate(request: web.BaseRequest, scope: Scope, keys: KeyRing, *, body: bytes | None = None,
                 now: datetime.datetime | None = None) -> ApiKey:
    """The key `request` presents, if it reaches `scope`; AuthError (401 or 403) otherwise.

    `body` is needed to check an AWS Signature V4 (it signs the body's hash); without it a
    signed request is refused.
    """
    headers = request.headers
    key: ApiKey | None = None
    presented = False
    authorization = headers.get("Authorization", "")
    scheme, _, credential = authorization.strip().partition(" ")
    if authorization:
        presented = True
        if scheme.lower() == "bearer":
            key = keys.match(credential.strip())
        elif scheme == SIGV4:
            key = _sigv4(request, credential, keys, body=body, now=now)
    if key is None and API_KEY_HEADER in headers:
        presented = True
        key = keys.match(headers[API_KEY_HEADER].strip())
    if key is None:
        raise AuthError(401, "an invalid key" if presented else "no key")
    if not scope.allows(key):
        raise AuthError(403, f"{key} may not call {'the system API' if scope.namespace is None else scope.namespace}")
    return key


# -- AWS Signature Version 4 --------------------------------------------------------------------

def authorize(request: web.BaseRequest, scope: Scope, keys: KeySource, *,
              body: bytes | None = None) -> ApiKey | web.Response:
    """The key `request` presents for `scope` among `keys`' current ones, or the 401/403 answer to
    give instead. `body` lets it check an AWS Signature V4, which signs the body."""
    try:
        return authenticate(request, scope, keys.keys(), body=body)
    except AuthError as e:
        logger.debug("refused %s %s from %s: %s", request.method, request.path, request.remote, e.reason)
        return e.response()


def _sigv4(request: web.BaseRequest, credential: str, keys: KeyRing, *, body: bytes | None,
           now: datetime.datetime | None) -> ApiKey | None:
    """The key whose id signed the request, if its signature checks out."""
    found = _CREDENTIAL.search(credential)
    signed = _SIGNED_HEADERS.search(credential)
    signature = _SIGNATURE.search(credential)
    if found is None or signed is None or signature is None or body is None:
        return None
    key_id, date, region, service = found.groups()
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    if not amz_date.startswith(date) or abs(now - when) > SIGV4_MAX_SKEW:
        return None
    signed_headers = signed.group(1).split(";")
    if "host" not in signed_headers:
        return None
    content_hash = request.headers.get("X-Amz-Content-Sha256")
    if content_hash is not None and content_hash != hashlib.sha256(body).hexdigest():
        return None   # signed for another body
    canonical = canonical_request(request.method, request.raw_path, request.headers, signed_headers, body)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([SIGV4, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    for key, secret in keys.secrets_of(key_id):
        expected = hmac.new(signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, signature.group(1)):
            return key
    return None


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(method: str, target: str, headers: Mapping[str, str], signed_headers: list[str],
                      body: bytes) -> str:
    """SigV4's canonical request of what arrived, as botocore builds it before signing."""
    path, _, query = target.partition("?")
    canonical_path = quote(path or "/", safe="/~")
    pairs = sorted(tuple(pair.partition("=")[::2]) for pair in query.split("&") if pair) if query else []
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    lines = []
    for name in signed_headers:
        values = headers.getall(name, ()) if hasattr(headers, "getall") else [headers.get(name, "")]
        lines.append(f"{name}:{','.join(' '.join(str(v).split()) for v in values)}\n")
    payload = hashlib.sha256(body).hexdigest()
    return "\n".join([method, canonical_path, canonical_query, "".join(lines), ";".join(signed_headers), payload])
