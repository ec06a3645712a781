"""Sessions used from Python threads other than the reactor's."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time

import hamanet
import pytest
from conftest import WAIT, Recorder, connect, recv_exactly, wait_until

KiB = 1 << 10
MiB = 1 << 20


class Capture(hamanet.Handler):
    """Keeps the sessions it is given and where its callbacks run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: list[hamanet.Session] = []
        self.reactor_tid: int | None = None

    def on_connect(self, session):
        with self.lock:
            self.reactor_tid = threading.get_native_id()
            self.sessions.append(session)

    def wait_session(self) -> hamanet.Session:
        wait_until(lambda: self.sessions, what="on_connect")
        with self.lock:
            return self.sessions[-1]


# -- 1. 8 threads x 10k framed writes to one session ------------------------------------------
def _body(tid: int, seq: int) -> bytes:
    # Mostly small frames, now and then a large one, so sends are partial mid-frame while
    # other threads keep appending.
    filler = 40_000 if seq % 1000 == 999 else (tid * 7 + seq) % 61
    return struct.pack(">II", tid, seq) + bytes([(tid * 31 + seq) & 0xFF]) * filler


@pytest.mark.timeout(90)
def test_8_threads_10k_framed_writes_to_one_session_no_torn_frames(serve):
    threads_n, per_thread = 8, 10_000
    handler = Capture()
    server = serve(handler)
    sock = connect(server.port, timeout=30)
    session = handler.wait_session()
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def writer(tid: int) -> None:
        try:
            start.wait(WAIT)
            for seq in range(per_thread):
                body = _body(tid, seq)
                header = struct.pack(">I", len(body))
                if tid % 2:  # half use one write, half writelines (documented atomic)
                    session.write(header + body)
                else:
                    session.writelines([header, body])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(threads_n)]
    for thread in writers:
        thread.start()
    try:
        next_seq = [0] * threads_n
        frames = 0
        while frames < threads_n * per_thread:  # recv_exactly fails on a stall
            (length,) = struct.unpack(">I", recv_exactly(sock, 4))
            assert 8 <= length <= 8 + 40_000, f"frame {frames}: torn (length {length})"
            body = recv_exactly(sock, length)
            tid, seq = struct.unpack_from(">II", body)
            assert tid < threads_n, f"frame {frames}: torn (thread id {tid})"
            assert seq == next_seq[tid], f"thread {tid}: got seq {seq}, expected {next_seq[tid]}"
            assert body == _body(tid, seq), f"frame {frames} (thread {tid}, seq {seq}) torn"
            next_seq[tid] += 1
            frames += 1
        for thread in writers:
            thread.join(WAIT)
        assert not errors, f"a writer failed: {errors[0]!r}"
        assert next_seq == [per_thread] * threads_n
        # And nothing else follows: close, and the peer sees EOF right after the last frame.
        session.close()
        assert sock.recv(1) == b""
    finally:
        sock.close()
        for thread in writers:
            thread.join(WAIT)


# -- 2. close() from another thread racing on_recv --------------------------------------------
class RaceRecorder(Recorder):
    def on_recv(self, session, data):
        super().on_recv(session, data)
        # close() may land from the other thread at any moment
        with contextlib.suppress(hamanet.SessionClosedError):
            session.write(b"k")


RACE_CHUNK = bytes(range(256)) * 256  # 64 KiB, so every offset is verifiable


def _close_race_round(serve, round_: int, threshold: int) -> None:
    recorder = RaceRecorder()
    server = serve(recorder)
    sock = connect(server.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # room for the acks
    stop_sending = threading.Event()

    def sender():
        deadline = time.monotonic() + 30
        try:
            while not stop_sending.is_set() and time.monotonic() < deadline:
                sock.sendall(RACE_CHUNK)
        except OSError:
            pass  # the server closed: RST or EPIPE ends the stream

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        session = recorder.wait_sessions(1)[0]
        wait_until(
            lambda: len(recorder.received(session.id)) >= threshold,
            what=f"{threshold} bytes before the close",
        )
        closer = threading.Thread(target=session.close)
        closer.start()
        closer.join(WAIT)
        assert not closer.is_alive()
        closes = recorder.wait_closed(session.id)
        stop_sending.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert closes == [None], f"round {round_}: on_close calls {closes}"
        with pytest.raises(hamanet.SessionClosedError):
            session.write(b"after close")
        with pytest.raises(hamanet.SessionClosedError):
            session.writelines([b"after", b"close"])
        assert session.closing
        wait_until(lambda: session.closed, what="session.closed")
        kinds = recorder.kinds(session.id)
        assert kinds.count("close") == 1 and kinds[-1] == "close", kinds[-5:]
        got = recorder.received(session.id)
        assert len(got) >= threshold
        repeats = len(got) // len(RACE_CHUNK) + 1
        assert got == (RACE_CHUNK * repeats)[: len(got)], f"round {round_}: stream corrupted"
    finally:
        stop_sending.set()
        sock.close()
        thread.join(WAIT)
    server.stop(timeout=2.0)
    # Still exactly one on_close once the server is gone.
    assert recorder.closes[session.id] == [None]


@pytest.mark.timeout(90)
def test_close_from_another_thread_racing_on_recv(serve):
    rng = random.Random(3)
    for round_ in range(30):
        _close_race_round(serve, round_, threshold=rng.randint(0, 2 * MiB))


@pytest.mark.timeout(30)
def test_close_from_another_thread_while_on_recv_runs(serve):
    """Deterministic interleaving: close() lands while on_recv is executing."""
    entered, closed_by_other = threading.Event(), threading.Event()
    write_errors: list[BaseException] = []

    class Blocking(Recorder):
        def on_recv(self, session, data):
            super().on_recv(session, data)
            if not entered.is_set():
                entered.set()
                closed_by_other.wait(WAIT)
                try:
                    session.write(b"too late")
                except hamanet.SessionClosedError as exc:
                    write_errors.append(exc)

    recorder = Blocking()
    server = serve(recorder)
    sock = connect(server.port)
    stop_sending = threading.Event()

    def sender():
        try:
            while not stop_sending.is_set():
                sock.sendall(b"z" * 65536)
        except OSError:
            pass

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        assert entered.wait(WAIT), "on_recv never ran"
        session = recorder.wait_sessions(1)[0]
        closer = threading.Thread(target=session.close)
        closer.start()
        closer.join(WAIT)
        assert session.closing
        closed_by_other.set()
        closes = recorder.wait_closed(session.id)
        assert closes == [None]
        assert len(write_errors) == 1, "write inside on_recv after close() must raise"
        with pytest.raises(hamanet.SessionClosedError):
            session.write(b"x")
        kinds = recorder.kinds(session.id)
        assert kinds == ["connect", "recv", "close"], kinds
    finally:
        closed_by_other.set()
        stop_sending.set()
        sock.close()
        thread.join(WAIT)


# -- 3. write from a non-reactor thread while the reactor sleeps in epoll_wait ----------------
EPOLL_WAIT_SYSCALLS = {232, 281}  # x86_64 epoll_wait, epoll_pwait (4th argument: timeout)


def _blocked_in_epoll_wait_forever(tid: int) -> bool:
    """The reactor thread is asleep in epoll_wait with no timeout: only an event (the
    eventfd, for a write from another thread) can wake it."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    if not fields or not fields[0].isdigit() or int(fields[0]) not in EPOLL_WAIT_SYSCALLS:
        return False
    return int(fields[4], 16) & 0xFFFFFFFF == 0xFFFFFFFF  # timeout -1


@pytest.mark.timeout(60)
def test_write_from_other_thread_wakes_idle_reactor(serve):
    handler = Capture()
    server = serve(handler, workers=0)  # the callbacks' thread is the reactor's
    sock = connect(server.port)
    try:
        session = handler.wait_session()
        tid = handler.reactor_tid
        assert tid is not None and tid != threading.get_native_id()
        for i in range(20):
            wait_until(
                lambda: _blocked_in_epoll_wait_forever(tid),
                what="the reactor to be idle in epoll_wait",
            )
            message = b"wake-%02d" % i
            if i % 2:
                session.write(message)  # from the main thread
            else:
                writer = threading.Thread(target=session.write, args=(message,))
                writer.start()
                writer.join(WAIT)
            assert recv_exactly(sock, len(message)) == message
        assert session.write_buffer_size == 0
    finally:
        sock.close()
