"""An echo server behind a load balancer that speaks the PROXY protocol (HAProxy's
``send-proxy`` or ``send-proxy-v2``).

    .venv/bin/python examples/proxy_echo.py [PORT]

Binds 127.0.0.1 (port 2826 by default) with ``proxy_protocol=True``: every connection
must start with a PROXY header, v1 or v2 (the load balancer sends it; a client connecting
directly is closed without reaching the handler). Each session first gets one line, the
client's address as the header gave it, ``HOST PORT\\n`` (or ``- -`` for a health check's
``LOCAL`` header, which carries none), then every byte it sends echoed back.

A HAProxy in front of two of these (``mode tcp``; see the README, "Behind a load
balancer"), and a client through it reads its own address back: the client's
``getsockname()`` equals the first line.
"""

import argparse
import contextlib
import signal
import sys

import hamanet


class ProxiedEcho(hamanet.Handler):
    def on_connect(self, session):
        if session.proxy_addr is None or session.peer_addr == session.proxy_addr:
            # A LOCAL header (HAProxy's health check): the connection is the proxy's own.
            session.write(b"- -\n")
        else:
            host, port = session.peer_addr[:2]
            session.write(f"{host} {port}\n".encode())

    def on_recv(self, session, data):
        session.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description="An echo server behind a PROXY-protocol LB.")
    parser.add_argument("port", nargs="?", type=int, default=2826)
    args = parser.parse_args()
    server = hamanet.Server(ProxiedEcho())
    server.open(args.port, proxy_protocol=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"proxy_echo: listening on 127.0.0.1:{server.port} (PROXY protocol)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
