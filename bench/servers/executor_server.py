"""The work scenarios on asyncio or uvloop: blocking work handed to a thread pool.

.venv/bin/python bench/servers/executor_server.py asyncio|uvloop sleep|sha256 [--workers N] PORT

The idiomatic form on these loops (asyncio streams): per connection, in order, read a
chunk, `await loop.run_in_executor(pool, work, ...)`, write the chunk back and drain. The
work is `time.sleep(--delay)` (5 ms; the `blocking` scenario) or
`hashlib.sha256(chunk).digest()` (the `hash` scenario; hashlib releases the GIL for large
inputs). The pool has `--workers` threads (32 by default), shared by every connection.
Every byte is echoed to its own connection in order, and EOF closes the connection, so the
load generator's byte-for-byte check holds. Listener, backlog and SIGTERM as the echo
servers' (`protocol_echo.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from protocol_echo import new_loop_factory, raise_nofile_limit

READ_SIZE = 256 * 1024  # as much as hamanet reads at once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("loop", choices=("asyncio", "uvloop"))
    parser.add_argument("work", choices=("sleep", "sha256"))
    parser.add_argument("--workers", type=int, default=32, help="the pool's threads (32)")
    parser.add_argument("--delay", type=float, default=0.005, help="sleep: seconds (0.005)")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    raise_nofile_limit()
    pool = ThreadPoolExecutor(args.workers)
    if args.work == "sleep":
        work, arg = time.sleep, lambda data: args.delay
    else:
        work, arg = lambda data: hashlib.sha256(data).digest(), lambda data: data

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(READ_SIZE):
                await loop.run_in_executor(pool, work, arg(data))
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the peer reset: nothing left to answer
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(
            handle, "127.0.0.1", args.port, backlog=1024, limit=READ_SIZE
        )
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        name = f"{args.work}_{args.loop}_executor"
        print(f"{name}: listening on 127.0.0.1:{args.port} ({args.workers} threads)", flush=True)
        async with server:
            await stopping.wait()

    loop = new_loop_factory(args.loop)()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
        pool.shutdown(cancel_futures=True)


if __name__ == "__main__":
    main()
