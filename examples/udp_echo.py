"""A UDP echo server: every datagram received is sent back to whoever sent it.

    .venv/bin/python examples/udp_echo.py [PORT] [--host HOST]

Binds 127.0.0.1 (port 2829 by default; ``--host ::1`` for IPv6, ``--host 0.0.0.0`` for
every interface) and runs until Ctrl-C or SIGTERM. Once bound it prints
``udp echo: listening on HOST:PORT``. Try it with ``socat - UDP:127.0.0.1:2829`` or
``nc -u 127.0.0.1 2829``.

The reactor reads every datagram that is waiting with ``recvmmsg`` and hands them to
``on_datagrams`` in one call per wakeup; the replies queued by ``sendto`` leave together
with ``sendmmsg`` when the callback returns. The replies go into a bounded queue
(``max_send_queue``, 4096 datagrams by default): when the kernel cannot take them as fast
as requests arrive, ``sendto`` raises ``DatagramQueueFullError`` and this server drops that
reply, as a UDP peer must expect; ``stats()["datagrams_dropped"]`` counts them.
"""

import argparse
import contextlib
import signal
import sys

import hamanet


class UdpEcho(hamanet.Handler):
    def on_datagrams(self, endpoint, datagrams):
        for data, addr in datagrams:
            try:
                endpoint.sendto(data, addr)
            except hamanet.DatagramQueueFullError:
                return  # the kernel is behind: drop the rest of this batch's replies

    def on_datagram_error(self, endpoint, exc):
        # A reply the kernel refused, or a datagram longer than max_datagram_size: one
        # peer's trouble is no reason to stop serving the others (stats() counts them).
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="A UDP echo server on hamanet.")
    parser.add_argument("port", nargs="?", type=int, default=2829)
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind")
    args = parser.parse_args()
    server = hamanet.Server(UdpEcho())
    endpoint = server.open_udp(args.port, host=args.host)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C:
    # join() stops the server before it lets the SystemExit through.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    host, port = endpoint.local_addr[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"udp echo: listening on {shown}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
