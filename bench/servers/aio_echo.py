"""The `aio-rr64` scenario: hamanet's echo handler served by `hamanet.aio.serve` on an
asyncio-compatible loop, against the same handler on hamanet's own reactor thread
(`examples/echo_server.py`).

.venv/bin/python bench/servers/aio_echo.py asyncio|uvloop PORT

The handler and its watermarks are `examples/echo_server.py`'s, imported, so the two
servers differ only in what drives the reactor: its own thread there, the event loop's
readiness of its epoll fd (`loop.add_reader`) here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import hamanet.aio
from protocol_echo import new_loop_factory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from echo_server import WRITE_HIGH, WRITE_LOW, Echo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("loop", choices=("asyncio", "uvloop"))
    parser.add_argument("port", type=int)
    args = parser.parse_args()

    async def serve() -> None:
        server = await hamanet.aio.serve(
            Echo(), "127.0.0.1", args.port, write_high=WRITE_HIGH, write_low=WRITE_LOW
        )
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        print(f"aio_echo_on_{args.loop}: listening on 127.0.0.1:{server.port}", flush=True)
        async with server:
            await stopping.wait()

    loop = new_loop_factory(args.loop)()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()


if __name__ == "__main__":
    main()
