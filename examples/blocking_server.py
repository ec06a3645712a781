"""A server whose handler blocks: each request waits on a slow lookup, served by a pool.

    .venv/bin/python examples/blocking_server.py [--port PORT] [--workers N] [--delay S]

Binds 127.0.0.1 (port 2827 by default) and runs until Ctrl-C or SIGTERM. Each request
(each ``on_recv``: the bytes read from a session) waits ``--delay`` seconds (5 ms by
default) on a "database call", simulated with ``time.sleep``, and is then echoed back to
its session.

The handler is plain blocking code: ``hamanet.Server(handler, workers=N)`` runs every
callback on one of N worker threads instead of the reactor thread. A session's callbacks
never run two at once and always run in order, so its replies keep the order of its
requests; blocking calls in different sessions (``time.sleep``, file or socket I/O, and
work that releases the GIL such as ``hashlib`` on large inputs) wait side by side, up to N
at a time. With ``--workers 0`` the reactor thread runs the callbacks itself and every
session waits for every other's lookup: one request per delay, in all.

``server.stats()`` shows the pool at work: ``workers``, ``workers_busy``,
``worker_queued`` (work waiting for a worker) and ``worker_wait_max_us``.

Push-back is the same as in ``echo_server.py``: a peer that sends without reading is not
read from until it catches up, so its replies never pile up in the write buffer.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

import hamanet


class SlowLookup(hamanet.Handler):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_recv(self, session, data):
        time.sleep(self.delay)  # the database call: blocks this worker only
        session.write(data)

    def on_pause_writing(self, session):
        session.pause_reading()  # the peer reads too slowly: stop taking its input

    def on_resume_writing(self, session):
        session.resume_reading()  # it caught up: serve it again


def main() -> None:
    parser = argparse.ArgumentParser(description="A blocking handler served by a pool.")
    parser.add_argument("--port", type=int, default=2827)
    parser.add_argument("--workers", type=int, default=32, help="worker threads (default: 32)")
    parser.add_argument(
        "--delay", type=float, default=0.005, help="seconds per lookup (default: 0.005)"
    )
    args = parser.parse_args()
    server = hamanet.Server(SlowLookup(args.delay), workers=args.workers)
    server.open(args.port)
    # SIGTERM stops as cleanly as Ctrl-C: join() stops the server, then lets SystemExit out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"blocking: listening on 127.0.0.1:{server.port} ({args.workers} workers)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
