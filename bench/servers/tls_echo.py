"""hamanet's echo over TLS, for the benchmark's `tls-rr1k`, `tls-stream100k` and
`tls-handshake` scenarios.

.venv/bin/python bench/servers/tls_echo.py --tls CERT KEY PORT

The handler is `examples/echo_server.py`'s own (`Echo`, with its watermarks), so this
measures what TLS adds to the very same echo; only the listener differs: a
`hamanet.TLSServerContext` with `session_tickets=0`, as the asyncio and uvloop servers
set `num_tickets = 0` (`protocol_echo.server_ssl_context`), so that no server pays for
tickets the load generator never uses and every connection is a full handshake.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import hamanet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from echo_server import WRITE_HIGH, WRITE_LOW, Echo

USAGE = __doc__.strip().splitlines()[3]


def main() -> None:
    args = sys.argv[1:]
    if len(args) != 4 or args[0] != "--tls" or not args[3].isdigit():
        raise SystemExit(f"usage: {USAGE}")
    cert, key, port = args[1], args[2], int(args[3])
    tls = hamanet.TLSServerContext(cert, key, minimum_version="TLSv1.3", session_tickets=0)
    server = hamanet.Server(Echo(), write_high=WRITE_HIGH, write_low=WRITE_LOW)
    server.open(port, tls=tls)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"tls_echo: listening on 127.0.0.1:{server.port} (TLS)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
