"""The `kfn` command line: one parser, typed options, and each command wired in its own module.

This package is where kfn's pieces are put together (the composition root): `kfn local` builds
local mode, `kfn gateway` the gateway on the Kubernetes backend, `kfn operator` the operator.
Nothing else imports it.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from kfn.core import naming
from kfn.core.errors import CommandError
from kfn.core.keys import ADMIN_SECRET_NAME

# What `kfn gateway` and `kfn operator` need beyond a plain install.
KUBERNETES_EXTRA = ("kopf", "kubernetes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfn", description="kfn: Lambda-style functions on Kubernetes, or locally.")
    parser.add_argument("--version", action=_VersionAction, help="print kfn's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check Function manifests and report every problem")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")

    sub.add_parser("crd", help="print the Function CustomResourceDefinition (generated from the model)")

    p = sub.add_parser("local", help="serve every Function manifest in DIR on this machine")
    p.add_argument("directory", nargs="?", default="examples", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _limit_options(p)
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="keep instance code and log files here (default: a temporary directory)")
    p.add_argument("--trusted-hops", type=int, default=0, metavar="N",
                   help="proxies in front whose X-Forwarded-For entries are believed (default 0: the TCP peer)")
    p.add_argument("--keys", default=None, metavar="FILE",
                   help="API keys (YAML: admin: {ID: KEY}, namespaces: {NS: {ID: KEY}}), re-read when it changes; "
                        "with it, /system/* needs an admin key (see SECURITY.md)")
    p.add_argument("--cgroups", choices=["auto", "off"], default="auto",
                   help="run each instance in a cgroup where the OS allows (all its processes die with it; its "
                        "memory limited to spec.resources.limits.memory); off: process groups and RLIMIT_DATA")
    p.add_argument("--strict-runtimes", action="store_true",
                   help="refuse a function whose spec.runtime names a Python this machine lacks (reported like an "
                        "invalid manifest) instead of running it on kfn's own Python with a warning")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="keep asynchronous events, dead letters and schedule ticks here, across restarts "
                        "(default: DIR/.kfn)")
    p.add_argument("--nats-url", default=None, metavar="URL",
                   help="the NATS server of spec.triggers[].nats, e.g. nats://127.0.0.1:4222 (default $KFN_NATS_URL; "
                        "none: NATS triggers do not run)")
    p.add_argument("--async-retry-delays", default=None, metavar="DURATIONS",
                   help="waits before the 2nd and 3rd attempts of an async event that failed, e.g. 1s,2s "
                        "(default 1m,2m, Lambda's)")
    p.add_argument("--async-lease", default=None, metavar="DURATION",
                   help="an async event in flight when kfn local died is delivered again after this (default 30s)")
    p.add_argument("--async-discard-after", default=None, metavar="DURATION",
                   help="the queued async events of a function whose manifest has been gone this long are "
                        "removed unrun and counted (default 1m)")
    p.add_argument("--init-timeout", default=None, metavar="DURATION",
                   help="how long a function's init (its import, up to its first poll for work) may take; longer "
                        "is the function's error, Sandbox.Timedout (default 10s, Lambda's)")
    _connection_options(p)

    for name, help_ in (("invoke", "call a function through the gateway"),
                        ("list", "list functions with replicas and usage"),
                        ("logs", "print a function's instance logs")):
        p = sub.add_parser(name, help=help_)
        _remote_options(p)
        if name == "invoke":
            p.add_argument("name", help="NAME or NAME.NAMESPACE")
            p.add_argument("--data", "-d", default=None, help="request body: JSON text, or @FILE")
            p.add_argument("--method", "-X", default=None, help="HTTP method (default POST with data, else GET)")
            p.add_argument("--path", default="", help="path below the function, e.g. /items/1")
            p.add_argument("--header", "-H", action="append", default=[], help="extra header 'Name: value'")
            p.add_argument("--timeout", type=float, default=60.0)
        elif name == "logs":
            p.add_argument("name", help="NAME or NAME.NAMESPACE")
            p.add_argument("--follow", "-f", action="store_true")
            p.add_argument("--tail", type=int, default=100)
            p.add_argument("--build", action="store_true",
                           help="the output of the function's latest build of its requirements (the installer's), "
                                "instead of its instances'; with -f, until the build ends")

    p = sub.add_parser("async", help="asynchronous invocations: a function's queue and dead letters")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="the queue and the dead letters of a function")
    _remote_options(q)
    q.add_argument("--json", dest="output", action="store_const", const="json", help="the same as -o json")
    q.add_argument("--limit", type=int, default=100, help="dead letters to list at most (default 100)")
    q.add_argument("name", help="NAME or NAME.NAMESPACE")
    q = actions.add_parser("replay", help="deliver dead letters again (all of the function's, or those named)")
    _remote_options(q)
    q.add_argument("--json", dest="output", action="store_const", const="json", help="the same as -o json")
    q.add_argument("name", help="NAME or NAME.NAMESPACE")
    q.add_argument("ids", nargs="*", metavar="ID", help="invocation ids (default: every dead letter)")

    p = sub.add_parser("secrets", help="Secrets made once (the chart's keys): create the missing ones")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("ensure", help="create each Secret that does not exist, with random values; never "
                                          "change one that does (the chart's install and upgrade hook)")
    q.add_argument("--namespace", required=True, metavar="NS", help="where the Secrets are")
    q.add_argument("--secret", action="append", required=True, metavar="NAME:KEY[:FORMAT]",
                   help="an entry KEY of the Secret NAME, generated as FORMAT: alnum (40 letters and digits, "
                        "the default), letters (40 letters) or bytes (32 random bytes); repeat for more")
    q.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of each Secret created")
    q.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                   help="an annotation of each Secret created (the chart: Helm's ownership, so that a release "
                        "that later renders the Secret may adopt it)")
    q.add_argument("--attempts", type=int, default=5, metavar="N",
                   help="requests per Secret while the API answers 429/5xx or cannot be reached, 1 s apart "
                        "and doubling (default 5)")

    p = sub.add_parser("gateway", help="run the gateway (on Kubernetes)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=None, metavar="PORT",
                   help="also serve GET /healthz alone on this port, outside --max-connections: the liveness "
                        "probe (default: none)")
    p.add_argument("--sync-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long the Kubernetes API may take to list the functions, deployments and pods at "
                        "start; past it the gateway exits with an error (default 30)")
    p.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (default: all)")
    p.add_argument("--default-namespace", default=naming.DEFAULT_NAMESPACE,
                   help="the namespace /function/NAME means (NAME.NAMESPACE names any other)")
    p.add_argument("--trusted-hops", type=int, default=0, metavar="N",
                   help="proxies in front of the gateway whose X-Forwarded-For entries are believed (as Envoy's "
                        "xff_num_trusted_hops); 0: the client is the TCP peer")
    p.add_argument("--no-system-auth", action="store_true",
                   help="serve /system/* (functions, logs) without an admin key (default: an admin key is needed)")
    p.add_argument("--admin-namespace", default=None, metavar="NS",
                   help=f"where the admin key Secret ({ADMIN_SECRET_NAME}) is (default $POD_NAMESPACE, "
                        "else kfn-system)")
    p.add_argument("--keys", default=None, metavar="FILE",
                   help="take API keys from this file (re-read when it changes) instead of Secrets")
    p.add_argument("--nats-url", default=None, metavar="URL",
                   help="store asynchronous invocations in NATS JetStream there and run NATS triggers "
                        "(default $KFN_NATS_URL; none: async requests are answered 503)")
    p.add_argument("--async-discard-after", default=None, metavar="DURATION",
                   help="the queued async events of a Function deleted this long ago are removed unrun and "
                        "counted (default 1m)")
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="gateway replicas sharing the async queue: each delivers 1/N of a function's async "
                        "concurrency (default $KFN_GATEWAY_REPLICAS, else 1); with --peers-service, only until "
                        "the live count is known, or when it cannot be watched")
    p.add_argument("--peers-service", default=None, metavar="NAME",
                   help="this gateway's own Service in --admin-namespace: the ready endpoints of its "
                        "EndpointSlices are the replicas sharing the async queue, followed as they come and go "
                        "(needs list/watch of endpointslices there; default: none, --replicas is the count)")
    p.add_argument("--region", default=None, metavar="REGION",
                   help="the region the functions run in, as async destination records name it "
                        "(default $KFN_REGION, else us-east-1)")
    p.add_argument("--archive-key-file", default=None, metavar="FILE",
                   help="serve the archive store of requirements built once (/system/archives/, in JetStream at "
                        "--nats-url), checking tokens signed with the key in this file (its raw bytes; the "
                        "operator's --archive-key-file); default: no archive store")
    p.add_argument("--archive-max-bytes", default=None, metavar="BYTES",
                   help="largest build archive the archive store takes, e.g. 512Mi (default 256Mi); else 413")
    p.add_argument("--archive-uploads", type=int, default=None, metavar="N",
                   help="archives the store receives at once, each spooled to $TMPDIR while it arrives "
                        "(default 2); more are answered 503 and their builds retry")
    p.add_argument("--pool-key-file", default=None, metavar="FILE",
                   help="serve scales from zero from the warm pools: claim an idle pool pod and specialise it, "
                        "signing with the key in this file (its raw bytes, 16 at least; the operator's pool "
                        "key); default: no pools, every instance comes from its Deployment")
    p.add_argument("--archive-url", default=None, metavar="URL",
                   help="the archive store (this gateway's Service) as pods reach it, e.g. "
                        "http://kfn-gateway.kfn.svc:8080: a pool pod specialised as a function with "
                        "requirements fetches them there (with --archive-key-file); default: such functions "
                        "take their Deployment")
    _connection_options(p)
    _limit_options(p)
    p.add_argument("--shutdown-delay", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, keep serving (closing each connection after its answer) this long before "
                        "stopping to accept, so load balancers and kube-proxy stop sending first")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("operator", help="run the operator and the autoscaler (on Kubernetes)")
    p.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (default: all)")
    p.add_argument("--prometheus-url", default=None, help="evaluate PromQL here instead of scraping gateways")
    p.add_argument("--standalone", action="store_true", help="no peering (a single operator replica)")
    p.add_argument("--runtime-image", action="append", default=[], metavar="RUNTIME=IMAGE",
                   help="the image for a runtime, e.g. python3.12=registry/runtime-python:3.12 "
                        "(also $KFN_RUNTIME_IMAGES)")
    p.add_argument("--gateway-selector", default=None, metavar="SELECTOR",
                   help="label selector of the gateway Service's EndpointSlices, scraped for load "
                        "(default app.kubernetes.io/name=kfn-gateway)")
    p.add_argument("--autoscale-interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between autoscaling decisions")
    p.add_argument("--metrics-port", type=int, default=None, help="serve the autoscaler's metrics on this port")
    p.add_argument("--health-port", type=int, default=None, help="serve a liveness probe on this port (/healthz)")
    p.add_argument("--sync-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long the Kubernetes API may take to list the functions, deployments and pods before "
                        "each warning (the autoscaler and the scheduler wait for it; default 30)")
    p.add_argument("--archive-url", default=None, metavar="URL",
                   help="the archive store (the gateway) as function pods reach it, e.g. "
                        "http://kfn-gateway.kfn.svc:8080: with --archive-key-file, a build Job installs a "
                        "function's requirements once and its pods fetch them (default $KFN_ARCHIVE_URL; "
                        "none: each pod runs pip)")
    p.add_argument("--archive-key-file", default=None, metavar="FILE",
                   help="the archive store's signing key, the file the gateway has (default $KFN_ARCHIVE_KEY_FILE)")
    p.add_argument("--build-timeout", type=int, default=600, metavar="SECONDS",
                   help="how long a build Job may install requirements before it fails (default 600)")
    p.add_argument("--pool-size", type=int, default=None, metavar="N",
                   help="warm instances per runtime per namespace with Functions a pool can serve; 0: no "
                        "warm pools (default $KFN_POOL_SIZE, else 1)")
    p.add_argument("--pool-key-file", default=None, metavar="FILE",
                   help="the platform's pool key, the file the gateway has (default $KFN_POOL_KEY_FILE; "
                        "none: no warm pools)")
    return parser


class _VersionAction(argparse.Action):
    """`kfn --version`: the installed package's version (from its metadata, read only when asked:
    importing importlib.metadata would slow every command), else the source's own; exit 0."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        import importlib.metadata
        try:
            version = importlib.metadata.version("kfn")
        except importlib.metadata.PackageNotFoundError:
            from kfn import __version__ as version
        print(f"kfn {version}")
        parser.exit()


def _remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default=None,
                   help=f"gateway URL (default ${naming.ENV_GATEWAY} or {naming.DEFAULT_GATEWAY_URL})")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"the API key to send (default ${naming.ENV_API_KEY}); needed for a gateway that "
                        "protects /system/* or the function")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-body-size", default=None, metavar="BYTES",
                   help="largest request body the gateway accepts, e.g. 1Mi (default 6Mi, Lambda's); else 413")
    p.add_argument("--max-async-payload-size", default=None, metavar="BYTES",
                   help="largest event an asynchronous invocation may carry (default 1Mi, Lambda's); else 413")
    p.add_argument("--queue-limit", type=int, default=None, metavar="N",
                   help="requests a function may queue for a free instance before 429 (default 100)")
    p.add_argument("--queue-timeout", default=None, metavar="DURATION",
                   help="how long a request may wait for an instance before 503, e.g. 30s (default 30s)")


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--header-timeout", default=None, metavar="DURATION",
                   help="a request head must arrive within this, e.g. 15s (default 15s); else 408")
    p.add_argument("--body-timeout", default=None, metavar="DURATION",
                   help="a request body must arrive within this (default 60s); else 408")
    p.add_argument("--idle-timeout", default=None, metavar="DURATION",
                   help="close a client connection idle this long (default 75s)")
    p.add_argument("--send-timeout", default=None, metavar="DURATION",
                   help="cut off a client that takes none of its answer this long, dropping the answer "
                        "(default 60s, nginx's send_timeout)")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="open client connections at most; more are answered 503 and closed (default 1024)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CommandError as e:
        print(f"kfn {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def require_kubernetes_extra() -> None:
    """CommandError (exit 2) naming what to install when `kfn[kubernetes]` is not installed."""
    missing = [name for name in KUBERNETES_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"needs the Kubernetes extra ({', '.join(missing)} not installed): "
                           f"pip install 'kfn[kubernetes]'", exit_code=2)


def _dispatch(args: argparse.Namespace) -> int:
    # Imports are local so that `kfn invoke` does not pay for kopf, nor `kfn validate` for aiohttp.
    from kfn.cli import options

    if args.command == "validate":
        from kfn.cli.validate import validate
        return validate(options.validate(args))
    if args.command == "crd":
        from kfn.core import crd
        sys.stdout.write(crd.render_crd_yaml())
        return 0
    if args.command == "local":
        from kfn.cli.local import run_local
        return run_local(options.local(args))
    if args.command == "invoke":
        from kfn.cli.remote import invoke
        return invoke(options.invoke(args))
    if args.command == "list":
        from kfn.cli.remote import list_functions
        return list_functions(options.remote(args))
    if args.command == "logs":
        from kfn.cli.remote import logs
        return logs(options.logs(args))
    if args.command == "async":
        from kfn.cli import remote
        if args.action == "list":
            return remote.async_list(options.async_list(args))
        return remote.async_replay(options.async_replay(args))
    if args.command == "secrets":
        require_kubernetes_extra()
        from kfn.cli.secrets import ensure_secrets
        return ensure_secrets(options.secrets_ensure(args))
    if args.command == "gateway":
        require_kubernetes_extra()
        from kfn.cli.gateway import run_gateway
        return run_gateway(options.gateway(args))
    if args.command == "operator":
        require_kubernetes_extra()
        from kfn.cli.operator import run_operator
        return run_operator(options.operator(args))
    raise CommandError(f"unknown command {args.command!r}", exit_code=2)
