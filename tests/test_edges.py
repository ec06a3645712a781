"""Regression tests for the edges an adversarial probe found (issue 9): each failed before
its fix. Data lost at a Unix path, under a paused reader, at a refusal; a half-closed
session that never ended; a forked child that never exited; a stop() without a bound."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import hamanet
import pytest
from conftest import (
    WAIT,
    Recorder,
    connect,
    pattern,
    read_until_end,
    reset_close,
    unacked_bytes,
    wait_until,
)


# == 1. open_unix never deletes what is not a socket ==========================================
def test_open_unix_refuses_a_regular_file_and_leaves_it_alone(tmp_path):
    precious = tmp_path / "important.txt"
    precious.write_bytes(b"precious data")
    server = hamanet.Server(Recorder())
    with pytest.raises(FileExistsError) as info:
        server.open_unix(precious)
    assert str(precious) in str(info.value)
    assert "not a socket" in str(info.value)
    assert precious.read_bytes() == b"precious data"
    server.stop()


def test_open_unix_refuses_a_symlink_and_leaves_it_and_its_target_alone(tmp_path):
    target = tmp_path / "target.txt"
    target.write_bytes(b"target data")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    server = hamanet.Server(Recorder())
    with pytest.raises(FileExistsError):
        server.open_unix(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"target data"
    server.stop()


def test_open_unix_still_replaces_a_dead_servers_socket_file(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: a server that died
    server = hamanet.Server(Recorder())
    try:
        assert server.open_unix(path) == path
        server.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
    finally:
        server.stop()


# == 2. data, then RST, while reading is paused ================================================
class PausedFromTheStart(Recorder):
    def on_connect(self, session):
        session.pause_reading()
        super().on_connect(session)


def test_data_then_reset_while_paused_is_delivered_after_resume(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    socks = [connect(server.port) for _ in range(5)]
    sessions = recorder.wait_sessions(5)
    by_port = {session.peer_addr[1]: session for session in sessions}
    sent = {}
    for i, sock in enumerate(socks):
        sent[by_port[sock.getsockname()[1]].id] = payload = pattern(i, 100_000)
        sock.sendall(payload)
    # The bytes are in the server's receive queues before the resets follow them.
    wait_until(lambda: all(unacked_bytes(sock) == 0 for sock in socks), what="data acked")
    for sock in socks:
        reset_close(sock)
    # The reactor sees every reset (a write is now refused) but keeps the session...
    wait_until(lambda: all(s.closing for s in sessions), what="the resets seen")
    for session in sessions:
        with pytest.raises(hamanet.SessionClosedError):
            session.write(b"too late")
    with recorder.lock:
        assert recorder.closes == {}, "on_close came while reading was paused"
    # ...and delivers what came before each reset after the resume, then the reset.
    for session in sessions:
        session.resume_reading()
    for session in sessions:
        excs = recorder.wait_closed(session.id)
        assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
        assert recorder.received(session.id) == sent[session.id]
        kinds = recorder.kinds(session.id)
        assert kinds[0] == "connect" and kinds[-1] == "close" and "recv" in kinds, kinds


def test_a_reset_with_nothing_unread_closes_a_paused_session_at_once(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    reset_close(sock)
    excs = recorder.wait_closed(session.id)
    assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
    assert recorder.kinds(session.id) == ["connect", "close"]


def test_closing_a_paused_session_whose_peer_reset_reports_the_reset(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    sock.sendall(b"x" * 1000)
    wait_until(lambda: unacked_bytes(sock) == 0, what="data acked")
    reset_close(sock)
    wait_until(lambda: session.closing, what="the reset seen")
    session.close()
    excs = recorder.wait_closed(session.id)
    assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
    assert recorder.received(session.id) == b""  # closed without resuming: not delivered


# == 5. a peer refused by max_connections gets EOF, not RST ====================================
def test_a_refused_peer_that_sent_its_request_first_gets_eof(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder, max_connections=2)
    held = [connect(server.port) for _ in range(2)]
    recorder.wait_sessions(2)
    outcomes = []
    for i in range(40):
        sock = connect(server.port)
        try:
            # The request goes out before the server even accepts: unread at the refusal.
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n" * (1 + i % 8))
            outcomes.append(read_until_end(sock)[1])
        finally:
            sock.close()
    assert outcomes == ["eof"] * 40
    wait_until(lambda: server.stats()["refused_by_limit"] == 40, what="40 refusals counted")
    with recorder.lock:
        assert len(recorder.sessions) == 2
    for sock in held:
        sock.close()


def test_a_refused_peer_that_never_sends_or_closes_is_dropped_after_a_while(serve):
    server = serve(Recorder(), max_connections=1)
    held = connect(server.port)
    lingering = connect(server.port)
    try:
        # EOF at once; the refused socket is closed by the server later, though the peer
        # never closes: a second read after the linger sees nothing new, and the server's
        # fd count returns (checked through a third connection being refused cleanly).
        assert lingering.recv(1) == b""
        third = connect(server.port)
        third.sendall(b"hello")
        assert read_until_end(third) == (b"", "eof")
        third.close()
    finally:
        held.close()
        lingering.close()


# == 7. both directions finished: the session closes by itself =================================
class HalfCloser(Recorder):
    """Replies and half-closes at once; keeps the session after the peer's EOF."""

    def on_connect(self, session):
        super().on_connect(session)
        session.write(b"bye")
        session.shutdown_write()

    def on_eof(self, session):
        super().on_eof(session)
        return True


def test_own_shutdown_then_the_peers_eof_closes_the_session(serve):
    recorder = HalfCloser()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    assert read_until_end(sock) == (b"bye", "eof")
    sock.sendall(b"last words")
    sock.shutdown(socket.SHUT_WR)
    assert recorder.wait_closed(session.id) == [None]
    assert recorder.received(session.id) == b"last words"
    assert recorder.kinds(session.id)[-2:] == ["eof", "close"]
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="no session open")
    sock.close()


class KeepAfterEof(Recorder):
    def on_eof(self, session):
        super().on_eof(session)
        return True


def test_the_peers_eof_then_own_shutdown_closes_the_session(serve):
    recorder = KeepAfterEof()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: "eof" in recorder.kinds(session.id), what="on_eof")
    round_trip = threading.Event()
    server.call_soon_threadsafe(round_trip.set)  # the reactor is past the EOF, and...
    assert round_trip.wait(WAIT)
    assert session.id not in recorder.closes  # ...kept the session open
    session.write(b"reply after your eof")
    session.shutdown_write()
    assert read_until_end(sock) == (b"reply after your eof", "eof")
    assert recorder.wait_closed(session.id) == [None]
    sock.close()
