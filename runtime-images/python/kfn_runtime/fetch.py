"""An instance's first step where its requirements were built once (`kfn_runtime.__main__` calls
`fetch` before it initialises the function; `python -m kfn_runtime.fetch` does it as a command):
fetch the archive from the platform's archive store into a temporary file, check its digest,
unpack it into KFN_DEPS_DIR. No installer runs, and nothing but the store is reached (a
redirect is not followed).

Environment: KFN_ARCHIVE_URL (.../system/archives/NAMESPACE/KEY), KFN_ARCHIVE_TOKEN (its get token),
KFN_ARCHIVE_DIGEST (sha256:..., what the store answered when the archive was built), KFN_DEPS_DIR.
Runs as long as one download (FETCH_DEADLINE at most) and unpack take, retrying an unreachable store
(1, 2, 4, ... s apart, FETCH_ATTEMPTS in all). Exit 0 when unpacked; 1 with the reason on stderr and in the pod's
termination message when the store cannot give the archive or it is not the one built; 2 on bad input.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

from kfn_runtime import archive, contract
from kfn_runtime.build import ENV_DIGEST, ENV_TOKEN, ENV_URL, _terminate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO

FETCH_ATTEMPTS = 5
FETCH_TIMEOUT = 120.0    # the longest pause in the store's answer
FETCH_DEADLINE = 900.0   # the longest one download may take, however steadily it comes
# The largest answer taken: an archive no larger than what `unpack` would unpack, with gzip's overhead.
FETCH_MAX_BYTES = archive.DEFAULT_MAX_UNPACKED_BYTES + archive.DEFAULT_MAX_UNPACKED_BYTES // 16
READ_BYTES = 1024 * 1024


class FetchFailed(Exception):
    """The archive could not be fetched, or was not the one built."""


class _Broken(Exception):
    """A download that failed on the way (a connection, a 5xx answer, a body cut short): worth another try."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Archives come from the store itself: a redirect is an answer (an HTTPError), never followed with
    the token to wherever it points."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def fetch(url: str, token: str, digest: str, target: str, *, attempts: int = FETCH_ATTEMPTS) -> dict[str, object]:
    """Download the archive into a temporary file (under TMPDIR), check its digest, then unpack it
    into `target`, created or emptied first (an earlier attempt's files go: the instance's container
    may run again); the archive's manifest. Runs as long as the downloads (each at most FETCH_DEADLINE s)
    and one unpack take. Connection failures, 5xx answers and bodies cut short are tried again (1, 2,
    4, ... s apart, `attempts` in all), then FetchFailed; FetchFailed at once for a refusal or a
    redirect, an answer that is not the archive built (nothing of it unpacked) or an archive that
    does not unpack (`target` left empty)."""
    try:
        os.makedirs(target, exist_ok=True)
        archive.clear(target)
    except OSError as e:
        raise FetchFailed(f"cannot empty {target} for the archive: {e}") from None
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            body = tempfile.TemporaryFile(prefix="kfn-archive-")
        except OSError as e:
            raise FetchFailed(f"cannot hold the archive in {tempfile.gettempdir()}: {e}") from None
        with body:
            try:
                fetched, content_type = _download(url, token, body)
            except _Broken as e:
                last = str(e)
            else:
                if fetched != digest:
                    raise FetchFailed(f"the archive fetched is {fetched} ({content_type or 'no Content-Type'}), "
                                      f"the one built was {digest}")
                body.seek(0)
                try:
                    return archive.unpack(body, target)
                except archive.ArchiveError as e:
                    raise FetchFailed(f"the archive is not one kfn built: {e}") from None
                except OSError as e:
                    raise FetchFailed(f"cannot unpack the archive into {target}: {e}") from None
        if attempt < attempts:
            time.sleep(2 ** (attempt - 1))
    raise FetchFailed(f"the archive store at {url} cannot give the archive ({attempts} attempts): {last}")


def _download(url: str, token: str, out: IO[bytes]) -> tuple[str, str | None]:
    """Write the store's answer to `out`: (its digest, its Content-Type). _Broken for what may pass,
    FetchFailed for what will not (see `fetch`). Runs at most FETCH_DEADLINE s (and one pause)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + FETCH_DEADLINE
    h = hashlib.sha256()
    size = 0
    try:
        with _OPENER.open(request, timeout=FETCH_TIMEOUT) as response:
            expected = response.headers.get("Content-Length")
            content_type = response.headers.get("Content-Type")
            while block := response.read1(READ_BYTES):   # what has come: a trickle still meets the deadline
                size += len(block)
                if size > FETCH_MAX_BYTES:
                    raise FetchFailed(f"the archive store's answer is larger than {FETCH_MAX_BYTES} bytes")
                h.update(block)
                try:
                    out.write(block)
                except OSError as e:
                    raise FetchFailed(f"cannot hold the archive in {tempfile.gettempdir()}: {e}") from None
                if time.monotonic() > deadline:
                    raise _Broken(f"the archive did not arrive within {FETCH_DEADLINE:g}s ({size} bytes came)")
    except urllib.error.HTTPError as e:
        detail = e.read(2000).decode("utf-8", "replace")
        if 300 <= e.code < 400:
            raise FetchFailed(f"the archive store answered {e.code}, a redirect to {e.headers.get('Location')!r}: "
                              "archives are fetched from the store itself") from None
        if e.code < 500:
            raise FetchFailed(f"the archive store refused: {e.code} {detail}") from None
        raise _Broken(f"{e.code} {detail}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Broken(str(e) or type(e).__name__) from None
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise _Broken(f"the answer was cut short: {size} of {expected} bytes")
    return archive.DIGEST_PREFIX + h.hexdigest(), content_type


def main(environ: Mapping[str, str] = os.environ) -> int:
    url, token, digest = environ.get(ENV_URL, ""), environ.get(ENV_TOKEN, ""), environ.get(ENV_DIGEST, "")
    target = environ.get(contract.ENV_DEPS_DIR) or contract.DEFAULT_DEPS_DIR
    if not url or not token or not digest.startswith(archive.DIGEST_PREFIX):
        _terminate(f"kfn-fetch: {ENV_URL}, {ENV_TOKEN} and {ENV_DIGEST} (sha256:...) are required")
        return 2
    started = time.monotonic()
    try:
        meta = fetch(url, token, digest, target)
    except FetchFailed as e:
        _terminate(f"kfn-fetch: {e}")
        return 1
    print(f"kfn-fetch: unpacked {meta.get('key')} ({digest}) into {target} in "
          f"{(time.monotonic() - started) * 1000:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
