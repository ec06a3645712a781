"""Echo server on the standard library's asyncio loop.

.venv/bin/python bench/servers/asyncio_echo.py [--tls CERT KEY] PORT
"""

import asyncio

from protocol_echo import serve

if __name__ == "__main__":
    serve("asyncio_echo", asyncio.new_event_loop)
