"""The HTTP example's logic on asyncio or uvloop, for the benchmark's `http` scenario.

.venv/bin/python bench/servers/http_logic_server.py asyncio|uvloop [--tls CERT KEY] PORT

Exactly the code `examples/http_server.py` runs on hamanet (`examples/protocols/http.py`:
one HttpConnection per connection, `feed(data) -> (responses, close_after_sending)`), in
the idiomatic fast form on these loops: an `asyncio.Protocol` whose `data_received` feeds
the parser and writes the responses. The listener, backlog and SIGTERM handling are the
echo servers' (`protocol_echo.serve`), so only the loop differs between runs. With `--tls CERT KEY`
the listener is TLS (the `https` scenario; `protocol_echo.server_ssl_context`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from protocol_echo import PushBack, serve_on_named_loop

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
    serve_on_named_loop("http", __doc__.strip().splitlines()[2], HttpProtocol)


if __name__ == "__main__":
    main()
