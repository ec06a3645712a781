"""The HTTP example's static files on asyncio or uvloop, for the benchmark's `static10m`.

.venv/bin/python bench/servers/static_server.py asyncio|uvloop --root DIR PORT

Exactly the protocol code `examples/http_server.py --root DIR` runs on hamanet
(`examples/protocols/http.py`: one `HttpConnection(files=StaticFiles(DIR))` per
connection, `feed_parts(data) -> (parts, close_after_sending)`, the parts the response
heads as bytes and the files as open file objects, in order), in an `asyncio.Protocol`:
bytes go out with `transport.write`, each file body with
`await loop.sendfile(transport, file, 0, size)`, the documented zero-copy API.

- asyncio: `loop.sendfile` on a plain TCP transport is native: it waits for the
  transport's buffer to empty (the head), then `os.sendfile` until done, waiting for
  writability between calls (`BaseSelectorEventLoop._sendfile_native`, `sock_sendfile`).
- uvloop (0.23) does not implement `loop.sendfile` at all: its `Loop` inherits
  `asyncio.AbstractEventLoop.sendfile`, which raises `NotImplementedError`, whatever
  `fallback` says (neither native sendfile nor asyncio's read-and-write fallback). Code
  that must run on uvloop catches that and sends the file itself, as aiohttp does; so
  does this server, the cheapest way it can: `os.pread` of 256 KiB (asyncio's
  `SENDFILE_FALLBACK_READBUFFER_SIZE`) into a new `bytes`, `transport.write` it, and wait
  whenever the transport pauses writing (its high-water mark), in the loop's thread (no
  executor: the file is in the page cache). Each body byte is copied twice in the server
  (page cache to Python, Python to the socket), where sendfile(2) copies none.

Ordering and flow control: one sender task per connection sends the queued parts in order
(responses to pipelined requests stay in order), and reading is paused while it runs, so
a client that pipelines faster than it reads is not read from (the same push-back as the
example's). At SIGTERM the server prints `hamanet-stats {...}`: how many bodies went out
through `loop.sendfile` and how many by the read-and-write fallback (the report shows it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO

from protocol_echo import new_loop_factory, raise_nofile_limit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from protocols.http import HttpConnection, StaticFiles

USAGE = "usage: static_server.py asyncio|uvloop --root DIR PORT"
# The fallback's read size: asyncio's own (constants.SENDFILE_FALLBACK_READBUFFER_SIZE).
CHUNK = 256 * 1024
# Bodies sent each way, printed at exit.
STATS = {"bodies_sendfile": 0, "bodies_fallback": 0}


class StaticProtocol(asyncio.Protocol):
    __slots__ = ("close_after", "http", "loop", "queue", "sender", "transport", "writable")

    def __init__(self, files: StaticFiles) -> None:
        self.http = HttpConnection(files=files)
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[bytes | BinaryIO] = collections.deque()
        self.sender: asyncio.Task | None = None  # the task sending `queue`, while it runs
        self.writable: asyncio.Future | None = None  # set while writing is paused
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parts, close = self.http.feed_parts(data)
        self.close_after |= close
        if self.sender is None:
            # Heads and error responses go out at once, until the first file.
            for i, part in enumerate(parts):
                if not isinstance(part, bytes):
                    parts = parts[i:]
                    break
                self.transport.write(part)
            else:
                if close:
                    self.transport.close()  # after the buffered response has been sent
                return
            self.transport.pause_reading()
            self.sender = self.loop.create_task(self._send())
        self.queue.extend(parts)

    async def _send(self) -> None:
        transport = self.transport
        try:
            while self.queue:
                part = self.queue.popleft()
                if isinstance(part, bytes):
                    transport.write(part)
                    continue
                with part:
                    await self._send_file(part)
        except (OSError, RuntimeError) as exc:  # the peer went away, a truncated file
            self._drop_queue()
            transport.abort()
            if not isinstance(exc, ConnectionError):
                print(f"static server: {exc!r}", file=sys.stderr, flush=True)
            return
        finally:
            self.sender = None
        if self.close_after:
            transport.close()
        else:
            transport.resume_reading()

    async def _send_file(self, file: BinaryIO) -> None:
        count = os.fstat(file.fileno()).st_size
        try:
            await self.loop.sendfile(self.transport, file, 0, count)
        except NotImplementedError:  # uvloop: no loop.sendfile (see the module's doc)
            await self._read_and_write(file, count)
            STATS["bodies_fallback"] += 1
        else:
            STATS["bodies_sendfile"] += 1

    async def _read_and_write(self, file: BinaryIO, count: int) -> None:
        fd = file.fileno()
        sent = 0
        while sent < count:
            if self.transport.is_closing():  # the peer went away: writes would be dropped
                raise ConnectionError("the connection closed during the body")
            chunk = os.pread(fd, min(CHUNK, count - sent), sent)
            if not chunk:
                raise OSError(f"the file ended {count - sent} bytes short of its size")
            self.transport.write(chunk)
            sent += len(chunk)
            if self.writable is not None:
                await self.writable

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = self.loop.create_future()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set_result(None)
            self.writable = None
        if self.sender is None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # A sender still running (a peer gone mid-body) stops where it waits.
        if self.writable is not None:
            self.writable.cancel()
            self.writable = None
        if self.sender is not None:
            self.sender.cancel()
        self._drop_queue()

    def _drop_queue(self) -> None:
        while self.queue:
            part = self.queue.popleft()
            if not isinstance(part, bytes):
                part.close()


def main() -> None:
    args = sys.argv[1:]
    if len(args) != 4 or args[1] != "--root" or not args[3].isdigit():
        raise SystemExit(USAGE)
    loop_name, root, port = args[0], args[2], int(args[3])
    files = StaticFiles(root)
    raise_nofile_limit()
    loop = new_loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: StaticProtocol(files), "127.0.0.1", port, backlog=1024)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print(f"static_{loop_name}: listening on 127.0.0.1:{port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()
        print("hamanet-stats " + json.dumps(STATS), flush=True)


if __name__ == "__main__":
    main()
