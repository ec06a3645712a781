"""Faults: resets, half-closes, shutdown_write, raising handlers, closing from callbacks,
failed connects and bad arguments. Every fault must end each session with exactly one
on_close and leave the server serving everyone else."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import socket
import threading
from typing import Any

import hamanet
import pytest
from conftest import (
    WAIT,
    Recorder,
    connect,
    full_backlog_port,
    open_fds,
    pattern,
    read_until_end,
    recv_exactly,
    recv_until_eof,
    reset_close,
    round_trip,
    unacked_bytes,
    wait_fds_back_to,
    wait_until,
)

# -- helpers -------------------------------------------------------------------------------


def bound_unlistened_port() -> socket.socket:
    """A socket bound to a loopback port that nobody listens on: connects to it are
    refused, and nobody else can take the port while the socket lives."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def settle(port: int) -> None:
    """Makes the (echoing) server on ``port`` run a few more wakeups with round-trips on
    another connection, so that a duplicate callback that was going to come has come."""
    sock = connect(port)
    try:
        for _ in range(3):
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
    finally:
        sock.close()


# -- 1. peer reset -------------------------------------------------------------------------


def test_peer_reset_after_data_gives_one_connection_reset(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    payload = pattern(1, 200_000)
    sock.sendall(payload)
    wait_until(lambda: recorder.received(session.id) == payload, what="all data received")

    reset_close(sock)
    recorder.wait_closed(session.id)
    settle(server.port)  # more wakeups of the same server: a second on_close would show
    closes = recorder.wait_closed(session.id)

    assert len(closes) == 1, closes
    assert isinstance(closes[0], ConnectionResetError), repr(closes[0])
    assert closes[0].errno == errno.ECONNRESET
    assert recorder.kinds(session.id).count("close") == 1
    assert recorder.kinds(session.id)[-1] == "close"
    assert session.closed and session.closing


def test_peer_reset_right_after_sending(serve):
    """The RST follows the data at once: the data that arrived before the reset is still
    delivered (in order), then exactly one on_close with ConnectionResetError."""
    recorder = Recorder(echo=True)
    server = serve(recorder)
    for seed in range(5):
        sock = connect(server.port)
        # A connection reset while still in the accept queue never becomes a session
        # (no on_connect, so no on_close either); this test is about established ones.
        recorder.wait_sessions(seed + 1)
        payload = pattern(seed, 50_000)
        sock.sendall(payload)
        reset_close(sock)
        wait_until(lambda n=seed: len(recorder.closes) == n + 1, what="on_close")
    with recorder.lock:
        ids = sorted(recorder.closes)
    settle(server.port)
    with recorder.lock:
        closes = {sid: list(recorder.closes[sid]) for sid in ids}
    assert len(closes) == 5
    for sid, excs in closes.items():
        assert len(excs) == 1, (sid, excs)
        assert isinstance(excs[0], ConnectionResetError), (sid, excs[0])
        assert excs[0].errno == errno.ECONNRESET
        kinds = recorder.kinds(sid)
        assert kinds[0] == "connect" and kinds[-1] == "close" and "eof" not in kinds, kinds
    # Every byte that was delivered is a prefix of what was sent (nothing misplaced).
    for seed, sid in enumerate(sorted(closes)):
        got = recorder.received(sid)
        assert got == pattern(seed, 50_000)[: len(got)]


def test_peer_reset_while_server_writes_large_buffer(serve):
    big = pattern(2, 16 << 20)

    class Writer(Recorder):
        """Writes 16 MiB to the first session; echoes for the others."""

        def on_connect(self, session):
            super().on_connect(session)
            if len(self.sessions) == 1:
                session.write(big)

    recorder = Writer(echo=True)
    server = serve(recorder)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", server.port))
    (session,) = recorder.wait_sessions(1)
    recv_exactly(sock, 100_000)  # the transfer is under way
    wait_until(lambda: session.write_buffer_size > 0, what="bytes left in the write buffer")
    reset_close(sock)

    recorder.wait_closed(session.id)
    settle(server.port)
    closes = recorder.wait_closed(session.id)
    assert len(closes) == 1, closes
    assert isinstance(closes[0], OSError), repr(closes[0])
    assert closes[0].errno in (errno.ECONNRESET, errno.EPIPE), closes[0]
    assert session.write_buffer_size == 0
    with pytest.raises(hamanet.SessionClosedError):
        session.write(b"late")
    wait_until(lambda: server.session_count == 0, what="all sessions closed")


# -- 2. peer half-close --------------------------------------------------------------------


def test_half_close_keep_open_then_reply(serve):
    """on_eof writes a reply and returns True: the reply goes out and the session stays
    open for writing (it would be closed once the reply is sent if on_eof returned None)."""

    class Replier(Recorder):
        def on_eof(self, session):
            super().on_eof(session)
            total = len(self.received(session.id))
            session.write(b"got %d bytes" % total)
            return True

    recorder = Replier()
    server = serve(recorder)
    sock = connect(server.port)
    payload = pattern(3, 300_000)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    reply = b"got %d bytes" % len(payload)
    assert recv_exactly(sock, len(reply)) == reply
    (session,) = recorder.wait_sessions(1)
    wait_until(lambda: session.write_buffer_size == 0, what="the reply to be sent")
    round_trip(server)  # the reactor has had every chance to close it
    assert not session.closing and not session.closed, "on_eof returned True: kept open"
    session.write(b", and more later")
    session.close()
    assert recv_until_eof(sock) == b", and more later"
    sock.close()
    assert recorder.wait_closed(session.id) == [None]
    assert recorder.received(session.id) == payload
    kinds = recorder.kinds(session.id)
    assert kinds[0] == "connect"
    assert kinds.index("eof") > max(i for i, k in enumerate(kinds) if k == "recv")
    assert kinds[-1] == "close" and kinds.count("close") == 1


def test_half_close_keep_open_write_later_from_main_thread(serve):
    """on_eof returns True and writes nothing: the session stays half-open until we
    write and close it from another thread."""

    class KeepOpen(Recorder):
        def on_eof(self, session):
            super().on_eof(session)
            return True

    recorder = KeepOpen()
    server = serve(recorder)
    sock = connect(server.port)
    sock.sendall(b"question")
    sock.shutdown(socket.SHUT_WR)
    (session,) = recorder.wait_sessions(1)
    wait_until(lambda: "eof" in recorder.kinds(session.id), what="on_eof")
    round_trip(server)  # a close decided after on_eof returned has happened by now
    assert not session.closing
    session.write(b"answer")
    session.close()
    assert recv_until_eof(sock) == b"answer"
    assert recorder.wait_closed(session.id) == [None]


def test_half_close_default_flushes_echo_then_closes(serve):
    class Echo(hamanet.Handler):  # on_eof not overridden
        def __init__(self):
            self.lock = threading.Lock()
            self.closes: list[BaseException | None] = []

        def on_recv(self, session, data):
            session.write(data)

        def on_close(self, session, exc):
            with self.lock:
                self.closes.append(exc)

    handler = Echo()
    server = serve(handler)
    for seed in range(3):
        sock = connect(server.port)
        payload = pattern(seed, 1 << 20)

        def send_then_half_close(s=sock, p=payload):
            s.sendall(p)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_then_half_close)
        sender.start()
        assert recv_until_eof(sock) == payload
        sender.join(WAIT)
        sock.close()
        wait_until(lambda n=seed: len(handler.closes) == n + 1, what="on_close")
    assert handler.closes == [None, None, None]


# -- 3. shutdown_write ---------------------------------------------------------------------


def test_shutdown_write_twice_then_write_and_keep_receiving(serve):
    recorder = Recorder()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)

    session.write(b"before")
    session.writelines([b"-", b"shutdown"])
    session.shutdown_write()
    session.shutdown_write()  # idempotent
    with pytest.raises(hamanet.SessionClosedError):
        session.write(b"after")
    with pytest.raises(hamanet.SessionClosedError):
        session.writelines([b"after"])
    assert isinstance(hamanet.SessionClosedError("x"), ConnectionError)

    assert recv_until_eof(sock) == b"before-shutdown"
    # The read side is still open.
    sock.sendall(b"more data")
    wait_until(
        lambda: recorder.received(session.id) == b"more data", what="data after shutdown_write"
    )
    assert not session.closed
    sock.close()
    assert recorder.wait_closed(session.id) == [None]
    kinds = recorder.kinds(session.id)
    kinds = [kind for kind in kinds if kind != "send"]  # on_send after our writes drained
    assert kinds == ["connect", *(["recv"] * kinds.count("recv")), "eof", "close"], kinds


# -- 4. handlers that raise ------------------------------------------------------------------


class Boom(Exception):
    pass


class FaultyEcho(hamanet.Handler):
    """Echoes; raises Boom in callback ``where`` for connections from ``bad_ports``."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.bad_ports: set[int] = set()
        self.lock = threading.Lock()
        self.raised: dict[int, Boom] = {}
        self.closes: dict[int, list[BaseException | None]] = {}
        self.sessions: dict[int, Any] = {}

    def _maybe_raise(self, name: str, session) -> None:
        if name == self.where and session.peer_addr[1] in self.bad_ports:
            exc = Boom(f"{name} failed on purpose")
            with self.lock:
                self.raised[session.id] = exc
            raise exc

    def on_connect(self, session):
        with self.lock:
            self.sessions[session.id] = session
        self._maybe_raise("on_connect", session)

    def on_recv(self, session, data):
        self._maybe_raise("on_recv", session)
        session.write(data)

    def on_send(self, session):
        self._maybe_raise("on_send", session)

    def on_eof(self, session):
        self._maybe_raise("on_eof", session)
        return None

    def on_close(self, session, exc):
        with self.lock:
            self.closes.setdefault(session.id, []).append(exc)
        self._maybe_raise("on_close", session)


def echo_ok(sock: socket.socket, message: bytes) -> None:
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message


@pytest.mark.handler_errors
@pytest.mark.parametrize("where", ["on_connect", "on_recv", "on_send", "on_eof", "on_close"])
def test_raising_callback_is_logged_aborts_only_that_session(serve, caplog, where):
    caplog.set_level(logging.ERROR, logger="hamanet")
    handler = FaultyEcho(where)
    server = serve(handler)

    good = connect(server.port)
    echo_ok(good, b"hello before")

    bad = socket.socket()
    bad.settimeout(WAIT)
    bad.bind(("127.0.0.1", 0))
    handler.bad_ports.add(bad.getsockname()[1])
    reset_at_connect = False
    try:
        bad.connect(("127.0.0.1", server.port))
    except ConnectionResetError:
        # on_connect raised and the RST beat connect()'s return: the abort is seen early.
        assert where == "on_connect"
        reset_at_connect = True
    if where in ("on_recv", "on_send"):
        bad.sendall(b"trigger")
    elif where == "on_eof":
        bad.shutdown(socket.SHUT_WR)

    if where == "on_close":
        bad.close()
        wait_until(lambda: len(handler.raised) == 1, what="on_close to raise")
        outcome = "closed by us"
    else:
        wait_until(lambda: len(handler.raised) == 1, what=f"{where} to raise")
        data, outcome = (b"", "reset") if reset_at_connect else read_until_end(bad)
        bad.close()
        if where == "on_send":
            assert data in (b"", b"trigger"), data
        else:
            assert data == b"", data
        assert outcome == "reset", f"{where} raised: the session is aborted, the peer sees RST"

    (bad_id,) = handler.raised
    raised = handler.raised[bad_id]
    wait_until(lambda: bad_id in handler.closes, what="on_close of the failed session")

    # The server still serves the concurrent session, and new ones.
    echo_ok(good, b"hello after")
    late = connect(server.port)
    echo_ok(late, b"late client")
    late.close()
    good.close()
    wait_until(lambda: server.session_count == 0, what="all sessions closed")

    with handler.lock:
        closes = dict(handler.closes)
    assert len(closes[bad_id]) == 1, closes[bad_id]
    if where != "on_close":
        assert closes[bad_id][0] is raised
    for sid, excs in closes.items():
        if sid != bad_id:
            assert excs == [None], (sid, excs)

    records = [r for r in caplog.records if r.name == "hamanet" and r.levelno == logging.ERROR]
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert where in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is raised
    assert record.exc_info[2] is not None, "no traceback attached"
    text = logging.Formatter().formatException(record.exc_info)
    assert "_maybe_raise" in text and "Boom" in text, text
    print(f"{where}: peer saw {outcome}")


# -- 5. closing from a callback ------------------------------------------------------------


def test_close_then_write_in_same_callback_raises(serve):
    class CloseThenWrite(Recorder):
        def __init__(self):
            super().__init__()
            self.errors: list[BaseException] = []

        def on_recv(self, session, data):
            super().on_recv(session, data)
            session.write(b"reply")
            session.close()
            try:
                session.write(b"never")
            except hamanet.SessionClosedError as exc:
                with self.lock:
                    self.errors.append(exc)
            try:
                session.writelines([b"never"])
            except hamanet.SessionClosedError as exc:
                with self.lock:
                    self.errors.append(exc)

    recorder = CloseThenWrite()
    server = serve(recorder)
    sock = connect(server.port)
    sock.sendall(b"hi")
    assert recv_until_eof(sock) == b"reply"
    (session,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(session.id) == [None]
    assert len(recorder.errors) == 2
    assert all(isinstance(e, hamanet.SessionClosedError) for e in recorder.errors)


def test_close_other_session_suppresses_its_input(serve):
    """Two clients send at (nearly) the same time; the first on_recv closes the other
    session. Whether or not both reads landed in one batch, the closed session must get
    no on_recv after close() and exactly one on_close."""

    class CloseOther(hamanet.Handler):
        def __init__(self):
            self.lock = threading.Lock()
            self.sessions: dict[int, Any] = {}
            self.events: list[tuple] = []
            self.victim: int | None = None

        def on_connect(self, session):
            with self.lock:
                self.sessions[session.id] = session

        def on_recv(self, session, data):
            with self.lock:
                self.events.append(("recv", session.id, len(data)))
                others = [s for sid, s in self.sessions.items() if sid != session.id]
                first = self.victim is None
            if first:
                (other,) = others
                other.close()
                with self.lock:
                    self.victim = other.id
                    self.events.append(("closed", other.id))

        def on_close(self, session, exc):
            with self.lock:
                self.events.append(("close", session.id, exc))

    rounds = 15
    victims_with_no_input_at_all = 0
    for _ in range(rounds):
        handler = CloseOther()
        server = serve(handler)
        a, b = connect(server.port), connect(server.port)
        wait_until(lambda h=handler: len(h.sessions) == 2, what="2 sessions")
        a.sendall(b"x" * 1000)
        b.sendall(b"y" * 1000)
        wait_until(lambda h=handler: h.victim is not None, what="the close of the other session")
        victim = handler.victim
        # Both peers keep talking for a moment; the victim's peer must see EOF.
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.sendall(b"z" * 1000)
        for sock in (a, b):
            sock.settimeout(WAIT)
        wait_until(
            lambda h=handler, v=victim: any(e[0] == "close" and e[1] == v for e in h.events),
            what="on_close of the victim",
        )
        a.close()
        b.close()
        wait_until(lambda s=server: s.session_count == 0, what="sessions closed")
        with handler.lock:
            events = list(handler.events)
        closed_at = events.index(("closed", victim))
        assert ("recv", victim) not in [e[:2] for e in events[closed_at:]], events
        victim_closes = [e for e in events if e[0] == "close" and e[1] == victim]
        assert len(victim_closes) == 1, events
        assert victim_closes[0][2] is None, victim_closes
        if not any(e[0] == "recv" and e[1] == victim for e in events):
            victims_with_no_input_at_all += 1
    # Either way the victim never sent first: the first on_recv belongs to the closer,
    # and any victim input read after it is suppressed.
    assert victims_with_no_input_at_all == rounds


# -- 6. failed connects --------------------------------------------------------------------


def test_connect_refused_no_fd_leak():
    gc.collect()  # earlier tests' stopped endpoints hold fds until they are freed
    before = open_fds()
    dead = bound_unlistened_port()
    port = dead.getsockname()[1]
    client = hamanet.Client(hamanet.Handler())
    try:
        with pytest.raises(ConnectionRefusedError):  # starts the reactor
            client.connect("127.0.0.1", port, timeout=5.0)
        running = open_fds()
        for _ in range(20):
            with pytest.raises(ConnectionRefusedError) as info:
                client.connect("127.0.0.1", port, timeout=5.0)
            assert info.value.errno == errno.ECONNREFUSED
            assert isinstance(info.value, OSError)
        assert client.session_count == 0
        assert client.join(timeout=5.0)
        # No fd per failed attempt.
        wait_until(lambda: open_fds() == running, what=f"fd count back to {running}")
    finally:
        client.stop(timeout=2.0)
        dead.close()
    client = info = None  # the exception's traceback references the client too
    wait_fds_back_to(before)


def test_connect_timeout_when_backlog_is_full_no_fd_leak():
    gc.collect()  # earlier tests' stopped endpoints hold fds until they are freed
    before = open_fds()
    client = hamanet.Client(hamanet.Handler())
    with full_backlog_port() as port:
        try:
            with pytest.raises(TimeoutError):  # starts the reactor
                client.connect("127.0.0.1", port, timeout=0.5)
            running = open_fds()
            for _ in range(2):
                with pytest.raises(TimeoutError) as info:
                    client.connect("127.0.0.1", port, timeout=0.5)
                assert info.value.errno == errno.ETIMEDOUT
            assert client.session_count == 0
            wait_until(lambda: open_fds() == running, what=f"fd count back to {running}")
        finally:
            client.stop(timeout=2.0)
    client = info = None
    wait_fds_back_to(before)


# -- 7. bad inputs -------------------------------------------------------------------------


def test_bad_write_arguments(serve):
    recorder = Recorder()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)

    with pytest.raises(TypeError, match="bytes-like"):
        session.write("text")
    with pytest.raises(TypeError, match="bytes-like"):
        session.write(123)
    with pytest.raises(TypeError):
        session.write(None)
    with pytest.raises(TypeError, match="bytes-like"):
        session.writelines([b"a", "b"])
    with pytest.raises(TypeError):
        session.writelines(5)
    assert session.write_buffer_size == 0

    session.write(bytearray(b"<bytearray>"))
    session.write(memoryview(b"xx<memoryview>xx")[2:-2])
    session.writelines([b"<bytes>", bytearray(b"<ba>"), memoryview(b"<mv>")])
    mutable = bytearray(b"<copied>")
    session.write(mutable)
    mutable[:] = b"XXXXXXXX"  # the write took a copy
    session.close()
    assert recv_until_eof(sock) == b"<bytearray><memoryview><bytes><ba><mv><copied>"
    assert recorder.wait_closed(session.id) == [None]


def test_stop_while_another_thread_connects_cancels_the_connect():
    """Closing the client while a connect is in progress: one clear error in the
    connecting thread, no hang, no fd left behind, no callback later."""
    gc.collect()
    before = open_fds()
    recorder = Recorder()
    client = hamanet.Client(recorder)
    outcome: list[BaseException] = []

    def connect_in_background(port):
        try:
            client.connect("127.0.0.1", port, timeout=30)
        except BaseException as exc:  # recorded for the assertion
            outcome.append(exc)

    with full_backlog_port() as port:
        thread = threading.Thread(target=connect_in_background, args=(port,), daemon=True)
        thread.start()
        wait_until(lambda: client.running, what="the connect to start the client")
        client.stop(timeout=2.0)
        thread.join(WAIT)
        assert not thread.is_alive(), "connect() did not return after stop()"
        assert len(outcome) == 1 and isinstance(outcome[0], hamanet.LifecycleError), outcome
        assert "stopped" in str(outcome[0])
        assert recorder.events == [], "no callback for a connect that never completed"
    client = outcome = None
    wait_fds_back_to(before)


def test_data_that_arrived_before_a_reset_is_delivered_before_on_close(serve):
    """The reactor is held in a callback while the peer sends 50 KB and then resets, so
    the next turn reads the data and the reset together: every byte still reaches
    on_recv, then on_close gets ConnectionResetError."""
    release = threading.Event()

    class Holding(Recorder):
        def on_recv(self, session, data):
            super().on_recv(session, data)
            if data == b"hold":
                release.wait(WAIT)  # holds the reactor: nothing is read meanwhile

    recorder = Holding()
    server = serve(recorder)
    payload = pattern(9, 50_000)
    with connect(server.port) as holder:
        sock = connect(server.port)
        recorder.wait_sessions(2)
        holder.sendall(b"hold")
        wait_until(lambda: b"hold" in recorder.data.values(), what="the reactor to be held")
        sock.sendall(payload)
        wait_until(lambda: unacked_bytes(sock) == 0, what="the server's kernel to take all bytes")
        reset_close(sock)
        release.set()
        wait_until(lambda: len(recorder.closes) == 1, what="on_close of the reset session")
        (sid,) = recorder.closes
        assert recorder.received(sid) == payload
        assert recorder.kinds(sid)[-1] == "close"
        (exc,) = recorder.closes[sid]
        assert isinstance(exc, ConnectionResetError), exc
