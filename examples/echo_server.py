"""An echo server: every byte received is written back to the same session.

    .venv/bin/python examples/echo_server.py [PORT]

Binds 127.0.0.1 (port 2826 by default) and runs until Ctrl-C or SIGTERM.
"""

import contextlib
import signal
import sys

import hamanet


class Echo(hamanet.Handler):
    def on_recv(self, session, data):
        session.write(data)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2826
    server = hamanet.Server(Echo())
    server.open(port)
    # SIGTERM (how benchmarks and supervisors stop servers) stops as cleanly as Ctrl-C:
    # join() stops the server before it lets the SystemExit through.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"echo: listening on 127.0.0.1:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
