"""``hamanet serve``: a pre-fork supervisor that runs one app in N processes on one port.

The supervisor binds the listening sockets and holds them for its whole life, but never
accepts a connection: for TCP one SO_REUSEPORT socket per process slot, all on the same
address (the kernel spreads connections over them); for ``unix=`` one socket that every
child shares. Each child is a fresh interpreter (``python -m hamanet._child``, so a reload
imports new code) that imports the app, adopts its slot's socket with
``Server.open_socket()``, and reports ready over a pipe.

A listening socket's queue lives as long as any process holds it, so children can come
and go without a connection being refused or reset: on SIGHUP a new child starts for every
slot, on the same sockets, and only once all of them are ready are the old ones told to
stop (SIGTERM: ``server.drain(graceful_timeout)``, which stops accepting and lets its
sessions finish), while connections queued for a child killed with SIGKILL wait in its
slot's backlog until its replacement accepts them. (Closing one socket of a SO_REUSEPORT
group would reset the connections queued in it; that is why the children never bind
their own.)

The sockets are in ``_serve_sockets``, the supervising loop in ``_supervisor``.
"""

from __future__ import annotations

import logging
import os
import threading

from ._defaults import DEFAULT_BACKLOG, DEFAULT_HOST
from ._hamanet import TLSServerContext

__all__ = [
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_PORT",
    "DEFAULT_READY_TIMEOUT",
    "ServeError",
    "check_app",
    "serve",
]

_logger = logging.getLogger("hamanet.serve")

DEFAULT_PORT = 8080
DEFAULT_GRACEFUL_TIMEOUT = 10.0
DEFAULT_READY_TIMEOUT = 30.0


class ServeError(RuntimeError):
    """The supervisor gave up: the app could not be loaded, or its processes kept dying."""


def check_app(app: str) -> str:
    """Checks the syntax of ``PACKAGE.MODULE:ATTR`` (without importing anything: the
    children do); returns it, or raises ValueError saying what is wrong."""
    if not isinstance(app, str):
        raise TypeError(f"app must be a str like 'myapp.server:Handler', not {app!r}")
    example = "as in 'myapp.server:EchoHandler'"
    module, colon, attr = app.partition(":")
    if not colon:
        raise ValueError(
            f"{app!r} has no colon: give the module, a colon, and the handler in it, {example}"
        )
    for what, name in (("module", module), ("attribute", attr)):
        if not name:
            raise ValueError(f"{app!r} names no {what}: {example}")
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(
                f"{app!r}: {name!r} is not a dotted Python name (the {what} before and after "
                f"the colon must be), {example}"
            )
    return app


def serve(
    app: str,
    *,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    unix: str | os.PathLike[str] | None = None,
    processes: int | None = None,
    reactors: int = 1,
    workers: int = 0,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    app_dir: str | os.PathLike[str] | None = None,
    backlog: int = DEFAULT_BACKLOG,
    proxy_protocol: bool = False,
) -> None:
    """Runs ``app`` (``"PACKAGE.MODULE:ATTR"``: a Handler subclass, a Handler instance, or a
    function returning a Handler) in ``processes`` server processes (default: one per CPU)
    sharing one port, until SIGTERM or SIGINT; SIGHUP reloads the app with no connection
    refused. Blocks; call it from the main thread (it handles those signals).

    ``port`` (8080 unless only ``unix`` is given; 0 picks a free one, logged) on ``host``
    (loopback by default: every interface is an explicit ``"0.0.0.0"`` or ``"::"``), and/or
    ``unix``, a Unix socket path. Each process runs ``hamanet.Server(handler,
    reactors=reactors, workers=workers)``, TLS with ``tls_cert`` and ``tls_key`` (PEM).
    ``graceful_timeout``: how long a stopping process may take to finish its sessions.
    ``ready_timeout``: how long a new process may take to load the app and serve.
    ``app_dir`` (default: the current directory) goes first on the children's sys.path.
    ``proxy_protocol``: every connection starts with a PROXY protocol header (behind
    HAProxy with ``send-proxy``/``send-proxy-v2``), as ``Server.open(proxy_protocol=True)``.

    The supervisor logs what its processes do on the ``hamanet.serve`` logger (the
    command line sends it to stderr); each process logs to its stderr at the same level.
    Raises ValueError for bad arguments, OSError when an address cannot be listened on,
    and ServeError when the app cannot be loaded or its processes keep dying.
    """
    check_app(app)
    if processes is None:
        processes = os.cpu_count() or 1
    for name, value, least in (
        ("processes", processes, 1),
        ("reactors", reactors, 1),
        ("workers", workers, 0),
        ("backlog", backlog, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, not {value!r}")
    if not graceful_timeout >= 0:
        raise ValueError(f"graceful_timeout must be >= 0, not {graceful_timeout!r}")
    if not ready_timeout > 0:
        raise ValueError(f"ready_timeout must be > 0, not {ready_timeout!r}")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both tls_cert and tls_key")
    if tls_cert is not None and tls_key is not None:
        tls_cert, tls_key = os.path.abspath(tls_cert), os.path.abspath(tls_key)
        TLSServerContext(tls_cert, tls_key)  # a missing or bad file fails here, at once
    if port is None and unix is None:
        port = DEFAULT_PORT
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, not {port!r}")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("hamanet.serve() handles signals, so it runs on the main thread")

    # Here, not at the top: `import hamanet` stays light for the programs that never
    # serve (the supervisor brings subprocess, select, json and signal).
    from ._serve_sockets import _Listeners
    from ._supervisor import _Supervisor

    listeners = _Listeners()
    try:
        if port is not None:
            listeners.bind_tcp(host, port, processes, backlog)
        if unix is not None:
            listeners.bind_unix(os.fspath(unix), backlog)
        spec = {
            "app": app,
            "app_dir": os.path.abspath(app_dir if app_dir is not None else os.getcwd()),
            "reactors": reactors,
            "workers": workers,
            "tls_cert": tls_cert and os.fspath(tls_cert),
            "tls_key": tls_key and os.fspath(tls_key),
            "graceful_timeout": float(graceful_timeout),
            "proxy_protocol": bool(proxy_protocol),
            "log_level": logging.getLevelName(_logger.getEffectiveLevel()),
        }
        _logger.info(
            "listening on %s: %d processes of %s",
            " and ".join(listeners.describe()),
            processes,
            app,
        )
        supervisor = _Supervisor(spec, listeners, processes, graceful_timeout, ready_timeout)
        supervisor.run()
    finally:
        listeners.close()
