"""`python -m kfn_runtime.build`: a build Job's command. Installs a function's requirements once, packs
them as an archive (`kfn_runtime.archive`) and stores it in the platform's archive store, so no
instance ever runs the installer.

Environment: KFN_REQUIREMENTS (the requirement lines, as for `kfn_runtime.requirements`),
KFN_RUNTIME (python3.x, or nodejs* for npm), KFN_ARCHIVE_KEY, KFN_ARCHIVE_URL (this archive's URL in
the store: .../system/archives/NAMESPACE/KEY), KFN_ARCHIVE_TOKEN (its put token), and the
installer's own variables (PIP_INDEX_URL, ...). Runs as long as the installer and one upload take.

Output: the installer's output, then `kfn-build: stored KEY DIGEST BYTES`; exit 0. On failure, exit 1
with the reason and the installer's last lines on stderr and in the pod's termination message (the
operator copies them into the Function's status); exit 2 on bad input.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from kfn_runtime import archive, contract
from kfn_runtime import requirements as installing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENV_KEY = "KFN_ARCHIVE_KEY"
# The archive's variables, the build's and an instance's fetch's (contract: the instance reads them).
ENV_URL = contract.ENV_ARCHIVE_URL
ENV_TOKEN = contract.ENV_ARCHIVE_TOKEN
ENV_DIGEST = contract.ENV_ARCHIVE_DIGEST   # fetch: the digest the store gave when the archive was stored
# Lines of the installer's output kept for the termination message (which the kubelet cuts at 4 KiB);
# a longer line is read, streamed and kept in pieces of LINE_CHARS.
TAIL_LINES = 20
TAIL_BYTES = 3500
LINE_CHARS = 16 * 1024
# A store that is busy (one upload per namespace at a time, a few per gateway: 503) or away is
# tried again 1, 2, 4, ... s apart, at most UPLOAD_PAUSE_MAX apart, for about 4 minutes in all:
# longer than another archive of the namespace takes to arrive.
UPLOAD_ATTEMPTS = 12
UPLOAD_PAUSE_MAX = 30
UPLOAD_TIMEOUT = 300.0
ANSWER_BYTES = 64 * 1024   # the most of the store's answer to a PUT read


class BuildFailed(Exception):
    """The build cannot produce the archive; the message is for the function's owner."""


def _terminate(message: str, path: str | None = None) -> None:
    """Say `message` on stderr and in the pod's termination message (`path`, else contract.TERMINATION_LOG),
    which gets its first line and as much of its end as fits in TAIL_BYTES."""
    sys.stderr.write(message + "\n")
    if len(message.encode()) > TAIL_BYTES:
        head = message.split("\n", 1)[0][:TAIL_BYTES // 4]
        end = message.encode()[-(TAIL_BYTES - len(head.encode()) - 5):].decode(errors="ignore")
        message = f"{head}\n...\n{end}"
    try:
        with open(path or contract.TERMINATION_LOG, "w") as f:
            f.write(message)
    except OSError:
        pass   # not in a pod


def install(requirements: Sequence[str], target: str, *, node: bool, environ: Mapping[str, str]) -> None:
    """Run pip (npm for Node.js) into `target`, its output streamed to stdout; BuildFailed with its
    last lines if it fails."""
    env = {**environ, "PIP_NO_CACHE_DIR": "1", "TMPDIR": environ.get("TMPDIR", "/tmp"),
           "HOME": environ.get("HOME") or "/tmp"}
    if node:
        env.setdefault("npm_config_cache", os.path.join(env["TMPDIR"], ".npm"))
    command = installing.npm_command(requirements, target) if node else installing.pip_command(requirements, target)
    tool = "npm" if node else "pip"
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as e:
        raise BuildFailed(f"cannot run {tool}: {e}") from None
    output = proc.stdout
    assert output is not None
    for line in iter(lambda: output.readline(LINE_CHARS), ""):
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    code = proc.wait()
    sys.stdout.flush()
    if code != 0:
        raise BuildFailed(f"{tool} could not install the requirements (exit code {code}); its last lines:\n"
                          + "\n".join(tail))


def upload(path: str, url: str, token: str, digest: str, *, attempts: int = UPLOAD_ATTEMPTS) -> dict[str, object]:
    """PUT the archive at `path` to `url`; the store's answer. Connection failures and 5xx answers are
    retried (1, 2, 4, ... s apart, at most UPLOAD_PAUSE_MAX, `attempts` in all); other refusals, and
    an answer that is not the store's JSON, are BuildFailed at once."""
    size = os.path.getsize(path)
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            with open(path, "rb") as body:
                request = urllib.request.Request(url, data=body, method="PUT", headers={
                    "Authorization": f"Bearer {token}", "Content-Type": archive.MEDIA_TYPE,
                    "Content-Length": str(size), "X-Kfn-Archive-Digest": digest})
                with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT) as response:
                    text = response.read(ANSWER_BYTES)
                    content_type = response.headers.get("Content-Type") or "no Content-Type"
            try:
                answer = json.loads(text or b"{}")
            except ValueError:
                answer = None
            if not isinstance(answer, dict):   # not the store (a URL that leads elsewhere): no use trying again
                raise BuildFailed(f"{url} answered {response.status} ({content_type}), not the archive store's "
                                  f"JSON: {text[:200].decode('utf-8', 'replace')!r}")
            # 201: stored now, so it must be these bytes; 200: an earlier build of the key was stored
            # first (installs are not byte-for-byte repeatable), and that archive is the one used.
            if response.status != 200 and answer.get("digest") != digest:
                raise BuildFailed(f"the store says it stored {answer.get('digest')}, not {digest}")
            return dict(answer)
        except urllib.error.HTTPError as e:
            detail = e.read(2000).decode("utf-8", "replace")
            if e.code < 500:
                raise BuildFailed(f"the archive store refused the archive: {e.code} {detail}") from None
            last = f"{e.code} {detail}"
        except (OSError, ValueError) as e:
            last = str(e)
        if attempt < attempts:
            time.sleep(min(2 ** (attempt - 1), UPLOAD_PAUSE_MAX))
    raise BuildFailed(f"the archive store at {url} cannot be reached ({attempts} attempts): {last}")


def build(environ: Mapping[str, str], workdir: str) -> str:
    """Install, pack and upload; the line to print. BuildFailed or ValueError (bad input)."""
    lines = installing.parse_requirements(environ.get(contract.ENV_REQUIREMENTS, ""))
    key, url, token = environ.get(ENV_KEY, ""), environ.get(ENV_URL, ""), environ.get(ENV_TOKEN, "")
    if not archive.valid_key(key) or not url or not token:
        raise ValueError(f"{ENV_KEY} (a deps-… key), {ENV_URL} and {ENV_TOKEN} are required")
    runtime = environ.get(contract.ENV_RUNTIME, "")
    node = runtime.startswith("nodejs")
    target = os.path.join(workdir, "deps")
    os.makedirs(target, exist_ok=True)
    if lines:
        print(f"kfn-build: installing {len(lines)} requirement(s): {', '.join(lines)}", flush=True)
        install(lines, target, node=node, environ=environ)
    meta = archive.manifest(key=key, runtime=runtime, installer="npm" if node else "pip", requirements=lines)
    path, digest = archive.pack_to_file(target, workdir, meta)
    size = os.path.getsize(path)
    print(f"kfn-build: packed {size} bytes ({digest}); storing it", flush=True)
    stored = upload(path, url, token, digest)
    if stored.get("digest") != digest:
        return f"kfn-build: {key} was stored before, as {stored.get('digest')}: that archive is the one used"
    return f"kfn-build: stored {key} {digest} {size}"


def main(environ: Mapping[str, str] = os.environ) -> int:
    import tempfile

    workdir = tempfile.mkdtemp(prefix="kfn-build-", dir=environ.get("TMPDIR") or None)
    try:
        print(build(environ, workdir), flush=True)
        return 0
    except (BuildFailed, archive.ArchiveError, OSError) as e:   # ArchiveError first: it is a ValueError
        _terminate(f"kfn-build: {e}")
        return 1
    except (ValueError, installing.RequirementsError) as e:
        _terminate(f"kfn-build: {e}")
        return 2
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
