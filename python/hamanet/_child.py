"""One process of ``hamanet serve``: started by the supervisor (``_serve``), not an API.

It first arranges to die with its parent, then imports the app, serves the listening
sockets the parent handed it (``Server.open_socket()``: it never binds its own), reports
ready over a pipe, and on SIGTERM drains (``server.drain(graceful_timeout)``: it stops
accepting, lets its sessions finish, then stops what is left), so a reload cuts no
exchange short.
SIGINT and SIGHUP are ignored: a terminal sends them to the whole process group, and the
supervisor alone decides what they mean.

It takes one argument, a JSON object from the supervisor (see ``_supervisor._Supervisor``).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import sys

# Running ``-m hamanet._child`` imports the package first anyway, before any line here.
from ._endpoint import Server
from ._hamanet import TLSServerContext
from ._handler import Handler
from ._processes import APP_ERROR, EXIT_APP_ERROR, READY

_PR_SET_PDEATHSIG = 1

_stop_requested = False
_serving = False


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies, even by SIGKILL, so no child is
    orphaned; then check the parent is still the one that started it (it may have died
    before the prctl, which would then never fire)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        sys.stderr.write(f"hamanet serve: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}\n")
    if os.getppid() != parent:
        os._exit(1)


def _on_sigterm(signum: int, frame: object) -> None:
    global _stop_requested
    if not _serving:
        # Still importing or opening: nothing to finish, and an import can take long.
        os._exit(0)
    _stop_requested = True


def _report(fd: int, message: bytes) -> None:
    try:
        os.write(fd, message)
        os.close(fd)
    except OSError:
        pass  # the supervisor is gone; its death signal will follow


def _load_handler(app: str, app_dir: str) -> Handler:
    """``PACKAGE.MODULE:ATTR`` to a handler: ATTR may be a Handler instance, a Handler
    subclass (instantiated once) or a factory returning a Handler."""
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    module_name, _, attr = app.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Handler):
        return target
    if isinstance(target, type) and issubclass(target, Handler):
        return target()
    if isinstance(target, type) or not callable(target):
        raise TypeError(
            f"{app} is not a hamanet.Handler subclass, a Handler instance, or a function "
            f"that returns a Handler: it is {type(target).__name__} {target!r:.60}"
        )
    handler = target()
    if not isinstance(handler, Handler):
        raise TypeError(
            f"{app}() returned a {type(handler).__name__}, not a hamanet.Handler instance"
        )
    return handler


def _open(spec: dict) -> Server:
    handler = _load_handler(spec["app"], spec["app_dir"])
    server = Server(handler, reactors=spec["reactors"], workers=spec["workers"])
    tls = None
    if spec["tls_cert"]:
        tls = TLSServerContext(spec["tls_cert"], spec["tls_key"])
    for fd in spec["listen_fds"]:
        sock = socket.socket(fileno=fd)
        try:
            # A copy: this one is closed below.
            server.open_socket(sock, tls=tls, proxy_protocol=spec["proxy_protocol"])
        finally:
            sock.close()
    return server


def main(argument: str) -> int:
    global _serving
    spec = json.loads(argument)
    _die_with_parent(spec["parent"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(
        level=spec["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s [slot {spec['slot']} pid %(process)d]: "
        "%(message)s",
    )
    logger = logging.getLogger("hamanet.serve")
    ready_fd = spec["ready_fd"]
    try:
        server = _open(spec)
    except BaseException as exc:
        logger.error("cannot load the app %s", spec["app"], exc_info=True)
        summary = f"{type(exc).__name__}: {exc}".encode(errors="replace")
        _report(ready_fd, APP_ERROR + summary)
        return EXIT_APP_ERROR
    _serving = True
    server.start()
    _report(ready_fd, READY)
    parent = spec["parent"]
    while not _stop_requested:
        # join() runs Python signal handlers while it waits (every 50 ms).
        if server.join(0.2):
            logger.error("the server stopped by itself; exiting")
            return 1
        if os.getppid() != parent:
            logger.warning("the supervisor is gone; stopping")
            break
    timeout = spec["graceful_timeout"]
    logger.debug(
        "draining: up to %g s for %d sessions to finish",
        timeout,
        server.session_count,
    )
    server.drain(timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
