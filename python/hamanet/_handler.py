"""The handler interface and how the reactor finds its callbacks.

``bound_callbacks`` also refuses, or warns about, the handler mistakes that would otherwise
fail silently: a callback hamanet would never call, or call without effect (a coroutine it
does not await, on_recv under framing, on_message without it), and methods named after
another library's callbacks or misspelt.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable

from .framing import Framing

if TYPE_CHECKING:
    from ._hamanet import DatagramEndpoint, Session

# The reactor takes the callbacks as a tuple in this order; it defines the order.
from ._hamanet import CALLBACK_NAMES


class HandlerWarning(UserWarning):
    """A handler defines a method hamanet never calls: a callback name from asyncio or
    Twisted, or a misspelt one. Emitted once per handler class."""


class Handler:
    """Subclass this and override the callbacks you need; the others cost nothing.

    Every callback runs on the reactor thread, one wakeup's worth of events under a single
    acquisition of the GIL, so a callback should return quickly. A callback that raises is
    logged on the ``hamanet`` logger with its traceback, and only that session is aborted;
    its ``on_close`` receives the exception. A datagram callback that raises is logged and
    its endpoint stays open (it serves every peer at once).
    """

    __slots__ = ()

    #: True: ``on_recv`` gets a read-only ``memoryview`` onto hamanet's receive buffer
    #: instead of a new ``bytes`` object, so received bytes are never copied. The view is
    #: lent for the call only and released when it returns (using a kept view raises
    #: ``ValueError``): parse it, write it (``session.write(data)`` sends it without a
    #: copy when nothing is buffered), or copy what you keep with ``bytes(data[a:b])``.
    recv_views: bool = False

    def on_connect(self, session: Session) -> None:
        """A connection was accepted (server) or established (client)."""

    def on_recv(self, session: Session, data: bytes) -> None:
        """``data`` is everything read from ``session`` in this wakeup, in order (a
        ``memoryview`` lent for the call if the class sets ``recv_views = True``)."""

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

    def on_datagrams(self, endpoint: DatagramEndpoint, datagrams: list[tuple[bytes, Any]]) -> None:
        """Every datagram ``endpoint`` received in this wakeup, in order, as ``(data,
        addr)`` pairs (``addr`` as ``recvfrom`` gives it: ``(host, port)``, or ``(host,
        port, flowinfo, scope_id)`` for IPv6); one call however many. Only whole
        datagrams: a truncated one goes to ``on_datagram_error``. Overriding it takes
        precedence over ``on_datagram``."""

    def on_datagram(self, endpoint: DatagramEndpoint, data: bytes, addr: Any) -> None:
        """One whole datagram, in order (when ``on_datagrams`` is not overridden)."""

    def on_datagram_error(self, endpoint: DatagramEndpoint, exc: OSError) -> None:
        """Something went wrong for ``endpoint``, which stays open: an ICMP error on a
        connected endpoint (``ConnectionRefusedError`` when nobody listens at the peer's
        port), a datagram the kernel would not send (``exc.addr`` its destination), or a
        ``hamanet.DatagramTruncatedError`` for a datagram longer than
        ``max_datagram_size`` (``exc.data`` the part kept, ``exc.size`` its size). Without
        this callback the first error of an endpoint is logged as a warning."""

    def on_datagram_close(self, endpoint: DatagramEndpoint, exc: BaseException | None) -> None:
        """The endpoint is closed, once: ``exc`` is None (after ``close()``, ``abort()``
        or the stop), or the ``TimeoutError`` of a stop whose deadline came before its
        queued datagrams were sent."""


# How the reactor calls each callback (after the bound ``self``).
_PARAMETERS = {
    "on_connect": ("session",),
    "on_recv": ("session", "data"),
    "on_send": ("session",),
    "on_eof": ("session",),
    "on_close": ("session", "exc"),
    "on_pause_writing": ("session",),
    "on_resume_writing": ("session",),
    "on_message": ("session", "message"),
    "on_messages": ("session", "messages"),
    "on_datagrams": ("endpoint", "datagrams"),
    "on_datagram": ("endpoint", "data", "addr"),
    "on_datagram_error": ("endpoint", "exc"),
    "on_datagram_close": ("endpoint", "exc"),
}
assert set(_PARAMETERS) == set(CALLBACK_NAMES)

_DATA_CALLBACKS = ("on_recv", "on_message", "on_messages")
_DATAGRAM_CALLBACKS = ("on_datagrams", "on_datagram")
_DATAGRAM_NAMES = (*_DATAGRAM_CALLBACKS, "on_datagram_error", "on_datagram_close")

# Callback names of other libraries, which hamanet never calls, and hamanet's equivalent.
_FOREIGN_NAMES = {
    # asyncio.Protocol, asyncio.BufferedProtocol
    "connection_made": ("asyncio", "on_connect"),
    "data_received": ("asyncio", "on_recv"),
    "buffer_updated": ("asyncio", "on_recv"),
    "get_buffer": ("asyncio", "on_recv"),
    "eof_received": ("asyncio", "on_eof"),
    "connection_lost": ("asyncio", "on_close"),
    "pause_writing": ("asyncio", "on_pause_writing"),
    "resume_writing": ("asyncio", "on_resume_writing"),
    # asyncio.DatagramProtocol
    "datagram_received": ("asyncio", "on_datagram"),
    "error_received": ("asyncio", "on_datagram_error"),
    # Twisted's Protocol
    "connectionMade": ("Twisted", "on_connect"),
    "dataReceived": ("Twisted", "on_recv"),
    "connectionLost": ("Twisted", "on_close"),
}

# Likely misspellings or guesses that difflib would not find (they are not close in
# spelling), with the callback meant.
_GUESSES = {
    "on_data": "on_recv",
    "on_read": "on_recv",
    "on_bytes": "on_recv",
    "on_accept": "on_connect",
    "on_open": "on_connect",
    "on_connection_made": "on_connect",
    "on_disconnect": "on_close",
    "on_disconnected": "on_close",
    "on_connection_lost": "on_close",
    "on_error": "on_close",
    "on_timeout": "on_close",
    "on_end": "on_eof",
    "on_drain": "on_send",
    "on_drained": "on_send",
    "on_sent": "on_send",
    "on_pause": "on_pause_writing",
    "on_resume": "on_resume_writing",
    "on_frame": "on_message",
    "on_msg": "on_message",
    "on_line": "on_message",
    "on_packet": "on_message",
    "on_frames": "on_messages",
    "on_lines": "on_messages",
    "on_packets": "on_messages",
    "on_datagram_received": "on_datagram",
    "on_datagrams_received": "on_datagrams",
    "on_udp": "on_datagrams",
}

# Handler classes already checked for the warnings (they are emitted once per class).
_warned: weakref.WeakSet[type] = weakref.WeakSet()


def _describe(name: str) -> str:
    return f"{name}(self, {', '.join(_PARAMETERS[name])})"


def _overrides(cls: type, name: str) -> bool:
    # A callback set to None on the class counts as not overridden, as it always has.
    own = getattr(cls, name, None)
    return own is not None and own is not getattr(Handler, name)


def bound_callbacks(
    handler: Any, framed: bool | None = None, allow_async: bool = False
) -> tuple[Callable[..., Any] | None, ...]:
    """The handler's overridden callbacks as bound methods, None for the rest.

    ``framed`` says whether the endpoint frames its sessions (a framing given to the
    Server or Client, or the handler's own ``framing`` attribute); None when the caller
    does not know, in which case only the handler's ``framing`` attribute is considered.
    Raises TypeError for a handler that would fail silently, and warns (HandlerWarning)
    once per class about methods hamanet never calls. ``allow_async`` admits ``async def``
    callbacks, for a caller that awaits them (``hamanet.aio``).
    """
    _check_is_handler(handler)
    cls = type(handler)
    own_framing = getattr(handler, "framing", None)
    if framed is None and own_framing is not None:
        framed = True
    elif framed is False and own_framing is not None:
        raise TypeError(
            f"{cls.__name__}.framing is {own_framing!r}, but this endpoint was created "
            "without framing, and the framing cannot change afterwards (set_handler): create "
            "the Server or Client with this handler, or with framing=..."
        )
    _check_instance_callbacks(handler)
    callbacks = []
    for name in CALLBACK_NAMES:
        if _overrides(cls, name):
            callback = getattr(handler, name)
            _check_callback(cls, name, callback, allow_async)
            callbacks.append(callback)
        else:
            callbacks.append(None)
    _check_data_callbacks(handler, framed)
    recv_views = _recv_views(handler, framed, callbacks[CALLBACK_NAMES.index("on_recv")])
    if cls not in _warned:
        _warned.add(cls)
        _warn_unused_methods(handler, framed)
    return (*callbacks, recv_views)


def _recv_views(handler: Handler, framed: bool | None, on_recv: Any) -> bool:
    """The handler's ``recv_views``, checked against what it can apply to."""
    value = getattr(handler, "recv_views", False)
    name = type(handler).__name__
    if not isinstance(value, bool):
        raise TypeError(f"{name}.recv_views must be True or False, not {value!r}")
    if value and framed:
        raise TypeError(
            f"{name}.recv_views is True, but this endpoint frames its sessions, and "
            "messages (on_message, on_messages) are always bytes: recv_views applies to "
            "on_recv only; remove it"
        )
    if value and on_recv is not None and _is_async(on_recv):
        raise TypeError(
            f"{name}.recv_views is True, but {name}.on_recv is async: the view is lent for "
            "the call only and released when it returns, before the coroutine body runs; "
            "make on_recv a plain def (it may copy what it needs and start a task), or "
            "drop recv_views"
        )
    return value


def _check_is_handler(handler: Any) -> None:
    if isinstance(handler, Handler):
        return
    if isinstance(handler, type) and issubclass(handler, Handler):
        raise TypeError(
            f"handler must be an instance of a hamanet.Handler subclass, not the class "
            f"{handler.__name__} itself: instantiate it, pass {handler.__name__}() rather than "
            f"{handler.__name__}"
        )
    kind = "class" if isinstance(handler, type) else "instance"
    name = handler.__name__ if isinstance(handler, type) else type(handler).__name__
    foreign = [n for n in _FOREIGN_NAMES if hasattr(handler, n)]
    if foreign:
        library = _FOREIGN_NAMES[foreign[0]][0]
        renames = ", ".join(
            f"{n} -> {_describe(_FOREIGN_NAMES[n][1])}"
            for n in foreign
            if n
            in (
                "data_received",
                "connection_made",
                "connection_lost",
                "eof_received",
                "datagram_received",
                "error_received",
            )
            or _FOREIGN_NAMES[n][0] == "Twisted"
        )
        raise TypeError(
            f"handler must be an instance of a hamanet.Handler subclass, not the {library} "
            f"protocol {kind} {name!r}: hamanet does not take {library} protocols; subclass "
            f"hamanet.Handler, whose callbacks get the session first: {renames}"
        )
    raise TypeError(
        f"handler must be an instance of a hamanet.Handler subclass, not {name!r}; "
        "subclass hamanet.Handler and override on_recv etc."
    )


def _check_instance_callbacks(handler: Handler) -> None:
    """A callback assigned to the instance (``handler.on_recv = f``) of a class that does
    not override it is never called: the reactor looks the overrides up on the class."""
    attributes = getattr(handler, "__dict__", {})
    for name in CALLBACK_NAMES:
        if attributes.get(name) is not None and not _overrides(type(handler), name):
            raise TypeError(
                f"{name} is assigned to the {type(handler).__name__} instance, but hamanet "
                f"only calls callbacks its class overrides, so it would never be called: "
                f"define {_describe(name)} as a method of the subclass (it can delegate to "
                "whatever it must call)"
            )


def _is_async(callback: Any) -> bool:
    if inspect.iscoroutinefunction(callback) or inspect.isasyncgenfunction(callback):
        return True
    # A callable object whose __call__ is async (functions and methods have their own
    # __call__, which is not).
    if not inspect.isroutine(callback) and not inspect.isclass(callback):
        call = getattr(type(callback), "__call__", None)  # noqa: B004
        return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
    return False


def _check_callback(cls: type, name: str, callback: Any, allow_async: bool = False) -> None:
    where = f"{cls.__name__}.{name}"
    if not callable(callback):
        raise TypeError(f"{where} must be a method {_describe(name)}, not {callback!r}")
    if name in _DATAGRAM_NAMES and _is_async(callback):
        raise TypeError(
            f"{where} is an async function: datagram callbacks are plain functions (hamanet "
            "would not await it, and a datagram burst would start a task per call). Write a "
            f"plain def {_describe(name)} and start the async work yourself (under "
            "hamanet.aio, asyncio.get_running_loop().create_task(...); elsewhere "
            "asyncio.run_coroutine_threadsafe(coro, loop)); endpoint.sendto is safe from "
            "any thread"
        )
    if allow_async and inspect.isasyncgenfunction(callback):
        raise TypeError(
            f"{where} is an async generator function; a callback is a coroutine function "
            f"(async def without yield) or a plain def {_describe(name)}"
        )
    if _is_async(callback) and not allow_async:
        generator = inspect.isasyncgenfunction(callback)
        raise TypeError(
            f"{where} is an async {'generator ' if generator else ''}function: coroutine "
            "callbacks are not supported on a Server or Client, which call callbacks on "
            "their reactor thread and would not await them (the body would never run). "
            "Serve inside asyncio with hamanet.aio.serve / hamanet.aio.connect, where they "
            f"are awaited; or write a plain def {_describe(name)} and hand async work to an "
            "asyncio loop with asyncio.run_coroutine_threadsafe(coro, loop), writing the "
            "answer from there (Session.write is safe from any thread)"
        )
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return  # some builtins have no signature: nothing to check
    try:
        signature.bind(*_PARAMETERS[name])
    except TypeError as exc:
        raise TypeError(
            f"{where}{signature} does not take the arguments hamanet passes ({exc}): "
            f"define it as {_describe(name)}"
        ) from None


def _framing_attributes(handler: Handler) -> list[str]:
    """Attributes other than ``framing`` that hold a framer: a misnamed ``framing``."""
    names = [n for n, v in getattr(handler, "__dict__", {}).items() if isinstance(v, Framing)]
    for klass in type(handler).__mro__:
        if klass in (Handler, object):
            continue
        for n, v in vars(klass).items():
            if isinstance(v, Framing) or (isinstance(v, type) and issubclass(v, Framing)):
                names.append(n)
    return [n for n in dict.fromkeys(names) if n != "framing"]


def _check_data_callbacks(handler: Handler, framed: bool | None) -> None:
    cls = type(handler)
    name = cls.__name__
    recv = _overrides(cls, "on_recv")
    message = _overrides(cls, "on_message") or _overrides(cls, "on_messages")
    if framed and recv and not message:
        raise TypeError(
            f"{name} overrides on_recv but has framing, and with framing hamanet delivers "
            "whole messages, never on_recv: every byte received would be dropped. Write "
            f"{_describe('on_messages')} (every message of a wakeup, as a list) or "
            f"{_describe('on_message')} (one call per message) instead, or drop the framing "
            "to receive raw bytes in on_recv"
        )
    if framed is False and message and not recv:
        which = "on_messages" if _overrides(cls, "on_messages") else "on_message"
        misnamed = _framing_attributes(handler)
        hint = (
            f" ({name}.{misnamed[0]} holds a framer, but hamanet only reads the attribute "
            "named framing)"
            if misnamed
            else ""
        )
        raise TypeError(
            f"{name} overrides {which} but there is no framing, so hamanet would never call "
            f"it and every byte received would be dropped{hint}: pass framing= to the Server "
            f"or Client (e.g. framing=hamanet.framing.Delimiter(b'\\n')), or set the class "
            f"attribute framing = ..., or write {_describe('on_recv')} to receive raw bytes"
        )


def _close_callback(name: str) -> str | None:
    """The callback a method name probably meant, if it looks like one."""
    if name in _GUESSES:
        return _GUESSES[name]
    folded = name.replace("_", "").lower()
    for callback in CALLBACK_NAMES:
        if callback.replace("_", "") == folded:  # onRecv, OnRecv, on_Recv, onrecv
            return callback
    if name.lower().startswith("on"):
        close = difflib.get_close_matches(name.lower(), CALLBACK_NAMES, n=1, cutoff=0.8)
        if close:
            return close[0]
    return None


def _warn_unused_methods(handler: Handler, framed: bool | None) -> None:
    cls = type(handler)
    defined: dict[str, type] = {}
    for klass in reversed(cls.__mro__):
        module = getattr(klass, "__module__", "") or ""
        if klass in (Handler, object) or module.split(".")[0] in ("asyncio", "twisted"):
            continue  # the libraries' own (no-op) definitions are nobody's mistake
        for name, value in vars(klass).items():
            if callable(value) or isinstance(value, (staticmethod, classmethod)):
                defined[name] = klass
    for name, klass in defined.items():
        if name in _PARAMETERS or name.startswith("__"):
            continue
        if name in _FOREIGN_NAMES:
            library, meant = _FOREIGN_NAMES[name]
            what = f"is {library}'s name for a callback: hamanet never calls it; its"
            how = "equivalent is {}"
        else:
            meant = _close_callback(name)
            what = "is not a hamanet callback and is never called;"
            how = "did you mean {}?"
            if meant is None:
                continue
        if meant == "on_recv" and framed:
            meant = "on_messages"
        alternatives: tuple[str, ...] = (meant,)
        for group in (_DATA_CALLBACKS, _DATAGRAM_CALLBACKS):
            if meant in group:
                alternatives = group
        if any(_overrides(cls, alternative) for alternative in alternatives):
            continue  # a helper the real callback calls, or a class written for both
        warnings.warn(
            f"{klass.__qualname__}.{name} {what} {how.format(_describe(meant))}",
            HandlerWarning,
            stacklevel=_caller_outside_hamanet(),
        )


def _caller_outside_hamanet() -> int:
    """The stacklevel, for warnings.warn called by our caller, of the first frame
    outside this package: the user's Server(...) or set_handler(...) line."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)  # the caller of warnings.warn: stacklevel 1
    level = 1
    while (
        frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package
    ):
        frame = frame.f_back
        level += 1
    return level
