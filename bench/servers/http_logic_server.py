"""The HTTP example's logic on asyncio or uvloop, for the benchmark's `http` scenario.

.venv/bin/python bench/servers/http_logic_server.py asyncio|uvloop PORT

Exactly the code `examples/http_server.py` runs on hamanet (`examples/protocols/http.py`:
one HttpConnection per connection, `feed(data) -> (responses, close_after_sending)`), in
the idiomatic fast form on these loops: an `asyncio.Protocol` whose `data_received` feeds
the parser and writes the responses. The listener, backlog and SIGTERM handling are the
echo servers' (`protocol_echo.serve`), so only the loop differs between runs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from protocol_echo import PushBack, new_loop_factory, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from protocols.http import HttpConnection


class HttpProtocol(PushBack):
    __slots__ = ("http", "transport")

    def __init__(self) -> None:
        self.http = HttpConnection()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response, close = self.http.feed(data)
        if response:
            self.transport.write(response)
        if close:
            self.transport.close()  # after the buffered response has been sent


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2])
    loop_name, port = sys.argv[1], sys.argv[2]
    new_loop = new_loop_factory(loop_name)
    sys.argv[1:] = [port]  # protocol_echo.serve reads the port from argv[1]
    serve(f"http_{loop_name}", new_loop, HttpProtocol)


if __name__ == "__main__":
    main()
