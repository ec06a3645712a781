"""Client.connect_nowait: the reactor finishes the connect; nothing blocks."""

from __future__ import annotations

import contextlib
import errno
import gc
import socket

import hamanet
import pytest
from conftest import Echo, Recorder, full_backlog_port, open_fds, wait_fds_back_to, wait_until


def test_connects_sends_what_was_written_meanwhile_and_echoes(serve, client_factory):
    server = serve(Echo())
    recorder = Recorder()
    client = client_factory(recorder)
    session = client.connect_nowait("127.0.0.1", server.port)
    session.write(b"written before the connect completed")
    wait_until(
        lambda: recorder.received(session.id) == b"written before the connect completed",
        what="the echo",
    )
    assert recorder.kinds(session.id)[0] == "connect"
    session.close()
    assert client.join(timeout=10)
    assert recorder.wait_closed(session.id) == [None]


def test_refused_gives_on_close_with_the_error_and_no_on_connect(client_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        recorder = Recorder()
        client = client_factory(recorder)
        session = client.connect_nowait("127.0.0.1", port)
        (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert recorder.kinds(session.id) == ["close"], "no on_connect for a failed connect"
    assert client.join(timeout=10)
    with pytest.raises(hamanet.SessionClosedError):
        session.write(b"too late")


def test_timeout_and_cancel_while_connecting_leave_no_fd(client_factory):
    gc.collect()
    before = open_fds()
    recorder = Recorder()
    client = client_factory(recorder)
    with full_backlog_port() as port:
        try:
            timed = client.connect_nowait("127.0.0.1", port, timeout=0.3)
            cancelled = client.connect_nowait("127.0.0.1", port, timeout=30)
            cancelled.write(b"never sent")
            cancelled.close()
            assert recorder.wait_closed(cancelled.id) == [None]
            (exc,) = recorder.wait_closed(timed.id)
            assert isinstance(exc, TimeoutError), exc
            assert recorder.kinds(timed.id) == ["close"]
            assert recorder.kinds(cancelled.id) == ["close"]
            assert client.join(timeout=10)
        finally:
            client.stop(timeout=2.0)
    client = timed = cancelled = None
    wait_fds_back_to(before)


def test_a_callback_opens_an_upstream_connection(serve, client_factory):
    """A tiny proxy: each accepted session connects to an echo upstream from on_connect
    and relays both ways; connect() would be refused there, connect_nowait works."""
    upstream = serve(Echo())

    class Relay(hamanet.Handler):
        def on_recv(self, session, data):
            session.peer.write(data)

        def on_close(self, session, exc):
            with contextlib.suppress(AttributeError):
                session.peer.close()

    relay_back = Relay()
    upstream_client = client_factory(relay_back)

    class Proxy(Relay):
        def on_connect(self, session):
            session.peer = upstream_client.connect_nowait("127.0.0.1", upstream.port)
            session.peer.peer = session

    proxy = serve(Proxy())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"through the proxy")
        got = b""
        while len(got) < len(b"through the proxy"):
            chunk = sock.recv(100)
            assert chunk, "the proxy closed early"
            got += chunk
    assert got == b"through the proxy"


def test_connect_nowait_needs_an_ip_address(client_factory):
    client = client_factory(hamanet.Handler())
    with pytest.raises(ValueError, match="IP address"):
        client.connect_nowait("localhost", 80)
