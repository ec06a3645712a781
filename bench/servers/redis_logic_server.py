"""The Redis-protocol example's logic on asyncio or uvloop, for the benchmark's `redis` scenario.

.venv/bin/python bench/servers/redis_logic_server.py asyncio|uvloop [--tls CERT KEY] PORT

Exactly the code `examples/redis_server.py` runs on hamanet (`examples/protocols/resp.py`:
one RedisLogic store, one RespConnection per connection), in the idiomatic fast form on
these loops: an `asyncio.Protocol` whose `data_received` feeds the parser and writes the
replies. The listener, backlog and SIGTERM handling are the echo servers'
(`protocol_echo.serve`), so only the loop differs between runs. With `--tls CERT KEY`
the listener is TLS (the `redis-tls` scenario; `protocol_echo.server_ssl_context`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from protocol_echo import PushBack, serve_on_named_loop

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from protocols.resp import RedisLogic, RespConnection


class RedisProtocol(PushBack):
    __slots__ = ("resp", "transport")

    def __init__(self, logic: RedisLogic) -> None:
        self.resp = RespConnection(logic)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        reply = resp.feed(data)
        if reply:
            self.transport.write(reply)
        if resp.closing:
            self.transport.close()  # after the buffered reply has been sent


def main() -> None:
    logic = RedisLogic()
    serve_on_named_loop("redis", __doc__.strip().splitlines()[2], lambda: RedisProtocol(logic))


if __name__ == "__main__":
    main()
