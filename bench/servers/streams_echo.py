"""The streams scenarios: one echo program on asyncio's streams or on hamanet.aio's.

.venv/bin/python bench/servers/streams_echo.py asyncio|uvloop asyncio|hamanet read|lines PORT

The first argument is the event loop, the second the streams module, the third the echo:
`read` echoes whatever `reader.read(64 KiB)` returns (`streams-rr1k`), `lines` echoes
each `reader.readline()` (`streams-lines`); both write, then `await writer.drain()`, as
the asyncio documentation's echo server does. The program text is the same whichever
module serves it: `streams` is `asyncio` or `hamanet.aio`, nothing else changes, which is
what hamanet.aio's streams promise (examples/streams_echo.py). Every byte goes back to its
own connection in order and EOF closes the connection, so the load generator's
byte-for-byte check holds. Listener, backlog and SIGTERM as the echo servers'
(`protocol_echo.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal

from protocol_echo import new_loop_factory, raise_nofile_limit

READ_SIZE = 64 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("loop", choices=("asyncio", "uvloop"))
    parser.add_argument("streams", choices=("asyncio", "hamanet"))
    parser.add_argument("echo", choices=("read", "lines"))
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    raise_nofile_limit()
    # The only difference between the servers compared: which module's start_server.
    streams = importlib.import_module("hamanet.aio" if args.streams == "hamanet" else "asyncio")

    async def echo_chunks(reader, writer) -> None:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()

    async def echo_lines(reader, writer) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()

    echo = echo_chunks if args.echo == "read" else echo_lines

    async def handle(reader, writer) -> None:
        try:
            await echo(reader, writer)
        except ConnectionError:
            pass  # the peer reset: nothing left to answer
        finally:
            writer.close()
            # A reset may surface here too; the connection is gone either way.
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve() -> None:
        server = await streams.start_server(handle, "127.0.0.1", args.port, backlog=1024)
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        name = f"streams_{args.echo}_{args.streams}_on_{args.loop}"
        print(f"{name}: listening on 127.0.0.1:{args.port}", flush=True)
        async with server:
            await stopping.wait()

    loop = new_loop_factory(args.loop)()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()


if __name__ == "__main__":
    main()
