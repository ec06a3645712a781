"""The `hash` scenario on hamanet: SHA-256 of every chunk received, then the chunk echoed.

.venv/bin/python bench/servers/hash_server.py [--workers N] PORT

`hashlib.sha256(data).digest()` in `on_recv`, then `session.write(data)`: with
`--workers N` (2 by default) the callbacks run on N worker threads, and hashlib releases
the GIL for large inputs, so sessions hash in parallel; `--workers 0` runs them on the
reactor thread, one at a time. Every byte is echoed to its own session in order and EOF
closes the session, so the load generator's byte-for-byte check holds. Push-back and
watermarks as in `examples/echo_server.py` (the messages here are 256 KiB).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import signal
import sys

import hamanet

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10


class Hash(hamanet.Handler):
    def on_recv(self, session, data):
        hashlib.sha256(data).digest()
        session.write(data)

    def on_pause_writing(self, session):
        session.pause_reading()

    def on_resume_writing(self, session):
        session.resume_reading()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker threads (2)")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    server = hamanet.Server(
        Hash(), workers=args.workers, write_high=WRITE_HIGH, write_low=WRITE_LOW
    )
    server.open(args.port)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"hash: listening on 127.0.0.1:{server.port} ({args.workers} workers)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
