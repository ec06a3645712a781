"""hamanet inside asyncio: a hamanet reactor driven by the running event loop.

``await hamanet.aio.serve(handler, host, port)`` runs a reactor without a thread of its
own: its epoll fd is registered with ``loop.add_reader``, its timers are the loop's, and
each readiness is served as one batch on the loop's thread. Handler callbacks therefore
run on the asyncio thread and may use asyncio freely; a callback written ``async def`` is
run as a task, and its session's next callback waits until it has finished (reading that
session pauses meanwhile, so TCP pushes back on the peer).

It works on asyncio's own loop and on uvloop (any loop with ``add_reader``).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any, Callable

from ._datagram import DatagramEndpoints, connect_udp
from ._defaults import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_STOP_TIMEOUT,
)
from ._hamanet import Loop, Session, TLSClientContext, TLSServerContext
from ._handler import CALLBACK_NAMES, Handler, _is_async, bound_callbacks
from ._listeners import Listeners

__all__ = [
    "Client",
    "IncompleteReadError",
    "LimitOverrunError",
    "Server",
    "StreamReader",
    "StreamWriter",
    "connect",
    "open_connection",
    "run",
    "serve",
    "start_server",
]

# What a stream program takes from asyncio besides the streams themselves, so that one
# written for asyncio runs with ``import hamanet.aio as asyncio`` as its only change.
run = asyncio.run
IncompleteReadError = asyncio.IncompleteReadError
LimitOverrunError = asyncio.LimitOverrunError


class _Driver:
    """Turns a native loop from an asyncio loop: on readiness of its epoll fd, and when
    the reactor asks to be called back (a timer, a deadline, work cut short)."""

    def __init__(self, native: Loop, loop: asyncio.AbstractEventLoop) -> None:
        self._native = native
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.finished: asyncio.Future[None] = loop.create_future()
        self._fd = native.start_driven()
        loop.add_reader(self._fd, self.drive)
        # Listeners opened and sessions queued before the start are waiting already.
        self._timer = loop.call_soon(self.drive)

    def drive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            delay = self._native.drive()
        except BaseException as exc:  # KeyboardInterrupt/SystemExit from a handler
            self._native.stop(0)
            self._finish(exc)
            raise
        if delay is not None and delay < 0:
            self._finish(None)
        elif delay is not None:
            self._timer = self._loop.call_later(delay, self.drive)

    def _finish(self, exc: BaseException | None) -> None:
        if self.finished.done():
            return
        # Before the fd closes: a loop must not watch a number that may be reused.
        self._loop.remove_reader(self._fd)
        self._native.finish_driven()
        if exc is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(exc)


class _Order:
    """One session's callbacks, one at a time: while a coroutine callback runs as a task,
    the session's later callbacks wait in ``queue`` and its reading is paused."""

    __slots__ = ("busy", "error", "queue")

    def __init__(self) -> None:
        self.busy = False
        self.queue: collections.deque[tuple[str, Callable[..., Any], bool, tuple[Any, ...]]]
        self.queue = collections.deque()
        self.error: BaseException | None = None


class _Callbacks:
    """Wraps a handler's callbacks so coroutine ones are awaited in per-session order."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint

    def wrap(self, bound: tuple[Any, ...]) -> tuple[Any, ...]:
        """``bound``: what ``bound_callbacks`` made (the callbacks, then ``recv_views``)."""
        callbacks, recv_views = bound[: len(CALLBACK_NAMES)], bound[len(CALLBACK_NAMES)]
        if not any(callback is not None and _is_async(callback) for callback in callbacks):
            # Nothing to await, so nothing to keep in order: the callbacks as they are,
            # at no cost per call.
            return bound
        if recv_views:
            raise TypeError(
                "recv_views = True needs every callback to be a plain def on hamanet.aio: "
                "an on_recv that arrives while an async callback of its session is pending "
                "waits for it, and would run after its view was released; drop recv_views "
                "or make the callbacks plain"
            )
        wrapped = tuple(
            None if callback is None else self._wrap(name, callback)
            for name, callback in zip(CALLBACK_NAMES, callbacks)
        )
        return (*wrapped, recv_views)

    def _wrap(self, name: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        is_async = _is_async(callback)
        run = self._run

        def call(session: Session, *args: Any) -> Any:
            order: _Order | None = getattr(session, "_hamanet_order", None)
            if order is not None and order.busy:
                order.queue.append((name, callback, is_async, args))
                return True  # on_eof: keep the session open until the queued call decides
            return run(session, name, callback, is_async, args)

        call.__name__ = name
        call.__qualname__ = getattr(callback, "__qualname__", name)
        return call

    def _run(
        self,
        session: Session,
        name: str,
        callback: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
    ) -> Any:
        order: _Order | None = getattr(session, "_hamanet_order", None)
        if name == "on_close" and order is not None and order.error is not None:
            # An async callback of this session raised: that is why it closed.
            args = (order.error,)
        if not is_async:
            return callback(session, *args)
        if order is None:
            order = _Order()
            session._hamanet_order = order
        order.busy = True
        if name != "on_close":
            # Apart from the user's pause_reading(), which this neither sets nor lifts.
            session._hold_reading()
        task = asyncio.get_running_loop().create_task(callback(session, *args))
        self._endpoint._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(session, name, order, done))
        return True  # on_eof: the task's result decides

    def _finished(self, session: Session, name: str, order: _Order, task: asyncio.Task) -> None:
        self._endpoint._tasks.discard(task)
        order.busy = False
        self._settle(session, name, task)
        while order.queue and not order.busy:
            name, callback, is_async, args = order.queue.popleft()
            try:
                result = self._run(session, name, callback, is_async, args)
            except Exception as exc:
                self._failed(session, name, order, exc)
                continue
            if name == "on_eof" and not order.busy and not result:
                session.close()
        if not order.busy:
            session._release_reading()

    def _settle(self, session: Session, name: str, task: asyncio.Task) -> None:
        order: _Order = session._hamanet_order
        if task.cancelled():
            # Cancelled (the loop is ending, say): not the handler's fault, nothing to log;
            # what the callback would have done is not done, so the session goes.
            if not session.closed:
                order.error = order.error or asyncio.CancelledError()
                session.abort()
            return
        exc = task.exception()
        if exc is not None:
            self._failed(session, name, order, exc)
        elif name == "on_eof" and not task.result():
            session.close()

    def _failed(self, session: Session, name: str, order: _Order, exc: BaseException) -> None:
        # As a plain callback's exception: logged and counted, and the session aborted,
        # its on_close given the exception.
        native = self._endpoint._loop
        if name == "on_close" or session.closed:
            native.report_handler_error(name, None, exc)
            return
        native.report_handler_error(name, session.id, exc)
        if order.error is None:
            order.error = exc
        session.abort()


class _Endpoint:
    """What Server and Client share: a native loop driven by the running asyncio loop."""

    def __init__(self, handler: Handler, **options: Any) -> None:
        framing = options.pop("framing", None)
        if framing is None:
            framing = getattr(handler, "framing", None)
        for name, only in (("workers", 0), ("reactors", 1)):
            if options.get(name, only) != only:
                raise ValueError(
                    f"{name}={options[name]!r}: hamanet.aio runs one reactor on the asyncio "
                    f"thread and no worker pool ({name}={only}); run several processes, or "
                    "use hamanet.Server for threads"
                )
        options.setdefault("workers", 0)
        self._loop = Loop(type(self).__name__, framing=framing, **options)
        self._tasks: set[asyncio.Task[Any]] = set()
        wrapper = _Callbacks(self)
        callbacks = bound_callbacks(handler, framed=framing is not None, allow_async=True)
        self._loop.set_callbacks(self._hook(wrapper.wrap(callbacks)))
        self.handler = handler
        self._driver: _Driver | None = None

    def _hook(self, callbacks: tuple[Any, ...]) -> tuple[Any, ...]:
        """What the endpoint itself needs told, around the handler's callbacks."""
        return callbacks

    def _start(self) -> None:
        if self._driver is None:
            self._driver = _Driver(self._loop, asyncio.get_running_loop())

    def close(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stops accepting and closes every session (each flushed for up to ``timeout``
        seconds, then aborted); ``await wait_closed()`` for the end."""
        # A command: it wakes the reactor through its epoll fd, or, given inside a
        # callback, is run when the turn that called it ends.
        self._loop.stop(timeout)

    async def wait_closed(self) -> None:
        """Waits until every session has closed and its callbacks (tasks too) finished."""
        if self._driver is None:
            return
        await asyncio.shield(self._driver.finished)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """The counters of ``hamanet.Server.stats()``."""
        return self._loop.stats()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()


class Server(Listeners, DatagramEndpoints, _Endpoint):
    """A hamanet server on the running asyncio loop (see ``serve``); ``open_udp()`` adds
    datagram endpoints, whose callbacks run on the asyncio thread too."""

    _async_callbacks = True

    def __init__(self, handler: Handler, **options: Any) -> None:
        super().__init__(handler, **options)
        self._addresses = []

    @property
    def sockets(self) -> list[_ListeningSocket]:
        """The listeners, as ``asyncio.Server.sockets`` lists them (``getsockname()``)."""
        return [_ListeningSocket(address) for address in self._addresses]

    async def start_serving(self) -> None:
        """Starts the reactor on the running loop (``serve`` does this)."""
        self._start()

    def is_serving(self) -> bool:
        """True from the start until close()."""
        return self._loop.phase == "running"

    async def serve_forever(self) -> None:
        """Serves until ``close()``, or until this coroutine is cancelled (which closes
        the server)."""
        self._start()
        assert self._driver is not None
        try:
            await asyncio.shield(self._driver.finished)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise


class _ListeningSocket:
    """A listener as code written for ``asyncio.Server.sockets`` looks at it."""

    def __init__(self, address: Any) -> None:
        self._address = address
        if isinstance(address, tuple):
            self.family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        else:
            self.family = socket.AF_UNIX

    def getsockname(self) -> Any:
        return self._address

    def __repr__(self) -> str:
        return f"<hamanet listening socket {self._address!r}>"


class Client(DatagramEndpoints, _Endpoint):
    """hamanet client sessions (and datagram endpoints: ``open_udp()``,
    ``connect_udp()``, from a coroutine) on the running asyncio loop."""

    _async_callbacks = True
    connect_udp = connect_udp

    def _start_on_demand(self) -> None:
        self._start()

    def _hook(self, callbacks: tuple[Any, ...]) -> tuple[Any, ...]:
        return _opening(callbacks, self._closed_one)

    def _closed_one(self) -> None:
        """A session of this client has closed."""

    async def connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        tls: TLSClientContext | None = None,
        server_hostname: str | None = None,
    ) -> Session:
        """Connects (and completes the TLS handshake with ``tls``) without blocking the
        loop; returns the Session once ``on_connect`` has run, or raises the connect's
        error (``ConnectionRefusedError``, ``TimeoutError``, ``hamanet.TLSError``...)."""
        self._start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if tls is not None and server_hostname is None:
            server_hostname = host
        last: BaseException | None = None
        for *_, address in infos:
            ip = address[0]
            outcome: asyncio.Future[BaseException | None] = loop.create_future()
            session = self._loop.connect_nowait(ip, port, timeout, None, tls, server_hostname)
            session._hamanet_opened = outcome
            failure = await outcome
            if failure is None:
                return session
            last = failure
        assert last is not None
        raise last


def _opening(callbacks: tuple[Any, ...], closed_one: Callable[[], None]) -> tuple[Any, ...]:
    """Resolves a ``Client.connect`` waiting for its session: after ``on_connect``, or
    with the error at an ``on_close`` that came instead; tells ``closed_one`` of every
    close."""
    on_connect, on_close = (callbacks[CALLBACK_NAMES.index(n)] for n in ("on_connect", "on_close"))

    def opened(session: Session) -> None:
        outcome = session.__dict__.pop("_hamanet_opened", None)
        if outcome is not None and not outcome.done():
            outcome.set_result(None)

    def connected(session: Session) -> None:
        if on_connect is not None:
            on_connect(session)
        order: _Order | None = getattr(session, "_hamanet_order", None)
        if order is not None and order.busy:
            # An async on_connect: connect() returns once it has finished.
            order.queue.append(("on_connect", opened, False, ()))
        else:
            opened(session)

    def closed(session: Session, exc: BaseException | None) -> None:
        outcome = session.__dict__.pop("_hamanet_opened", None)
        if outcome is not None and not outcome.done():
            # Never opened: connect() raises (or tries the next address).
            cancelled = ConnectionAbortedError("the connect was cancelled")
            outcome.set_result(exc if exc is not None else cancelled)
            return
        try:
            if on_close is not None:
                on_close(session, exc)
        finally:
            closed_one()

    wrapped = list(callbacks)
    wrapped[CALLBACK_NAMES.index("on_connect")] = connected
    wrapped[CALLBACK_NAMES.index("on_close")] = closed
    return tuple(wrapped)


async def serve(
    handler: Handler,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    dual_stack: bool = False,
    tls: TLSServerContext | None = None,
    proxy_protocol: bool = False,
    proxy_timeout: float | None = None,
    **options: Any,
) -> Server:
    """Serves ``handler`` on ``host:port`` from the running asyncio loop and returns the
    started ``Server`` (``async with``, ``serve_forever()``, ``close()`` then
    ``wait_closed()``, as ``asyncio.Server``). ``options`` are ``hamanet.Server``'s; the
    keywords before them are ``open()``'s."""
    server = Server(handler, **options)
    server.open(
        port,
        host,
        backlog=backlog,
        reuse_port=reuse_port,
        dual_stack=dual_stack,
        tls=tls,
        proxy_protocol=proxy_protocol,
        proxy_timeout=proxy_timeout,
    )
    await server.start_serving()
    return server


async def connect(
    handler: Handler,
    host: str,
    port: int,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    tls: TLSClientContext | None = None,
    server_hostname: str | None = None,
    **options: Any,
) -> Session:
    """Connects ``handler`` to ``host:port`` from the running asyncio loop and returns the
    Session once connected; the client behind it closes with the session."""
    client = _OneSession(handler, **options)
    return await client.connect(
        host, port, timeout=timeout, tls=tls, server_hostname=server_hostname
    )


class _OneSession(Client):
    """The client behind ``connect()``: it ends when its session does, or when the
    connect fails."""

    async def connect(self, host: str, port: int, **kwargs: Any) -> Session:
        try:
            return await super().connect(host, port, **kwargs)
        except BaseException:
            self.close()
            raise

    def _closed_one(self) -> None:
        self.close()


from ._streams import StreamReader, StreamWriter, open_connection, start_server  # noqa: E402
