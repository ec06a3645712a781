"""An in-memory key-value server speaking the Redis protocol (RESP2), on hamanet.

    .venv/bin/python examples/redis_server.py [PORT]
    redis-cli -p PORT set greeting hello          # then: get greeting, incr n, mget ...
    redis-benchmark -p PORT -t ping,set,get -P 16 -q

Binds 127.0.0.1, port 6379 by default (Redis's own, so `redis-cli` needs no `-p`; give
another port if a real Redis runs here), and runs until Ctrl-C or SIGTERM. The protocol
and the commands live in `protocols/resp.py` (no transport in it; the benchmark runs the
same code on asyncio and uvloop); this file only connects it to hamanet: each session
gets its own parser, every read is fed to it, and the replies go out in one write.
"""

import contextlib
import os
import signal
import sys

import hamanet

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # imported from elsewhere (tests, benchmarks): find protocols/
    sys.path.insert(0, _HERE)

from protocols.resp import RedisLogic, RespConnection  # noqa: E402


class RedisHandler(hamanet.Handler):
    def __init__(self) -> None:
        self.logic = RedisLogic()  # one store for every session (callbacks share one thread)

    def on_connect(self, session):
        session.resp = RespConnection(self.logic)

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


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 6379
    server = hamanet.Server(RedisHandler())
    server.open(port)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"redis: listening on 127.0.0.1:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
