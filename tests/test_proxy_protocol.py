"""The PROXY protocol (HAProxy's, v1 and v2) on listeners opened with
``proxy_protocol=True``: the header read before anything else, its addresses as the
session's, its TLVs readable; a connection without a valid header (missing, malformed,
oversized, late, cut short) closed before any callback; TLS behind the header; several
reactors and a worker pool; and a real HAProxy in front of two backends, one of which is
killed mid-run (that part skips without haproxy, except in CI, where it must run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hamanet
import pytest
from _tls_support import client_context, make_pki
from conftest import (
    EXAMPLES,
    WAIT,
    Recorder,
    connect,
    free_port,
    recv_exactly,
    wait_until,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
ALPN, AUTHORITY, CRC32C, NOOP, UNIQUE_ID = 0x01, 0x02, 0x03, 0x04, 0x05

# What a header says the client's connection was (documentation addresses).
CLIENT4, FRONT4 = ("203.0.113.7", 40001), ("198.51.100.1", 443)
CLIENT6, FRONT6 = ("2001:db8::7", 40002), ("2001:db8::1", 8443)


def v1(client=CLIENT4, front=FRONT4, proto="TCP4") -> bytes:
    return f"PROXY {proto} {client[0]} {front[0]} {client[1]} {front[1]}\r\n".encode()


def v2(command=0x1, family=0x11, addresses=b"", tlvs=(), length=None) -> bytes:
    body = addresses + b"".join(struct.pack("!BH", t, len(v)) + v for t, v in tlvs)
    size = len(body) if length is None else length
    return SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", size) + body


def v2_inet(client=CLIENT4, front=FRONT4, tlvs=()) -> bytes:
    if ":" in client[0]:
        packed = socket.inet_pton(socket.AF_INET6, client[0])
        packed += socket.inet_pton(socket.AF_INET6, front[0])
        family = 0x21
    else:
        packed = socket.inet_aton(client[0]) + socket.inet_aton(front[0])
        family = 0x11
    return v2(family=family, addresses=packed + struct.pack("!HH", client[1], front[1]), tlvs=tlvs)


@pytest.fixture
def proxied() -> Iterator[Any]:
    """``proxied(handler, open=dict(...), **options)`` -> a started Server whose listener
    (127.0.0.1, a free port) expects the PROXY header."""
    servers: list[hamanet.Server] = []

    def start(handler, open: dict | None = None, **options) -> hamanet.Server:
        server = hamanet.Server(handler, **options)
        server.open(0, proxy_protocol=True, **(open or {}))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2.0)


def echoed(server: hamanet.Server, header: bytes, payload: bytes = b"hello") -> tuple[Any, ...]:
    """Sends ``header + payload`` in one segment; returns (the session, the client's own
    address), once the payload has come back intact."""
    with connect(server.port) as sock:
        sock.sendall(header + payload)
        assert recv_exactly(sock, len(payload)) == payload
        return sock.getsockname()


def only_session(recorder: Recorder) -> hamanet.Session:
    (session,) = recorder.wait_sessions(1)
    return session


# -- the header's addresses become the session's -------------------------------------------


def test_v1_tcp4_gives_the_client_address(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    real = echoed(server, v1())
    session = only_session(recorder)
    assert session.peer_addr == CLIENT4
    assert session.local_addr == FRONT4
    assert session.proxy_addr == real  # the proxy: the connection's real peer
    assert session.proxy_tlvs == {}


def test_v1_tcp6_gives_the_client_address(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    echoed(server, v1(CLIENT6, FRONT6, "TCP6"))
    session = only_session(recorder)
    assert session.peer_addr[:2] == CLIENT6
    assert session.local_addr[:2] == FRONT6


def test_v1_unknown_keeps_the_connections_addresses(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    real = echoed(server, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    session = only_session(recorder)
    assert session.peer_addr == real == session.proxy_addr
    assert session.local_addr == ("127.0.0.1", server.port)


@pytest.mark.parametrize(
    ("client", "front"), [(CLIENT4, FRONT4), (CLIENT6, FRONT6)], ids=["tcp4", "tcp6"]
)
def test_v2_inet_gives_the_client_address(proxied, client, front):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    real = echoed(server, v2_inet(client, front))
    session = only_session(recorder)
    assert session.peer_addr[:2] == client
    assert session.local_addr[:2] == front
    assert session.proxy_addr == real


@pytest.mark.parametrize(
    "header",
    [
        v2(command=0x0, family=0x00),
        v2(command=0x0, family=0x11, addresses=bytes(12)),
        v2(command=0x1, family=0x00),
    ],
    ids=["local", "local-with-addresses", "unspec"],
)
def test_v2_local_and_unspec_keep_the_connections_addresses(proxied, header):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    real = echoed(server, header)
    session = only_session(recorder)
    assert session.peer_addr == real == session.proxy_addr
    assert session.local_addr == ("127.0.0.1", server.port)


def test_v2_tlvs_are_readable(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    tlvs = [(ALPN, b"h2"), (NOOP, b"\0\0"), (AUTHORITY, b"example.com"), (UNIQUE_ID, b"id-1")]
    echoed(server, v2_inet(tlvs=tlvs))
    session = only_session(recorder)
    assert session.peer_addr == CLIENT4
    assert session.proxy_tlvs == {ALPN: b"h2", AUTHORITY: b"example.com", UNIQUE_ID: b"id-1"}


def test_a_session_not_behind_a_proxy_has_no_proxy_facts(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder)
    echoed(server, b"")
    session = only_session(recorder)
    assert session.proxy_addr is None
    assert session.proxy_tlvs is None


def test_a_plain_listener_treats_a_proxy_line_as_data(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder)
    line = v1()
    with connect(server.port) as sock:
        sock.sendall(line)
        assert recv_exactly(sock, len(line)) == line
    assert only_session(recorder).peer_addr[0] == "127.0.0.1"


# -- what follows the header is the session's, however it arrives -------------------------


@pytest.mark.parametrize(
    "header", [v1(), v2_inet(tlvs=[(AUTHORITY, b"a.example")])], ids=["v1", "v2"]
)
def test_a_header_in_pieces_then_data(proxied, header):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(header) - 1, 7):
            sock.sendall(header[at : min(at + 7, len(header) - 1)])
            time.sleep(0.002)  # separate segments, most likely: each is peeked alone
        assert recorder.sessions == {}  # no session while the header is not whole
        sock.sendall(header[-1:] + b"after")
        assert recv_exactly(sock, 5) == b"after"
    assert only_session(recorder).peer_addr == CLIENT4
    wait_until(lambda: server.stats()["bytes_in"] >= len(header) + 5, what="bytes_in")


def test_data_in_the_same_segment_as_the_header_is_delivered_intact(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    payload = bytes(range(256)) * 1024  # 256 KiB, its start in the header's segment
    with connect(server.port) as sock:
        sock.sendall(v2_inet() + payload)
        assert recv_exactly(sock, len(payload)) == payload
    session = only_session(recorder)
    assert recorder.received(session.id) == payload


def test_a_header_then_eof_opens_and_closes_the_session(proxied):
    recorder = Recorder()
    server = proxied(recorder)
    with connect(server.port) as sock:
        sock.sendall(v1())
        sock.shutdown(socket.SHUT_WR)
        session = only_session(recorder)
        assert session.peer_addr == CLIENT4
        session.close()
        assert sock.recv(10) == b""
    assert server.stats()["proxy_refused"] == 0


# -- no valid header: closed, and the handler never hears of it ---------------------------

BAD_HEADERS = {
    "missing": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-first": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    "v1-lf-only": b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\n",
    "v1-bad-address": b"PROXY TCP4 203.0.113.700 198.51.100.1 40001 443\r\n",
    "v1-bad-port": b"PROXY TCP4 203.0.113.7 198.51.100.1 65536 443\r\n",
    "v1-leading-junk": b" PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
    "v1-oversized": b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",
    "v2-bad-version": v2_inet().replace(b"QUIT\n\x21", b"QUIT\n\x11"),
    "v2-bad-command": v2_inet().replace(b"QUIT\n\x21", b"QUIT\n\x2f"),
    "v2-bad-family": v2(family=0x41, addresses=bytes(12)),
    "v2-udp": v2(family=0x12, addresses=bytes(12)),
    "v2-short-addresses": v2(family=0x21, addresses=bytes(12)),
    "v2-tlv-overrun": v2(family=0x11, addresses=bytes(12) + b"\x01\x00\x09h2"),
    "v2-bad-crc": v2(family=0x11, addresses=bytes(12), tlvs=[(CRC32C, b"\0\0\0\1")]),
    "v2-oversized": v2(length=5000) + bytes(5000),
}


@pytest.mark.parametrize("bad", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_a_bad_header_closes_before_any_callback(proxied, bad, caplog):
    recorder = Recorder(echo=True)
    server = proxied(recorder)
    caplog.set_level(logging.WARNING, logger="hamanet")
    with connect(server.port) as sock:
        sock.sendall(bad)
        assert sock.recv(100) == b""  # FIN: the refused input was read away, not reset
    wait_until(lambda: server.stats()["proxy_refused"] == 1, what="the refusal counted")
    assert recorder.events == []
    wait_until(lambda: "closed before it became a session" in caplog.text, what="the log")
    # A good client is served as ever.
    echoed(server, v1())
    assert only_session(recorder).peer_addr == CLIENT4


def test_a_client_that_sends_nothing_is_closed_at_the_deadline(proxied, caplog):
    recorder = Recorder(echo=True)
    server = proxied(recorder, open={"proxy_timeout": 0.2})
    caplog.set_level(logging.WARNING, logger="hamanet")
    with connect(server.port) as silent, connect(server.port) as partial:
        partial.sendall(v1()[:20])
        assert silent.recv(10) == b""
        assert partial.recv(10) == b""
    wait_until(lambda: server.stats()["proxy_refused"] == 2, what="both refusals counted")
    assert recorder.events == []
    late = "no complete PROXY protocol header within 0.2s"
    wait_until(lambda: late in caplog.text, what="the log")


def test_eof_in_the_middle_of_a_header_closes(proxied):
    recorder = Recorder()
    server = proxied(recorder)  # the default deadline, 5 s: the EOF must not wait for it
    with connect(server.port) as sock:
        sock.sendall(v2_inet()[:20])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    wait_until(lambda: server.stats()["proxy_refused"] == 1, what="the refusal counted")
    assert recorder.events == []


def test_proxy_timeout_is_checked():
    with hamanet.Server(Recorder()) as server:
        with pytest.raises(ValueError, match="proxy_protocol=True"):
            server.open(0, proxy_timeout=1.0)
        with pytest.raises(ValueError, match="proxy_timeout"):
            server.open(0, proxy_protocol=True, proxy_timeout=0)
        with pytest.raises(TypeError):
            server.open(0, proxy_protocol=True, proxy_timeout="soon")


def test_connections_awaiting_a_header_count_against_max_connections(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder, max_connections=1)
    with connect(server.port) as first:
        wait_until(lambda: server.stats()["accepted"] == 1, what="the first accepted")
        with connect(server.port) as second:
            second.sendall(v1())
            assert second.recv(10) == b""  # refused by the limit
        # stats() is published at the end of the reactor's turn, after the FIN went out
        wait_until(lambda: server.stats()["refused_by_limit"] == 1, what="the refusal counted")
        first.sendall(v1() + b"ok")
        assert recv_exactly(first, 2) == b"ok"


def test_a_thousand_silent_connections_do_not_keep_others_waiting(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder, open={"proxy_timeout": 1.0})
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(connect(server.port)) for _ in range(1000)]
        wait_until(lambda: server.stats()["accepted"] == 1000, what="1000 accepted")
        echoed(server, v1())  # served while they wait
        for sock in silent:
            assert sock.recv(10) == b""  # closed at their deadline
    wait_until(lambda: server.stats()["proxy_refused"] == 1000, what="1000 refusals")
    assert len(recorder.sessions) == 1


def test_stop_closes_connections_awaiting_a_header(proxied):
    recorder = Recorder()
    server = proxied(recorder)
    with connect(server.port) as sock:
        wait_until(lambda: server.stats()["accepted"] == 1, what="accepted")
        server.stop(timeout=2.0)
        assert sock.recv(10) == b""
    assert recorder.events == []


def test_refused_and_served_connections_leave_no_descriptor_behind(proxied):
    recorder = Recorder(echo=True)
    server = proxied(recorder, open={"proxy_timeout": 0.1})

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    echoed(server, v1())  # the first session: whatever it allocates once is there now
    baseline = descriptors()
    for _ in range(50):
        with connect(server.port) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # refused at once
            assert sock.recv(10) == b""
        with connect(server.port) as sock:
            sock.sendall(v1() + b"x")  # served, then closed by the client
            assert recv_exactly(sock, 1) == b"x"
    with contextlib.ExitStack() as stack:
        late = [stack.enter_context(connect(server.port)) for _ in range(50)]
        for sock in late:
            sock.sendall(v2_inet()[:10])  # refused at the deadline
        for sock in late:
            assert sock.recv(10) == b""
    wait_until(lambda: server.stats()["proxy_refused"] == 100, what="100 refusals")
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="the sessions closed")
    wait_until(lambda: descriptors() <= baseline, what="the descriptors back to the baseline")


# -- other listeners: Unix, an adopted socket, TLS; several reactors, a pool --------------


def test_a_unix_listener_behind_a_proxy():
    recorder = Recorder(echo=True)
    with tempfile.TemporaryDirectory() as directory, hamanet.Server(recorder) as server:
        path = os.path.join(directory, "proxied.sock")
        server.open_unix(path, proxy_protocol=True)
        server.start()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
            sock.sendall(v1() + b"unix")
            assert recv_exactly(sock, 4) == b"unix"
        session = only_session(recorder)
        assert session.peer_addr == CLIENT4
        assert session.proxy_addr == ""  # the proxy's unnamed Unix socket


def test_an_adopted_socket_behind_a_proxy():
    recorder = Recorder(echo=True)
    with socket.socket() as listening, hamanet.Server(recorder) as server:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        server.open_socket(listening, proxy_protocol=True)
        server.start()
        with connect(listening.getsockname()[1]) as sock:
            sock.sendall(v2_inet() + b"adopted")
            assert recv_exactly(sock, 7) == b"adopted"
        assert only_session(recorder).peer_addr == CLIENT4


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("proxy-pki"))


@pytest.mark.parametrize(
    "header", [v1(), v2_inet(tlvs=[(AUTHORITY, b"localhost")])], ids=["v1", "v2"]
)
def test_tls_behind_the_header(proxied, pki, header):
    recorder = Recorder(echo=True)
    tls = hamanet.TLSServerContext(pki.cert, pki.key)
    server = proxied(recorder, open={"tls": tls})

    # The header goes first on the bare connection, then the ClientHello (as HAProxy
    # sends them), in one call each.
    with connect(server.port) as raw:
        raw.sendall(header)
        context = client_context(pki.ca)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"secret")
            assert recv_exactly(sock, 6) == b"secret"
    session = only_session(recorder)
    assert session.peer_addr == CLIENT4
    assert session.tls is not None
    assert server.stats()["tls_handshakes"] == 1


@pytest.mark.parametrize(
    "options",
    [{"reactors": 2}, {"workers": 2}, {"reactors": 2, "workers": 2}],
    ids=["reactors", "workers", "both"],
)
def test_many_sessions_on_several_reactors_and_a_pool(proxied, options):
    recorder = Recorder(echo=True)
    server = proxied(recorder, **options)
    clients = [(f"192.0.2.{n}", 30000 + n) for n in range(1, 21)]
    for n, client in enumerate(clients):
        header = v1(client) if n % 2 else v2_inet(client)
        with connect(server.port) as sock:
            sock.sendall(header + b"%d" % n)
            assert recv_exactly(sock, len(b"%d" % n)) == b"%d" % n
    sessions = recorder.wait_sessions(len(clients))
    assert sorted(s.peer_addr for s in sessions) == sorted(clients)
    for session in sessions:
        n = clients.index(session.peer_addr)
        assert recorder.received(session.id) == b"%d" % n


def test_asyncio_delivery_behind_a_proxy():
    from hamanet import aio

    seen: list[Any] = []

    class Echo(hamanet.Handler):
        async def on_connect(self, session):
            seen.append((session.peer_addr, session.proxy_tlvs))

        def on_recv(self, session, data):
            session.write(data)

    async def main() -> None:
        server = await aio.serve(Echo(), "127.0.0.1", 0, proxy_protocol=True)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(v2_inet(tlvs=[(ALPN, b"h2")]) + b"aio")
            assert await asyncio.wait_for(reader.readexactly(3), WAIT) == b"aio"
            writer.close()

    asyncio.run(main())
    assert seen == [(CLIENT4, {ALPN: b"h2"})]


# -- behind a real HAProxy -----------------------------------------------------------------


def haproxy_path() -> str:
    """HAProxy (Debian installs it in /usr/sbin, often not on a user's PATH); the test
    skips without it, except in CI (CI set), where a missing one fails it."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        missing = "haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the HAProxy tests", pytrace=False)
        pytest.skip(missing)
    return path


HAPROXY_CONFIG = """
global
    maxconn 512
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    # Checks every 100 ms (fall 2: a slow machine's one late answer does not take a live
    # backend out), each given a second.
    timeout check 1s
    # A connection refused by a dead backend is retried on the other one, even before
    # the health check has marked it down.
    retries 3
    option redispatch 1
frontend v1
    bind 127.0.0.1:{front_v1}
    default_backend v1
frontend v2
    bind 127.0.0.1:{front_v2}
    default_backend v2
backend v1
    balance roundrobin
    default-server send-proxy check check-send-proxy inter 100ms fall 2 rise 1
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
backend v2
    balance roundrobin
    default-server send-proxy-v2 check check-send-proxy inter 100ms fall 2 rise 1
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
"""


class Backend:
    """``examples/proxy_echo.py`` in its own process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.popen = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "proxy_echo.py"), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.popen.stdout is not None
        banner = self.popen.stdout.readline()  # printed once it listens
        assert banner.startswith("proxy_echo: listening"), banner

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(WAIT)


@pytest.fixture
def haproxy_pair(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """HAProxy on two frontends (send-proxy, send-proxy-v2) in front of the same two
    hamanet backends."""
    path = haproxy_path()
    ports = {name: free_port() for name in ("front_v1", "front_v2", "a", "b")}
    backends = []
    haproxy = None
    try:
        backends = [Backend(ports["a"]), Backend(ports["b"])]
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(**ports))
        haproxy = subprocess.Popen(
            [path, "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for front in ("front_v1", "front_v2"):
            wait_until(lambda front=front: _answers(ports[front]), what=f"HAProxy's {front}")
        yield {"ports": ports, "backends": backends, "haproxy": haproxy}
    finally:
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(WAIT)
        for backend in backends:
            backend.kill()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        return through(port, b"ping")[1] == b"ping"
    return False


def through(port: int, payload: bytes) -> tuple[tuple[str, int], bytes, tuple[str, int]]:
    """One connection through HAProxy: (the address the backend saw, the echo, our own)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        host, port_text = reader.readline().decode().split()
        echo = reader.read(len(payload))
        return (host, int(port_text)), echo, sock.getsockname()


@pytest.mark.parametrize("front", ["front_v1", "front_v2"], ids=["send-proxy", "send-proxy-v2"])
def test_clients_through_haproxy_see_their_own_addresses(haproxy_pair, front):
    port = haproxy_pair["ports"][front]
    for n in range(20):
        payload = os.urandom(1 + n * 1000)
        seen, echo, own = through(port, payload)
        assert seen == own
        assert echo == payload


def test_haproxy_routes_around_a_killed_backend(haproxy_pair):
    """A load through both frontends; one backend is SIGKILLed between two connections.
    A connection in flight on a killed backend is lost whatever the balancer does, so the
    kill falls between connections: every new connection must then succeed, which
    ``retries`` with ``option redispatch 1`` ensures even before the health check has
    marked the dead backend down."""
    ports = haproxy_pair["ports"]
    failures: list[BaseException] = []
    done = 0
    for n in range(120):
        if n == 40:
            haproxy_pair["backends"][0].kill()
        port = ports["front_v1" if n % 2 else "front_v2"]
        payload = b"%d:" % n + os.urandom(64)
        try:
            seen, echo, own = through(port, payload)
        except (OSError, ValueError) as exc:  # ValueError: the backend's line never came
            failures.append(exc)
            continue
        assert (seen, echo) == (own, payload)
        done += 1
    assert failures == []
    assert done == 120
    # Both frontends still answer, from the backend that is left.
    assert _answers(ports["front_v1"]) and _answers(ports["front_v2"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
