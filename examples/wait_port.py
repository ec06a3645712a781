"""Waits (up to 10 s) until something listens on HOST PORT; exits 1 if nothing does.

.venv/bin/python examples/wait_port.py 127.0.0.1 2826
"""

import socket
import sys
import time


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return 0
        except OSError:
            time.sleep(0.05)
    print(f"nothing is listening on {host}:{port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
