"""Native framing: the stream cut into messages in Rust, handed over many per call.

Pass one of these as ``Server(handler, framing=...)`` / ``Client(handler, framing=...)``,
or set it as the handler class's ``framing`` attribute. The handler then receives whole
messages instead of ``on_recv``: ``on_messages(session, messages)`` with every message of
a wakeup as a list (one Python call however many arrived), or else ``on_message(session,
message)`` once per message. ``session.write_frame(payload)`` sends one message, adding
the header or delimiter.

A partial message waits in Rust for the rest. A message longer than ``max_length`` (or a
bad length header) closes the session before its bytes are buffered: ``on_close``
receives a ``hamanet.FramingError``, after every complete message before it was delivered.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Delimiter", "FixedSize", "Framing", "LengthPrefixed"]

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Framing:
    """Base of the framers; use one of the subclasses."""

    __slots__ = ()

    def _spec(self) -> tuple[Any, ...]:
        raise NotImplementedError


class Delimiter(Framing):
    """Messages end with ``delimiter`` (``b"\\r\\n"`` by default), which is dropped unless
    ``keep_delimiter``. ``max_length`` bounds a message (delimiter excluded)."""

    __slots__ = ("delimiter", "keep_delimiter", "max_length")

    def __init__(
        self,
        delimiter: bytes = b"\r\n",
        *,
        max_length: int = DEFAULT_MAX_LINE,
        keep_delimiter: bool = False,
    ) -> None:
        if not isinstance(delimiter, (bytes, bytearray)) or not delimiter:
            raise ValueError(f"delimiter must be non-empty bytes, got {delimiter!r}")
        self.delimiter = bytes(delimiter)
        self.max_length = _positive(max_length, "max_length")
        self.keep_delimiter = bool(keep_delimiter)

    def _spec(self) -> tuple[Any, ...]:
        return ("delimiter", self.delimiter, self.max_length, self.keep_delimiter)

    def __repr__(self) -> str:
        return f"Delimiter({self.delimiter!r}, max_length={self.max_length})"


class LengthPrefixed(Framing):
    """Each message starts with its length as an unsigned ``header_size``-byte integer
    (1, 2, 4 or 8; ``byteorder`` "big" or "little"), counting the header itself when
    ``includes_header``. ``max_length`` bounds the payload."""

    __slots__ = ("byteorder", "header_size", "includes_header", "max_length")

    def __init__(
        self,
        header_size: int = 4,
        *,
        byteorder: str = "big",
        includes_header: bool = False,
        max_length: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        if header_size not in (1, 2, 4, 8) or isinstance(header_size, bool):
            raise ValueError(f"header_size must be 1, 2, 4 or 8, got {header_size!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        self.header_size = header_size
        self.byteorder = byteorder
        self.includes_header = bool(includes_header)
        self.max_length = _positive(max_length, "max_length")

    def _spec(self) -> tuple[Any, ...]:
        big = self.byteorder == "big"
        return ("length", self.header_size, big, self.includes_header, self.max_length)

    def __repr__(self) -> str:
        return (
            f"LengthPrefixed({self.header_size}, byteorder={self.byteorder!r}, "
            f"includes_header={self.includes_header}, max_length={self.max_length})"
        )


class FixedSize(Framing):
    """Every message is exactly ``size`` bytes."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = _positive(size, "size")

    def _spec(self) -> tuple[Any, ...]:
        return ("fixed", self.size)

    def __repr__(self) -> str:
        return f"FixedSize({self.size})"
