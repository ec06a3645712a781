"""The handler interface (the seed's NetHandler) and how the reactor finds its callbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._hamanet import Session

# The reactor takes the callbacks as a tuple in this order; it defines the order.
from ._hamanet import CALLBACK_NAMES


class Handler:
    """Subclass this and override the callbacks you need; the others cost nothing.

    Every callback runs on the reactor thread, one wakeup's worth of events under a single
    acquisition of the GIL, so a callback should return quickly. A callback that raises is
    logged on the ``hamanet`` logger with its traceback, and only that session is aborted;
    its ``on_close`` receives the exception.
    """

    __slots__ = ()

    def on_connect(self, session: Session) -> None:
        """A connection was accepted (server) or established (client)."""

    def on_recv(self, session: Session, data: bytes) -> None:
        """``data`` is everything read from ``session`` in this wakeup, in order."""

    def on_send(self, session: Session) -> None:
        """Everything written so far has been handed to the kernel."""

    def on_eof(self, session: Session) -> bool | None:
        """The peer half-closed (sent FIN). Return True to keep the session open for
        writing; otherwise (the default) it is closed after its buffer is sent."""
        return None

    def on_close(self, session: Session, exc: BaseException | None) -> None:
        """The session is closed: ``exc`` is None for a clean close, else the ``OSError``
        that ended it (``TimeoutError`` for the idle timeout), or the exception a callback
        raised."""

    def on_pause_writing(self, session: Session) -> None:
        """More than the high watermark is buffered after the reactor sent what it could:
        the peer is slower than the writer. Stop writing until ``on_resume_writing``."""

    def on_resume_writing(self, session: Session) -> None:
        """The buffer has drained to the low watermark after ``on_pause_writing``."""

    def on_message(self, session: Session, message: bytes) -> None:
        """With framing (see ``hamanet.framing``): one whole message, in order."""

    def on_messages(self, session: Session, messages: list[bytes]) -> None:
        """With framing: every message this wakeup completed, in order; one call however
        many. Overriding it takes precedence over ``on_message``."""


def bound_callbacks(handler: Any) -> tuple[Callable[..., Any] | None, ...]:
    """The handler's overridden callbacks as bound methods, None for the rest."""
    if not isinstance(handler, Handler):
        raise TypeError(
            f"handler must be an instance of a hamanet.Handler subclass, not "
            f"{type(handler).__name__!r}; subclass hamanet.Handler and override on_recv etc."
        )
    cls = type(handler)
    callbacks = []
    for name in CALLBACK_NAMES:
        overridden = getattr(cls, name) is not getattr(Handler, name)
        callbacks.append(getattr(handler, name) if overridden else None)
    return tuple(callbacks)
