"""An echo server: every byte received is written back to the same session.

    .venv/bin/python examples/echo_server.py [PORT] [--tls CERT KEY]

Binds 127.0.0.1 (port 2826 by default) and runs until Ctrl-C or SIGTERM.

With ``--tls CERT KEY`` (PEM files: the certificate chain, then its private key) every
session is TLS: ``server.open(port, tls=hamanet.TLSServerContext(cert, key))``. The
handler does not change: it reads and writes plaintext. To try it, ``python -m trustme``
(``pip install trustme``) writes a test CA, ``client.pem``, and a certificate for
localhost signed by it, ``server.pem`` and ``server.key``; then
``openssl s_client -connect 127.0.0.1:2826 -CAfile client.pem -servername localhost``.

The fast path is a single ``session.write(data)`` per wakeup, with no copy of the bytes
anywhere in user space: ``recv_views = True`` makes ``data`` a read-only memoryview lent
onto the reactor's receive buffer (everything read from the session in this wakeup) for
the length of the call. A write of 16 KiB or more into an empty buffer is sent at once
from that memory; a smaller one is copied into the session's buffer and sent after the
batch with everything else written in it. Keep nothing of ``data`` past the call: copy
what must outlive it (``bytes(data[a:b])``).

Push-back: a peer that sends and never reads (or reads more slowly than it sends) would
otherwise make every echo wait in the session's write buffer, up to the 128 MiB hard cap
per session. So when more than the high watermark (1 MiB here) is buffered, the reactor
calls ``on_pause_writing`` and the handler stops reading that session; the kernel's TCP
window then pushes back on the peer. Once the peer has read enough for the buffer to drain
to the low watermark (256 KiB), ``on_resume_writing`` resumes reading. A session's buffer
stays within the watermark plus a read or two (256 KiB each at most), whatever the peer
does. The watermarks are well above one message of a peer that does read (asyncio's
64 KiB would pause and resume around every 100 KiB message, which costs a stream of them
about a third more CPU), so the callbacks run only for peers that fall behind.
"""

import argparse
import contextlib
import signal
import sys

import hamanet

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10


class Echo(hamanet.Handler):
    recv_views = True  # data is lent, not copied: it is only written back

    def on_recv(self, session, data):
        session.write(data)

    def on_pause_writing(self, session):
        session.pause_reading()  # the peer reads too slowly: stop taking its input

    def on_resume_writing(self, session):
        session.resume_reading()  # it caught up: echo again


def main() -> None:
    parser = argparse.ArgumentParser(description="An echo server on hamanet.")
    parser.add_argument("port", nargs="?", type=int, default=2826)
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="serve TLS with this certificate and key"
    )
    args = parser.parse_args()
    tls = hamanet.TLSServerContext(*args.tls) if args.tls else None
    server = hamanet.Server(Echo(), write_high=WRITE_HIGH, write_low=WRITE_LOW)
    server.open(args.port, tls=tls)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C:
    # join() stops the server before it lets the SystemExit through.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"echo: listening on 127.0.0.1:{server.port}" + (" (TLS)" if tls else ""), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
