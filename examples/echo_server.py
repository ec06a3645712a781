"""An echo server: every byte received is written back to the same session.

    .venv/bin/python examples/echo_server.py [PORT]

Binds 127.0.0.1 (port 2826 by default) and runs until Ctrl-C or SIGTERM.

The fast path is a single ``session.write(data)`` per wakeup: ``data`` is everything read
from the session in this wakeup, and the reactor sends it after the batch (a write of
16 KiB or more into an empty buffer is sent at once from ``data`` itself, without a copy).

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

import contextlib
import signal
import sys

import hamanet

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10


class Echo(hamanet.Handler):
    def on_recv(self, session, data):
        session.write(data)

    def on_pause_writing(self, session):
        session.pause_reading()  # the peer reads too slowly: stop taking its input

    def on_resume_writing(self, session):
        session.resume_reading()  # it caught up: echo again


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2826
    server = hamanet.Server(Echo(), write_high=WRITE_HIGH, write_low=WRITE_LOW)
    server.open(port)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C:
    # join() stops the server before it lets the SystemExit through.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"echo: listening on 127.0.0.1:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
