"""The listening sockets of ``hamanet serve``, which the supervisor binds and holds for
its whole life (see ``_serve``): one SO_REUSEPORT socket per process slot, or one Unix
socket every child shares."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import Any


class _Listeners:
    """The listening sockets, which the supervisor owns for its whole life."""

    def __init__(self) -> None:
        self.tcp: list[socket.socket] = []
        self.unix: socket.socket | None = None
        self._unix_path: str | None = None
        self._unix_inode: int | None = None

    def bind_tcp(self, host: str, port: int, count: int, backlog: int) -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, address = infos[0][0], infos[0][4]
        if port:
            # SO_REUSEPORT would let the group join a live listener of the same user (a
            # second supervisor, say): refuse a port in use, as Server.open does.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _bind(probe, address, host, port)
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            self.tcp.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _bind(sock, address, host, port)
            sock.listen(backlog)
            # With port 0, slot 0 picks the port and every other slot joins it.
            address = sock.getsockname()

    def bind_unix(self, path: str, backlog: int) -> None:
        """As Server.open_unix: a socket file left by a dead process is replaced; one a
        live server owns is EADDRINUSE; anything else at ``path`` is never touched."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(
                    errno.EEXIST, "exists and is not a socket, so it is left alone", path
                )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                except ConnectionRefusedError:
                    os.unlink(path)  # nobody listens: a dead process left it
                else:
                    raise OSError(errno.EADDRINUSE, "a live server listens on it", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix = sock
        sock.bind(path)
        self._unix_path, self._unix_inode = path, os.stat(path).st_ino
        sock.listen(backlog)

    def fds_for(self, slot: int) -> list[int]:
        fds = [self.tcp[slot].fileno()] if self.tcp else []
        if self.unix is not None:
            fds.append(self.unix.fileno())
        return fds

    def describe(self) -> list[str]:
        described = []
        if self.tcp:
            host, port = self.tcp[0].getsockname()[:2]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            described.append(f"{where} (one SO_REUSEPORT socket per process)")
        if self._unix_path is not None:
            described.append(f"{self._unix_path} (one socket, shared)")
        return described

    def close(self) -> None:
        for sock in self.tcp:
            sock.close()
        self.tcp = []
        if self.unix is not None:
            self.unix.close()
            self.unix = None
        if self._unix_path is not None:
            # Only the file this process made: another server may have replaced it.
            with contextlib.suppress(OSError):
                if os.stat(self._unix_path).st_ino == self._unix_inode:
                    os.unlink(self._unix_path)
            self._unix_path = None


def _bind(sock: socket.socket, address: Any, host: str, port: int) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
