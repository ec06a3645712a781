"""UDP: datagram endpoints (Server.open_udp, Client.open_udp / connect_udp).

Echo with Python sockets over IPv4 and IPv6, a burst delivered in one on_datagrams call,
socat and nc -u as clients nobody here wrote, truncation, ICMP port unreachable on a
connected endpoint, the bounded send queue, every bad input's error, close/stop, several
reactors and a worker pool. The whole file also runs under `make test-threads`.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import threading
import time
from typing import Any

import hamanet
import pytest
from conftest import WAIT, open_fds, real_client, round_trip, wait_fds_back_to, wait_until


def pattern(i: int, size: int = 64) -> bytes:
    """Datagram ``i``: its number, then bytes that depend on it (a mix-up is caught)."""
    head = b"%06d:" % i
    return head + bytes((i * 7 + j) & 0xFF for j in range(size - len(head)))


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(WAIT)
    return sock


def closed_port(host: str = "127.0.0.1") -> int:
    """A UDP port that nothing is bound to (right now)."""
    with udp_socket(host) as sock:
        return sock.getsockname()[1]


class Collector(hamanet.Handler):
    """Records every datagram callback; echoes if asked. Safe to inspect from tests."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.lock = threading.Lock()
        self.batches: list[list[tuple[bytes, Any]]] = []
        self.errors: list[BaseException] = []
        self.closes: list[tuple[Any, BaseException | None]] = []
        self.threads: set[str] = set()

    def on_datagrams(self, endpoint, datagrams):
        with self.lock:
            self.batches.append(list(datagrams))
            self.threads.add(threading.current_thread().name)
        if self.echo:
            for data, addr in datagrams:
                endpoint.sendto(data, addr)

    def on_datagram_error(self, endpoint, exc):
        with self.lock:
            self.errors.append(exc)

    def on_datagram_close(self, endpoint, exc):
        with self.lock:
            self.closes.append((endpoint, exc))

    def datagrams(self) -> list[tuple[bytes, Any]]:
        with self.lock:
            return [item for batch in self.batches for item in batch]

    def wait_datagrams(self, count: int) -> list[tuple[bytes, Any]]:
        wait_until(lambda: len(self.datagrams()) >= count, what=f"{count} datagrams")
        return self.datagrams()

    def wait_errors(self, count: int = 1) -> list[BaseException]:
        wait_until(lambda: len(self.errors) >= count, what=f"{count} on_datagram_error")
        with self.lock:
            return list(self.errors)


@pytest.fixture
def server():
    """``server(handler, **options)``: a started Server (no TCP listener), always stopped."""
    servers: list[hamanet.Server] = []

    def make(handler: hamanet.Handler, **options: Any) -> hamanet.Server:
        made = hamanet.Server(handler, **options)
        made.start()
        servers.append(made)
        return made

    yield make
    for made in servers:
        made.stop(timeout=2.0)


# -- echo -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_with_python_sockets(server, host):
    srv = server(Collector(echo=True))
    endpoint = srv.open_udp(0, host=host)
    local = endpoint.local_addr
    assert local[0] == host and local[1] != 0
    assert len(local) == (4 if ":" in host else 2)
    assert endpoint.peer_addr is None
    with udp_socket(host) as client:
        sent = [pattern(i, 16 + i * 37) for i in range(50)]
        for data in sent:
            client.sendto(data, local[:2])
        echoed = []
        for _ in sent:
            data, addr = client.recvfrom(65536)
            assert addr[:2] == local[:2]
            echoed.append(data)
        assert echoed == sent, "every byte back, in order"
        me = client.getsockname()
    seen = srv.handler.datagrams()
    assert [data for data, _ in seen] == sent
    assert all(addr[:2] == me[:2] for _, addr in seen), "addr is the sender, recvfrom-style"
    assert all(len(addr) == len(local) for _, addr in seen)
    round_trip(srv)
    stats = srv.stats()
    assert stats["datagrams_in"] == 50 and stats["datagrams_out"] == 50
    assert stats["datagram_bytes_in"] == stats["datagram_bytes_out"] == sum(map(len, sent))
    assert stats["endpoints_open"] == 1


def test_a_burst_while_the_handler_is_busy_arrives_in_one_call(server):
    """A burst sent while the handler is blocked is delivered together: one on_datagrams
    with many datagrams (the reactor read them with a few recvmmsg calls), every byte of
    each verified; the replies leave in few sendmmsg calls."""
    busy, release = threading.Event(), threading.Event()

    class Blocking(Collector):
        def on_datagrams(self, endpoint, datagrams):
            if datagrams[0][0] == b"block":
                busy.set()
                release.wait(WAIT)
            super().on_datagrams(endpoint, datagrams)

    srv = server(Blocking(echo=True))
    endpoint = srv.open_udp(0)
    burst = [pattern(i) for i in range(100)]
    with udp_socket() as client:
        client.sendto(b"block", endpoint.local_addr)
        assert busy.wait(WAIT), "the handler did not get the first datagram"
        for data in burst:
            client.sendto(data, endpoint.local_addr)
        time.sleep(0.2)  # loopback delivers at once; this is only margin
        release.set()
        echoed = [client.recvfrom(65536)[0] for _ in range(101)]
    assert echoed == [b"block", *burst]
    sizes = [len(batch) for batch in srv.handler.batches]
    assert max(sizes) > 1, f"each datagram came alone: {sizes}"
    assert max(sizes) >= 50, f"the burst was split thin: {sizes}"
    assert [data for data, _ in srv.handler.datagrams()] == [b"block", *burst]
    round_trip(srv)
    stats = srv.stats()
    if stats["workers"] == 0:
        # The reactor was held too: the burst waited in the kernel and came in with a few
        # recvmmsg calls (16 a call at the default max_datagram_size). On a pool the
        # reactor reads on meanwhile, perhaps a datagram a wakeup, and the lane joins them.
        assert stats["datagram_recv_calls"] <= 10, stats
        # The 100 replies were queued in one callback: two sendmmsg calls (64 + 36).
        assert stats["datagram_send_calls"] <= 3, stats


def test_on_datagram_gets_one_call_per_datagram(server):
    class One(hamanet.Handler):
        def __init__(self):
            self.seen = []

        def on_datagram(self, endpoint, data, addr):
            self.seen.append((data, addr))
            endpoint.sendto(data.upper(), addr)

    srv = server(One())
    endpoint = srv.open_udp(0)
    with udp_socket() as client:
        for word in (b"one", b"two", b"three"):
            client.sendto(word, endpoint.local_addr)
        assert sorted(client.recvfrom(100)[0] for _ in range(3)) == [b"ONE", b"THREE", b"TWO"]
        me = client.getsockname()
    assert srv.handler.seen == [(b"one", me), (b"two", me), (b"three", me)]


def test_an_endpoint_may_have_a_handler_of_its_own(server):
    tcp_side, udp_side = Collector(), Collector(echo=True)
    srv = server(tcp_side)
    endpoint = srv.open_udp(0, handler=udp_side)
    with udp_socket() as client:
        client.sendto(b"mine", endpoint.local_addr)
        assert client.recvfrom(100)[0] == b"mine"
    assert udp_side.datagrams()[0][0] == b"mine" and not tcp_side.datagrams()


def test_empty_datagrams_are_datagrams(server):
    srv = server(Collector(echo=True))
    endpoint = srv.open_udp(0)
    with udp_socket() as client:
        client.sendto(b"", endpoint.local_addr)
        assert client.recvfrom(100)[0] == b""


# -- clients nobody here wrote -----------------------------------------------------------
def test_socat_as_a_client(server):
    socat = real_client("socat", "socat")
    srv = server(Collector(echo=True))
    port = srv.open_udp(0).local_addr[1]
    result = subprocess.run(
        [socat, "-t", "2", "-", f"UDP:127.0.0.1:{port}"],
        input=b"hello from socat\n",
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    assert result.stdout == b"hello from socat\n"


def test_nc_as_a_client(server):
    nc = real_client("nc", "netcat-openbsd")
    srv = server(Collector(echo=True))
    port = srv.open_udp(0, host="::1").local_addr[1]
    result = subprocess.run(
        [nc, "-u", "-w", "1", "::1", str(port)],
        input=b"hello from nc\n",
        capture_output=True,
        timeout=WAIT,
    )
    assert result.stdout == b"hello from nc\n", result


def test_the_example_echoes_and_says_where_it_listens(procs):
    proc = procs("examples/udp_echo.py", "0", "--host", "127.0.0.1")
    line = proc.wait_line("udp echo: listening on ")
    port = int(line.rsplit(":", 1)[1])
    with udp_socket() as client:
        for i in range(20):
            client.sendto(pattern(i), ("127.0.0.1", port))
        assert sorted(client.recvfrom(100)[0] for _ in range(20)) == [pattern(i) for i in range(20)]
    proc.popen.terminate()
    assert proc.wait() == 0


# -- truncation, errors ------------------------------------------------------------------
def test_a_datagram_longer_than_max_datagram_size_is_reported_not_delivered(server):
    srv = server(Collector())
    endpoint = srv.open_udp(0, max_datagram_size=100)
    assert endpoint.max_datagram_size == 100
    long = bytes(range(256)) + bytes(44)
    with udp_socket() as client:
        client.sendto(long, endpoint.local_addr)
        client.sendto(b"short", endpoint.local_addr)
        me = client.getsockname()
    (exc,) = srv.handler.wait_errors()
    assert [data for data, _ in srv.handler.wait_datagrams(1)] == [b"short"]
    assert isinstance(exc, hamanet.DatagramTruncatedError) and isinstance(exc, OSError)
    assert exc.errno == errno.EMSGSIZE
    assert (exc.size, exc.data, exc.addr, exc.max_datagram_size) == (300, long[:100], me, 100)
    assert "300 bytes" in str(exc) and "max_datagram_size of 100" in str(exc)
    round_trip(srv)
    assert srv.stats()["datagrams_truncated"] == 1


def test_icmp_port_unreachable_on_a_connected_endpoint(client_factory):
    handler = Collector()
    client = client_factory(handler)
    port = closed_port()
    endpoint = client.connect_udp("127.0.0.1", port)
    assert endpoint.peer_addr == ("127.0.0.1", port)
    endpoint.send(b"anyone there?")
    (exc,) = handler.wait_errors()
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert exc.addr == ("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(exc)
    assert not endpoint.closing, "the endpoint stays usable"
    # Someone listens there now: the same endpoint talks to it both ways.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", port))
        peer.settimeout(WAIT)
        endpoint.send(b"now?")
        data, addr = peer.recvfrom(100)
        assert data == b"now?" and addr == endpoint.local_addr
        peer.sendto(b"yes", addr)
        assert handler.wait_datagrams(1) == [(b"yes", ("127.0.0.1", port))]
    assert client.stats()["datagram_errors"] >= 1


def test_an_endpoints_errors_reach_no_other_endpoint_or_session(serve, client_factory):
    """ICMP errors flood one connected endpoint; another endpoint and a TCP session of the
    same client, on the same reactor, go on as if nothing happened."""
    from conftest import Echo, Recorder

    failing, healthy, sessions = Collector(), Collector(echo=True), Recorder()
    tcp = serve(Echo())
    client = client_factory(sessions, reactors=1)
    refused = client.connect_udp("127.0.0.1", closed_port(), handler=failing)
    echo = client.open_udp(0, handler=healthy)
    session = client.connect("127.0.0.1", tcp.port)
    with udp_socket() as peer:
        for i in range(20):
            refused.send(b"x")
            peer.sendto(pattern(i), echo.local_addr)
            session.write(pattern(i))
            assert peer.recvfrom(100)[0] == pattern(i)
            time.sleep(0.01)  # each ICMP error its own wakeup
        failing.wait_errors(2)
    wait_until(lambda: len(sessions.received(session.id)) == 20 * 64, what="the TCP echo")
    assert sessions.received(session.id) == b"".join(pattern(i) for i in range(20))
    assert not healthy.errors and not sessions.closes
    assert all(isinstance(exc, ConnectionRefusedError) for exc in failing.errors)
    assert not (refused.closing or echo.closing or session.closing)


def test_without_on_datagram_error_the_first_error_is_logged_once(client_factory, caplog):
    class Quiet(hamanet.Handler):
        def on_datagrams(self, endpoint, datagrams):
            pass

    client = client_factory(Quiet())
    endpoint = client.connect_udp("127.0.0.1", closed_port())
    with caplog.at_level(logging.WARNING, logger="hamanet"):
        for _ in range(3):
            endpoint.send(b"x")
            round_trip(client)
            time.sleep(0.05)  # each ICMP error its own wakeup
        wait_until(lambda: client.stats()["datagram_errors"] >= 2, what="two errors")
    warnings = [r for r in caplog.records if "no on_datagram_error" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "Connection refused" in warnings[0].getMessage()


@pytest.mark.handler_errors
def test_a_raising_datagram_callback_is_logged_and_the_endpoint_goes_on(server, hamanet_errors):
    class Fragile(Collector):
        def on_datagrams(self, endpoint, datagrams):
            if datagrams[0][0] == b"boom":
                raise RuntimeError("bad datagram")
            super().on_datagrams(endpoint, datagrams)

    srv = server(Fragile(echo=True))
    endpoint = srv.open_udp(0)
    with udp_socket() as client:
        client.sendto(b"boom", endpoint.local_addr)
        wait_until(lambda: srv.stats()["handler_errors"] == 1, what="the error counted")
        client.sendto(b"fine", endpoint.local_addr)
        assert client.recvfrom(100)[0] == b"fine"
    assert not endpoint.closing
    (record,) = hamanet_errors
    assert f"on_datagrams raised for datagram endpoint {endpoint.id}" in record.getMessage()
    assert "stays open" in record.getMessage()


# -- the send queue ----------------------------------------------------------------------
def test_a_full_send_queue_refuses_with_a_clear_error():
    with udp_socket() as receiver:
        to = receiver.getsockname()
        srv = hamanet.Server(Collector())
        try:
            # Before start() nothing is sent: the queue fills deterministically.
            endpoint = srv.open_udp(0, max_send_queue=3, max_send_queue_bytes=100)
            assert endpoint.send_queue_limits == (3, 100)
            endpoint.sendto(b"a" * 60, to)
            with pytest.raises(hamanet.DatagramQueueFullError) as info:
                endpoint.sendto(b"b" * 41, to)
            assert isinstance(info.value, BufferError)
            message = str(info.value)
            assert f"datagram endpoint {endpoint.id}" in message
            assert "60 bytes" in message and "max_send_queue_bytes of 100" in message
            assert "was not queued" in message and "larger" in message
            endpoint.sendto(b"c" * 40, to)
            endpoint.sendto(b"", to)
            with pytest.raises(hamanet.DatagramQueueFullError, match="holds 3 datagrams"):
                endpoint.sendto(b"d", to)
            assert (endpoint.send_queue_size, endpoint.send_queue_bytes) == (3, 100)
            srv.start()
            got = [receiver.recvfrom(200)[0] for _ in range(3)]
            assert got == [b"a" * 60, b"c" * 40, b""]
            wait_until(lambda: endpoint.send_queue_size == 0, what="the queue sent")
            round_trip(srv)
            assert srv.stats()["datagrams_dropped"] == 2
        finally:
            srv.stop(timeout=2.0)


def test_sendto_from_any_thread(server):
    srv = server(Collector())
    endpoint = srv.open_udp(0)
    with udp_socket() as receiver:
        to = receiver.getsockname()

        def send(seed: int) -> None:
            for i in range(50):
                endpoint.sendto(pattern(seed * 1000 + i), to)

        threads = [threading.Thread(target=send, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        got = {receiver.recvfrom(200)[0] for _ in range(200)}
    assert got == {pattern(seed * 1000 + i) for seed in range(4) for i in range(50)}


# -- bad inputs --------------------------------------------------------------------------
def test_every_bad_destination_is_refused_at_the_call(server):
    srv = server(Collector())
    v4 = srv.open_udp(0)
    v6 = srv.open_udp(0, host="::1")
    ok = ("127.0.0.1", 9)
    cases = [
        (v4, "127.0.0.1:9", TypeError, r"addr must be a \(host, port\) tuple.*not 'str'"),
        (v4, ["127.0.0.1", 9], TypeError, r"a list was given: pass tuple\(addr\)"),
        (v4, ("127.0.0.1",), TypeError, r"not a tuple of 1"),
        (v4, (b"127.0.0.1", 9), TypeError, r"host must be a str"),
        (v4, ("127.0.0.1", "9"), TypeError, r"port must be an int, not 'str'"),
        (v4, ("127.0.0.1", 70000), ValueError, r"port must be between 0 and 65535"),
        (v4, ("127.0.0.1", 0), ValueError, r"cannot send to port 0"),
        (v4, ("", 9), ValueError, r"host must not be empty"),
        (v4, ("::1", 9), ValueError, r"::1 is an IPv6 address.*is IPv4.*open an IPv6"),
        (v6, ok, ValueError, r"127\.0\.0\.1 is an IPv4 address.*IPv6 only.*dual_stack=True"),
        (v6, ("::1", 9, -1, 0), ValueError, r"flowinfo must be between 0 and"),
    ]
    for endpoint, addr, kind, message in cases:
        with pytest.raises(kind, match=message):
            endpoint.sendto(b"x", addr)
    with pytest.raises(socket.gaierror) as info:
        v4.sendto(b"x", ("no-such-host.invalid", 9))
    assert "no-such-host.invalid" in str(info.value)
    with pytest.raises(TypeError, match=r"sendto\(\) takes a bytes-like object.*encode"):
        v4.sendto("text", ok)
    with pytest.raises(OSError, match=r"65508 bytes.*at most 65507") as big:
        v4.sendto(b"x" * 65_508, ok)
    assert big.value.errno == errno.EMSGSIZE
    with pytest.raises(ValueError, match=r"cannot send\(\) without an address.*not connected"):
        v4.send(b"x")
    # Names resolve; a sendto takes memoryview and bytearray as bytes.
    v4.sendto(memoryview(b"fine"), ("localhost", 9))
    v4.sendto(bytearray(b"fine"), ok)
    assert srv.stats()["handler_errors"] == 0


def test_a_connected_endpoint_sends_only_to_its_peer(client_factory):
    client = client_factory(Collector())
    with udp_socket() as peer:
        port = peer.getsockname()[1]
        endpoint = client.connect_udp("localhost", port, local_addr=("127.0.0.1", 0))
        with pytest.raises(ValueError, match=rf"is connected to 127\.0\.0\.1:{port}"):
            endpoint.sendto(b"x", ("127.0.0.1", port + 1 if port < 65535 else port - 1))
        endpoint.sendto(b"to the peer", ("127.0.0.1", port))
        endpoint.sendto(b"also", None)
        assert peer.recvfrom(100)[0] == b"to the peer"
        assert peer.recvfrom(100)[0] == b"also"


def test_every_bad_endpoint_option_is_refused(server):
    srv = server(Collector())
    with pytest.raises(TypeError, match=r"unknown option 'max_datagram_sise'.*'max_datagram_size'"):
        srv.open_udp(0, max_datagram_sise=100)
    with pytest.raises(ValueError, match=r"max_datagram_size must be between 1 and 65535"):
        srv.open_udp(0, max_datagram_size=0)
    with pytest.raises(TypeError, match=r"max_datagram_size must be an int, not 'str'"):
        srv.open_udp(0, max_datagram_size="big")
    with pytest.raises(ValueError, match=r"max_send_queue must be between 1"):
        srv.open_udp(0, max_send_queue=0)
    with pytest.raises(ValueError, match=r"dual_stack=True is for an IPv6 endpoint"):
        srv.open_udp(0, dual_stack=True)
    with pytest.raises(TypeError, match=r"belongs to datagram endpoints: pass it to open_udp"):
        hamanet.Server(Collector(), max_datagram_size=100)
    with pytest.raises(TypeError, match=r"port must be an int"):
        srv.open_udp("9")
    taken = srv.open_udp(0)
    with pytest.raises(OSError) as busy:
        srv.open_udp(taken.local_addr[1])
    assert busy.value.errno == errno.EADDRINUSE
    # SO_REUSEPORT on both: two endpoints on one port.
    shared = srv.open_udp(0, reuse_port=True)
    srv.open_udp(shared.local_addr[1], reuse_port=True)


def test_bad_connect_udp_arguments(client_factory):
    client = client_factory(Collector())
    with pytest.raises(ValueError, match=r"port must be between 1 and 65535 for connect_udp"):
        client.connect_udp("127.0.0.1", 0)
    with pytest.raises(TypeError, match=r"local_addr must be a \(host, port\) tuple"):
        client.connect_udp("127.0.0.1", 9, local_addr="127.0.0.1")
    with pytest.raises(ValueError, match="different address families"):
        client.connect_udp("127.0.0.1", 9, local_addr=("::1", 0))
    with pytest.raises(socket.gaierror):
        client.connect_udp("no-such-host.invalid", 9)


def test_datagram_handler_mistakes_are_refused_loudly():
    class Async(hamanet.Handler):
        async def on_datagrams(self, endpoint, datagrams):
            pass

    with pytest.raises(TypeError, match=r"Async.on_datagrams is an async function.*plain"):
        hamanet.Server(Async())

    class WrongArity(hamanet.Handler):
        def on_datagram(self, endpoint, data):
            pass

    with pytest.raises(TypeError, match=r"on_datagram\(self, endpoint, data, addr\)"):
        hamanet.Server(WrongArity())

    class AsyncioStyle(hamanet.Handler):
        def datagram_received(self, data, addr):
            pass

    with pytest.warns(hamanet.HandlerWarning, match=r"on_datagram\(self, endpoint, data, addr"):
        hamanet.Server(AsyncioStyle()).stop()


# -- close, stop, lifecycle --------------------------------------------------------------
def test_close_sends_the_queue_then_closes_once(server):
    handler = Collector()
    srv = server(handler)
    endpoint = srv.open_udp(0)
    with udp_socket() as receiver:
        to = receiver.getsockname()

        def last_words() -> None:
            for i in range(10):
                endpoint.sendto(pattern(i), to)
            endpoint.close()  # queued before: sent before the socket closes

        srv.call_soon_threadsafe(last_words)
        assert [receiver.recvfrom(100)[0] for _ in range(10)] == [pattern(i) for i in range(10)]
    wait_until(lambda: handler.closes, what="on_datagram_close")
    round_trip(srv)
    assert handler.closes == [(endpoint, None)]
    assert endpoint.closed and endpoint.closing
    with pytest.raises(hamanet.EndpointClosedError, match=rf"endpoint {endpoint.id} is closed"):
        endpoint.sendto(b"x", to)
    endpoint.close()  # idempotent
    endpoint.abort()
    round_trip(srv)
    assert len(handler.closes) == 1


def test_stop_closes_every_endpoint(server):
    handler = Collector()
    srv = server(handler, reactors=2)
    endpoints = [srv.open_udp(0) for _ in range(3)] + [srv.open_udp(0, host="::1")]
    wait_until(lambda: srv.stats()["endpoints_open"] == 4, what="four endpoints")
    srv.stop(timeout=2.0)
    assert all(endpoint.closed for endpoint in endpoints)
    assert sorted(id(e) for e, _ in handler.closes) == sorted(id(e) for e in endpoints)
    assert all(exc is None for _, exc in handler.closes)
    with pytest.raises(hamanet.EndpointClosedError):
        endpoints[0].sendto(b"x", ("127.0.0.1", 9))
    with pytest.raises(hamanet.LifecycleError, match=r"cannot open_udp\(\): it was stopped"):
        srv.open_udp(0)


def test_an_endpoint_opened_before_start_is_served_after_it():
    handler = Collector(echo=True)
    srv = hamanet.Server(handler)
    try:
        endpoint = srv.open_udp(0)
        with udp_socket() as client:
            client.sendto(b"early", endpoint.local_addr)  # waits in the kernel
            srv.start()
            assert client.recvfrom(100)[0] == b"early"
    finally:
        srv.stop(timeout=2.0)


def test_an_endpoint_of_a_server_that_never_started_is_closed_by_stop():
    handler = Collector()
    srv = hamanet.Server(handler)
    endpoint = srv.open_udp(0)
    srv.stop()
    with pytest.raises(hamanet.EndpointClosedError):
        endpoint.sendto(b"x", ("127.0.0.1", 9))


def test_client_join_waits_for_its_endpoints(client_factory):
    client = client_factory(Collector())
    endpoint = client.open_udp(0)
    assert not client.join(timeout=0.2), "an open endpoint keeps the client busy"
    endpoint.close()
    assert client.join(timeout=WAIT)


def test_abort_drops_the_queue():
    with udp_socket() as receiver:
        srv = hamanet.Server(Collector())
        try:
            endpoint = srv.open_udp(0)
            for i in range(5):
                endpoint.sendto(pattern(i), receiver.getsockname())
            endpoint.abort()
            srv.start()
            wait_until(lambda: endpoint.closed, what="the endpoint closed")
            round_trip(srv)
            assert srv.stats()["datagrams_out"] == 0
            receiver.settimeout(0.2)
            with pytest.raises(socket.timeout):
                receiver.recvfrom(100)
        finally:
            srv.stop(timeout=2.0)


def test_pause_and_resume_reading(server):
    srv = server(Collector())
    endpoint = srv.open_udp(0)
    endpoint.pause_reading()
    assert endpoint.reading_paused
    round_trip(srv)
    with udp_socket() as client:
        for i in range(5):
            client.sendto(pattern(i), endpoint.local_addr)
        time.sleep(0.2)
        round_trip(srv)
        assert srv.handler.datagrams() == [], "nothing is read while paused"
        endpoint.resume_reading()
        got = srv.handler.wait_datagrams(5)
    assert [data for data, _ in got] == [pattern(i) for i in range(5)]


def test_no_fd_leaks_over_many_endpoints(server):
    srv = server(Collector())
    round_trip(srv)
    before = open_fds()
    for _ in range(100):
        srv.open_udp(0).close()
    wait_until(lambda: srv.stats()["endpoints_open"] == 0, what="every endpoint closed")
    wait_fds_back_to(before)


# -- every core --------------------------------------------------------------------------
def test_endpoints_spread_over_two_reactors(server):
    srv = server(Collector(echo=True), reactors=2)
    endpoints = [srv.open_udp(0) for _ in range(4)]
    wait_until(lambda: srv.stats()["endpoints_open"] == 4, what="four endpoints")
    assert [r["endpoints_open"] for r in srv.stats()["reactors"]] == [2, 2]
    with udp_socket() as client:
        for i, endpoint in enumerate(endpoints):
            client.sendto(pattern(i), endpoint.local_addr)
        assert sorted(client.recvfrom(100)[0] for _ in endpoints) == [pattern(i) for i in range(4)]


def test_datagrams_are_delivered_on_a_worker(server):
    handler = Collector(echo=True)
    srv = server(handler, workers=2)
    endpoint = srv.open_udp(0)
    with udp_socket() as client:
        for i in range(30):
            client.sendto(pattern(i), endpoint.local_addr)
        echoed = sorted(client.recvfrom(100)[0] for _ in range(30))
    assert echoed == [pattern(i) for i in range(30)]
    assert [data for data, _ in handler.datagrams()] == [pattern(i) for i in range(30)]
    assert handler.threads and all(t.startswith("hamanet-worker-") for t in handler.threads)
    srv.stop(timeout=2.0)
    assert handler.closes == [(endpoint, None)]


def test_under_hamanet_aio(tmp_path):
    import asyncio

    import hamanet.aio

    async def main() -> list[bytes]:
        handler = Collector(echo=True)
        async with await hamanet.aio.serve(hamanet.Handler(), "127.0.0.1", 0) as srv:
            endpoint = srv.open_udp(0, handler=handler)
            loop = asyncio.get_running_loop()
            with udp_socket() as client:
                client.setblocking(False)
                for i in range(10):
                    client.sendto(pattern(i), endpoint.local_addr)
                got = [await asyncio.wait_for(loop.sock_recv(client, 100), WAIT) for _ in range(10)]
            assert handler.threads == {threading.current_thread().name}, "on the asyncio thread"
        return got

    assert asyncio.run(main()) == [pattern(i) for i in range(10)]
