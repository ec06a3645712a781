"""An HTTP/1.1 server: ``GET /`` answers ``Hello, World!``, keep-alive and pipelining.

    .venv/bin/python examples/http_server.py [PORT] [--head-timeout S] [--keepalive-timeout S]
                                             [--tls CERT KEY] [--root DIR]

Binds 127.0.0.1 (port 8080 by default) and runs until Ctrl-C or SIGTERM. Try it with
``curl -i http://127.0.0.1:8080/`` or ``wrk -c 100 http://127.0.0.1:8080/``. The protocol
logic (parsing, limits, responses) is ``examples/protocols/http.py``; this file is only the
glue: one ``HttpConnection`` per session, fed everything each wakeup read, plus flow
control (a client that pipelines without reading is not read from until it catches up)
and two deadlines, so that no client holds a connection without using it:

* ``--head-timeout`` (10 s): a request whose first bytes have come must be whole within
  it (its head; then its body, if it announces one, within as long again). A late head
  gets ``408 Request Timeout`` and the connection is closed; a late body is closed. This
  is what ends slowloris clients that trickle a head a byte at a time, which an idle
  timeout alone never would (each byte makes the connection active again). The deadline
  is a timer of the server's (``server.call_at``), armed only when a read leaves a
  request incomplete, so requests that arrive whole cost nothing.
* ``--keepalive-timeout`` (30 s): a connection with no traffic either way for that long
  (an idle keep-alive connection, or one that never sends a request) is closed quietly
  (FIN, no response): the session's idle timeout (``session.set_idle_timeout``).

Whichever deadline comes first applies. ``new_server()`` builds the server with its
handler wired to it (the head deadline needs the server's timers).

With ``--root DIR`` it serves the files under DIR instead of ``Hello, World!``: ``GET``
and ``HEAD`` of a path (``/`` is ``/index.html``) answer with its Content-Type and
Content-Length, and the body goes out with ``session.sendfile``: the kernel copies it from
the page cache to the socket, and the bytes never enter Python. Paths outside DIR (``..``,
percent-encoded or not, and symbolic links that lead out) are 404, as are missing files
and anything not a regular file. A large file counts toward the write buffer's watermark,
so the flow control below also stops reading a client that pipelines requests for files
faster than it reads them.

With ``--tls CERT KEY`` (PEM files) it serves HTTPS, advertising ALPN ``http/1.1``; the
handler is the same (TLS sits under the session: deadlines and flow control see
plaintext). To try it, ``python -m trustme`` (``pip install trustme``) writes a test CA,
``client.pem``, and a certificate for localhost, ``server.pem`` and ``server.key``:
``--tls server.pem server.key``, then ``curl --cacert client.pem https://localhost:8080/``.
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

from protocols.http import HttpConnection, StaticFiles  # noqa: E402

HEAD_TIMEOUT = 10.0  # seconds for a request's head (and, after it, for its body)
KEEPALIVE_TIMEOUT = 30.0  # seconds without traffic before an idle connection is closed


class HttpHandler(hamanet.Handler):
    """Feeds each session's bytes to its ``HttpConnection`` and writes what comes back.

    ``server`` must be the Server that runs this handler (``new_server`` sets it): the
    head deadline runs on its timers. ``None`` for either timeout turns that one off.
    """

    def __init__(
        self,
        head_timeout: float | None = HEAD_TIMEOUT,
        keepalive_timeout: float | None = KEEPALIVE_TIMEOUT,
        root: str | None = None,
    ) -> None:
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.files = StaticFiles(root) if root is not None else None
        self.server: hamanet.Server | None = None

    def on_connect(self, session):
        if self.head_timeout is not None and self.server is None:
            raise RuntimeError(
                "HttpHandler.server is not set: the head deadline needs the server's "
                "timers (build the server with new_server(), or set handler.server)"
            )
        session.http = HttpConnection(self.head_timeout, files=self.files)
        session.deadline_timer = None  # the TimerHandle of the head deadline, when armed
        if self.keepalive_timeout is not None:
            session.set_idle_timeout(self.keepalive_timeout)

    def on_recv(self, session, data):
        http = session.http
        if self.files is None:
            response, close = http.feed(data)
            if response:
                session.write(response)
        else:
            parts, close = http.feed_parts(data)
            for part in parts:
                if isinstance(part, bytes):
                    session.write(part)
                else:
                    with part:  # sendfile() keeps a descriptor of its own
                        session.sendfile(part)
        if close:
            session.close()  # after the response is flushed: FIN
        elif http.deadline is not None and session.deadline_timer is None:
            # A request is incomplete: arm its deadline. One timer per session at most; it
            # re-arms itself if the deadline moved on meanwhile (a newer request's).
            session.deadline_timer = self.server.call_at(http.deadline, self._deadline, session)

    def _deadline(self, session):
        session.deadline_timer = None
        http = session.http
        if session.closing or http.deadline is None:
            return  # closed meanwhile, or every request came whole in time
        if session.reading_paused:
            http.postpone()  # we stopped reading it (flow control): the client is not late
        if http.deadline > self.server.time():
            session.deadline_timer = self.server.call_at(http.deadline, self._deadline, session)
            return
        response = http.expire()  # 408 for a late head; nothing for a late body
        if response:
            session.write(response)
        session.close()

    def on_close(self, session, exc):
        timer = getattr(session, "deadline_timer", None)
        if timer is not None:
            timer.cancel()  # frees the session now, not at the deadline

    # Flow control: a client that pipelines requests but does not read the responses is
    # not read from either, so its responses never pile up past the watermark (plus one
    # wakeup's worth); TCP pushes back on it instead. Its head deadline waits meanwhile.
    def on_pause_writing(self, session):
        session.pause_reading()

    def on_resume_writing(self, session):
        session.resume_reading()
        session.http.postpone()


def new_server(
    head_timeout: float | None = HEAD_TIMEOUT,
    keepalive_timeout: float | None = KEEPALIVE_TIMEOUT,
    root: str | None = None,
    **options,
) -> hamanet.Server:
    """A Server (``options`` as for ``hamanet.Server``) running an ``HttpHandler`` wired
    to it, serving the files under ``root`` if given; ``open()`` and start it."""
    handler = HttpHandler(head_timeout, keepalive_timeout, root)
    server = hamanet.Server(handler, **options)
    handler.server = server
    return server


def _seconds(text: str) -> float | None:
    """A timeout from the command line: seconds > 0, or "none" for no deadline."""
    if text.lower() == "none":
        return None
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a timeout must be seconds > 0 or 'none', got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A small HTTP/1.1 server on hamanet.")
    parser.add_argument("port", nargs="?", type=int, default=8080)
    parser.add_argument(
        "--head-timeout",
        type=_seconds,
        default=HEAD_TIMEOUT,
        metavar="S",
        help="seconds for a started request's head, then its body; else 408 and close "
        f"(default: {HEAD_TIMEOUT:g}; 'none' to turn it off)",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        default=KEEPALIVE_TIMEOUT,
        metavar="S",
        help="seconds without traffic before a connection is closed quietly "
        f"(default: {KEEPALIVE_TIMEOUT:g}; 'none' to turn it off)",
    )
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate and key"
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="serve the files under DIR (GET and HEAD; / is /index.html) with sendfile",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    tls = None
    if args.tls:
        tls = hamanet.TLSServerContext(*args.tls, alpn_protocols=["http/1.1"])
    server = new_server(args.head_timeout, args.keepalive_timeout, args.root)
    server.open(args.port, tls=tls)
    # SIGTERM stops as cleanly as Ctrl-C: join() stops the server, then lets SystemExit out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    scheme = "https" if tls else "http"
    print(f"http: listening on {scheme}://127.0.0.1:{server.port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
