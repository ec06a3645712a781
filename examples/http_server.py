"""An HTTP/1.1 server: ``GET /`` answers ``Hello, World!``, keep-alive and pipelining.

    .venv/bin/python examples/http_server.py [PORT]

Binds 127.0.0.1 (port 8080 by default) and runs until Ctrl-C or SIGTERM. Try it with
``curl -i http://127.0.0.1:8080/`` or ``wrk -c 100 http://127.0.0.1:8080/``. The protocol
logic (parsing, limits, responses) is ``examples/protocols/http.py``; this file is only the
glue: one ``HttpConnection`` per session, fed everything each wakeup read, plus flow
control (a client that pipelines without reading is not read from until it catches up)
and an idle timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import hamanet

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # imported from elsewhere (tests, benchmarks): find protocols/
    sys.path.insert(0, _HERE)

from protocols.http import HttpConnection  # noqa: E402

IDLE_TIMEOUT = 60.0  # seconds


class HttpHandler(hamanet.Handler):
    """Feeds each session's bytes to its ``HttpConnection`` and writes what comes back."""

    def on_connect(self, session):
        session.http = HttpConnection()

    def on_recv(self, session, data):
        response, close = session.http.feed(data)
        if response:
            session.write(response)
        if close:
            session.close()  # after the response is flushed: FIN

    # Flow control: a client that pipelines requests but does not read the responses is
    # not read from either, so its responses never pile up past the watermark (plus one
    # wakeup's worth); TCP pushes back on it instead.
    def on_pause_writing(self, session):
        session.pause_reading()

    def on_resume_writing(self, session):
        session.resume_reading()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    # A connection with no traffic either way for a minute is closed (FIN), so idle or
    # stalled clients do not hold sessions forever.
    server = hamanet.Server(HttpHandler(), idle_timeout=IDLE_TIMEOUT)
    server.open(port)
    # SIGTERM stops as cleanly as Ctrl-C: join() stops the server, then lets SystemExit out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"http: listening on http://127.0.0.1:{server.port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
