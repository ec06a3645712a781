"""Echo server on uvloop (libuv): the baseline every ratio in the benchmark is taken against.

.venv/bin/python bench/servers/uvloop_echo.py [--tls CERT KEY] PORT
"""

import uvloop
from protocol_echo import serve

if __name__ == "__main__":
    serve("uvloop_echo", uvloop.new_event_loop)
