"""reactors=N: several reactor threads in one process, each with its own epoll and sessions.

The whole suite also runs with HAMANET_TEST_REACTORS=2 (`make test-threads`); these tests
check what only several reactors have: the spreading of sessions, the per-reactor stats,
limits that count across reactors, and that no byte crosses from one session to another
when the sessions live on different threads.
"""

from __future__ import annotations

import random
import socket
import threading

import hamanet
import pytest
from conftest import WAIT, Recorder, connect, pattern, recv_exactly, wait_until


class Echo(hamanet.Handler):
    def on_recv(self, session, data):
        session.write(data)


@pytest.mark.parametrize("reuse_port", [False, True])
def test_sessions_spread_over_the_reactors(serve, reuse_port):
    """A shared listener hands accepted sessions to each reactor in turn; with
    reuse_port=True each reactor has its own listener and the kernel spreads them."""
    server = hamanet.Server(Echo(), reactors=2)
    try:
        server.open(0, reuse_port=reuse_port)
        server.start()
        socks = [connect(server.port) for _ in range(32)]
        for i, sock in enumerate(socks):
            sock.sendall(b"%02d" % i)
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, 2) == b"%02d" % i
        stats = server.stats()
        per_reactor = [r["sessions_open"] for r in stats["reactors"]]
        assert len(per_reactor) == 2 and sum(per_reactor) == stats["sessions_open"] == 32
        if not reuse_port:
            assert per_reactor == [16, 16], per_reactor  # each in turn
        else:
            assert all(n > 0 for n in per_reactor), per_reactor  # the kernel's hash
        for sock in socks:
            sock.close()
    finally:
        server.stop(timeout=2.0)


def test_without_reuse_port_nobody_else_can_bind_the_port():
    server = hamanet.Server(Echo(), reactors=2)
    other = hamanet.Server(Echo(), reactors=2)
    try:
        server.open(0)
        with pytest.raises(OSError) as info:
            other.open(server.port, reuse_port=True)
        assert "Address already in use" in str(info.value) or info.value.errno == 98
    finally:
        other.stop()
        server.stop()


def test_no_byte_crosses_between_sessions_on_different_reactors(serve):
    """32 connections on 2 reactors, each sending its own pattern in random-sized chunks
    while it reads the echo: every connection gets back exactly its own bytes."""
    server = serve(Echo(), reactors=2)
    size = 256 * 1024
    errors: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        data = pattern(seed, size)
        try:
            with connect(server.port) as sock:
                received = bytearray()
                sent = 0
                while sent < size:
                    chunk = rng.randint(1, 32 * 1024)
                    sock.sendall(data[sent : sent + chunk])
                    sent += len(data[sent : sent + chunk])
                    while len(received) < sent - 64 * 1024:
                        received += sock.recv(65536)
                while len(received) < size:
                    more = sock.recv(65536)
                    if not more:
                        break
                    received += more
                if bytes(received) != data:
                    errors.append(f"connection {seed}: wrong bytes")
        except OSError as exc:
            errors.append(f"connection {seed}: {exc!r}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert errors == []
    per_reactor = [r["sessions_total"] for r in server.stats()["reactors"]]
    assert all(n > 0 for n in per_reactor), per_reactor


def test_max_connections_counts_across_reactors(serve):
    recorder = Recorder()
    server = serve(recorder, reactors=2, max_connections=3)
    socks = [connect(server.port) for _ in range(3)]
    wait_until(lambda: server.session_count == 3, what="3 sessions")
    refused = connect(server.port)
    try:
        refused.settimeout(WAIT)
        assert refused.recv(1) == b"", "the fourth connection was not refused"
        wait_until(lambda: server.stats()["refused_by_limit"] == 1, what="counted")
        assert server.session_count == 3
    finally:
        refused.close()
        for sock in socks:
            sock.close()


def test_stats_sum_the_reactors_and_give_each(serve):
    server = serve(Echo(), reactors=2)
    socks = [connect(server.port) for _ in range(4)]
    for sock in socks:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    for sock in socks:
        sock.close()  # the EOFs wake both reactors, whose turns then publish their counters
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="every session closed")
    wait_until(lambda: server.stats()["bytes_out"] == 16, what="16 bytes echoed")
    stats = server.stats()
    each = stats["reactors"]
    assert len(each) == 2
    for key in ("sessions_open", "bytes_in", "bytes_out", "sessions_total", "accepted"):
        assert stats[key] == sum(r[key] for r in each), key
    # Time spent working, and of that attached to the interpreter.
    # (each figure is rounded down to whole microseconds on its own)
    assert abs(stats["busy_us"] - sum(r["busy_us"] for r in each)) < len(each)
    assert 0 <= stats["attached_us"] <= stats["busy_us"]


def test_client_sessions_go_to_the_reactors_in_turn(serve, client_factory):
    server = serve(Echo())
    client = client_factory(Echo(), reactors=2)
    sessions = [client.connect("127.0.0.1", server.port) for _ in range(4)]
    wait_until(lambda: client.session_count == 4, what="4 client sessions")
    assert [r["sessions_open"] for r in client.stats()["reactors"]] == [2, 2]
    for session in sessions:
        session.close()


def test_reactors_threads_are_named_and_timers_of_a_session_run_on_its_reactor(serve):
    seen: dict[int, set[str]] = {}
    lock = threading.Lock()

    class Where(hamanet.Handler):
        server: hamanet.Server

        def on_recv(self, session, data):
            self.note(session)
            self.server.call_soon_threadsafe(self.note, session, session=session)

        def note(self, session):
            with lock:
                seen.setdefault(session.id, set()).add(threading.current_thread().name)

    handler = Where()
    server = serve(handler, reactors=2, workers=0)
    handler.server = server
    socks = [connect(server.port) for _ in range(4)]
    for sock in socks:
        sock.sendall(b"x")
    wait_until(lambda: len(seen) == 4 and all(len(v) >= 1 for v in seen.values()), what="4")
    wait_until(lambda: all(len(v) >= 1 for v in seen.values()), what="the timers")
    names = set().union(*seen.values())
    assert names <= {"hamanet-reactor-0", "hamanet-reactor-1"}, names
    assert all(len(v) == 1 for v in seen.values()), seen  # its callbacks and its timer: one thread
    for sock in socks:
        sock.close()


def test_a_unix_listener_is_shared_by_the_reactors(tmp_path):
    path = str(tmp_path / "echo.sock")
    server = hamanet.Server(Echo(), reactors=2)
    try:
        server.open_unix(path)
        server.start()
        socks = []
        for i in range(8):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(WAIT)
            sock.connect(path)
            sock.sendall(b"%d" % i)
            assert recv_exactly(sock, 1) == b"%d" % i
            socks.append(sock)
        assert [r["sessions_open"] for r in server.stats()["reactors"]] == [4, 4]
        for sock in socks:
            sock.close()
    finally:
        server.stop(timeout=2.0)
