"""An in-memory key-value server speaking the Redis protocol (RESP2), on hamanet.

    .venv/bin/python examples/redis_server.py [PORT] [--max-request BYTES] [--max-multibulk N]
                                              [--tls CERT KEY]
    redis-cli -p PORT set greeting hello          # then: get greeting, incr n, mget ...
    redis-benchmark -p PORT -t ping,set,get -P 16 -q

Binds 127.0.0.1, port 6379 by default (Redis's own, so `redis-cli` needs no `-p`; give
another port if a real Redis runs here), and runs until Ctrl-C or SIGTERM. The protocol
and the commands live in `protocols/resp.py` (no transport in it; the benchmark runs the
same code on asyncio and uvloop); this file only connects it to hamanet: each session
gets its own parser, every read is fed to it, and the replies go out in one write.

What one client can cost is bounded. A request may cost at most `--max-request` bytes
(64 MiB), each argument counted with 64 bytes for its Python object, so a million tiny
arguments weigh as much as 64 MiB of data; an array header announcing more than
`--max-multibulk` elements (1024 * 1024, as in Redis) is refused at once. Either gets
`-ERR Protocol error: ...` and the connection is closed. Replies that pile up because the
client does not read them stop the server reading it (below).

With `--tls CERT KEY` (PEM files) every connection is TLS, as on Redis's own `tls-port`:
`redis-cli --tls --cacert CA -p PORT ping`, and `redis-benchmark --tls --cacert CA ...`.
To try it, `python -m trustme` (`pip install trustme`) writes a test CA, `client.pem`, and
a certificate for localhost, `server.pem` and `server.key`: `--tls server.pem server.key`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

import hamanet

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # imported from elsewhere (tests, benchmarks): find protocols/
    sys.path.insert(0, _HERE)

from protocols.resp import MAX_BUFFER, MAX_MULTIBULK, RedisLogic, RespConnection  # noqa: E402


class RedisHandler(hamanet.Handler):
    def __init__(self, max_request: int = MAX_BUFFER, max_multibulk: int = MAX_MULTIBULK) -> None:
        self.logic = RedisLogic()  # one store for every session (callbacks share one thread)
        self.max_request = max_request  # what one request's arguments may cost, in bytes
        self.max_multibulk = max_multibulk  # elements one request array may announce

    def on_connect(self, session):
        session.resp = RespConnection(self.logic, self.max_request, self.max_multibulk)

    def on_recv(self, session, data):
        resp = session.resp
        reply = resp.feed(data)
        if reply:
            session.write(reply)
        if resp.closing:  # QUIT or a protocol error: the reply goes out, then FIN
            session.close()

    # A client that pipelines without reading its replies is pushed back through TCP
    # instead of growing this session's write buffer.
    def on_pause_writing(self, session):
        session.pause_reading()

    def on_resume_writing(self, session):
        session.resume_reading()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="An in-memory Redis-protocol server.")
    parser.add_argument("port", nargs="?", type=int, default=6379)
    parser.add_argument(
        "--max-request",
        type=int,
        default=MAX_BUFFER,
        metavar="BYTES",
        help="most bytes one request may cost, 64 per argument included (default: 64 MiB)",
    )
    parser.add_argument(
        "--max-multibulk",
        type=int,
        default=MAX_MULTIBULK,
        metavar="N",
        help="most elements one request array may announce (default: 1048576)",
    )
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="serve TLS with this certificate and key"
    )
    args = parser.parse_args(argv)
    if args.max_request < 1 or args.max_multibulk < 1:
        parser.error("--max-request and --max-multibulk must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    tls = hamanet.TLSServerContext(*args.tls) if args.tls else None
    server = hamanet.Server(RedisHandler(args.max_request, args.max_multibulk))
    server.open(args.port, tls=tls)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"redis: listening on 127.0.0.1:{server.port}" + (" (TLS)" if tls else ""), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
