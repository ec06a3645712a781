"""Every public call and every documented error of the Python surface."""

from __future__ import annotations

import errno
import gc
import socket
import weakref

import hamanet
import pytest
from conftest import Echo, Recorder, connect, recv_exactly, recv_until_eof, wait_until


def test_open_returns_the_bound_address_and_port(serve):
    server = hamanet.Server(Echo())
    try:
        host, port = server.open(0)
        assert host == "127.0.0.1"
        assert 0 < port < 65536
        assert server.port == port
        assert server.addresses == [(host, port)]
    finally:
        server.stop()


def test_default_host_is_loopback_only():
    server = hamanet.Server(Echo())
    try:
        assert server.open(0)[0] == "127.0.0.1"
    finally:
        server.stop()


def test_echo_round_trip_and_session_attributes(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder)
    with connect(server.port) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        (session,) = recorder.wait_sessions(1)
        assert isinstance(session, hamanet.Session)
        assert session.peer_addr == sock.getsockname()
        assert session.local_addr == ("127.0.0.1", server.port)
        assert isinstance(session.id, int)
        assert session.write_buffer_size == 0
        assert not session.closing and not session.closed
        assert f"id={session.id}" in repr(session) and "open" in repr(session)
    closes = recorder.wait_closed(session.id)
    assert closes == [None]
    assert session.closed and session.closing


def test_session_ids_are_unique(serve):
    recorder = Recorder()
    server = serve(recorder)
    socks = [connect(server.port) for _ in range(5)]
    sessions = recorder.wait_sessions(5)
    assert len({s.id for s in sessions}) == 5
    for sock in socks:
        sock.close()


def test_session_keeps_user_state(serve):
    class Counter(hamanet.Handler):
        def on_connect(self, session):
            session.count = 0

        def on_recv(self, session, data):
            session.count += len(data)
            session.write(str(session.count).encode() + b"\n")

    server = serve(Counter())
    with connect(server.port) as sock:
        sock.sendall(b"abc")
        assert recv_exactly(sock, 2) == b"3\n"
        sock.sendall(b"de")
        assert recv_exactly(sock, 2) == b"5\n"


def test_writelines_and_every_bytes_like(serve):
    class Writer(hamanet.Handler):
        def on_connect(self, session):
            session.write(b"a")
            session.write(bytearray(b"b"))
            session.write(memoryview(b"xcx")[1:2])
            session.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
            session.writelines(iter([b"g"]))
            session.close()

    server = serve(Writer())
    with connect(server.port) as sock:
        data = recv_until_eof(sock)
    assert data == b"abcdefg"


@pytest.mark.parametrize("bad", ["text", 123, None, [b"list"], object()])
def test_write_rejects_non_bytes_like_with_type_error(serve, bad):
    errors = []

    class Writer(hamanet.Handler):
        def on_connect(self, session):
            try:
                session.write(bad)
            except TypeError as exc:
                errors.append(str(exc))
            session.close()

    server = serve(Writer())
    with connect(server.port) as sock:
        assert sock.recv(10) == b""
    wait_until(lambda: errors, what="the TypeError")
    assert "bytes-like" in errors[0]
    assert type(bad).__name__ in errors[0]


def test_writelines_with_a_bad_item_writes_nothing(serve):
    errors = []

    class Writer(hamanet.Handler):
        def on_connect(self, session):
            try:
                session.writelines([b"first", "second"])
            except TypeError as exc:
                errors.append(exc)
            session.write(b"ok")
            session.close()

    server = serve(Writer())
    with connect(server.port) as sock:
        data = recv_until_eof(sock)
    assert errors and data == b"ok"


def test_write_after_close_raises_session_closed_error(serve):
    outcomes = []

    class Closer(hamanet.Handler):
        def on_connect(self, session):
            session.write(b"bye")
            session.close()
            session.close()  # idempotent
            try:
                session.write(b"more")
            except hamanet.SessionClosedError as exc:
                outcomes.append(exc)

    server = serve(Closer())
    with connect(server.port) as sock:
        assert recv_exactly(sock, 3) == b"bye"
        assert sock.recv(10) == b""
    wait_until(lambda: outcomes, what="SessionClosedError")
    assert isinstance(outcomes[0], ConnectionError)
    assert "closed" in str(outcomes[0])


def test_write_after_the_session_ended_raises(serve):
    recorder = Recorder()
    server = serve(recorder)
    with connect(server.port):
        (session,) = recorder.wait_sessions(1)
    recorder.wait_closed(session.id)
    with pytest.raises(hamanet.SessionClosedError, match="is closed"):
        session.write(b"late")
    session.close()  # no-op, no error
    session.abort()  # no-op, no error


def test_busy_port_raises_eaddrinuse(serve):
    server = serve(Echo())
    second = hamanet.Server(Echo())
    try:
        with pytest.raises(OSError) as info:
            second.open(server.port)
        assert info.value.errno == errno.EADDRINUSE
        assert str(server.port) in str(info.value)
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("port", "error"),
    [(-1, ValueError), (65536, ValueError), ("80", TypeError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_port_is_rejected(port, error):
    server = hamanet.Server(Echo())
    try:
        with pytest.raises(error, match="port"):
            server.open(port)
    finally:
        server.stop()


def test_bad_host_is_rejected():
    server = hamanet.Server(Echo())
    try:
        with pytest.raises(TypeError, match="host"):
            server.open(0, host=127)
        with pytest.raises(ValueError, match="host"):
            server.open(0, host="")
        with pytest.raises(OSError, match="no.such.host.invalid"):
            server.open(0, host="no.such.host.invalid")
        with pytest.raises(OSError) as info:
            server.open(0, host="192.0.2.1")  # not an address of this machine
        assert info.value.errno == errno.EADDRNOTAVAIL, info.value
        assert "192.0.2.1" in str(info.value), "the address is in the message"
    finally:
        server.stop()


def test_handler_must_be_a_handler():
    with pytest.raises(TypeError, match="hamanet.Handler"):
        hamanet.Server(object())
    with pytest.raises(TypeError, match="hamanet.Handler"):
        hamanet.Client(lambda: None)


@pytest.mark.parametrize("option", ["recv_buffer", "send_buffer"])
def test_bad_buffer_sizes_are_rejected(option):
    with pytest.raises(ValueError, match=option):
        hamanet.Server(Echo(), **{option: 0})
    with pytest.raises(ValueError, match=option):
        hamanet.Server(Echo(), **{option: -5})


def test_lifecycle_errors():
    server = hamanet.Server(Echo())
    server.open(0)
    with pytest.raises(hamanet.LifecycleError, match="start"):
        server.join()
    server.start()
    with pytest.raises(hamanet.LifecycleError, match="already"):
        server.start()
    assert server.running
    server.stop()
    assert not server.running
    server.stop()  # idempotent
    assert server.join(timeout=1.0)
    with pytest.raises(hamanet.LifecycleError, match="stopped"):
        server.start()
    with pytest.raises(hamanet.LifecycleError, match="stopped"):
        server.open(0)
    assert issubclass(hamanet.LifecycleError, RuntimeError)


def test_stop_timeout_is_validated(serve):
    server = serve(Echo())
    with pytest.raises(ValueError, match="timeout"):
        server.stop(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        server.stop(timeout=float("nan"))


def test_context_manager_stops_the_server():
    with hamanet.Server(Echo()) as server:
        server.open(0)
        server.start()
        port = server.port
        with connect(port) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_set_handler_swaps_callbacks(serve):
    class Upper(hamanet.Handler):
        def on_recv(self, session, data):
            session.write(data.upper())

    server = serve(Echo())
    with connect(server.port) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        new = Upper()
        server.set_handler(new)
        assert server.handler is new
        sock.sendall(b"b")
        assert recv_exactly(sock, 1) == b"B"


def test_open_several_addresses_and_after_start(serve):
    server = serve(Echo())
    second_port = server.open(0)[1]
    assert len(server.addresses) == 2
    for port in (server.port, second_port):
        with connect(port) as sock:
            sock.sendall(b"p")
            assert recv_exactly(sock, 1) == b"p"


def test_ipv6_loopback(serve):
    if not socket.has_ipv6:
        pytest.fail("this Linux build has no IPv6; hamanet's tests expect ::1")

    class EchoAddresses(Echo):
        def on_recv(self, session, data):
            session.write(repr((session.peer_addr, session.local_addr)).encode())

    server = hamanet.Server(EchoAddresses())
    try:
        host, port = server.open(0, host="::1")
        assert host == "::1"
        server.start()
        with socket.create_connection(("::1", port), timeout=10) as sock:
            sock.sendall(b"six")
            expected = repr((sock.getsockname(), sock.getpeername())).encode()
            # The server's view of the peer (from accept4) is the client's own address.
            assert recv_exactly(sock, len(expected)) == expected
    finally:
        server.stop()


def test_client_round_trip_and_errors(serve, client_factory):
    server = serve(Echo())
    reader = Recorder()
    client = client_factory(reader)
    session = client.connect("127.0.0.1", server.port)
    session.write(b"ping")
    wait_until(lambda: reader.received(session.id) == b"ping", what="the echo")
    assert session.peer_addr == ("127.0.0.1", server.port)
    assert reader.kinds(session.id)[0] == "connect"
    session.close()
    assert client.join(timeout=10)
    assert reader.wait_closed(session.id) == [None]

    with pytest.raises(ValueError, match="timeout"):
        client.connect("127.0.0.1", server.port, timeout=-1)
    with pytest.raises(OSError):
        client.connect("no.such.host.invalid", server.port)


def test_client_connect_from_a_callback_is_refused(serve, client_factory):
    server = serve(Echo())
    errors = []

    class Nested(hamanet.Handler):
        def on_connect(self, session):
            try:
                client.connect("127.0.0.1", server.port)
            except hamanet.LifecycleError as exc:
                errors.append(exc)
            session.close()

    # On a worker pool (workers=N) a blocking connect() from a callback is allowed: it
    # holds one worker, not the reactor.
    client = client_factory(Nested(), workers=0)
    client.connect("127.0.0.1", server.port)
    wait_until(lambda: errors, what="LifecycleError from a nested connect")
    assert "callback" in str(errors[0])


def test_refused_connect_raises_connection_refused(client_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    client = client_factory(Recorder())
    with pytest.raises(ConnectionRefusedError) as info:
        client.connect("127.0.0.1", dead_port, timeout=5)
    assert info.value.errno == errno.ECONNREFUSED


def test_session_reference_cycles_are_collected(serve):
    recorder = Recorder()
    server = serve(recorder)
    with connect(server.port):
        (session,) = recorder.wait_sessions(1)
    recorder.wait_closed(session.id)
    session.me = session  # a cycle through the instance __dict__
    ref = weakref.ref(session)
    with recorder.lock:
        recorder.sessions.clear()
        recorder.events.clear()
        recorder.closes.clear()
    del session
    wait_until(lambda: gc.collect() is not None and ref() is None, what="the cycle to be freed")


def test_a_stopped_server_and_a_handler_that_holds_it_are_collected():
    class Holder(hamanet.Handler):
        def on_recv(self, session, data):
            session.write(data)

    handler = Holder()
    server = hamanet.Server(handler)
    handler.server = server  # handler -> server -> loop -> bound callbacks -> handler
    server.open(0)
    server.start()
    with connect(server.port) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    server.stop()
    ref = weakref.ref(handler)
    del handler, server
    wait_until(lambda: gc.collect() is not None and ref() is None, what="the cycle to be freed")


def test_join_from_a_callback_is_refused(serve):
    errors = []

    class Joiner(hamanet.Handler):
        def on_connect(self, session):
            try:
                server.join(timeout=1)
            except hamanet.LifecycleError as exc:
                errors.append(exc)
            session.close()

    server = serve(Joiner())
    with connect(server.port) as sock:
        assert sock.recv(10) == b""
    wait_until(lambda: errors, what="LifecycleError from join() in a callback")
    assert "callback" in str(errors[0])


def test_huge_timeouts_mean_a_very_long_time_not_a_crash(serve):
    server = serve(Echo(), idle_timeout=1e300)
    handle = server.call_later(1e300, lambda: None)
    assert handle.pending()
    handle.cancel()
    with connect(server.port) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    server.stop(timeout=1e300)  # flushes and returns at once: nothing is left to send
    assert not server.running


def test_unresolvable_names_raise_gaierror(client_factory):
    client = client_factory(hamanet.Handler())
    with pytest.raises(socket.gaierror, match="no.such.host.invalid"):
        client.connect("no.such.host.invalid", 80)
    with pytest.raises(ValueError, match="timeout"):
        client.connect("127.0.0.1", 80, timeout=0)


def test_the_version_is_written_once_and_reported_everywhere():
    import importlib.metadata
    import re
    from pathlib import Path

    cargo = (Path(__file__).resolve().parent.parent / "Cargo.toml").read_text()
    written = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert hamanet.__version__ == written
    assert importlib.metadata.version("hamanet") == written
