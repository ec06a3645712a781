"""The echo server the benchmark runs on each asyncio-compatible loop (asyncio, uvloop, rloop).

One `asyncio.Protocol`, the idiomatic fast path on every one of these loops: every byte
received is written back to the same transport, and EOF closes the connection (the default
`eof_received`). The per-loop scripts only choose the loop.
"""

from __future__ import annotations

import asyncio
import resource
import signal
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


def serve(
    name: str,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    protocol: Callable[[], asyncio.BaseProtocol] = Echo,
    port: int | None = None,
) -> None:
    """Serves `protocol` (echo by default) on 127.0.0.1:`port` (default argv[1]) until
    SIGTERM, with backlog 1024 like every server here."""
    port = int(sys.argv[1]) if port is None else port
    raise_nofile_limit()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(protocol, "127.0.0.1", port, backlog=1024))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print(f"{name}: listening on 127.0.0.1:{port}", flush=True)
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
    names (`asyncio|uvloop PORT`), as `{app}_{loop}`; `usage` when the arguments are wrong."""
    if len(sys.argv) != 3:
        raise SystemExit(usage)
    loop_name, port = sys.argv[1], int(sys.argv[2])
    serve(f"{app}_{loop_name}", new_loop_factory(loop_name), protocol, port)


def new_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for `asyncio` or `uvloop` (the protocol servers' argv)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise SystemExit(f"unknown loop {name!r}: asyncio or uvloop")
