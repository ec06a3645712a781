"""The example servers with ``--tls CERT KEY`` (issue 12), run as programs and spoken to by
clients nobody here wrote: Python's ssl module, openssl s_client, redis-cli and
redis-benchmark, curl and wrk (in CI, with CI set, a missing client fails its test instead
of skipping it). The certificates are made at test time by trustme: a CA that only these
tests trust, and a certificate for ``localhost`` that it signed."""

from __future__ import annotations

import functools
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import http_server
import pytest
import redis_server
import trustme
from _tls_support import tls_connect
from conftest import (
    EXAMPLES,
    WAIT,
    Proc,
    connect,
    free_port,
    pattern,
    read_until_end,
    real_client,
    recv_exactly,
    rss_bytes,
)
from protocols.http import BODY

MIB = 1 << 20

pytestmark = pytest.mark.timeout(60)


# -- certificates and programs ----------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: str  # the root's certificate: what the clients trust
    cert: str  # the server's chain, leaf first (PEM)
    key: str  # the leaf's private key (PEM)


def make_pki(
    directory: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA, intermediate=False
) -> Pki:
    """A CA and a certificate for localhost, as files in ``directory``. With
    ``intermediate`` the leaf is signed by an intermediate CA, which only the server's
    chain file holds: a client verifies it only if the server sends the whole chain."""
    root = trustme.CA(key_type=key_type)
    issuer = root.create_child_ca(key_type=key_type) if intermediate else root
    leaf = issuer.issue_cert("localhost", key_type=key_type)
    pki = Pki(*(str(directory / name) for name in ("ca.pem", "chain.pem", "key.pem")))
    root.cert_pem.write_to_path(pki.ca)
    Path(pki.cert).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(pki.key)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_tls(procs, script: str, pki: Pki, *options: str) -> tuple[Proc, int, str]:
    """Runs ``examples/<script> PORT --tls CERT KEY`` on a free port until its banner:
    the process, the port and the banner line."""
    port = free_port()
    proc = procs(str(EXAMPLES / script), str(port), *options, "--tls", pki.cert, pki.key)
    banner = script.split("_")[0] + ": listening"
    return proc, port, proc.wait_line(banner)


def assert_still_serving(proc: Proc) -> None:
    assert proc.popen.poll() is None, "".join(proc.stderr)
    assert "Traceback" not in "".join(proc.stderr), "".join(proc.stderr)


def echo_over(sock: socket.socket, payload: bytes, chunk: int = 64 * 1024) -> bytes:
    """Sends ``payload`` a chunk at a time, reading each chunk's echo before the next (one
    thread: an SSLSocket is not for concurrent reads and writes)."""
    echoed = bytearray()
    for start in range(0, len(payload), chunk):
        piece = payload[start : start + chunk]
        sock.sendall(piece)
        echoed += recv_exactly(sock, len(piece))
    return bytes(echoed)


def read_from(stream, size: int, timeout: float = WAIT) -> bytes:
    """Up to ``size`` bytes from a subprocess's pipe, whatever has come within ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([stream], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(stream.fileno(), size - len(data))
            if not chunk:
                break
            data += chunk
    return data


# -- echo_server.py --tls -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key_type, intermediate, version",
    [
        (trustme.KeyType.ECDSA, False, ssl.TLSVersion.TLSv1_3),
        (trustme.KeyType.RSA, False, ssl.TLSVersion.TLSv1_3),
        (trustme.KeyType.ECDSA, True, ssl.TLSVersion.TLSv1_3),
        (trustme.KeyType.ECDSA, False, ssl.TLSVersion.TLSv1_2),
        (trustme.KeyType.RSA, False, ssl.TLSVersion.TLSv1_2),
    ],
    ids=["ecdsa", "rsa", "ecdsa-intermediate", "ecdsa-tls1.2", "rsa-tls1.2"],
)
def test_echo_over_tls_with_python_ssl(procs, tmp_path, key_type, intermediate, version):
    pki = make_pki(tmp_path, key_type, intermediate)
    proc, port, line = start_tls(procs, "echo_server.py", pki)
    assert line.strip() == f"echo: listening on 127.0.0.1:{port} (TLS)", line
    with tls_connect(port, pki.ca, version=version) as sock:
        assert sock.version() == version.name.replace("_", "."), sock.version()
        for size in (1, 4096, 3 * MIB + 17):
            payload = pattern(size % 251, size)
            assert echo_over(sock, payload) == payload, size
        # A clean end both ways: our close_notify makes the server close, and its
        # close_notify comes back before its FIN (unwrap raises otherwise).
        raw = sock.unwrap()
        raw.settimeout(WAIT)
        assert raw.recv(1) == b""
    assert_still_serving(proc)


def test_echo_over_tls_with_openssl_s_client(procs, pki):
    openssl = real_client("openssl", "openssl")
    proc, port, _ = start_tls(procs, "echo_server.py", pki)
    args = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca]
    args += ["-servername", "localhost", "-verify_return_error", "-brief"]
    client = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = b"hello over TLS\n"
        client.stdin.write(line)
        client.stdin.flush()
        echoed = read_from(client.stdout, len(line))
        client.stdin.close()  # s_client sends close_notify and exits
        code = client.wait(timeout=WAIT)
        err = read_from(client.stderr, 1 << 16, timeout=1.0).decode(errors="replace")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(WAIT)
        client.stdout.close()
        client.stderr.close()
    assert echoed == line, err
    assert code == 0, err
    assert "Verification: OK" in err, err
    assert re.search(r"Protocol version: TLSv1\.[23]", err), err
    assert_still_serving(proc)


def test_echo_server_refuses_a_client_that_does_not_trust_it_and_serves_the_next(
    procs, pki, tmp_path
):
    proc, port, _ = start_tls(procs, "echo_server.py", pki)
    stranger = make_pki(tmp_path)  # another CA: the server's certificate is not its own
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(port, stranger.ca)
    with pytest.raises(ssl.SSLCertVerificationError):  # the name is checked too
        tls_connect(port, pki.ca, server_hostname="not-localhost")
    with tls_connect(port, pki.ca) as sock:
        assert echo_over(sock, b"still here") == b"still here"
    assert_still_serving(proc)


def test_echo_server_over_tls_stops_on_sigterm_with_close_notify(procs, pki):
    proc, port, _ = start_tls(procs, "echo_server.py", pki)
    with tls_connect(port, pki.ca) as sock:
        assert echo_over(sock, b"ping") == b"ping"
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, "".join(proc.stderr)
        # stop() closed the session: close_notify, then FIN (SSLEOFError without it).
        assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)


class TlsHog:
    """A TLS peer that sends as much as the server lets it and never reads a byte. Its
    thread blocks in sendall once the server stops reading it; killing the server ends it."""

    def __init__(self, port: int, cafile: str, limit: int, deadline: float) -> None:
        self.sock = tls_connect(port, cafile)
        self.limit, self.deadline = limit, deadline
        self.sent = 0
        self.progress = time.monotonic()  # when the last chunk went out
        self.error: OSError | None = None  # a send that failed while the server was up
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = b"h" * (64 * 1024)
        try:
            while self.sent < self.limit and time.monotonic() < self.deadline:
                self.sock.sendall(chunk)
                self.sent += len(chunk)
                self.progress = time.monotonic()
        except OSError as exc:
            self.error = exc

    def stalled(self) -> bool:
        return time.monotonic() - self.progress >= 0.5


@pytest.mark.timeout(60)
def test_echo_over_tls_pushes_back_on_peers_that_never_read(procs, pki):
    """As test_example_echo's push-back test, over TLS: the watermarks see plaintext, and
    what TLS adds (records, ciphertext waiting for the socket) stays bounded too."""
    proc, port, _ = start_tls(procs, "echo_server.py", pki)
    pid = proc.popen.pid
    with tls_connect(port, pki.ca) as sock:  # warm up: the arena, a session, a handshake
        assert echo_over(sock, pattern(1, MIB)) == pattern(1, MIB)
    baseline = peak = rss_bytes(pid)
    peers, per_peer = 8, 32 * MIB
    deadline = time.monotonic() + 15.0
    hogs = [TlsHog(port, pki.ca, per_peer, deadline) for _ in range(peers)]
    while time.monotonic() < deadline:  # until every hog is stuck or done (or the deadline)
        peak = max(peak, rss_bytes(pid))
        if all(h.sent >= per_peer or h.stalled() for h in hogs):
            break
        time.sleep(0.02)
    peak = max(peak, rss_bytes(pid))
    assert not [h.error for h in hogs if h.error], [h.error for h in hogs]
    growth = peak - baseline
    sent = sum(h.sent for h in hogs)
    assert growth < 32 * MIB, f"RSS grew {growth / MIB:.1f} MiB; peers sent {sent / MIB:.1f} MiB"
    assert all(h.sent < per_peer for h in hogs), [h.sent // MIB for h in hogs]
    with tls_connect(port, pki.ca) as sock:  # others are still served, byte-exact
        payload = pattern(7, 4 * MIB + 3)
        assert echo_over(sock, payload) == payload
    assert_still_serving(proc)
    proc.kill()  # ends the hogs' blocked sends
    for hog in hogs:
        hog.thread.join(WAIT)
        hog.sock.close()


# -- redis_server.py --tls ----------------------------------------------------------------------
@functools.cache
def redis_tool(name: str) -> str:
    """redis-cli or redis-benchmark, which must have been built with TLS (Redis 6 and
    later, as Debian's are); the same rule as a missing client: skip, but fail in CI."""
    path = real_client(name, "redis-tools")
    usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    if "--tls" not in usage.stdout + usage.stderr:
        missing = f"{name} was built without TLS support (no --tls in its --help)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the real-client tests", pytrace=False)
        pytest.skip(missing)
    return path


def redis_cli(port: int, pki: Pki, *args: str, stdin: str | None = None) -> str:
    command = [redis_tool("redis-cli"), "-h", "127.0.0.1", "-p", str(port)]
    command += ["--tls", "--cacert", pki.ca, "--sni", "localhost", *args]
    proc = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Could not connect" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


def test_redis_over_tls_with_redis_cli(procs, pki):
    proc, port, line = start_tls(procs, "redis_server.py", pki)
    assert line.strip() == f"redis: listening on 127.0.0.1:{port} (TLS)", line
    assert redis_cli(port, pki, "PING") == "PONG\n"
    assert redis_cli(port, pki, "SET", "greeting", "hello over TLS") == "OK\n"
    assert redis_cli(port, pki, "GET", "greeting") == "hello over TLS\n"
    # Several commands on one connection, and a value of many TLS records.
    assert redis_cli(port, pki, stdin="set x 10\nincr x\nget x\n") == "OK\n11\n11\n"
    big = "0123456789abcdef" * (MIB // 16)
    assert redis_cli(port, pki, "-x", "SET", "big", stdin=big) == "OK\n"
    assert redis_cli(port, pki, "GET", "big") == big + "\n"
    assert_still_serving(proc)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pipeline", [None, 16])
def test_redis_over_tls_with_redis_benchmark(procs, pki, pipeline):
    proc, port, _ = start_tls(procs, "redis_server.py", pki)
    args = [redis_tool("redis-benchmark"), "-h", "127.0.0.1", "-p", str(port)]
    args += ["--tls", "--cacert", pki.ca, "--sni", "localhost"]
    args += ["-t", "set,get", "-n", "2000", "-c", "10", "-q"]
    if pipeline:
        args += ["-P", str(pipeline)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    found = dict(re.findall(r"(SET|GET): ([\d.]+) requests per second", out))
    assert set(found) == {"SET", "GET"}, out
    assert all(float(v) > 0 for v in found.values()), out
    assert "rror" not in out and "Could not fetch" not in out, out
    # The SETs were stored: redis-benchmark's key (no -r) with its 3-byte value.
    assert len(redis_cli(port, pki, "GET", "key:__rand_int__")) == 3 + 1
    assert_still_serving(proc)


# -- http_server.py --tls -----------------------------------------------------------------------
def https_get(port: int, pki: Pki, alpn: list[str] | None = None) -> tuple[bytes, str | None]:
    """One ``GET /`` with ``Connection: close`` over TLS: the whole response (up to the
    server's close_notify) and the protocol ALPN chose."""
    with tls_connect(port, pki.ca, alpn=alpn) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data, end = read_until_end(sock)
        assert end == "eof", end
        return data, sock.selected_alpn_protocol()


def test_https_with_python_ssl_and_alpn(procs, pki):
    proc, port, line = start_tls(procs, "http_server.py", pki)
    assert line.strip() == f"http: listening on https://127.0.0.1:{port}/", line
    data, alpn = https_get(port, pki, alpn=["h2", "http/1.1"])
    assert alpn == "http/1.1"
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + BODY), data
    data, alpn = https_get(port, pki)  # a client that offers no ALPN is served too
    assert alpn is None
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + BODY), data
    assert_still_serving(proc)


def test_https_with_curl(procs, pki):
    curl = real_client("curl", "curl")
    proc, port, _ = start_tls(procs, "http_server.py", pki)
    base = f"https://localhost:{port}"
    # Two requests on one connection: the second reuses it (num_connects 0).
    report = r"\n%{http_code} %{http_version} %{ssl_verify_result} %{num_connects}\n"
    args = [curl, "-sS", "--max-time", "10", "--cacert", pki.ca, "-w", report]
    args += ["--resolve", f"localhost:{port}:127.0.0.1", f"{base}/", f"{base}/x"]
    run = subprocess.run(args, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout == BODY + b"\n200 1.1 0 1\n" + b"Not Found\n" + b"\n404 1.1 0 0\n"
    assert_still_serving(proc)


@pytest.mark.timeout(60)
def test_https_with_wrk(procs, pki):
    wrk = real_client("wrk", "wrk")
    proc, port, _ = start_tls(procs, "http_server.py", pki)
    run = subprocess.run(
        [wrk, "-t1", "-c4", "-d1s", f"https://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    match = re.search(r"(\d+) requests in", output)
    assert match and int(match.group(1)) > 0, output
    assert_still_serving(proc)


@pytest.mark.timeout(60)
def test_https_closes_connections_that_never_finish_the_handshake(procs, pki):
    """The head and keep-alive deadlines start with a session (on_connect), after the
    handshake; before it, the TLS handshake timeout (10 s by default) ends clients that
    connect and send nothing, or half a ClientHello. A TLS client is served meanwhile."""
    proc, port, _ = start_tls(procs, "http_server.py", pki)
    start = time.monotonic()
    silent = [connect(port) for _ in range(20)]
    partial = [connect(port) for _ in range(20)]
    try:
        for sock in partial:  # a record header announcing 512 bytes, then 6 of them
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        data, _ = https_get(port, pki)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
        for sock in silent + partial:
            sock.settimeout(10.0 + WAIT)
            data, _ = read_until_end(sock)
            assert not data or data[:1] == b"\x15", data
        elapsed = time.monotonic() - start
        assert elapsed < 10.0 + 5.0, elapsed
    finally:
        for sock in silent + partial:
            sock.close()
    assert_still_serving(proc)


# -- plaintext sent to a TLS port ---------------------------------------------------------------
@pytest.mark.parametrize(
    "script, request_, answer",
    [
        ("echo_server.py", b"hello in plaintext\n", b"hello in plaintext\n"),
        ("redis_server.py", b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
        ("http_server.py", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
    ],
    ids=["echo", "redis", "http"],
)
def test_plaintext_to_a_tls_port_gets_no_answer_and_the_server_stays_up(
    procs, pki, script, request_, answer
):
    """A plaintext client is not served: the handshake fails on its first bytes and the
    server ends the connection (with a TLS alert at most); a TLS client is served next."""
    proc, port, _ = start_tls(procs, script, pki)
    with connect(port) as sock:
        sock.sendall(request_)
        data, _ = read_until_end(sock)  # EOF or reset: either ends it; WAIT bounds it
    assert answer not in data, data
    assert not data or data[:1] == b"\x15", data  # nothing, or a TLS record of type alert
    with tls_connect(port, pki.ca) as sock:
        sock.sendall(request_)
        assert recv_exactly(sock, len(answer)) == answer
    assert_still_serving(proc)


# -- the option itself --------------------------------------------------------------------------
def test_tls_option_parses_and_defaults_to_off():
    for module in (http_server, redis_server):
        assert module.parse_args([]).tls is None
        assert module.parse_args(["--tls", "c.pem", "k.pem"]).tls == ["c.pem", "k.pem"]
        with pytest.raises(SystemExit):
            module.parse_args(["--tls", "c.pem"])


def test_echo_server_tls_option_takes_two_files(procs):
    proc = procs(str(EXAMPLES / "echo_server.py"), str(free_port()), "--tls", "only-one.pem")
    assert proc.wait() == 2
    assert "--tls: expected 2 arguments" in "".join(proc.stderr), proc.stderr


@pytest.mark.parametrize("broken", ["missing cert", "key of another certificate"])
def test_echo_server_with_unusable_tls_files_exits_with_an_error(procs, pki, tmp_path, broken):
    """A certificate that cannot be served stops the program at once, with an error
    (not a listener whose every handshake fails)."""
    if broken == "missing cert":
        cert, key = str(tmp_path / "no-such-cert.pem"), pki.key
    else:
        cert, key = pki.cert, make_pki(tmp_path).key
    proc = procs(str(EXAMPLES / "echo_server.py"), str(free_port()), "--tls", cert, key)
    code = proc.wait()
    stderr = "".join(proc.stderr)
    assert code != 0, stderr
    assert not proc.stdout, proc.stdout  # it never said it was listening
    if broken == "missing cert":
        assert "no-such-cert.pem" in stderr, stderr
