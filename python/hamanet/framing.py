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

import operator
from typing import Any

__all__ = ["Delimiter", "FixedSize", "Framing", "LengthPrefixed"]

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
#: The longest message any framer allows (1 TiB): the native framers' own bound.
MAX_MESSAGE = 1 << 40


def _int(value: Any, name: str, *, maximum: int = MAX_MESSAGE, why: str = "") -> int:
    """A positive int at most ``maximum``: TypeError for a non-int, ValueError outside."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r} ({value!r})")
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value > maximum:
        why = why or f"{maximum} bytes (1 TiB) is the most any framer allows"
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}: {why}")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def _check_framing(framing: Any, name: str = "framing") -> Framing | None:
    """``framing`` if it is a framer or None; else a TypeError saying what to pass (the
    framer's class itself, say, instead of an instance)."""
    if framing is None or isinstance(framing, Framing):
        return framing
    if isinstance(framing, type) and issubclass(framing, Framing):
        example = {"Delimiter": "Delimiter(b'\\n')", "FixedSize": "FixedSize(16)"}.get(
            framing.__name__, f"{framing.__name__}()"
        )
        raise TypeError(
            f"{name} must be a framer instance, not the class {framing.__name__} itself: "
            f"instantiate it, e.g. {name}={example}"
        )
    if isinstance(framing, (bytes, bytearray, str)) and framing:
        delimiter = framing.encode() if isinstance(framing, str) else bytes(framing)
        raise TypeError(
            f"{name} must be a hamanet.framing.Delimiter, LengthPrefixed or FixedSize, not "
            f"{type(framing).__name__!r}: for messages ending with {delimiter!r}, pass "
            f"{name}=hamanet.framing.Delimiter({delimiter!r})"
        )
    raise TypeError(
        f"{name} must be a hamanet.framing.Delimiter, LengthPrefixed or FixedSize, "
        f"not {type(framing).__name__!r}"
    )


class Framing:
    """Base of the framers; use one of the subclasses."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Framing:
        if cls is Framing:
            raise TypeError(
                "Framing is the base of the framers: use hamanet.framing.Delimiter, "
                "LengthPrefixed or FixedSize"
            )
        return super().__new__(cls)

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
        if isinstance(delimiter, str):
            raise TypeError(
                f"delimiter must be bytes, not str: write {delimiter.encode()!r}, not {delimiter!r}"
            )
        if not isinstance(delimiter, (bytes, bytearray, memoryview)):
            raise TypeError(f"delimiter must be bytes, not {type(delimiter).__name__!r}")
        if not delimiter:
            raise ValueError(f"delimiter must be non-empty bytes, got {delimiter!r}")
        self.delimiter = bytes(delimiter)
        self.max_length = _int(max_length, "max_length")
        self.keep_delimiter = _bool(keep_delimiter, "keep_delimiter")

    def _spec(self) -> tuple[Any, ...]:
        return ("delimiter", self.delimiter, self.max_length, self.keep_delimiter)

    def __repr__(self) -> str:
        keep = ", keep_delimiter=True" if self.keep_delimiter else ""
        return f"Delimiter({self.delimiter!r}, max_length={self.max_length}{keep})"


class LengthPrefixed(Framing):
    """Each message starts with its length as an unsigned ``header_size``-byte integer
    (1, 2, 4 or 8; ``byteorder`` "big" or "little"), counting the header itself when
    ``includes_header``. ``max_length`` bounds the payload: 16 MiB by default, and no more
    than the header can carry (255 bytes for a 1-byte header, 65535 for 2 bytes, less the
    header itself with ``includes_header``)."""

    __slots__ = ("byteorder", "header_size", "includes_header", "max_length")

    def __init__(
        self,
        header_size: int = 4,
        *,
        byteorder: str = "big",
        includes_header: bool = False,
        max_length: int | None = None,
    ) -> None:
        if isinstance(header_size, bool) or not isinstance(header_size, int):
            raise TypeError(f"header_size must be an int (1, 2, 4 or 8), not {header_size!r}")
        if header_size not in (1, 2, 4, 8):
            raise ValueError(f"header_size must be 1, 2, 4 or 8, got {header_size!r}")
        if not isinstance(byteorder, str):
            raise TypeError(f"byteorder must be 'big' or 'little', not {byteorder!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        self.header_size = header_size
        self.byteorder = byteorder
        self.includes_header = _bool(includes_header, "includes_header")
        if max_length is None:
            # The header's own range bounds what arrives; write_frame says so by name.
            self.max_length = DEFAULT_MAX_MESSAGE
            return
        largest = (1 << (8 * header_size)) - 1 - (header_size if includes_header else 0)
        if largest < MAX_MESSAGE:
            counted = " less the header it counts" if includes_header else ""
            why = (
                f"a {header_size}-byte length header cannot announce more than "
                f"{(1 << (8 * header_size)) - 1} bytes{counted}; use a larger header_size"
            )
            self.max_length = _int(max_length, "max_length", maximum=largest, why=why)
        else:
            self.max_length = _int(max_length, "max_length")

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
        self.size = _int(size, "size")

    def _spec(self) -> tuple[Any, ...]:
        return ("fixed", self.size)

    def __repr__(self) -> str:
        return f"FixedSize({self.size})"
