"""Server.open_socket(): serving a listening socket someone else bound and keeps.

What `hamanet serve` rests on: a supervisor holds each listening socket across its
children's lives, so connections queued while one child stops and the next starts wait
in the socket's queue instead of being refused or reset.
"""

from __future__ import annotations

import os
import socket
import threading

import hamanet
import pytest
from _tls_support import make_pki, tls_connect
from conftest import (
    Echo,
    Recorder,
    connect,
    pattern,
    recv_exactly,
    round_trip,
    wait_until,
)


def listening(host: str = "127.0.0.1", backlog: int = 64) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def test_a_socket_object_is_served_and_the_callers_copy_stays_open():
    with listening() as sock:
        server = hamanet.Server(Echo())
        address = server.open_socket(sock)
        assert address == sock.getsockname()
        assert server.port == sock.getsockname()[1]
        server.start()
        try:
            with connect(address[1]) as client:
                data = pattern(1, 100_000)
                client.sendall(data)
                assert recv_exactly(client, len(data)) == data
        finally:
            server.stop(timeout=2.0)
        # The server closed its own copy only: the socket still listens, and a
        # connection queued now waits for whoever serves it next.
        assert sock.fileno() >= 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not os.get_blocking(sock.fileno())  # O_NONBLOCK is the socket's, as documented
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass


def test_a_queued_connection_is_served_by_the_next_server_on_the_same_socket():
    """The supervisor's reload in miniature: a connection that arrives between two
    servers waits in the queue, and the second one serves it."""
    with listening() as sock:
        first = hamanet.Server(Echo())
        first.open_socket(sock.fileno())
        first.start()
        with connect(sock.getsockname()[1]) as client:
            client.sendall(b"first")
            assert recv_exactly(client, 5) == b"first"
        first.stop(timeout=2.0)

        waiting = connect(sock.getsockname()[1])  # queued: nobody accepts now
        with waiting:
            waiting.sendall(b"queued")
            second = hamanet.Server(Echo())
            second.open_socket(sock)
            second.start()
            try:
                assert recv_exactly(waiting, 6) == b"queued"
            finally:
                second.stop(timeout=2.0)


def test_ipv6_and_several_reactors_share_one_adopted_socket():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = listening("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    recorder = Recorder(echo=True)
    server = hamanet.Server(recorder, reactors=2)
    with sock:
        host, port = server.open_socket(sock)
        assert (host, port) == sock.getsockname()[:2]
        server.start()
        try:
            clients = [socket.create_connection(("::1", port), timeout=5) for _ in range(8)]
            for i, client in enumerate(clients):
                client.sendall(pattern(i, 1000))
            for i, client in enumerate(clients):
                assert recv_exactly(client, 1000) == pattern(i, 1000)
                client.close()
        finally:
            server.stop(timeout=2.0)


def test_a_unix_socket_file_is_left_to_whoever_bound_it(tmp_path):
    path = str(tmp_path / "adopted.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen(16)
        server = hamanet.Server(Echo())
        assert server.open_socket(sock) == path
        server.start()
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(5)
                client.connect(path)
                client.sendall(b"unix")
                assert recv_exactly(client, 4) == b"unix"
        finally:
            server.stop(timeout=2.0)
        assert os.path.exists(path), "the file belongs to whoever bound the socket"


def test_tls_on_an_adopted_socket(tmp_path):
    pki = make_pki(tmp_path)
    with listening() as sock:
        server = hamanet.Server(Echo())
        server.open_socket(sock, tls=hamanet.TLSServerContext(pki.cert, pki.key))
        server.start()
        try:
            with tls_connect(sock.getsockname()[1], pki.ca) as client:
                client.sendall(b"secret")
                assert recv_exactly(client, 6) == b"secret"
        finally:
            server.stop(timeout=2.0)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: socket.socket(), ValueError, "not listening: call listen"),
        (lambda: socket.socket(type=socket.SOCK_DGRAM), ValueError, "not a stream"),
        (lambda: open(os.devnull, "rb"), ValueError, "not a socket"),  # noqa: SIM115
    ],
    ids=["unlistened", "udp", "file"],
)
def test_what_is_not_a_listening_stream_socket_is_refused(make, error, words):
    server = hamanet.Server(Echo())
    with make() as thing, pytest.raises(error, match=words):
        server.open_socket(thing)
    assert server.addresses == []
    server.stop(timeout=2.0)


@pytest.mark.parametrize("wrong", ["3", 2.5, None, True, [3]])
def test_what_is_not_a_socket_or_descriptor_is_a_type_error(wrong):
    server = hamanet.Server(Echo())
    with pytest.raises(TypeError, match="sock must be a listening socket or its file descriptor"):
        server.open_socket(wrong)
    server.stop(timeout=2.0)


def test_a_closed_descriptor_is_an_os_error():
    server = hamanet.Server(Echo())
    sock = listening()
    fd = sock.detach()
    os.close(fd)
    with pytest.raises(OSError) as raised:
        server.open_socket(fd)
    assert raised.value.errno == 9  # EBADF
    server.stop(timeout=2.0)


def test_open_socket_after_stop_is_a_lifecycle_error():
    server = hamanet.Server(Echo())
    server.start()
    server.stop(timeout=2.0)
    with listening() as sock, pytest.raises(hamanet.LifecycleError, match="open_socket"):
        server.open_socket(sock)


def test_several_servers_in_turn_lose_no_connection_that_waited():
    """Ten servers in turn on one socket, each drained while the next is not yet there, a
    client connecting all along: every connection is echoed by one of them, none refused
    or reset."""
    with listening(backlog=256) as sock:
        port = sock.getsockname()[1]
        done = threading.Event()
        failures: list[BaseException] = []
        served = [0]

        def load() -> None:
            for i in range(10_000):
                if done.is_set():
                    return
                try:
                    with connect(port) as client:
                        data = pattern(i, 64)
                        client.sendall(data)
                        if recv_exactly(client, 64) != data:
                            failures.append(AssertionError(f"connection {i}: wrong bytes"))
                        served[0] += 1
                except OSError as error:
                    failures.append(error)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            for turn in range(10):
                server = hamanet.Server(Echo())
                server.open_socket(sock)
                server.start()
                before = served[0]
                wait_until(
                    lambda before=before: served[0] > before + 5 or failures,
                    what=f"server {turn} to serve",
                )
                # drain(): a session accepted just now still gets its echo.
                server.drain(timeout=5.0)
            final = hamanet.Server(Echo())
            final.open_socket(sock)
            final.start()
            done.set()
            loader.join(30)
            final.drain(timeout=5.0)
        finally:
            done.set()
            loader.join(30)
        assert not loader.is_alive()
        assert failures == []
        assert served[0] > 10


def test_stop_accepting_keeps_the_sessions_and_drain_waits_for_them():
    with listening() as sock:
        recorder = Recorder(echo=True)
        server = hamanet.Server(recorder)
        server.open_socket(sock)
        server.start()
        port = sock.getsockname()[1]
        with connect(port) as open_one:
            open_one.sendall(b"a")
            assert recv_exactly(open_one, 1) == b"a"
            server.stop_accepting()
            round_trip(server)  # the reactors have closed their listeners
            # The listener is gone from the server: a new connection waits in the queue.
            with connect(port) as waiting:
                waiting.sendall(b"unserved")
                open_one.sendall(b"b")  # the open session is still served
                assert recv_exactly(open_one, 1) == b"b"
                assert server.stats()["accepted"] == 1
            drained = threading.Thread(target=server.drain, kwargs={"timeout": 30.0})
            drained.start()
            open_one.sendall(b"c")  # still served while drain() waits
            assert recv_exactly(open_one, 1) == b"c"
        drained.join(30)  # the peer closed: drain() stops well before its timeout
        assert not drained.is_alive()
        assert recorder.closes and all(excs == [None] for excs in recorder.closes.values())


def test_drain_from_a_callback_is_refused(serve):
    errors: list[BaseException] = []
    server = serve(Echo())

    def drain_here() -> None:
        try:
            server.drain(1.0)
        except hamanet.LifecycleError as error:
            errors.append(error)

    server.call_soon_threadsafe(drain_here)
    wait_until(lambda: errors, what="drain() refused")
    assert "another thread" in str(errors[0])
