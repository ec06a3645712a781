"""hamanet: fast, trustworthy TCP and UDP networking for Python on Linux.

An edge-triggered epoll reactor in Rust owns the sockets and buffers, releases the GIL
while it waits and does I/O, and calls your ``Handler`` with everything each wakeup read.
"""

import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"hamanet runs on Linux only (it is built on epoll); this is {sys.platform!r}"
    )

from . import framing
from ._endpoint import Client, Server
from ._hamanet import (
    DatagramEndpoint,
    DatagramQueueFullError,
    DatagramTruncatedError,
    EndpointClosedError,
    FramingError,
    LifecycleError,
    Session,
    SessionClosedError,
    TimerHandle,
    TLSClientContext,
    TLSError,
    TLSInfo,
    TLSServerContext,
    WriteBufferFullError,
    __version__,
)
from ._handler import Handler, HandlerWarning
from ._serve import serve

__all__ = [
    "Client",
    "DatagramEndpoint",
    "DatagramQueueFullError",
    "DatagramTruncatedError",
    "EndpointClosedError",
    "FramingError",
    "Handler",
    "HandlerWarning",
    "LifecycleError",
    "Server",
    "Session",
    "SessionClosedError",
    "TLSClientContext",
    "TLSError",
    "TLSInfo",
    "TLSServerContext",
    "TimerHandle",
    "WriteBufferFullError",
    "__version__",
    "framing",
    "serve",
]
