"""Server and Client over the native reactor."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from ._datagram import DatagramEndpoints, connect_udp
from ._defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
)
from ._hamanet import (
    OPTIONS,
    LifecycleError,
    Loop,
    Session,
    TimerHandle,
    TLSClientContext,
)
from ._handler import Handler, _is_async, bound_callbacks
from ._listeners import Listeners

#: A wait without a timeout: the native waits handle signals (Ctrl-C) every 50 ms
#: themselves, so one call can wait as long as it takes.
_FOREVER = 1e9
#: How long stop() waits past its timeout before it says which callback holds it up.
_STOP_GRACE = 1.0
#: How often drain() looks whether the sessions have all closed.
_DRAIN_POLL = 0.05

_logger = logging.getLogger("hamanet")

# Started endpoints, kept alive until stopped (as a running thread keeps itself alive), so a
# server whose last reference was dropped still gets stopped before the interpreter exits.
_live: set[_Endpoint] = set()
_live_lock = threading.Lock()


def _check_callback(callback: Any) -> None:
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__!r}")
    if _is_async(callback):
        raise TypeError(
            f"callback {callback!r} is async (a coroutine function), which hamanet would "
            "call without awaiting; pass a plain function (coroutine callbacks are not "
            "supported yet)"
        )


class _Endpoint:
    """What Server and Client share: the reactor, its handler and its lifecycle."""

    def __init__(self, handler: Handler, **options: Any) -> None:
        # The options are checked natively (names, kinds and values), in one place for
        # every caller; only the handler's own framing attribute is looked up here.
        framing = options.pop("framing", None)
        if framing is None:
            framing = getattr(handler, "framing", None)
        self._loop = Loop(type(self).__name__, framing=framing, **options)
        self._framed = framing is not None
        self._loop.set_callbacks(bound_callbacks(handler, framed=self._framed))
        self._handler = handler
        self._start_lock = threading.Lock()

    @property
    def handler(self) -> Handler:
        """The handler whose callbacks the reactor calls."""
        return self._handler

    def set_handler(self, handler: Handler) -> None:
        """Replaces the handler; the reactor uses the new one from its next wakeup."""
        self._loop.set_callbacks(bound_callbacks(handler, framed=self._framed))
        self._handler = handler

    @property
    def running(self) -> bool:
        """True between start() and the end of stop()."""
        return self._loop.phase == "running" or (
            self._loop.phase == "stopped" and not self._loop.finished
        )

    @property
    def session_count(self) -> int:
        """Sessions currently open."""
        return self._loop.session_count

    def stats(self) -> dict[str, int]:
        """Counters as of the reactor's last wakeup: ``sessions_open``, ``sessions_total``,
        ``accepted``, ``refused_by_limit``, ``bytes_in``, ``bytes_out``, ``writes``,
        ``sends``, ``writes_coalesced``, ``idle_timeouts``, ``accept_pauses``,
        ``timers_fired`` (call_later/call_at), ``calls_soon`` (call_soon_threadsafe),
        ``handler_errors``; with a pool, ``workers``, ``worker_queued`` (work waiting for a
        worker), ``workers_busy`` and ``worker_wait_max_us`` (the longest a session has
        waited for a worker). Cheap: read it as often as you like."""
        return self._loop.stats()

    def time(self) -> float:
        """The clock that ``call_at`` uses: ``time.monotonic()``."""
        return time.monotonic()

    def call_later(
        self,
        delay: float,
        callback: Callable[..., Any],
        *args: Any,
        session: Session | None = None,
    ) -> TimerHandle:
        """Runs ``callback(*args)`` after ``delay`` seconds where handler code runs: on the
        reactor thread, in the same batch as I/O callbacks, or with ``workers=N`` on the
        pool (in order with ``session``'s callbacks, never beside them, if given; else in
        order with the other timers). Returns a handle whose ``cancel()`` stops it. Safe
        from any thread; a callback that raises is logged on the ``hamanet`` logger."""
        _check_callback(callback)
        self._start_on_demand()
        return self._loop.call_later(delay, callback, args, time.monotonic(), session)

    def call_at(
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        session: Session | None = None,
    ) -> TimerHandle:
        """Runs ``callback(*args)`` at ``when`` on the ``time.monotonic()`` clock (see
        ``call_later``)."""
        _check_callback(callback)
        self._start_on_demand()
        return self._loop.call_at(when, callback, args, time.monotonic(), session)

    def call_soon_threadsafe(
        self, callback: Callable[..., Any], *args: Any, session: Session | None = None
    ) -> TimerHandle:
        """Runs ``callback(*args)`` as soon as it can, where handler code runs (see
        ``call_later``), waking the reactor if it is waiting. The way for other threads to
        hand work to handler code."""
        _check_callback(callback)
        self._start_on_demand()
        return self._loop.call_soon(callback, args, time.monotonic(), session)

    def run_in_worker(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Runs ``function(*args)`` on a worker of the pool (``workers=N``) and returns a
        ``concurrent.futures.Future`` of its result: for one-off blocking work started from
        a callback, which goes on at once. Its exception, if it raises, is the future's.
        Work still queued when a stop's deadline passes is cancelled."""
        if not callable(function):
            raise TypeError(f"function must be callable, not {type(function).__name__!r}")
        self._start_on_demand()
        future: Future[Any] = Future()
        self._loop.run_in_worker(function, args, future)
        return future

    def _start_on_demand(self) -> None:
        """Before a callback is scheduled or a connect made: a Client starts its reactor
        then; a Server runs what was scheduled before start() once it starts, and
        connects only while running."""

    def connect_nowait(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        handler: Handler | None = None,
        tls: TLSClientContext | None = None,
        server_hostname: str | None = None,
    ) -> Session:
        """Starts connecting to ``host`` (an IP address) and returns the Session at once;
        the reactor finishes the connect, so this never blocks and works from a callback.
        On a Server it opens an outbound session on the server's own reactor: a proxy's
        upstream then runs on the same thread as its downstream, and since a session
        opened from a callback goes live only after that callback returns, the caller can
        attach its state first. ``handler``, if given, receives this session's callbacks
        instead of the endpoint's handler (e.g. an object holding the downstream session).

        ``on_connect`` follows when connected. If the connect fails or times out,
        ``on_close(session, exc)`` comes instead, without an ``on_connect``; ``close()``
        before then cancels it (``on_close(session, None)``). Writes made meanwhile are
        sent once connected.

        With ``tls`` (a ``TLSClientContext``) the reactor also does the TLS handshake,
        checking the certificate against ``server_hostname`` (by default ``host``);
        ``on_connect`` follows the handshake, and a refused one is ``on_close(session,
        TLSError)``."""
        callbacks = self._own_callbacks(handler)
        self._start_on_demand()
        return self._loop.connect_nowait(host, port, timeout, callbacks, tls, server_hostname)

    def _own_callbacks(self, handler: Handler | None) -> tuple[Any, ...] | None:
        if handler is None:
            return None
        return bound_callbacks(handler, framed=self._framed)

    def start(self) -> None:
        """Starts the reactor on its own thread. Raises LifecycleError if called twice."""
        with self._start_lock:
            self._loop.start()
            self._track(True)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Graceful stop: accept nothing more, send every session's buffered bytes and close
        it (FIN), aborting (RST) whatever has not flushed after ``timeout`` seconds. Every
        session gets exactly one ``on_close``.

        From any thread but the reactor's, waits until the reactor has finished: within
        ``timeout`` unless a callback is running and does not return, which nothing can
        interrupt; then a warning on the ``hamanet`` logger names it, and stop() goes on
        waiting for it (Ctrl-C there aborts every session and returns). A second stop()
        can shorten the deadline. From a handler callback, only requests the stop (join()
        then returns once it is done).
        """
        timeout = self._loop.stop(timeout)
        if self._loop.on_handler_thread() or self._loop.phase == "created":
            return
        if not self._wait(timeout + _STOP_GRACE):
            self._report_blocked(f"stop(timeout={timeout:g})")
            self._wait(None)

    def _report_blocked(self, what: str) -> None:
        busy = self._loop.busy_callback()
        if busy is None:
            return  # it finished meanwhile
        name, session, seconds = busy
        kind = "datagram endpoint" if name.startswith("on_datagram") else "session"
        whose = f" of {kind} {session}" if session else ""
        _logger.warning(
            "hamanet: %s is waiting for %s%s, which has been running for %.1f s; a "
            "callback cannot be interrupted, so the reactor stops once it returns",
            what,
            name,
            whose,
            seconds,
        )

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until the reactor has finished (after stop()), or ``timeout`` seconds.

        Returns whether it finished. Ctrl-C raises KeyboardInterrupt here promptly, after
        stopping the reactor cleanly. A KeyboardInterrupt or SystemExit raised by a handler
        callback stops the server and is re-raised here.
        """
        if self._loop.phase == "created":
            raise LifecycleError("join() before start(): call start() first")
        self._refuse_on_handler_thread("join()")
        return self._wait(timeout)

    def _refuse_on_handler_thread(self, what: str) -> None:
        if self._loop.on_handler_thread():
            raise LifecycleError(
                f"{what} cannot be called from a handler callback: it would wait for the "
                "reactor, which is running the callback, forever; call stop() to end it"
            )

    def _wait(self, timeout: float | None) -> bool:
        finished = self._wait_for(self._loop.wait, timeout)
        if finished:
            self._track(False)
        return finished

    def _track(self, running: bool) -> None:
        with _live_lock:
            if running:
                _live.add(self)
            else:
                _live.discard(self)

    def _wait_for(self, wait: Any, timeout: float | None) -> bool:
        try:
            return wait(_FOREVER if timeout is None else timeout)
        except BaseException:
            # Ctrl-C (or a SystemExit from a signal handler) while waiting: leave the
            # reactor stopped, then let the exception through.
            self._stop_after_interrupt()
            raise

    def _stop_after_interrupt(self) -> None:
        """The first Ctrl-C stops gracefully (flushing for up to DEFAULT_STOP_TIMEOUT);
        a second one aborts every session at once, as servers users know do."""
        self._loop.stop(DEFAULT_STOP_TIMEOUT)
        try:
            if self._loop.wait(_STOP_GRACE):
                return
            _logger.warning(
                "hamanet: stopping: sending what sessions have buffered for up to %g s; "
                "press Ctrl-C again to abort them now",
                DEFAULT_STOP_TIMEOUT,
            )
            if not self._loop.wait(DEFAULT_STOP_TIMEOUT):
                self._report_blocked("the stop after Ctrl-C")
        except KeyboardInterrupt:
            self._loop.stop(0.0)
            # A callback that does not return cannot be aborted: wait only briefly.
            with contextlib.suppress(BaseException):
                if not self._loop.wait(_STOP_GRACE):
                    self._report_blocked("the abort after a second Ctrl-C")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._loop.phase != "stopped" or not self._loop.finished:
            self.stop()


# help(Server), help(Client) list the options (with their native defaults), not **options.
_Endpoint.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("handler", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Handler),
    ]
    + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in OPTIONS
    ]
)


class Server(Listeners, DatagramEndpoints, _Endpoint):
    """A TCP server: ``open()`` one or more addresses, ``start()``, then ``join()``.

    Socket options apply to every accepted session: ``nodelay`` (TCP_NODELAY, on by
    default), ``keepalive`` (SO_KEEPALIVE), ``recv_buffer``/``send_buffer`` (SO_RCVBUF /
    SO_SNDBUF in bytes, None for the kernel's defaults).
    """

    def __init__(self, handler: Handler, **options: Any) -> None:
        super().__init__(handler, **options)
        self._addresses = []

    __init__.__signature__ = _Endpoint.__init__.__signature__  # type: ignore[attr-defined]

    def drain(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Graceful stop that lets the sessions finish: ``stop_accepting()``, then wait
        up to ``timeout`` seconds for every session to close on its own (its peer done),
        then ``stop()`` whatever is left with the time that remains (at least a second to
        flush). How ``hamanet serve`` retires a process on reload and SIGTERM. Waits, so
        it is refused on the reactor's own thread (a callback), where nothing could close
        meanwhile: there, call ``stop_accepting()`` and ``stop()`` later."""
        if self._loop.on_handler_thread():
            raise LifecycleError(
                "drain() waits for the sessions to close, which they cannot do while a "
                "callback waits: call it from another thread, or call stop_accepting() "
                "now and stop() later"
            )
        deadline = time.monotonic() + timeout
        self.stop_accepting()
        # session_count, not stats(): it is live, and stop_accepting() has returned once
        # the last connections queued were accepted, so it counts them.
        while self.session_count and time.monotonic() < deadline:
            time.sleep(_DRAIN_POLL)
        self.stop(max(deadline - time.monotonic(), 1.0))

    def serve_forever(self) -> None:
        """start() then join(): runs until stop() or Ctrl-C."""
        self.start()
        self.join()


class Client(DatagramEndpoints, _Endpoint):
    """A TCP client: ``connect()`` returns a Session; callbacks go to the handler. Also
    datagram endpoints: ``open_udp()`` and ``connect_udp()``.

    The reactor starts with the first connect(), endpoint or scheduled callback. ``join()``
    waits until every session and endpoint of this client has closed; ``stop()`` closes
    them all and ends the reactor.
    """

    def _start_on_demand(self) -> None:
        self._ensure_started()

    connect_udp = connect_udp

    def connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        handler: Handler | None = None,
        tls: TLSClientContext | None = None,
        server_hostname: str | None = None,
    ) -> Session:
        """Connects, waiting up to ``timeout`` seconds, and returns the Session.

        Refused, unreachable or timed-out connections raise the matching OSError
        (ConnectionRefusedError, TimeoutError, ...); nothing hangs and no fd leaks.
        ``on_connect`` follows on the reactor thread, possibly before this returns: state
        the callbacks need belongs in ``handler``, which (if given) receives this
        session's callbacks instead of the client's handler. Call from any thread but the
        reactor's (not from a callback; see ``connect_nowait``).

        With ``tls`` (a ``TLSClientContext``) it returns once the TLS handshake is done
        too (within the context's ``handshake_timeout``), having checked the server's
        certificate against ``server_hostname`` (by default ``host``); a refused
        handshake raises ``TLSError`` naming why.
        """
        callbacks = self._own_callbacks(handler)
        self._ensure_started()
        return self._loop.connect(host, port, timeout, callbacks, tls, server_hostname)

    def connect_unix(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        handler: Handler | None = None,
    ) -> Session:
        """Connects to the Unix domain stream socket at ``path`` (see ``connect``)."""
        callbacks = self._own_callbacks(handler)
        self._ensure_started()
        return self._loop.connect_unix(path, timeout, callbacks)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._loop.phase == "created":
                self._loop.start()
                self._track(True)

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until every session and datagram endpoint of this client has closed (or
        the client stopped), or ``timeout`` seconds. Returns whether that happened. Ctrl-C
        interrupts it."""
        if self._loop.phase == "created":
            return True
        self._refuse_on_handler_thread("join()")
        return self._wait_for(self._loop.wait_idle, timeout)


@atexit.register
def _stop_all() -> None:
    # The reactor thread holds the interpreter; it must be finished before the
    # interpreter is torn down.
    with _live_lock:
        endpoints = list(_live)
    for endpoint in endpoints:
        with contextlib.suppress(Exception):
            endpoint.stop(timeout=1.0)


def _forget_all_after_fork() -> None:
    """In a forked child: every Server and Client of the parent is a dead copy (its
    reactor thread stayed in the parent). Close the child's copies of their sockets, so
    the parent's connections and listeners end when the parent closes them, and forget
    them, so that exiting the child does not wait for them."""
    global _live_lock
    _live_lock = threading.Lock()  # another thread may have held it at the fork
    for endpoint in list(_live):
        endpoint._loop.forget_after_fork()
    _live.clear()


os.register_at_fork(after_in_child=_forget_all_after_fork)
