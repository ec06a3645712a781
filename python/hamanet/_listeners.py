"""Listening stream sockets (TCP and Unix): what hamanet.Server and hamanet.aio.Server
share to open them on their native loop."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._defaults import DEFAULT_BACKLOG, DEFAULT_HOST
from ._hamanet import LifecycleError, Loop, TLSServerContext

if TYPE_CHECKING:
    import socket


class Listeners:
    """The listening half of a server, shared by ``hamanet.Server`` and
    ``hamanet.aio.Server``: the addresses it opens on its native loop ``_loop``."""

    _loop: Loop
    _addresses: list[Any]

    def open(
        self,
        port: int,
        host: str = DEFAULT_HOST,
        *,
        backlog: int = DEFAULT_BACKLOG,
        reuse_port: bool = False,
        dual_stack: bool = False,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> tuple[str, int]:
        """Binds and listens on ``host:port`` (port 0 picks a free one); returns the bound
        address. The default host is loopback: listening on every interface takes an
        explicit ``host="0.0.0.0"`` (or ``"::"``). A port in use raises OSError(EADDRINUSE).
        Can be called before or after start(), several times for several addresses.
        ``reuse_port=True`` (SO_REUSEPORT) lets several processes listen on one port;
        ``dual_stack=True`` makes an IPv6 listener (``host="::"``) accept IPv4 too.
        With ``tls`` (a ``TLSServerContext``) every session of this listener is TLS: its
        handler sees plaintext, and ``on_connect`` follows the handshake; a failed
        handshake is ``on_close(session, TLSError)`` without an ``on_connect``.
        With ``proxy_protocol=True`` (behind HAProxy and the like) every connection must
        start with a PROXY protocol header (v1 or v2), within ``proxy_timeout`` seconds
        (default 5): ``session.peer_addr`` is then the client's address, and a connection
        without a valid header is closed before any callback (see the README).
        """
        # (host, port) for IPv6 too: flowinfo and scope_id say nothing about a listener.
        flags = (bool(reuse_port), bool(dual_stack))
        proxy = (bool(proxy_protocol), proxy_timeout)
        address = self._loop.listen(host, port, backlog, *flags, tls, *proxy)[:2]
        self._addresses.append(address)
        return address

    def open_unix(
        self,
        path: str | os.PathLike[str],
        *,
        backlog: int = DEFAULT_BACKLOG,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> str:
        """Binds and listens on a Unix domain stream socket at ``path``; returns the path.
        A socket file left behind by a dead process is replaced; one a live server owns
        raises OSError(EADDRINUSE); a path over 107 bytes raises ValueError. The file is
        removed when the server stops. ``tls``, ``proxy_protocol`` and ``proxy_timeout``
        as for ``open``."""
        proxy = (bool(proxy_protocol), proxy_timeout)
        address = self._loop.listen_unix(path, backlog, tls, *proxy)
        self._addresses.append(address)
        return address

    def open_socket(
        self,
        sock: socket.socket | int,
        *,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> tuple[str, int] | str:
        """Serves a listening socket someone else bound: a ``socket.socket`` (or anything
        with ``fileno()``) or a descriptor number, TCP or Unix, on which ``listen()`` was
        called. Returns its address. The server works on its own copy and the caller
        keeps theirs, so a supervisor can hold one socket while its children take turns
        serving it (its queue of connections outlives each of them): ``hamanet serve``
        does so. The socket is made non-blocking (a flag of the socket itself, so the
        caller's copy too), the server's ``nodelay``/``keepalive``/buffer options are set
        on it, and a Unix socket's file is not removed when the server stops: whoever
        bound it does that. Anything but a listening stream socket raises ValueError.
        ``tls``, ``proxy_protocol`` and ``proxy_timeout`` as for ``open``."""
        proxy = (bool(proxy_protocol), proxy_timeout)
        address = self._loop.listen_socket(sock, tls, *proxy)
        if isinstance(address, tuple):
            address = address[:2]
        self._addresses.append(address)
        return address

    def stop_accepting(self) -> None:
        """Closes every listener, once each reactor has accepted what is queued then,
        while the open sessions go on: a connection arriving later is refused, or waits in
        the queue of an adopted socket for whoever else serves it. From another thread it
        returns once every reactor has done so (``session_count`` then counts the last
        ones accepted). A drain's first step: see ``drain()``."""
        self._loop.stop_accepting()

    @property
    def addresses(self) -> list[Any]:
        """Every address opened: (host, port) tuples, and paths for Unix sockets."""
        return list(self._addresses)

    @property
    def port(self) -> int:
        """The port of the first TCP open() (useful after ``open(0)``)."""
        for address in self._addresses:
            if isinstance(address, tuple):
                return address[1]
        raise LifecycleError("the server has no TCP port: call open(port) first")
