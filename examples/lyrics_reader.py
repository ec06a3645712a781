"""LyricsReader, the seed's client example: send a number to LyricsPoet and print what
comes back until the server closes the session.

    .venv/bin/python examples/lyrics_reader.py [N] [PORT]
"""

import sys

import hamanet


class LyricsReader(hamanet.Handler):
    def on_connect(self, session):
        print(f"LyricsReader: connected to {session.peer_addr}", flush=True)

    def on_recv(self, session, data):
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()

    def on_close(self, session, exc):
        print(f"LyricsReader: server closed the session ({exc or 'cleanly'})", flush=True)


def main() -> None:
    times = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 2826
    with hamanet.Client(LyricsReader()) as client:
        session = client.connect("127.0.0.1", port)
        session.write(str(times).encode())
        client.join()


if __name__ == "__main__":
    main()
