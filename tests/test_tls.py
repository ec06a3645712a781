"""TLS in the core (issue 12): TLSServerContext / TLSClientContext, open(tls=),
connect(tls=) and connect_nowait(tls=), session.tls, close_notify both ways, truncation,
handshake failures and timeouts as TLSError / TimeoutError, bad context files, volume,
flow control over TLS, and real peers (Python's ssl, openssl s_client / s_server).

Every certificate is made at test time by trustme (see _tls_support.make_pki); every peer
is on loopback."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import queue
import select
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import hamanet
import pytest
from _tls_support import (
    Pki,
    SslServer,
    make_pki,
    silent_server,
    tls_connect,
)
from conftest import (
    WAIT,
    Echo,
    Recorder,
    connect,
    free_port,
    pattern,
    read_until_end,
    real_client,
    recv_exactly,
    wait_until,
)

MIB = 1 << 20

pytestmark = pytest.mark.timeout(60)


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls-pki"))


def server_context(pki: Pki, **options: Any) -> hamanet.TLSServerContext:
    return hamanet.TLSServerContext(pki.cert, pki.key, **options)


@pytest.fixture
def tls_serve(pki) -> Any:
    """``tls_serve(handler, context=None, host=..., **server_options)`` -> a started Server
    with one TLS listener on loopback (the pki's localhost certificate by default)."""
    servers: list[hamanet.Server] = []

    def start(
        handler: hamanet.Handler,
        context: hamanet.TLSServerContext | None = None,
        host: str = "127.0.0.1",
        **options: Any,
    ) -> hamanet.Server:
        server = hamanet.Server(handler, **options)
        servers.append(server)
        server.open(0, host=host, tls=context or server_context(pki))
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(timeout=2.0)


@pytest.fixture
def clients() -> Any:
    made: list[hamanet.Client] = []

    def make(handler: hamanet.Handler, **options: Any) -> hamanet.Client:
        client = hamanet.Client(handler, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop(timeout=2.0)


class TlsRecorder(Recorder):
    """A Recorder that also keeps what ``session.tls`` was inside on_connect."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__(echo)
        self.tls_at_connect: dict[int, Any] = {}

    def on_connect(self, session):
        with self.lock:
            self.tls_at_connect[session.id] = session.tls
        super().on_connect(session)


def failed_sessions(recorder: Recorder, count: int = 1) -> list[BaseException | None]:
    """The on_close exceptions of ``count`` sessions that closed without an on_connect
    (waits for them)."""

    def never_connected() -> list[int]:
        with recorder.lock:
            return [sid for sid in recorder.closes if sid not in recorder.sessions]

    wait_until(lambda: len(never_connected()) >= count, what=f"{count} failed session(s)")
    ids = never_connected()
    with recorder.lock:
        closes = [list(recorder.closes[sid]) for sid in ids]
    for sid in ids:
        assert recorder.kinds(sid) == ["close"], recorder.kinds(sid)
    assert all(len(exceptions) == 1 for exceptions in closes), closes
    return [exceptions[0] for exceptions in closes]


def session_at(recorder: Recorder, address: Any) -> hamanet.Session:
    """The recorded (connected) session whose peer is ``address`` (the client socket's
    own address): ids need not grow in connect order with several reactors."""
    wanted = tuple(address[:2])

    def find() -> hamanet.Session | None:
        with recorder.lock:
            sessions = list(recorder.sessions.values())
        return next((s for s in sessions if tuple(s.peer_addr[:2]) == wanted), None)

    return wait_until(find, what=f"the session of {wanted}")


def assert_tls_error(exc: BaseException | None, *reasons: str) -> hamanet.TLSError:
    assert isinstance(exc, hamanet.TLSError), repr(exc)
    assert isinstance(exc, OSError)
    assert exc.reason in reasons, (exc.reason, str(exc))
    return exc


def stat(endpoint: hamanet.Server | hamanet.Client, name: str) -> int:
    return endpoint.stats()[name]


def echo_check(sock: ssl.SSLSocket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def client_hello() -> bytes:
    """The bytes of a real ClientHello (from Python's ssl, on memory BIOs)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:8]
    return hello


# == 1. hamanet server, Python ssl client ======================================================
@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_echo_with_python_ssl_and_what_session_tls_says(tls_serve, pki, maximum):
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder, server_context(pki, alpn_protocols=["h2", "http/1.1"]))
    with tls_connect(
        server.port, pki.ca, alpn=["spdy/3", "http/1.1"], maximum_version=maximum
    ) as sock:
        payload = b"plaintext, " + pattern(3, 300_000)
        echo_check(sock, payload)
        (session,) = recorder.wait_sessions(1)
        assert recorder.received(session.id) == payload  # on_recv saw plaintext
        info = session.tls
        assert isinstance(info, hamanet.TLSInfo)
        assert info.version == sock.version() == maximum.name.replace("_", ".")
        if maximum is ssl.TLSVersion.TLSv1_3:
            assert info.cipher == sock.cipher()[0]  # OpenSSL uses the IANA names for 1.3
        else:
            assert info.cipher.startswith("TLS_ECDHE_ECDSA_WITH_"), info.cipher
        # The only protocol both offer; the server's choice, which the client sees too.
        assert info.alpn_protocol == sock.selected_alpn_protocol() == "http/1.1"
        assert info.server_name == "localhost"  # the SNI the client sent
        assert info.peer_certificate is None  # no client certificate without mTLS
        assert info.peer_certificates == []
        assert recorder.tls_at_connect[session.id] is not None
        assert recorder.tls_at_connect[session.id].alpn_protocol == "http/1.1"
        sock.unwrap()
    # The server's preference wins among protocols both offer.
    with tls_connect(server.port, pki.ca, alpn=["http/1.1", "h2"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        echo_check(sock, b"x")
        sock.unwrap()
    # No ALPN offered: none chosen, still served. Connected by IP: no SNI is sent, and
    # the certificate's IP address entry is what verifies.
    with tls_connect(server.port, pki.ca, server_hostname="127.0.0.1") as sock:
        echo_check(sock, b"by address")
        last = session_at(recorder, sock.getsockname())
        assert last.tls.alpn_protocol is None
        assert last.tls.server_name is None
        sock.unwrap()


def test_on_connect_follows_the_handshake_and_plain_sessions_have_no_tls(pki, clients):
    recorder = TlsRecorder(echo=True)
    with hamanet.Server(recorder) as server:
        _, plain_port = server.open(0)
        _, tls_port = server.open(0, tls=server_context(pki))
        server.start()
        with tls_connect(tls_port, pki.ca) as sock:
            echo_check(sock, b"tls")
            with connect(plain_port) as plain:
                plain.sendall(b"plain")
                assert recv_exactly(plain, 5) == b"plain"
                sessions = recorder.wait_sessions(2)
                by_tls = {s.tls is None: s for s in sessions}
                assert set(by_tls) == {True, False}
                tls_session, plain_session = by_tls[False], by_tls[True]
                # Already set inside on_connect: the handshake had finished.
                assert recorder.tls_at_connect[tls_session.id].version in ("TLSv1.2", "TLSv1.3")
                assert recorder.tls_at_connect[plain_session.id] is None
                assert recorder.received(plain_session.id) == b"plain"
            sock.unwrap()


def test_on_connect_can_write_a_large_buffer_and_close(tls_serve, pki):
    payload = pattern(11, 16 * MIB + 5)

    class Greeter(TlsRecorder):
        def on_connect(self, session):
            super().on_connect(session)
            session.write(payload)
            session.close()

    recorder = Greeter()
    server = tls_serve(recorder)
    with tls_connect(server.port, pki.ca) as sock:
        data, end = read_until_end(sock, limit=32 * MIB)
    # A clean end: close_notify came before the FIN (else SSLEOFError above).
    assert end == "eof"
    assert len(data) == len(payload) and data == payload
    (session,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(session.id) == [None]


# == 2. close_notify both ways, and truncation =================================================
def test_close_from_hamanet_sends_close_notify_after_buffered_data(tls_serve, pki):
    class LastWords(TlsRecorder):
        def on_recv(self, session, data):
            super().on_recv(session, data)
            if data.endswith(b"bye"):
                session.write(b"last words " + pattern(5, 2 * MIB))
                session.close()

    recorder = LastWords()
    server = tls_serve(recorder)
    with tls_connect(server.port, pki.ca) as sock:
        sock.sendall(b"bye")
        # suppress_ragged_eofs=False: a FIN without close_notify would raise SSLEOFError.
        data, end = read_until_end(sock, limit=4 * MIB)
        assert end == "eof"
        assert data == b"last words " + pattern(5, 2 * MIB)
        assert sock.recv(1) == b""
    (session,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(session.id) == [None]


def test_close_notify_from_the_client_is_eof(tls_serve, pki):
    recorder = TlsRecorder()
    server = tls_serve(recorder)
    payload = pattern(8, 200_000)
    with tls_connect(server.port, pki.ca) as sock:
        sock.sendall(payload)
        raw = sock.unwrap()  # sends close_notify and waits for the server's
        with raw:
            assert raw.recv(1) == b""  # then the server's FIN
    (session,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(session.id) == [None]
    assert recorder.received(session.id) == payload
    kinds = recorder.kinds(session.id)
    assert kinds[0] == "connect" and kinds[-2:] == ["eof", "close"], kinds


@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_fin_without_close_notify_is_truncated_after_the_data(tls_serve, pki, how):
    recorder = TlsRecorder()
    # No session tickets: the server sends nothing after its handshake, so closing the
    # client leaves no unread bytes behind it (which would make the kernel send RST).
    server = tls_serve(recorder, server_context(pki, session_tickets=0))
    payload = pattern(9, MIB + 3)
    sock = tls_connect(server.port, pki.ca)
    sock.sendall(payload)
    raw = socket.socket(fileno=sock.detach())  # the TCP socket, without TLS's goodbye
    try:
        if how == "shutdown":
            raw.shutdown(socket.SHUT_WR)
        else:
            raw.close()
        (session,) = recorder.wait_sessions(1)
        (exc,) = recorder.wait_closed(session.id)
    finally:
        raw.close()
    error = assert_tls_error(exc, "TRUNCATED")
    assert "close_notify" in str(error)
    assert recorder.received(session.id) == payload  # everything before it, delivered
    kinds = recorder.kinds(session.id)
    assert "eof" not in kinds and kinds[-1] == "close" and "recv" in kinds, kinds


# == 3. hamanet client =========================================================================
def test_hamanet_client_against_a_python_ssl_server(pki, clients):
    ssl_server = SslServer(pki.cert, pki.key, alpn=["http/1.1"])
    try:
        recorder = TlsRecorder()
        client = clients(recorder)
        context = hamanet.TLSClientContext(pki.ca, alpn_protocols=["h2", "http/1.1"])
        session = client.connect(
            "127.0.0.1", ssl_server.port, tls=context, server_hostname="localhost"
        )
        info = session.tls  # set when connect() returns: the handshake is done
        assert info.version == "TLSv1.3"
        assert info.alpn_protocol == "http/1.1"
        assert info.server_name == "localhost"
        assert info.peer_certificate == pki.server_der
        assert info.peer_certificates == [pki.server_der]
        payload = pattern(4, 3 * MIB + 1)
        session.write(payload)
        wait_until(lambda: len(recorder.received(session.id)) >= len(payload), what="echo")
        assert recorder.received(session.id) == payload
        assert recorder.tls_at_connect[session.id] is not None
        session.close()  # close_notify: the Python server's read ends cleanly and it unwraps
        assert recorder.wait_closed(session.id) == [None]
        wait_until(lambda: ssl_server.served, what="the Python server's record")
        assert ssl_server.snis == ["localhost"]
        assert ssl_server.served[0]["alpn"] == "http/1.1"
    finally:
        ssl_server.close()
    assert ssl_server.errors == []


def test_a_greeting_that_comes_with_the_handshake_reaches_a_hamanet_client(pki, clients):
    # TLS 1.2: the server's Finished is the handshake's last message. This server sends
    # its greeting in the same send as that Finished (through memory BIOs), so connect()
    # reads both while handshaking: the greeting waits decrypted inside rustls, and no
    # new edge will announce it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)
    errors: list[BaseException] = []

    def serve_one() -> None:
        try:
            raw, _ = listener.accept()
            with raw:
                raw.settimeout(WAIT)
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = context.wrap_bio(incoming, outgoing, server_side=True)
                for _ in range(10):  # a TLS 1.2 handshake takes two round trips
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())
                        incoming.write(raw.recv(65536))
                tls.write(b"220 hello\r\n")
                raw.sendall(outgoing.read())  # Finished and the greeting, in one send
                read_until_end(raw)  # until the client closes
        except BaseException as exc:  # the test looks at it
            errors.append(exc)

    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    try:
        recorder = TlsRecorder()
        client = clients(recorder)
        session = client.connect(
            "127.0.0.1",
            listener.getsockname()[1],
            tls=hamanet.TLSClientContext(pki.ca),
            server_hostname="localhost",
        )
        assert session.tls.version == "TLSv1.2"
        # Nothing is written: only the greeting itself can end this wait.
        wait_until(lambda: recorder.received(session.id) == b"220 hello\r\n", what="greeting")
        session.close()
        recorder.wait_closed(session.id)
    finally:
        server.join(WAIT)
        listener.close()
    assert errors == []


def test_hamanet_client_against_a_hamanet_server(tls_serve, pki, clients):
    server_recorder = TlsRecorder(echo=True)
    server = tls_serve(server_recorder, server_context(pki, alpn_protocols=["hamanet/1"]))
    recorder = TlsRecorder()
    client = clients(recorder)
    context = hamanet.TLSClientContext(pki.ca, alpn_protocols=["other", "hamanet/1"])
    session = client.connect("127.0.0.1", server.port, tls=context, server_hostname="localhost")
    assert session.tls.alpn_protocol == "hamanet/1"
    assert session.tls.peer_certificate == pki.server_der
    payload = pattern(6, 2 * MIB)
    session.write(payload)
    wait_until(lambda: len(recorder.received(session.id)) >= len(payload), what="echo")
    assert recorder.received(session.id) == payload
    (peer,) = server_recorder.wait_sessions(1)
    assert peer.tls.server_name == "localhost"
    assert peer.tls.alpn_protocol == "hamanet/1"
    assert peer.tls.peer_certificate is None
    assert server_recorder.received(peer.id) == payload
    session.close()
    assert recorder.wait_closed(session.id) == [None]
    assert server_recorder.wait_closed(peer.id) == [None]  # close_notify: a clean end
    assert "eof" in server_recorder.kinds(peer.id)


def test_hamanet_client_verifies_by_ip_address_by_default(tls_serve, pki, clients):
    server_recorder = TlsRecorder(echo=True)
    server = tls_serve(server_recorder)
    recorder = TlsRecorder()
    session = clients(recorder).connect(
        "127.0.0.1", server.port, tls=hamanet.TLSClientContext(pki.ca)
    )
    assert session.tls.server_name == "127.0.0.1"  # what the client checked
    session.write(b"ip")
    wait_until(lambda: recorder.received(session.id) == b"ip", what="echo")
    (peer,) = server_recorder.wait_sessions(1)
    assert peer.tls.server_name is None  # no SNI for an IP address
    session.close()
    assert recorder.wait_closed(session.id) == [None]


def test_tls_over_ipv6_loopback(tls_serve, pki, clients):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder, host="::1")
    with tls_connect(server.port, pki.ca, host="::1", server_hostname="::1") as sock:
        echo_check(sock, b"over v6")
        sock.unwrap()
    session = clients(TlsRecorder()).connect(
        "::1", server.port, tls=hamanet.TLSClientContext(pki.ca)
    )
    assert session.tls.peer_certificate == pki.server_der
    session.close()


def test_connect_nowait_with_tls(tls_serve, pki, clients):
    server = tls_serve(TlsRecorder(echo=True))
    recorder = TlsRecorder()
    client = clients(recorder)
    good = hamanet.TLSClientContext(pki.ca)
    session = client.connect_nowait("127.0.0.1", server.port, tls=good, server_hostname="localhost")
    session.write(b"written before the handshake finished")  # sent once it has
    wait_until(
        lambda: recorder.received(session.id) == b"written before the handshake finished",
        what="echo",
    )
    info = recorder.tls_at_connect[session.id]
    assert info is not None and info.peer_certificate == pki.server_der
    assert info.server_name == "localhost"
    assert recorder.kinds(session.id)[0] == "connect"

    # A refused handshake: on_close(session, TLSError) and never on_connect.
    stranger = hamanet.TLSClientContext(pki.other_ca)
    refused = client.connect_nowait(
        "127.0.0.1", server.port, tls=stranger, server_hostname="localhost"
    )
    (exc,) = recorder.wait_closed(refused.id)
    assert_tls_error(exc, "UNKNOWN_CA")
    wrong_name = client.connect_nowait(
        "127.0.0.1", server.port, tls=good, server_hostname="example.com"
    )
    (exc,) = recorder.wait_closed(wrong_name.id)
    assert_tls_error(exc, "HOSTNAME_MISMATCH")
    assert recorder.kinds(refused.id) == ["close"]
    assert recorder.kinds(wrong_name.id) == ["close"]
    # The good session is untouched.
    session.write(b"!")
    wait_until(lambda: recorder.received(session.id).endswith(b"!"), what="echo")
    session.close()
    assert recorder.wait_closed(session.id) == [None]


def test_server_connect_nowait_with_tls(tls_serve, pki):
    """A server opening an outbound TLS session on its own reactor (a proxy's upstream)."""
    upstream = tls_serve(TlsRecorder(echo=True))
    context = hamanet.TLSClientContext(pki.ca)
    recorder = TlsRecorder()
    proxy = tls_serve(recorder)
    out = proxy.connect_nowait("127.0.0.1", upstream.port, tls=context, server_hostname="localhost")
    out.write(b"via the server's reactor")
    wait_until(lambda: recorder.received(out.id) == b"via the server's reactor", what="echo")
    assert recorder.tls_at_connect[out.id].server_name == "localhost"
    assert recorder.tls_at_connect[out.id].peer_certificate == pki.server_der
    out.close()
    assert recorder.wait_closed(out.id) == [None]


# == 4. failures end only that session =========================================================
def _mtls(pki: Pki) -> hamanet.TLSServerContext:
    return server_context(pki, client_cafile=pki.ca)


# (server context, client options, the reasons the server may give)
SERVER_SIDE_FAILURES = {
    "unknown-ca": (server_context, {"cafile": "other_ca"}, ("PEER_ALERT",)),
    "wrong-host": (server_context, {"server_hostname": "example.com"}, ("PEER_ALERT",)),
    "no-common-version": (
        lambda pki: server_context(pki, minimum_version="TLSv1.3"),
        {"maximum_version": ssl.TLSVersion.TLSv1_2},
        ("NO_COMMON_PROTOCOL", "PEER_ALERT"),
    ),
    "no-common-alpn": (
        lambda pki: server_context(pki, alpn_protocols=["h2"]),
        {"alpn": ["spdy/3"]},
        ("NO_ALPN",),
    ),
    "mtls-without-cert": (_mtls, {}, ("PEER_CERT_REQUIRED",)),
    "mtls-cert-of-another-ca": (
        _mtls,
        {"certfile": "stranger_cert", "keyfile": "stranger_key"},
        ("UNKNOWN_CA",),
    ),
}


@pytest.mark.parametrize("case", list(SERVER_SIDE_FAILURES))
def test_a_refused_python_client_ends_only_its_session(tls_serve, pki, case):
    make_context, options, reasons = SERVER_SIDE_FAILURES[case]
    options = dict(options)
    for name in ("cafile", "certfile", "keyfile"):
        if name in options:
            options[name] = getattr(pki, options[name])
    cafile = options.pop("cafile", pki.ca)
    good: dict[str, Any] = {}  # what a client the server accepts offers
    if case.startswith("mtls"):
        good = {"certfile": pki.client_cert, "keyfile": pki.client_key}
    elif "alpn" in case:
        good = {"alpn": ["h2"]}
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder, make_context(pki))
    with tls_connect(server.port, pki.ca, **good) as healthy:
        echo_check(healthy, b"before")
        # TLS 1.3 clients learn of a refused client certificate after their handshake
        # (from the alert, or a reset if the server's close overtakes their write).
        with (
            pytest.raises(OSError) as caught,
            tls_connect(server.port, cafile, **options) as refused,
        ):
            refused.sendall(b"never delivered")
            refused.recv(1)
        if not case.startswith("mtls"):
            assert isinstance(caught.value, ssl.SSLError), repr(caught.value)
        (exc,) = failed_sessions(recorder)
        assert_tls_error(exc, *reasons)
        echo_check(healthy, b"after: still served")
        healthy.unwrap()
    wait_until(lambda: stat(server, "tls_failures") >= 1, what="tls_failures")
    # on_recv never saw the refused session's bytes.
    with recorder.lock:
        assert all(b"never delivered" not in bytes(data) for data in recorder.data.values())


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown-ca", "UNKNOWN_CA"),
        ("expired", "CERT_EXPIRED"),
        ("wrong-host", "HOSTNAME_MISMATCH"),
    ],
)
def test_hamanet_client_refuses_a_bad_server_certificate(tls_serve, pki, clients, case, expected):
    server_recorder = TlsRecorder(echo=True)
    if case == "expired":
        server = tls_serve(
            server_recorder, hamanet.TLSServerContext(pki.expired_cert, pki.expired_key)
        )
    else:
        server = tls_serve(server_recorder)
    cafile = pki.other_ca if case == "unknown-ca" else pki.ca
    name = "example.com" if case == "wrong-host" else "localhost"
    recorder = TlsRecorder()
    client = clients(recorder)
    with pytest.raises(hamanet.TLSError) as caught:
        client.connect(
            "127.0.0.1", server.port, tls=hamanet.TLSClientContext(cafile), server_hostname=name
        )
    error = assert_tls_error(caught.value, expected)
    assert "certificate" in str(error)
    if case == "wrong-host":
        assert "example.com" in str(error)
    # The server learns why from the client's alert.
    (exc,) = failed_sessions(server_recorder)
    assert_tls_error(exc, "PEER_ALERT")
    # No session was made on the client, so no callback runs for it.
    assert client.session_count == 0
    assert recorder.events == []
    # The client still connects where it should (to the expired certificate only when
    # told not to verify).
    context = (
        hamanet.TLSClientContext(insecure_skip_verify=True)
        if case == "expired"
        else hamanet.TLSClientContext(pki.ca)
    )
    good = client.connect("127.0.0.1", server.port, tls=context, server_hostname="localhost")
    assert good.tls.version == "TLSv1.3"
    good.close()
    assert recorder.wait_closed(good.id) == [None]


def test_hamanet_client_without_a_common_alpn_protocol(tls_serve, pki, clients):
    server_recorder = TlsRecorder()
    server = tls_serve(server_recorder, server_context(pki, alpn_protocols=["h2"]))
    client = clients(TlsRecorder())
    context = hamanet.TLSClientContext(pki.ca, alpn_protocols=["http/1.1"])
    with pytest.raises(hamanet.TLSError) as caught:
        client.connect("127.0.0.1", server.port, tls=context, server_hostname="localhost")
    assert_tls_error(caught.value, "PEER_ALERT", "NO_ALPN")
    (exc,) = failed_sessions(server_recorder)
    assert_tls_error(exc, "NO_ALPN")


def test_hamanet_client_needs_tls13_against_a_tls12_only_server(pki, clients):
    def only_tls12() -> SslServer:
        ssl_server = SslServer(pki.cert, pki.key)
        ssl_server.context.maximum_version = ssl.TLSVersion.TLSv1_2
        return ssl_server

    ssl_server = only_tls12()
    try:
        client = clients(TlsRecorder())
        strict = hamanet.TLSClientContext(pki.ca, minimum_version=ssl.TLSVersion.TLSv1_3)
        with pytest.raises(hamanet.TLSError) as caught:
            client.connect("127.0.0.1", ssl_server.port, tls=strict, server_hostname="localhost")
        assert_tls_error(caught.value, "PEER_ALERT", "NO_COMMON_PROTOCOL")
        relaxed = hamanet.TLSClientContext(pki.ca)  # TLSv1.2 by default
        session = client.connect(
            "127.0.0.1", ssl_server.port, tls=relaxed, server_hostname="localhost"
        )
        assert session.tls.version == "TLSv1.2"
        session.close()
    finally:
        ssl_server.close()


@pytest.mark.parametrize(
    "sent, reasons, says",
    [
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", ("NOT_TLS",), "plain HTTP"),
        (b"\x00\x01\x02 garbage garbage garbage", ("NOT_TLS",), "does not speak TLS"),
        # A handshake record header whose body is nonsense.
        (b"\x16\x03\x01\x00\x05" + b"\xff" * 5, ("PROTOCOL",), "TLS"),
    ],
    ids=["plain-http", "garbage", "corrupt-record"],
)
def test_a_peer_that_does_not_speak_tls(tls_serve, pki, sent, reasons, says):
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder)
    with tls_connect(server.port, pki.ca) as healthy:
        echo_check(healthy, b"before")
        with connect(server.port) as sock:
            sock.sendall(sent)
            answer, end = read_until_end(sock)  # an alert perhaps, then the end
            assert end in ("eof", "reset")
            assert answer == b"" or answer[:1] == b"\x15", answer  # only ever an alert
        (exc,) = failed_sessions(recorder)
        error = assert_tls_error(exc, *reasons)
        assert says in str(error), str(error)
        echo_check(healthy, b"after")
        healthy.unwrap()


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(tls_serve, pki, clients):
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder, server_context(pki, client_cafile=pki.ca))
    with tls_connect(server.port, pki.ca, certfile=pki.client_cert, keyfile=pki.client_key) as sock:
        echo_check(sock, b"with a certificate")
        (session,) = recorder.wait_sessions(1)
        assert session.tls.peer_certificate == pki.client_der
        assert session.tls.peer_certificates[0] == pki.client_der
        assert recorder.tls_at_connect[session.id].peer_certificate == pki.client_der
        sock.unwrap()
    # hamanet's client presents one too.
    context = hamanet.TLSClientContext(pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
    client_recorder = TlsRecorder()
    out = clients(client_recorder).connect(
        "127.0.0.1", server.port, tls=context, server_hostname="localhost"
    )
    out.write(b"hamanet with a certificate")
    wait_until(lambda: client_recorder.received(out.id) == b"hamanet with a certificate")
    assert session_at(recorder, out.local_addr).tls.peer_certificate == pki.client_der
    assert out.tls.peer_certificate == pki.server_der
    out.close()
    # A hamanet client without one is refused; the server names why.
    bare = hamanet.TLSClientContext(pki.ca)
    client = clients(TlsRecorder())
    # TLS 1.3: the client's handshake is done before the server has judged it, so the
    # refusal may come with connect() or after it, even before the write below.
    with contextlib.suppress(hamanet.TLSError, hamanet.SessionClosedError):
        late = client.connect("127.0.0.1", server.port, tls=bare, server_hostname="localhost")
        late.write(b"x")
    (exc,) = failed_sessions(recorder)
    assert_tls_error(exc, "PEER_CERT_REQUIRED")


def test_mutual_tls_with_an_optional_client_certificate(tls_serve, pki):
    recorder = TlsRecorder(echo=True)
    context = server_context(pki, client_cafile=pki.ca, client_cert_required=False)
    server = tls_serve(recorder, context)
    with tls_connect(server.port, pki.ca) as sock:
        echo_check(sock, b"anonymous")
        (session,) = recorder.wait_sessions(1)
        assert session.tls.peer_certificate is None
        sock.unwrap()
    with tls_connect(server.port, pki.ca, certfile=pki.client_cert, keyfile=pki.client_key) as sock:
        echo_check(sock, b"known")
        known = session_at(recorder, sock.getsockname())
        assert known.tls.peer_certificate == pki.client_der
        sock.unwrap()


# == 5. handshakes that stall ==================================================================
@pytest.mark.parametrize("sends", ["nothing", "half-a-client-hello"])
def test_a_stalled_handshake_times_out(tls_serve, pki, sends):
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder, server_context(pki, handshake_timeout=0.5))
    with connect(server.port) as sock:
        if sends != "nothing":
            hello = client_hello()
            sock.sendall(hello[: len(hello) // 2])
        _, end = read_until_end(sock)  # the server gives up: the stream ends
        assert end in ("eof", "reset")
    (exc,) = failed_sessions(recorder)
    assert isinstance(exc, TimeoutError), repr(exc)
    assert "handshake" in str(exc)
    # A session that never handshook never had on_connect.
    assert recorder.sessions == {}
    wait_until(lambda: stat(server, "tls_failures") >= 1, what="tls_failures")
    assert stat(server, "tls_handshakes") == 0


def test_hamanet_client_times_out_against_a_server_that_never_answers(pki, clients):
    recorder = TlsRecorder()
    client = clients(recorder)
    context = hamanet.TLSClientContext(pki.ca, handshake_timeout=0.3)
    with silent_server() as (port, received):
        with pytest.raises(TimeoutError) as caught:
            client.connect("127.0.0.1", port, tls=context, server_hostname="localhost")
        assert "handshake" in str(caught.value)
        wait_until(lambda: received, what="the ClientHello")
        assert received[0][:1] == b"\x16"  # a TLS handshake record
        # connect_nowait: the reactor's handshake timer ends it with on_close.
        session = client.connect_nowait("127.0.0.1", port, tls=context, server_hostname="localhost")
        (exc,) = recorder.wait_closed(session.id)
        assert isinstance(exc, TimeoutError), repr(exc)
        assert recorder.kinds(session.id) == ["close"]
    assert client.session_count == 0


def test_a_handshake_outlasting_the_connect_timeout_gets_its_own_deadline(pki, clients):
    # The connect's deadline (0.2 s) passes while the handshake (1 s of its own) waits:
    # only the handshake's deadline may end the session, and it says so.
    recorder = TlsRecorder()
    client = clients(recorder)
    context = hamanet.TLSClientContext(pki.ca, handshake_timeout=1.0)
    with silent_server() as (port, received):
        session = client.connect_nowait(
            "127.0.0.1", port, timeout=0.2, tls=context, server_hostname="localhost"
        )
        (exc,) = recorder.wait_closed(session.id)
        assert isinstance(exc, TimeoutError), repr(exc)
        assert "handshake" in str(exc), str(exc)
        wait_until(lambda: received, what="the ClientHello")  # it did connect
    assert client.session_count == 0


# == 6. contexts ===============================================================================
def test_bad_context_files_are_refused_by_name(pki, tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(FileNotFoundError) as caught:
        hamanet.TLSServerContext(missing, pki.key)
    assert caught.value.filename == missing or missing in str(caught.value)
    with pytest.raises(FileNotFoundError) as caught:
        hamanet.TLSServerContext(pki.cert, missing)
    assert missing in str(caught.value)
    with pytest.raises(FileNotFoundError):
        hamanet.TLSServerContext(pki.cert, pki.key, client_cafile=missing)
    with pytest.raises(FileNotFoundError):
        hamanet.TLSClientContext(missing)

    with pytest.raises(hamanet.TLSError) as caught:
        hamanet.TLSServerContext(pki.no_cert, pki.key)  # a key, no certificate
    assert caught.value.reason == "BAD_CERTIFICATE_FILE"
    assert pki.no_cert in str(caught.value)
    with pytest.raises(hamanet.TLSError) as caught:
        hamanet.TLSClientContext(pki.no_cert)  # no CA certificate in it either
    assert caught.value.reason == "BAD_CERTIFICATE_FILE"
    assert pki.no_cert in str(caught.value)

    with pytest.raises(hamanet.TLSError) as caught:
        hamanet.TLSServerContext(pki.cert, pki.other_key)
    assert caught.value.reason == "KEY_MISMATCH"
    assert pki.other_key in str(caught.value) and pki.cert in str(caught.value)
    with pytest.raises(hamanet.TLSError) as caught:
        hamanet.TLSClientContext(pki.ca, certfile=pki.client_cert, keyfile=pki.other_key)
    assert caught.value.reason == "KEY_MISMATCH"

    with pytest.raises(hamanet.TLSError) as caught:
        hamanet.TLSServerContext(pki.cert, pki.ca)  # a certificate where the key goes
    assert caught.value.reason == "BAD_KEY_FILE"
    assert pki.ca in str(caught.value)


def test_context_arguments_are_checked(pki, clients):
    for bad in ("h2", b"h2"):
        with pytest.raises(TypeError, match="list"):
            hamanet.TLSServerContext(pki.cert, pki.key, alpn_protocols=bad)
        with pytest.raises(TypeError):
            hamanet.TLSClientContext(pki.ca, alpn_protocols=bad)
    with pytest.raises(ValueError):
        hamanet.TLSServerContext(pki.cert, pki.key, alpn_protocols=[""])
    for old in ("TLSv1.1", ssl.TLSVersion.TLSv1_1, "tls1.3"):
        with pytest.raises(ValueError, match="TLSv1.2"):
            hamanet.TLSServerContext(pki.cert, pki.key, minimum_version=old)
    hamanet.TLSServerContext(pki.cert, pki.key, minimum_version=ssl.TLSVersion.TLSv1_3)
    hamanet.TLSClientContext(pki.ca, minimum_version="TLSv1.3")
    with pytest.raises(ValueError, match="keyfile"):
        hamanet.TLSClientContext(pki.ca, certfile=pki.client_cert)
    with pytest.raises(TypeError):
        hamanet.TLSServerContext(None, pki.key)

    client = clients(TlsRecorder())
    with pytest.raises(TypeError, match=r"ssl\.SSLContext"):
        client.connect("127.0.0.1", 1, tls=ssl.create_default_context())
    with pytest.raises(TypeError, match=r"ssl\.SSLContext"):
        client.connect_nowait("127.0.0.1", 1, tls=ssl.create_default_context())
    with pytest.raises(ValueError, match="tls="):
        client.connect("127.0.0.1", 1, server_hostname="localhost")
    with pytest.raises(TypeError):  # a server context is not a client's
        client.connect("127.0.0.1", 1, tls=hamanet.TLSServerContext(pki.cert, pki.key))
    with hamanet.Server(TlsRecorder()) as server:
        with pytest.raises(TypeError, match=r"ssl\.SSLContext"):
            server.open(0, tls=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        with pytest.raises(TypeError):
            server.open(0, tls=hamanet.TLSClientContext(pki.ca))
    assert issubclass(hamanet.TLSError, OSError)
    assert "TLSv1.2" in repr(hamanet.TLSServerContext(pki.cert, pki.key))


# == 7. volume, concurrency and flow control ===================================================
def stream_through(sock: ssl.SSLSocket, total: int, deadline: float) -> tuple[str, str]:
    """Sends ``total`` bytes through ``sock`` while reading as much back, on one thread
    (a non-blocking SSLSocket driven by select: OpenSSL objects are not for concurrent
    use from two threads). Returns the sha256 of what was sent and of what came back."""
    blocks = [os.urandom(MIB) for _ in range(3)]
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    sock.setblocking(False)
    sent = received = 0
    pending = memoryview(b"")
    index = 0
    while received < total:
        if time.monotonic() > deadline:
            raise AssertionError(f"streaming stalled: sent {sent}, received {received}")
        want_write = False
        if not pending and sent < total:
            block = blocks[index % len(blocks)][: min(256 * 1024, total - sent)]
            index += 1
            sent_hash.update(block)
            sent += len(block)
            pending = memoryview(block)
        if pending:
            try:
                pending = pending[sock.send(pending) :]
            except ssl.SSLWantWriteError:
                want_write = True
            except ssl.SSLWantReadError:
                pass
        for _ in range(64):
            try:
                data = sock.recv(MIB)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                raise AssertionError(f"EOF after {received} of {total} bytes")
            received_hash.update(data)
            received += len(data)
        if received < total and (want_write or (sent >= total and not pending)):
            select.select([sock], [sock] if want_write else [], [], 0.2)
    sock.setblocking(True)
    sock.settimeout(WAIT)
    return sent_hash.hexdigest(), received_hash.hexdigest()


@pytest.mark.timeout(90)
def test_100_mib_echo_with_python_ssl(tls_serve, pki):
    class CountingEcho(hamanet.Handler):
        def __init__(self) -> None:
            self.bytes = 0

        def on_recv(self, session, data):
            self.bytes += len(data)
            session.write(data)

    handler = CountingEcho()
    server = tls_serve(handler)
    total = 100 * MIB
    with tls_connect(server.port, pki.ca) as sock:
        sent, received = stream_through(sock, total, time.monotonic() + 60)
        assert sent == received
        sock.unwrap()
    assert handler.bytes == total
    stats = server.stats()
    assert stats["bytes_in"] >= total and stats["bytes_out"] >= total


@pytest.mark.timeout(90)
def test_100_mib_from_a_hamanet_client_to_a_hamanet_server(tls_serve, pki, clients):
    """Both ends hamanet: the client keeps up to 2 MiB of plaintext buffered (refilled as
    the echo comes back and at on_resume_writing), the server echoes, and every byte is
    checked by sha256 on the way back."""
    total = 100 * MIB
    blocks = [os.urandom(MIB) for _ in range(3)]
    done = threading.Event()

    class Producer(hamanet.Handler):
        def __init__(self) -> None:
            self.sent = 0
            self.sent_hash = hashlib.sha256()
            self.received = 0
            self.received_hash = hashlib.sha256()

        def fill(self, session):
            while self.sent < total and session.write_buffer_size < 2 * MIB:
                chunk = blocks[(self.sent // MIB) % 3][: total - self.sent]
                self.sent += len(chunk)
                self.sent_hash.update(chunk)
                session.write(chunk)

        def on_connect(self, session):
            session.set_write_buffer_limits(high=MIB, low=256 * 1024)
            self.fill(session)

        def on_resume_writing(self, session):
            self.fill(session)

        def on_recv(self, session, data):
            self.received += len(data)
            self.received_hash.update(data)
            self.fill(session)
            if self.received >= total:
                done.set()

    server = tls_serve(Echo())
    producer = Producer()
    client = clients(producer)
    session = client.connect(
        "127.0.0.1", server.port, tls=hamanet.TLSClientContext(pki.ca), server_hostname="localhost"
    )
    progress, seen = time.monotonic(), -1
    deadline = time.monotonic() + 60
    while not done.wait(0.05):  # bounded: fails after 5 s without progress, or 60 s
        if producer.received != seen:
            progress, seen = time.monotonic(), producer.received
        now = time.monotonic()
        assert now - progress < 5 and now < deadline, (
            f"stalled: sent {producer.sent}, echoed {producer.received} of {total}, "
            f"buffered {session.write_buffer_size}"
        )
    assert producer.received == total
    assert producer.received_hash.hexdigest() == producer.sent_hash.hexdigest()
    session.close()


def test_64_concurrent_handshakes(tls_serve, pki):
    server = tls_serve(TlsRecorder(echo=True))
    count = 64
    barrier = threading.Barrier(count, timeout=WAIT)

    def one(index: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        barrier.wait()  # every TCP connection is up: the handshakes overlap
        context = ssl.create_default_context(cafile=pki.ca)
        with context.wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ) as sock:
            payload = pattern(index, 4096 + index)
            sock.sendall(payload)
            echoed = recv_exactly(sock, len(payload))
            sock.unwrap()
            return echoed == payload

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count), timeout=30))
    assert results == [True] * count
    wait_until(lambda: stat(server, "tls_handshakes") >= count, what="tls_handshakes")
    assert stat(server, "tls_handshakes") == count
    assert stat(server, "tls_failures") == 0


def test_pause_and_resume_reading_deliver_everything(tls_serve, pki):
    """The handler pauses reading at every delivery and resumes a little later; the
    client sends 4 MiB and its close_notify at once, which wait (some inside rustls,
    decrypted already) while reading is paused: all of it, then on_eof, must come."""

    class Pausing(TlsRecorder):
        server: hamanet.Server

        def __init__(self) -> None:
            super().__init__()
            self.pauses = 0

        def on_recv(self, session, data):
            super().on_recv(session, data)
            self.pauses += 1
            session.pause_reading()
            self.server.call_later(0.005, session.resume_reading, session=session)

    handler = Pausing()
    server = tls_serve(handler)
    handler.server = server
    payload = pattern(12, 4 * MIB + 7)
    with tls_connect(server.port, pki.ca) as sock:
        sock.sendall(payload)
        raw = sock.unwrap()  # close_notify, then waits for the server's
        raw.close()
    (session,) = handler.wait_sessions(1)
    assert handler.wait_closed(session.id) == [None]
    assert handler.received(session.id) == payload
    assert handler.pauses >= 2
    assert handler.kinds(session.id)[-2:] == ["eof", "close"]


def test_pause_reading_during_the_handshake_holds_the_first_data(tls_serve, pki):
    """pause_reading() in on_connect: nothing is delivered until resume_reading()."""

    class PauseAtConnect(TlsRecorder):
        def on_connect(self, session):
            super().on_connect(session)
            session.pause_reading()

    recorder = PauseAtConnect(echo=True)
    server = tls_serve(recorder)
    with tls_connect(server.port, pki.ca) as sock:
        sock.sendall(b"held back")
        (session,) = recorder.wait_sessions(1)
        assert session.reading_paused
        server.call_soon_threadsafe(session.resume_reading, session=session)
        assert recorder_wait(recorder, session.id, b"held back")
        assert recv_exactly(sock, 9) == b"held back"
        sock.unwrap()


def recorder_wait(recorder: Recorder, sid: int, expected: bytes) -> bool:
    wait_until(lambda: recorder.received(sid) == expected, what=f"{expected!r}")
    return True


def test_write_buffer_watermarks_count_plaintext(tls_serve, pki):
    high, low = 256 * 1024, 64 * 1024
    total = 8 * MIB
    payload = pattern(13, total)

    class Flood(TlsRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: dict[str, int] = {}

        def on_connect(self, session):
            super().on_connect(session)
            session.set_write_buffer_limits(high=high, low=low)
            session.write(payload)

        def on_pause_writing(self, session):
            self.sizes["pause"] = session.write_buffer_size
            self._add("pause", session)

        def on_resume_writing(self, session):
            self.sizes["resume"] = session.write_buffer_size
            self._add("resume", session)

    recorder = Flood()
    server = tls_serve(recorder, send_buffer=64 * 1024)
    with tls_connect(server.port, pki.ca, rcvbuf=64 * 1024) as sock:
        (session,) = recorder.wait_sessions(1)
        # The client reads nothing yet: the buffer stays above the high watermark.
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        assert high < recorder.sizes["pause"] <= total  # plaintext bytes, not ciphertext
        assert "resume" not in recorder.kinds(session.id)
        assert recv_exactly(sock, total) == payload
        wait_until(lambda: "resume" in recorder.kinds(session.id), what="on_resume_writing")
        assert recorder.sizes["resume"] <= low
        wait_until(lambda: session.write_buffer_size == 0, what="an empty buffer")
        kinds = recorder.kinds(session.id)
        assert kinds.index("pause") < kinds.index("resume")
        sock.unwrap()


@pytest.mark.parametrize("transport", ["tls", "plain"])
def test_on_send_fires_once_a_slow_peer_has_taken_everything(tls_serve, serve, pki, transport):
    """on_send's promise ("everything written so far has been handed to the kernel") over
    TLS, beside plain TCP as the control: the server writes 4 MiB to peers that read
    nothing at first, then read it all. The server's send buffer is tiny (SO_SNDBUF 4 KiB),
    so over TLS the last plaintext moves into rustls (64 KiB at a time) while the socket
    is full, and its last ciphertext goes out on a later EPOLLOUT: on_send must follow
    that, as it does on plain TCP."""
    total, peers = 4 * MIB, 2
    payload = pattern(14, total)

    class Writer(TlsRecorder):
        def on_connect(self, session):
            super().on_connect(session)
            session.write(payload)

        def on_pause_writing(self, session):
            self._add("pause", session)

    recorder = Writer()
    if transport == "tls":
        server = tls_serve(recorder, send_buffer=4096)
        connect_peer = lambda: tls_connect(server.port, pki.ca, rcvbuf=64 * 1024)  # noqa: E731
    else:
        server = serve(recorder, send_buffer=4096)

        def connect_peer() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(WAIT)
            sock.connect(("127.0.0.1", server.port))
            return sock

    def one_peer(index: int) -> None:
        with connect_peer() as sock:
            session = session_at(recorder, sock.getsockname())
            wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
            assert "send" not in recorder.kinds(session.id)  # the peer has read nothing
            assert recv_exactly(sock, total) == payload
            wait_until(lambda: session.write_buffer_size == 0, what="an empty write buffer")
            wait_until(
                lambda: "send" in recorder.kinds(session.id),
                timeout=3.0,
                what=f"on_send of peer {index} after it read all {total} bytes",
            )
            session.close()
            data, end = read_until_end(sock)
            assert (data, end) == (b"", "eof")

    for index in range(peers):
        one_peer(index)


def test_tls_on_a_unix_socket(pki, tmp_path):
    recorder = TlsRecorder(echo=True)
    path = str(tmp_path / "tls.sock")
    with hamanet.Server(recorder) as server:
        server.open_unix(path, tls=server_context(pki))
        server.start()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(WAIT)
        raw.connect(path)
        context = ssl.create_default_context(cafile=pki.ca)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            echo_check(sock, b"over a unix socket")
            (session,) = recorder.wait_sessions(1)
            assert session.tls.server_name == "localhost"
            sock.unwrap()


# == 8. real clients and servers: openssl ======================================================
class CloseAfterLine(TlsRecorder):
    """Echoes, and closes once a whole line has come."""

    def on_recv(self, session, data):
        super().on_recv(session, data)
        session.write(data)
        if self.received(session.id).endswith(b"\n"):
            session.close()


def test_openssl_s_client_against_a_hamanet_echo(tls_serve, pki):
    openssl = real_client("openssl", "openssl")
    recorder = CloseAfterLine()
    server = tls_serve(recorder, server_context(pki, alpn_protocols=["h2", "http/1.1"]))
    args = [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-CAfile", pki.ca]
    args += ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof"]
    line = b"hello from openssl s_client\n"
    # -ign_eof: s_client keeps reading after its input ends, until the server's close.
    run = subprocess.run(args, input=line, capture_output=True, timeout=30)
    out = run.stdout.decode(errors="replace")
    assert run.returncode == 0, out + run.stderr.decode(errors="replace")
    assert line.decode() in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert "ALPN protocol: http/1.1" in out, out
    (session,) = recorder.wait_sessions(1)
    assert recorder.received(session.id) == line
    assert session.tls.alpn_protocol == "http/1.1"
    assert session.tls.server_name == "localhost"
    assert recorder.wait_closed(session.id) == [None]


class OpensslServer:
    """``openssl s_server`` on a free loopback port, ready once it printed ACCEPT."""

    def __init__(self, openssl: str, pki: Pki, *mode: str) -> None:
        self.port = free_port()
        args = [openssl, "s_server", "-cert", pki.cert, "-key", pki.key]
        args += ["-accept", f"127.0.0.1:{self.port}", "-naccept", "1", *mode]
        self.popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.output: list[bytes] = []
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"openssl s_server did not start: {b''.join(self.output)!r}")
            if line.startswith(b"ACCEPT"):
                return

    def _pump(self) -> None:
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(WAIT)
        self.reader.join(WAIT)
        self.popen.stdout.close()


def test_hamanet_client_against_openssl_s_server_rev(pki, clients):
    openssl = real_client("openssl", "openssl")
    peer = OpensslServer(openssl, pki, "-rev", "-alpn", "http/1.1")
    try:
        recorder = TlsRecorder()
        client = clients(recorder)
        context = hamanet.TLSClientContext(pki.ca, alpn_protocols=["h2", "http/1.1"])
        session = client.connect("127.0.0.1", peer.port, tls=context, server_hostname="localhost")
        assert session.tls.alpn_protocol == "http/1.1"
        assert session.tls.peer_certificate == pki.server_der
        session.write(b"hello hamanet\n")
        wait_until(lambda: b"\n" in recorder.received(session.id), what="s_server's reversed line")
        assert recorder.received(session.id).strip() == b"tenamah olleh"
        session.close()
        assert recorder.wait_closed(session.id) == [None]
        assert peer.popen.wait(WAIT) == 0
    finally:
        peer.kill()


def test_hamanet_client_against_openssl_s_server_www(pki, clients):
    openssl = real_client("openssl", "openssl")
    peer = OpensslServer(openssl, pki, "-www")
    try:
        recorder = TlsRecorder()
        client = clients(recorder)
        context = hamanet.TLSClientContext(pki.ca)
        session = client.connect("127.0.0.1", peer.port, tls=context, server_hostname="localhost")
        session.write(b"GET / HTTP/1.0\r\n\r\n")
        # s_server answers with a page about the session, then ends it with close_notify.
        (exc,) = recorder.wait_closed(session.id)
        page = recorder.received(session.id)
        assert page.startswith(b"HTTP/1.0 200 ok"), page[:200]
        assert b"TLSv1.3" in page, page
        assert exc is None, repr(exc)
    finally:
        peer.kill()


# == 9. counters ===============================================================================
def test_stats_count_tls_handshakes_and_failures(tls_serve, pki, clients):
    recorder = TlsRecorder(echo=True)
    server = tls_serve(recorder)
    assert stat(server, "tls_handshakes") == 0 and stat(server, "tls_failures") == 0
    for _ in range(3):
        with tls_connect(server.port, pki.ca) as sock:
            echo_check(sock, b"ok")
            sock.unwrap()
    wait_until(lambda: stat(server, "tls_handshakes") == 3, what="3 handshakes")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(server.port, pki.other_ca)
    failed_sessions(recorder)
    wait_until(lambda: stat(server, "tls_failures") == 1, what="1 failure")
    assert stat(server, "tls_handshakes") == 3
    # The client's side counts too.
    client = clients(TlsRecorder())
    session = client.connect(
        "127.0.0.1", server.port, tls=hamanet.TLSClientContext(pki.ca), server_hostname="localhost"
    )
    session.close()
    wait_until(lambda: stat(server, "tls_handshakes") == 4, what="4 handshakes")
    wait_until(lambda: stat(client, "tls_handshakes") == 1, what="the client's handshake")
