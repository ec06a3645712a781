"""The echo example (examples/echo_server.py) as a program: byte-exact echo, and push-back on
peers that send without reading, seen from outside as the server's resident memory."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import echo_server
import hamanet
import pytest
from conftest import WAIT, Proc, connect, pattern, recv_exactly, rss_bytes, run_example

MIB = 1 << 20


def start_echo(procs) -> tuple[Proc, int]:
    proc, port, line = run_example(procs, "echo_server.py", "echo: listening")
    assert line.strip().endswith(f":{port}"), line
    return proc, port


def echo_exactly(port: int, payload: bytes) -> bytes:
    """Sends ``payload`` from one thread while reading the echo on this one."""
    with connect(port) as sock:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        echoed = recv_exactly(sock, len(payload))
        sender.join(WAIT)
        assert not sender.is_alive() and not errors, errors
        # After the echo, the server closes the half-closed session: EOF, nothing more.
        assert sock.recv(1) == b""
        return echoed


class Hog:
    """A peer that sends as much as the server lets it and never reads a byte."""

    def __init__(self, port: int, limit: int, deadline: float) -> None:
        self.sock = connect(port)
        self.sock.settimeout(0.05)  # a stalled send gives up quickly and counts the stall
        self.limit = limit
        self.deadline = deadline
        self.sent = 0
        self.stalled_since: float | None = None  # when the last send made no progress
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = b"h" * (256 * 1024)
        try:
            while self.sent < self.limit and time.monotonic() < self.deadline:
                try:
                    self.sent += self.sock.send(chunk)
                    self.stalled_since = None
                except socket.timeout:
                    if self.stalled_since is None:
                        self.stalled_since = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stalled_for(self, seconds: float) -> bool:
        since = self.stalled_since
        return since is not None and time.monotonic() - since >= seconds

    def close(self) -> None:
        self.thread.join(WAIT)
        self.sock.close()


def test_echo_is_byte_exact(procs):
    _, port = start_echo(procs)
    for size in (1, 4096, 3 * MIB + 17):
        payload = pattern(size % 251, size)
        assert echo_exactly(port, payload) == payload, size


@pytest.mark.timeout(60)
def test_peers_that_never_read_are_pushed_back_and_memory_stays_bounded(procs):
    """8 peers each try to send 32 MiB and read nothing. Without push-back the server reads
    it all and buffers the echoes (up to 128 MiB a session); with it, the server stops
    reading them at the watermark, their sends stall, and its memory barely moves. A
    well-behaved client is served byte-exact meanwhile."""
    proc, port = start_echo(procs)
    pid = proc.popen.pid
    echo_exactly(port, pattern(1, MIB))  # warm up: the arena and the first session
    baseline = rss_bytes(pid)
    peers, per_peer = 8, 32 * MIB
    deadline = time.monotonic() + 15.0
    hogs = [Hog(port, per_peer, deadline) for _ in range(peers)]
    peak = baseline
    try:
        # Until every hog is stuck (its sends made no progress for half a second) or has
        # sent everything, or the deadline: bounded by time and by bytes either way.
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(pid))
            if all(h.sent >= per_peer or h.stalled_for(0.5) for h in hogs):
                break
            if any(not h.thread.is_alive() for h in hogs):
                break
            time.sleep(0.02)
        peak = max(peak, rss_bytes(pid))
        assert not [h.error for h in hogs if h.error], [h.error for h in hogs]
        sent = sum(h.sent for h in hogs)
        growth = peak - baseline
        assert growth < 32 * MIB, (
            f"server RSS grew by {growth / MIB:.1f} MiB while {peers} peers sent "
            f"{sent / MIB:.1f} MiB without reading"
        )
        # The hogs were pushed back: none got to send its 32 MiB (the kernel's socket
        # buffers on both sides hold a few MiB at most).
        assert all(h.sent < per_peer for h in hogs), [h.sent // MIB for h in hogs]
        # Still serving others, byte-exact, while the hogs hold their sessions.
        payload = pattern(7, 4 * MIB + 3)
        assert echo_exactly(port, payload) == payload
        assert rss_bytes(pid) - baseline < 32 * MIB
    finally:
        for hog in hogs:
            hog.deadline = 0.0
        for hog in hogs:
            hog.close()
    assert proc.popen.poll() is None, "".join(proc.stderr)
    assert "Traceback" not in "".join(proc.stderr), "".join(proc.stderr)


@pytest.mark.timeout(60)
def test_echo_server_program_stops_on_sigterm(procs):
    proc, port = start_echo(procs)
    with connect(port) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, "".join(proc.stderr)
        assert sock.recv(1) == b""  # stop() closed the session with FIN
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def test_handler_pauses_reading_at_the_watermark(serve):
    """The handler itself, in process: reading pauses while the echo is stuck above the
    high watermark and resumes once the peer reads."""
    sessions: list[hamanet.Session] = []

    class Watched(echo_server.Echo):
        def on_connect(self, session):
            sessions.append(session)

    server = serve(
        Watched(),
        recv_buffer=65536,
        send_buffer=65536,
        write_high=echo_server.WRITE_HIGH,
        write_low=echo_server.WRITE_LOW,
    )
    payload = pattern(3, 16 * MIB)
    with connect(server.port) as sock:
        sock.settimeout(0.05)
        sent = 0
        deadline = time.monotonic() + WAIT
        while not (sessions and sessions[0].reading_paused):  # send until the server pauses
            assert time.monotonic() < deadline, "reading never paused"
            with contextlib.suppress(socket.timeout):  # the kernel's buffers are full
                sent += sock.send(payload[sent : sent + 65536])
            assert sent < len(payload), "16 MiB sent and reading never paused"
        session = sessions[0]
        # The high watermark plus a read or two (256 KiB each at most), as documented;
        # on a worker pool, plus the input already queued for the handler when it paused.
        backlog = 1024 * 1024 if server.stats()["workers"] else 0
        bound = echo_server.WRITE_HIGH + 2 * 256 * 1024 + backlog
        assert session.write_buffer_size <= bound, session.write_buffer_size
        sock.settimeout(WAIT)
        errors: list[BaseException] = []

        def send_rest() -> None:
            try:
                sock.sendall(payload[sent:])
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=send_rest, daemon=True)
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(WAIT)
        assert not sender.is_alive() and not errors, errors
        assert not session.reading_paused
