"""The Redis-protocol example's logic on asyncio or uvloop, for the benchmark's `redis` scenario.

.venv/bin/python bench/servers/redis_logic_server.py asyncio|uvloop PORT

Exactly the code `examples/redis_server.py` runs on hamanet (`examples/protocols/resp.py`:
one RedisLogic store, one RespConnection per connection), in the idiomatic fast form on
these loops: an `asyncio.Protocol` whose `data_received` feeds the parser and writes the
replies. The listener, backlog and SIGTERM handling are the echo servers'
(`protocol_echo.serve`), so only the loop differs between runs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from protocol_echo import PushBack, new_loop_factory, serve

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
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2])
    loop_name, port = sys.argv[1], sys.argv[2]
    new_loop = new_loop_factory(loop_name)
    logic = RedisLogic()
    sys.argv[1:] = [port]  # protocol_echo.serve reads the port from argv[1]
    serve(f"redis_{loop_name}", new_loop, lambda: RedisProtocol(logic))


if __name__ == "__main__":
    main()
