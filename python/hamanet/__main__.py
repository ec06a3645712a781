"""``python -m hamanet``: ``--version``, and ``serve``, the pre-fork supervisor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from . import __version__
from ._defaults import DEFAULT_BACKLOG, DEFAULT_HOST
from ._serve import (
    DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_READY_TIMEOUT,
    ServeError,
    check_app,
    serve,
)

_SERVE_DESCRIPTION = """\
Runs a hamanet handler in PROCESSES server processes on one port, supervised: a process
that dies is restarted (with backoff; a crash loop stops everything and exits 1), SIGHUP
reloads the app (new processes start on the same listening sockets, and the old ones stop
once the new are ready: no connection is refused), and SIGTERM or Ctrl-C stops every
process gracefully (a second one kills them). APP is PACKAGE.MODULE:ATTR, where ATTR is a
hamanet.Handler subclass, a Handler instance, or a function that returns a Handler;
the current directory (or --app-dir) goes first on sys.path, as with uvicorn.
"""


def _app(text: str) -> str:
    try:
        return check_app(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hamanet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hamanet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    cpus = os.cpu_count() or 1
    serve_parser = commands.add_parser(
        "serve",
        help="run a handler in several processes on one port",
        description=_SERVE_DESCRIPTION,
    )
    add = serve_parser.add_argument
    add("app", metavar="APP", type=_app, help="PACKAGE.MODULE:ATTR, e.g. myapp.server:Echo")
    add(
        "--port",
        type=_port,
        help=f"TCP port ({DEFAULT_PORT} unless only --unix is given; 0 picks a free one, "
        "logged on the 'listening on' line)",
    )
    add(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}, loopback only, as "
        "hamanet.Server.open; every interface is an explicit 0.0.0.0 or ::)",
    )
    add("--unix", metavar="PATH", help="listen on a Unix domain socket at PATH")
    add(
        "--processes",
        type=_int_at_least(1),
        default=cpus,
        help=f"server processes (default: one per CPU, {cpus} here)",
    )
    add("--reactors", type=_int_at_least(1), default=1, help="reactor threads per process")
    add("--workers", type=_int_at_least(0), default=0, help="worker threads per process")
    add("--tls-cert", metavar="FILE", help="PEM certificate chain (with --tls-key): TLS")
    add("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    add(
        "--graceful-timeout",
        type=_seconds,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        metavar="S",
        help="seconds a stopping process has to finish its sessions "
        f"(default {DEFAULT_GRACEFUL_TIMEOUT:g})",
    )
    add(
        "--ready-timeout",
        type=_seconds,
        default=DEFAULT_READY_TIMEOUT,
        metavar="S",
        help="seconds a new process has to load the app and serve "
        f"(default {DEFAULT_READY_TIMEOUT:g})",
    )
    add("--app-dir", metavar="DIR", help="where APP is imported from (default: .)")
    add("--backlog", type=_int_at_least(1), default=DEFAULT_BACKLOG, help="listen backlog")
    add(
        "--proxy-protocol",
        action="store_true",
        help="every connection starts with a PROXY protocol v1/v2 header (behind HAProxy)",
    )
    add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="of the supervisor's and its processes' logs, on stderr (default info)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.ready_timeout == 0:
        parser.error("--ready-timeout must be more than 0")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        serve(
            args.app,
            port=args.port,
            host=args.host,
            unix=args.unix,
            processes=args.processes,
            reactors=args.reactors,
            workers=args.workers,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            graceful_timeout=args.graceful_timeout,
            ready_timeout=args.ready_timeout,
            app_dir=args.app_dir,
            backlog=args.backlog,
            proxy_protocol=args.proxy_protocol,
        )
    except ServeError:
        return 1  # logged where it happened
    except (OSError, ValueError) as exc:
        logging.getLogger("hamanet.serve").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
