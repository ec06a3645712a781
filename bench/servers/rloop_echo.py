"""Echo server on rloop (a Rust asyncio loop).

.venv/bin/python bench/servers/rloop_echo.py PORT
"""

import rloop
from protocol_echo import serve

if __name__ == "__main__":
    serve("rloop_echo", rloop.new_event_loop)
