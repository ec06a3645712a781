"""hamanet's echo (the handler of examples/echo_server.py) on N reactors, for the
`serial-fraction` and `scale` scenarios.

    .venv/bin/python bench/servers/reactors_echo.py --reactors N [--reuse-port] PORT

At exit it prints one line, ``hamanet-stats {json}``, with the reactors' busy time (outside
``epoll_wait``) and, of that, the time attached to the interpreter (holding the GIL): the
serial fraction the bench reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

import hamanet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from echo_server import WRITE_HIGH, WRITE_LOW, Echo

STATS_PREFIX = "hamanet-stats "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reactors", type=int, default=1)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="one SO_REUSEPORT listener per reactor (the kernel spreads connections) "
        "instead of one listener shared by all (sessions handed to each in turn)",
    )
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    server = hamanet.Server(
        Echo(), write_high=WRITE_HIGH, write_low=WRITE_LOW, reactors=args.reactors
    )
    server.open(args.port, reuse_port=args.reuse_port)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"reactors_echo: listening on 127.0.0.1:{server.port}", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        stats = server.stats()
        figures = {
            "reactors": args.reactors,
            "busy_us": stats["busy_us"],
            "attached_us": stats["attached_us"],
        }
        print(STATS_PREFIX + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
