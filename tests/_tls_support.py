"""Certificates made at test time (trustme) and small TLS peers written with Python's ssl
module, for tests/test_tls.py. No key is ever checked in: every file is written under a
pytest tmp directory when the session's fixture first asks for it."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trustme

WAIT = 10.0


@dataclass(frozen=True)
class Pki:
    """Paths of PEM files. ``ca`` signed ``cert`` (localhost, 127.0.0.1, ::1), ``expired``
    and ``client``; ``other_ca`` signed ``stranger`` (localhost too), which a client trusting
    only ``ca`` refuses. ``no_cert`` holds only a key; ``other_key`` belongs to nothing here."""

    ca: str
    cert: str
    key: str
    expired_cert: str
    expired_key: str
    other_ca: str
    stranger_cert: str
    stranger_key: str
    client_cert: str
    client_key: str
    client_der: bytes  # the client certificate, DER: what session.tls.peer_certificate holds
    server_der: bytes
    no_cert: str
    other_key: str


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    stranger = other.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@hamanet.test", common_name="hamanet test client")

    def write(name: str, blob: trustme.Blob | bytes) -> str:
        path = directory / name
        path.write_bytes(blob if isinstance(blob, bytes) else blob.bytes())
        return str(path)

    def chain(leaf: trustme.LeafCert) -> bytes:
        return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)

    return Pki(
        ca=write("ca.pem", ca.cert_pem),
        cert=write("server.pem", chain(server)),
        key=write("server.key", server.private_key_pem),
        expired_cert=write("expired.pem", chain(expired)),
        expired_key=write("expired.key", expired.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        stranger_cert=write("stranger.pem", chain(stranger)),
        stranger_key=write("stranger.key", stranger.private_key_pem),
        client_cert=write("client.pem", chain(client)),
        client_key=write("client.key", client.private_key_pem),
        client_der=ssl.PEM_cert_to_DER_cert(client.cert_chain_pems[0].bytes().decode()),
        server_der=ssl.PEM_cert_to_DER_cert(server.cert_chain_pems[0].bytes().decode()),
        no_cert=write("no-cert.pem", server.private_key_pem),
        other_key=write("other.key", stranger.private_key_pem),
    )


def client_context(
    cafile: str,
    *,
    alpn: list[str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying Python ssl client context; ``version`` pins both ends of the range."""
    context = ssl.create_default_context(cafile=cafile)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(alpn)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


def tls_connect(
    port: int,
    cafile: str,
    *,
    server_hostname: str = "localhost",
    host: str = "127.0.0.1",
    timeout: float = WAIT,
    rcvbuf: int | None = None,
    **options,
) -> ssl.SSLSocket:
    """A blocking Python ssl client, handshake done. ``suppress_ragged_eofs=False``: a
    stream that ends without close_notify raises SSLEOFError instead of reading b''.
    ``rcvbuf`` sets SO_RCVBUF before connecting (a small window: a peer that does not
    read holds little in the kernel)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((host, port))
    except BaseException:
        raw.close()
        raise
    try:
        return client_context(cafile, **options).wrap_socket(
            raw, server_hostname=server_hostname, suppress_ragged_eofs=False
        )
    except BaseException:
        raw.close()
        raise


class SslServer:
    """A Python ssl server on a thread: accepts connections one at a time and runs
    ``serve(sslsocket)`` for each (an echo by default). Records handshake errors."""

    def __init__(
        self,
        certfile: str,
        keyfile: str,
        *,
        alpn: list[str] | None = None,
        serve: Callable[[ssl.SSLSocket], None] | None = None,
    ) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        if alpn:
            self.context.set_alpn_protocols(alpn)
        self.snis: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _context: self.snis.append(name)
        self.serve = serve or echo_until_eof
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.served: list[dict] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            raw.settimeout(WAIT)
            try:
                with self.context.wrap_socket(raw, server_side=True) as sock:
                    self.served.append(
                        {
                            "version": sock.version(),
                            "alpn": sock.selected_alpn_protocol(),
                        }
                    )
                    self.serve(sock)
            except Exception as exc:  # recorded for the test to look at
                self.errors.append(exc)
            finally:
                raw.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(WAIT)
        self.listener.close()


def echo_until_eof(sock: ssl.SSLSocket) -> None:
    """Echoes until the client's close_notify (or EOF), then answers with close_notify."""
    for _ in range(100_000):
        try:
            data = sock.recv(1 << 16)
        except ssl.SSLZeroReturnError:
            data = b""
        if not data:
            break
        sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.unwrap()


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, list[bytes]]]:
    """A plain TCP server that accepts and reads but never answers (a TLS server whose
    handshake never comes). Yields its port and what it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    received: list[bytes] = []
    conns: list[socket.socket] = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conns.append(conn)
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    break
                if not data:
                    break
                received.append(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(WAIT)
        for conn in conns:
            conn.close()
        listener.close()
