"""UDP echo on asyncio or uvloop: the udp64 scenario's baseline and its asyncio column.

    .venv/bin/python bench/servers/udp_echo_asyncio.py asyncio|uvloop PORT

One `asyncio.DatagramProtocol` on `loop.create_datagram_endpoint`, the idiomatic way on
both loops: `datagram_received` sends every datagram back to its sender with
`transport.sendto(data, addr)`. Both loops read one datagram per `recvfrom` and call
`datagram_received` once per datagram; `sendto` tries the socket at once and buffers only
what the kernel refuses (then waits for the socket to be writable).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from protocol_echo import new_loop_factory


class UdpEcho(asyncio.DatagramProtocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # one peer's ICMP error is no reason to stop serving the others


def main() -> None:
    usage = f"usage: {sys.argv[0]} asyncio|uvloop PORT"
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        raise SystemExit(usage)
    loop_name, port = sys.argv[1], int(sys.argv[2])
    loop = new_loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", port))
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print(f"udp_echo_{loop_name}: listening on 127.0.0.1:{port}", flush=True)
    try:
        loop.run_forever()
    finally:
        transport.close()
        loop.close()


if __name__ == "__main__":
    main()
