"""LyricsPoet, the seed's server example: read a number n, write a greeting n-1 times,
and close the session once everything is sent.

    .venv/bin/python examples/lyrics_poet.py [PORT]
"""

import sys

import hamanet

GREETING = b"Hello client !!\n"


class LyricsPoet(hamanet.Handler):
    def on_recv(self, session, data):
        print(f"LyricsPoet: recv {data!r} from {session.peer_addr}", flush=True)
        try:
            times = int(data.strip())
        except ValueError:
            session.write(b"send me a number\n")
            times = 1
        # The C++ original writes n-1 times; a number below 2 gets nothing but the close.
        session.writelines(GREETING for _ in range(1, times))
        if times < 2:
            session.close()

    def on_send(self, session):
        # Everything written has reached the kernel: this session's work is done.
        print(f"LyricsPoet: sent to {session.peer_addr}, closing", flush=True)
        session.close()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2826
    with hamanet.Server(LyricsPoet()) as server:
        server.open(port)
        print(f"LyricsPoet: listening on 127.0.0.1:{server.port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("LyricsPoet: stopped", flush=True)


if __name__ == "__main__":
    main()
