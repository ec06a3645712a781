"""A line-based chat: every line a client sends goes to every other client.

    .venv/bin/python examples/chat_server.py [PORT]

Binds 127.0.0.1 (port 2827 by default) and runs until Ctrl-C or SIGTERM. Try it with two
or more ``nc 127.0.0.1 2827``. A newcomer is greeted with ``* welcome [ID]`` (its own id);
a line ``hello`` from session 3 reaches the others as ``[3] hello``, never the sender.

The lines are cut by hamanet's native framing (``hamanet.framing.Delimiter``), so one
``on_messages`` call carries every line a wakeup completed; a partial line waits in Rust
for its newline. A line longer than ``MAX_LINE`` bytes closes that client alone (its
``on_close`` gets a ``hamanet.FramingError``). A client that reads too slowly to keep up
(more than ``MAX_BACKLOG`` bytes waiting for it) is disconnected instead of buffering
without bound.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

import hamanet

MAX_LINE = 4096
MAX_BACKLOG = 1 << 20  # bytes queued for one client before it is dropped as too slow

log = logging.getLogger("chat")


class Chat(hamanet.Handler):
    framing = hamanet.framing.Delimiter(b"\n", max_length=MAX_LINE)

    def __init__(self) -> None:
        # Only the reactor thread touches it (every callback runs there).
        self.sessions: dict[int, hamanet.Session] = {}

    def on_connect(self, session):
        session.prefix = b"[%d] " % session.id
        session.set_write_buffer_limits(max=MAX_BACKLOG)
        self.sessions[session.id] = session
        session.write(b"* welcome [%d]\n" % session.id)

    def on_messages(self, session, lines):
        prefix = session.prefix
        # A CR before the newline (telnet, some nc) is not part of the line.
        payload = b"".join([prefix + line.rstrip(b"\r") + b"\n" for line in lines])
        for other in tuple(self.sessions.values()):
            if other is session or other.closing:
                continue
            try:
                other.write(payload)
            except hamanet.SessionClosedError:
                pass  # closed between the check and the write (e.g. reset by its peer)
            except hamanet.WriteBufferFullError:
                log.warning("chat: dropping session %d: it reads too slowly", other.id)
                other.abort()

    def on_close(self, session, exc):
        self.sessions.pop(session.id, None)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2827
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = hamanet.Server(Chat())
    server.open(port)
    # SIGTERM stops as cleanly as Ctrl-C: join() stops the server, then lets SystemExit out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"chat: listening on 127.0.0.1:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
