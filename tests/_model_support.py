"""What the model-based lifecycle test (test_model.py) drives and observes: verifiable byte
streams, a handler that records every callback per session (and what it wrote), the
plain-socket peer, and bounded waits.

Callbacks only record (and note what they find wrong in ``violations``); the test thread
asserts, since an assertion inside a callback would only be logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import random
import socket
import struct
import termios
import threading
import time
from typing import Any, Callable

import hamanet

KiB = 1 << 10
MiB = 1 << 20

# -- verifiable streams ----------------------------------------------------------------------
# Byte i of stream ``seed`` is _BASE[(seed * 7919 + i) % PERIOD]. PERIOD is prime, so no
# chunk size lines up with it, and every stream starts at its own place in _BASE: a byte of
# another session, a duplicate or a gap shows as a mismatch.
PERIOD = 65521
_BASE = random.Random(20261202).randbytes(PERIOD)
_SLICE_MAX = 4 * MiB
_BIG = _BASE * ((PERIOD + _SLICE_MAX) // PERIOD + 1)
_BIG_VIEW = memoryview(_BIG)
_seeds = itertools.count(1)


def new_seed() -> int:
    """A stream seed not used before in this process."""
    return next(_seeds)


def stream(seed: int, offset: int, size: int) -> bytes:
    """Bytes ``offset .. offset + size`` of stream ``seed``."""
    out = bytearray()
    while size > 0:
        n = min(size, _SLICE_MAX)
        start = (seed * 7919 + offset) % PERIOD
        out += _BIG[start : start + n]
        offset += n
        size -= n
    return bytes(out)


def stream_view(seed: int, offset: int, size: int) -> memoryview:
    """Like ``stream`` without a copy, for at most 4 MiB."""
    assert size <= _SLICE_MAX
    start = (seed * 7919 + offset) % PERIOD
    return _BIG_VIEW[start : start + size]


def mismatch(seed: int, offset: int, data: bytes | bytearray | memoryview) -> int | None:
    """Where ``data`` (found at ``offset`` of stream ``seed``) first differs from it."""
    want = stream(seed, offset, len(data))
    if want == data:
        return None
    for i, (a, b) in enumerate(zip(data, want)):
        if a != b:
            return offset + i
    return offset + min(len(data), len(want))


# -- bounded waits -----------------------------------------------------------------------------
WAIT = 10.0  # seconds any single expectation may take


class Timeout(AssertionError):
    pass


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Polls ``predicate`` (every millisecond) until truthy; raises Timeout after
    ``timeout`` seconds, naming ``what`` (a string or a callable giving one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise Timeout(f"timed out after {timeout}s waiting for {text}")
        time.sleep(0.001)


# -- the handler ---------------------------------------------------------------------------------
class SessionLog:
    """Everything one server-side session's callbacks saw and did. Written on the reactor
    thread (and by the test thread's own writes, under ``lock``)."""

    def __init__(self, session_id: int, peer_port: int) -> None:
        self.lock = threading.Lock()
        self.id = session_id
        self.peer_port = peer_port
        self.out_seed = new_seed()
        self.kinds: list[str] = []  # callbacks in order: connect, recv, eof, send, ...
        self.received = bytearray()
        self.closes: list[BaseException | None] = []
        self.eof_at: int | None = None  # len(received) when on_eof ran
        self.out_offset = 0  # bytes of the out stream that write() accepted
        self.writes: list[tuple[int, str]] = []  # (size, "ok" | "closed" | "full")
        self.write_pauses = 0
        self.write_resumes = 0
        self.writing_paused = False
        self.violations: list[str] = []
        # What the model tells the handler to do.
        self.keep_open = False  # on_eof's answer
        self.echo = 0  # on_recv writes min(len(data), echo) bytes of the out stream
        self.close_on_recv = False  # the next on_recv closes the session
        self.closed_in_recv_at: int | None = None  # len(received) when it did
        self.raise_in: str | None = None  # "recv" or "eof": that callback raises, once
        self.raised: HandlerFault | None = None
        self.raised_at: int | None = None  # len(received) when it did
        self.eof_reply = 0  # on_eof writes this many bytes of the out stream

    def kind(self, name: str) -> None:
        if self.closes:
            self.violations.append(f"{name} after on_close (callbacks so far: {self.kinds})")
        self.kinds.append(name)

    def fault(self) -> HandlerFault:
        """The exception the handler raises on purpose (once)."""
        self.raised = HandlerFault(f"on_{self.raise_in} of session {self.id} fails on purpose")
        self.raised_at = len(self.received)
        self.raise_in = None
        return self.raised


class HandlerFault(Exception):
    """Raised by a callback on purpose: only its session is aborted, and its on_close
    gets this very exception."""


def write_out(session: hamanet.Session, log: SessionLog, size: int, pieces: int = 1) -> str:
    """Writes the next ``size`` bytes of the session's out stream (with writelines() in
    ``pieces`` pieces if more than one); the offset advances only if the write accepted
    them. Returns "ok", "closed" (SessionClosedError) or "full" (WriteBufferFullError).
    Safe from any thread: the lock orders the stream."""
    with log.lock:
        before = session.write_buffer_size  # only shrinks meanwhile (the reactor sends)
        data = stream(log.out_seed, log.out_offset, size)
        try:
            if pieces > 1:
                cuts = [size * k // pieces for k in range(pieces + 1)]
                session.writelines([data[a:b] for a, b in zip(cuts, cuts[1:])])
            else:
                session.write(data)
        except hamanet.WriteBufferFullError:
            limit = session.get_write_buffer_limits()[2]
            if before + size <= limit:
                log.violations.append(
                    f"WriteBufferFullError for {size} bytes with {before} buffered, "
                    f"max_write_buffer {limit}"
                )
            outcome = "full"
        except hamanet.SessionClosedError:
            outcome = "closed"
        else:
            log.out_offset += size
            outcome = "ok"
        log.writes.append((size, outcome))
        return outcome


class ModelHandler(hamanet.Handler):
    """Records every callback into the session's SessionLog (``session.mlog``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_port: dict[int, tuple[hamanet.Session, SessionLog]] = {}
        self.violations: list[str] = []

    def _log(self, session: hamanet.Session, name: str) -> SessionLog | None:
        log = getattr(session, "mlog", None)
        if log is None:
            with self.lock:
                self.violations.append(f"{name} for session {session.id} without on_connect")
        return log

    def on_connect(self, session):
        log = SessionLog(session.id, session.peer_addr[1])
        session.mlog = log
        log.kind("connect")
        with self.lock:
            self.by_port[log.peer_port] = (session, log)

    def on_recv(self, session, data):
        log = self._log(session, "on_recv")
        if log is None:
            return
        log.kind("recv")
        if not data:
            log.violations.append("on_recv with no bytes")
        log.received += data
        if log.echo:
            write_out(session, log, min(len(data), log.echo))
        if log.close_on_recv:
            log.closed_in_recv_at = len(log.received)  # first: see write_from_handler
            log.close_on_recv = False
            session.close()
        if log.raise_in == "recv":
            raise log.fault()

    def on_send(self, session):
        log = self._log(session, "on_send")
        if log is not None:
            log.kind("send")

    def on_eof(self, session):
        log = self._log(session, "on_eof")
        if log is None:
            return None
        log.kind("eof")
        if log.eof_at is not None:
            log.violations.append("a second on_eof")
        log.eof_at = len(log.received)
        if log.eof_reply:
            write_out(session, log, log.eof_reply)
        if log.raise_in == "eof":
            raise log.fault()
        return log.keep_open

    def on_close(self, session, exc):
        log = self._log(session, "on_close")
        if log is None:
            return
        log.kind("close")
        log.closes.append(exc)
        if not session.closed:
            log.violations.append("on_close while session.closed is False")

    def on_pause_writing(self, session):
        log = self._log(session, "on_pause_writing")
        if log is None:
            return
        log.kind("pause_writing")
        if log.writing_paused:
            log.violations.append("on_pause_writing twice without on_resume_writing")
        log.writing_paused = True
        log.write_pauses += 1

    def on_resume_writing(self, session):
        log = self._log(session, "on_resume_writing")
        if log is None:
            return
        log.kind("resume_writing")
        if not log.writing_paused:
            log.violations.append("on_resume_writing without on_pause_writing")
        log.writing_paused = False
        log.write_resumes += 1


# -- the peer ------------------------------------------------------------------------------------
class Peer:
    """A plain non-blocking loopback socket: what it queued, what its kernel took, and
    what it read back (checked against the session's out stream as it arrives)."""

    RECV_CHUNK = 256 * KiB
    is_client = False

    def __init__(self, port: int, rcvbuf: int | None) -> None:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        self.sock: socket.socket | None = sock
        self.port = sock.getsockname()[1]
        self.in_seed = new_seed()  # what the peer sends
        self.queued = 0  # bytes of the in stream the peer means to send
        self.sent = 0  # bytes its kernel took
        self.send_error: BaseException | None = None
        self.fin = False  # shutdown(SHUT_WR) done
        self.reset = False  # closed with RST
        self.got = bytearray()  # what it read
        self.end: str | None = None  # "eof" | "reset" once the stream ended
        self.extra_after_end = False

    def pump(self) -> None:
        """Sends what is queued, as far as the kernel takes it without blocking."""
        while self.sock is not None and self.sent < self.queued and self.send_error is None:
            size = min(self.queued - self.sent, 256 * KiB)
            try:
                n = self.sock.send(stream_view(self.in_seed, self.sent, size))
            except BlockingIOError:
                return
            except OSError as exc:
                self.send_error = exc
                return
            self.sent += n

    def drop_unsent(self) -> None:
        """Forgets what the kernel has not taken (the peer stops sending)."""
        self.queued = self.sent

    def unacked(self) -> int:
        """Bytes sent but not yet acknowledged by the server's kernel (SIOCOUTQ)."""
        if self.sock is None:
            return 0
        raw = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", raw)[0]

    def read(self, limit: int | None = None) -> None:
        """Reads what has arrived (at most ``limit`` bytes), noting EOF or RST."""
        if self.sock is None or self.end is not None:
            return
        left = limit if limit is not None else 1 << 40
        while left > 0:
            try:
                data = self.sock.recv(min(self.RECV_CHUNK, left))
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.end = "reset"
                return
            if not data:
                self.end = "eof"
                return
            self.got += data
            left -= len(data)

    def set_reading(self, reading: bool) -> None:
        """A socket peer reads when the test reads it."""

    def half_close(self) -> None:
        assert self.sock is not None
        self.sock.shutdown(socket.SHUT_WR)
        self.fin = True

    def reset_close(self) -> None:
        """Closes with RST (SO_LINGER on, zero timeout)."""
        assert self.sock is not None
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.sock = None
        self.reset = True

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


# -- a hamanet.Client session as the peer -------------------------------------------------------
class ClientLog:
    """What a client session's callbacks saw (on the client's reactor thread)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.got = bytearray()
        self.closes: list[BaseException | None] = []
        self.eof = False
        self.violations: list[str] = []

    def kind(self, name: str) -> None:
        if self.closes:
            self.violations.append(f"client {name} after on_close (callbacks: {self.kinds})")
        self.kinds.append(name)


_clog_lock = threading.Lock()


def clog_of(session: hamanet.Session) -> ClientLog:
    """The session's ClientLog, made by whichever thread asks first (connect() returns
    the session while on_connect may be running on the client's reactor thread)."""
    with _clog_lock:
        log = getattr(session, "clog", None)
        if log is None:
            log = session.clog = ClientLog()
        return log


class ClientHandler(hamanet.Handler):
    """Records a client session's callbacks into its ClientLog; keeps a half-closed
    session open (on_eof returns True) so that the client can go on writing."""

    def on_connect(self, session):
        clog_of(session).kind("connect")

    def _log(self, session) -> ClientLog:
        return clog_of(session)

    def on_recv(self, session, data):
        log = self._log(session)
        log.kind("recv")
        if log.eof:
            log.violations.append("client on_recv after on_eof")
        log.got += data

    def on_eof(self, session):
        log = self._log(session)
        log.kind("eof")
        if log.eof:
            log.violations.append("client on_eof twice")
        log.eof = True
        return True

    def on_close(self, session, exc):
        log = self._log(session)
        log.kind("close")
        log.closes.append(exc)


class ClientPeer:
    """The peer as a hamanet.Client session, with Peer's interface: writes are buffered by
    the client (all "sent" at once), RST is abort(), stopped reading is pause_reading()."""

    is_client = True

    def __init__(self, client: hamanet.Client, port: int) -> None:
        session = client.connect("127.0.0.1", port, timeout=WAIT)
        self.session: hamanet.Session | None = session
        self.log = clog_of(session)
        self.port = session.local_addr[1]
        self.in_seed = new_seed()
        self.queued = 0
        self.sent = 0
        self.send_error: BaseException | None = None
        self.fin = False
        self.reset = False
        self.reading = True

    @property
    def sock(self) -> hamanet.Session | None:
        """The client session while the model may still use it (Peer's socket)."""
        return None if self.reset else self.session

    @property
    def got(self) -> bytearray:
        return self.log.got

    @property
    def end(self) -> str | None:
        log = self.log
        if log.closes:
            exc = log.closes[0]
            if exc is None:
                return "eof"
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                return "reset"
            return f"error {exc!r}"
        return "eof" if log.eof else None

    def pump(self) -> None:
        if self.session is None or self.sent >= self.queued or self.send_error is not None:
            return
        try:
            self.session.write(stream(self.in_seed, self.sent, self.queued - self.sent))
        except (hamanet.SessionClosedError, OSError) as exc:
            self.send_error = exc
            return
        self.sent = self.queued

    def drop_unsent(self) -> None:
        self.queued = self.sent

    def unacked(self) -> int:
        """Bytes still in the client's own buffer (what its kernel holds is not known)."""
        return self.session.write_buffer_size if self.session is not None else 0

    def set_reading(self, reading: bool) -> None:
        if self.session is None or reading == self.reading:
            return
        self.reading = reading
        if reading:
            self.session.resume_reading()
        else:
            self.session.pause_reading()

    def read(self, limit: int | None = None) -> None:
        """The client reads by itself; a peer that reads has reading resumed."""
        self.set_reading(True)

    def half_close(self) -> None:
        assert self.session is not None
        self.session.shutdown_write()
        self.fin = True

    def reset_close(self) -> None:
        assert self.session is not None
        self.session.abort()
        self.reset = True

    def close(self) -> None:
        if self.session is not None:
            self.session.abort()
        self.session = None
