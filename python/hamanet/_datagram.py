"""Datagram (UDP) endpoints: what hamanet.Server, hamanet.Client and their hamanet.aio
counterparts share to open them on their native loop."""

from __future__ import annotations

import inspect
from typing import Any

from ._defaults import DEFAULT_HOST
from ._hamanet import UDP_OPTIONS, DatagramEndpoint, Loop
from ._handler import Handler, bound_callbacks


class DatagramEndpoints:
    """Datagram (UDP) endpoints on the native loop ``_loop``: what ``hamanet.Server``,
    ``hamanet.Client`` and their ``hamanet.aio`` counterparts share."""

    _loop: Loop
    #: Whether the endpoint's handler may have ``async def`` stream callbacks (hamanet.aio).
    _async_callbacks = False

    def _start_on_demand(self) -> None:
        """Before an endpoint opens: a Client starts its reactor then."""

    def _datagram_callbacks(self, handler: Handler | None) -> tuple[Any, ...] | None:
        if handler is None:
            return None
        return bound_callbacks(handler, allow_async=self._async_callbacks)

    def open_udp(
        self,
        port: int,
        host: str = DEFAULT_HOST,
        *,
        handler: Handler | None = None,
        **options: Any,
    ) -> DatagramEndpoint:
        """Binds a datagram (UDP) endpoint to ``host:port`` and returns it; port 0 picks a
        free one (``endpoint.local_addr`` tells). The default host is loopback; IPv6 works
        (``host="::1"``). A port in use raises OSError(EADDRINUSE). Each wakeup's datagrams
        go to ``on_datagrams(endpoint, [(data, addr), ...])`` of ``handler`` (if given)
        or of this server's or client's handler; ``endpoint.sendto(data, addr)`` answers.

        Options: ``max_datagram_size`` (65535: every datagram is received whole; a
        longer one is truncated and reported to ``on_datagram_error``), ``max_send_queue``
        (4096 datagrams) and ``max_send_queue_bytes`` (4 MiB), past which ``sendto``
        raises ``DatagramQueueFullError``; ``recv_buffer``/``send_buffer`` (SO_RCVBUF /
        SO_SNDBUF), ``reuse_port``, ``dual_stack`` (an IPv6 endpoint on ``"::"`` takes
        IPv4 too), ``broadcast`` (SO_BROADCAST).
        """
        callbacks = self._datagram_callbacks(handler)
        self._start_on_demand()
        return self._loop.open_udp(host, port, callbacks, options)


def _udp_signature(function: Any, *leading: inspect.Parameter) -> None:
    """help() lists the endpoint options (with their native defaults), not **options."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    function.__signature__ = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *leading,
            inspect.Parameter("handler", keyword, default=None),
        ]
        + [inspect.Parameter(name, keyword, default=default) for name, default in UDP_OPTIONS]
    )


_udp_signature(
    DatagramEndpoints.open_udp,
    inspect.Parameter("port", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
    inspect.Parameter("host", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=DEFAULT_HOST),
)


def connect_udp(
    self: DatagramEndpoints,
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
    handler: Handler | None = None,
    **options: Any,
) -> DatagramEndpoint:
    """A datagram (UDP) endpoint connected to ``host:port``: ``endpoint.send(data)``
    sends there, only that peer's datagrams are received, and an ICMP error about what it
    sent (``ConnectionRefusedError`` when nothing listens there) comes to
    ``on_datagram_error`` while the endpoint stays usable. It binds ``local_addr`` (by
    default any address, a free port). Options as for ``open_udp``."""
    callbacks = self._datagram_callbacks(handler)
    self._start_on_demand()
    return self._loop.connect_udp(host, port, local_addr, callbacks, options)


_udp_signature(
    connect_udp,
    inspect.Parameter("host", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
    inspect.Parameter("port", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
    inspect.Parameter("local_addr", inspect.Parameter.KEYWORD_ONLY, default=None),
)
