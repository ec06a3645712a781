"""The echo server the benchmark runs on each asyncio-compatible loop (asyncio, uvloop, rloop).

One `asyncio.Protocol`, the idiomatic fast path on every one of these loops: every byte
received is written back to the same transport, and EOF closes the connection (the default
`eof_received`). The per-loop scripts only choose the loop.

Every server here takes `[--tls CERT KEY] PORT`: with `--tls` the listener speaks TLS
(`server_ssl_context`: TLS 1.3, no session tickets) through the loop's own SSL transport,
the idiomatic way on each of these loops, and the protocols see plaintext as before.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import ssl
import sys
from typing import Callable


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def raise_nofile_limit() -> None:
    """The idle scenario holds 10,000 connections open: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS side of every Python server in the benchmark: TLS 1.3 only and no session
    tickets (`num_tickets = 0`: hamanet's bench server sends none either, so no server
    pays for tickets its peer never uses, and every connection is a full handshake). The
    cipher suite is the client's choice: the load generator offers only AES-128-GCM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0
    return ctx


def parse_listen_args(args: list[str], usage: str) -> tuple[int, ssl.SSLContext | None]:
    """`[--tls CERT KEY] PORT`: the port, and the TLS context when `--tls` is given."""
    tls = None
    if args[:1] == ["--tls"]:
        if len(args) < 3:
            raise SystemExit(usage)
        tls = server_ssl_context(args[1], args[2])
        args = args[3:]
    if len(args) != 1 or not args[0].isdigit():
        raise SystemExit(usage)
    return int(args[0]), tls


def serve(
    name: str,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    protocol: Callable[[], asyncio.BaseProtocol] = Echo,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serves `protocol` (echo by default) on 127.0.0.1:`port` until SIGTERM, with
    backlog 1024 like every server here; TLS with `tls`. Without `port`, both come from
    the command line: `[--tls CERT KEY] PORT`."""
    if port is None:
        port, tls = parse_listen_args(sys.argv[1:], f"usage: {sys.argv[0]} [--tls CERT KEY] PORT")
    raise_nofile_limit()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(protocol, "127.0.0.1", port, backlog=1024, ssl=tls)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print(f"{name}: listening on 127.0.0.1:{port}{' (TLS)' if tls else ''}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


class PushBack(asyncio.Protocol):
    """The same push-back as hamanet's examples: stop reading while replies pile up."""

    transport: asyncio.Transport

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def serve_on_named_loop(app: str, usage: str, protocol: Callable[[], asyncio.BaseProtocol]) -> None:
    """The protocol servers' main: serves `protocol` on the loop and port the command line
    names (`asyncio|uvloop [--tls CERT KEY] PORT`), as `{app}_{loop}`; `usage` when the
    arguments are wrong."""
    if len(sys.argv) < 3:
        raise SystemExit(usage)
    loop_name = sys.argv[1]
    port, tls = parse_listen_args(sys.argv[2:], usage)
    serve(f"{app}_{loop_name}", new_loop_factory(loop_name), protocol, port, tls)


def new_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for `asyncio` or `uvloop` (the protocol servers' argv)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise SystemExit(f"unknown loop {name!r}: asyncio or uvloop")
