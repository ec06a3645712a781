"""The HTTP example's static files (``examples/http_server.py --root DIR``, the router
``StaticFiles`` and ``HttpConnection.feed_parts`` in examples/protocols/http.py): GET and
HEAD of files sent with session.sendfile, Content-Type and Content-Length, ``/`` and
directories as their index.html, 404 for what is missing or not a regular file and for
every way out of the root (``..`` raw or percent-encoded, ``//``, absolute-form targets,
symbolic links that lead out), pipelined requests answered in order, keep-alive and
``Connection: close``. Clients: raw sockets, and curl (required in CI, with CI set), over
TCP and TLS, against the handler in this process and the example as a program.

Every file is written under the test's tmp_path; every peer is on loopback."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import hamanet
import http_server
import pytest
from _tls_support import make_pki
from conftest import (
    EXAMPLES,
    connect,
    free_port,
    open_fds,
    pattern,
    real_client,
    recv_until_eof,
    wait_fds_back_to,
    wait_until,
)
from protocols.http import SMALL_FILE, HttpConnection, StaticFiles

KiB = 1 << 10
MiB = 1 << 20
SECRET = b"TOP SECRET: outside the root\n"

pytestmark = pytest.mark.timeout(60)


# -- what the server must send, spelled out independently of the module under test ---------------
def ok_head(kind: str, size: int, connection: str | None = None) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Type: {kind}", f"Content-Length: {size}"]
    if connection:
        lines.append(f"Connection: {connection}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n"


def not_found(connection: str | None = None, head: bool = False) -> bytes:
    lines = ["HTTP/1.1 404 Not Found", "Content-Type: text/plain", "Content-Length: 10"]
    if connection:
        lines.append(f"Connection: {connection}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (b"" if head else b"Not Found\n")


def request(target: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: example", *headers]
    return "\r\n".join(lines).encode() + b"\r\n\r\n"


# -- the files -----------------------------------------------------------------------------------
@functools.cache
def _block(seed: int) -> bytes:
    return pattern(seed, MiB)


def write_big_file(path: Path, size: int, seed: int) -> str:
    """A file of ``size`` bytes written a MiB at a time (each MiB numbered: the pattern
    alone repeats every 64 KiB); returns its sha256."""
    digest = hashlib.sha256()
    base = _block(seed)
    with open(path, "wb") as file:
        for index in range((size + MiB - 1) // MiB):
            chunk = (struct.pack(">QQ", seed, index) + base[16:])[: size - index * MiB]
            file.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Site:
    root: Path
    files: dict[str, bytes]  # path under the root -> its bytes


@pytest.fixture
def site(tmp_path) -> Site:
    """A root to serve, with a secret beside it (outside) and links leading to it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    outside.mkdir()
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "index.html").write_bytes(SECRET)
    files = {
        "index.html": b"<!doctype html><title>home</title>\n",
        "hello.txt": b"Hello from a file\n",
        "data.bin": pattern(1, 300 * KiB + 7),
        "empty.txt": b"",
        "no_extension": b"what am I\n",
        "with space.txt": b"spaced\n",
        "sub/index.html": b"<p>sub index</p>\n",
        "sub/page.txt": b"a page in sub\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.symlink(tmp_path / "secret.txt", root / "escape")  # a file link leading out
    os.symlink(outside, root / "outdir")  # a directory link leading out
    os.symlink(root / "hello.txt", root / "inlink.txt")  # a link that stays inside
    return Site(root, files)


@pytest.fixture
def static(site):
    """The example's handler serving ``site`` in this process: the started Server."""
    server = http_server.new_server(root=str(site.root))
    server.open(0)
    server.start()
    yield server
    server.stop(timeout=2.0)


# -- a client that reads responses one after the other -------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes


class Reader:
    """Reads HTTP/1.1 responses, one after the other, from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self, what: str) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"EOF in {what}, {len(self.buffer)} bytes buffered")
        self.buffer += chunk

    def next(self, head_only: bool = False) -> Response:
        for _ in range(100_000):
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill("a response head")
        raw_head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        status_line, *lines = raw_head[:-4].decode("latin-1").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice in {raw_head!r}"
            headers[name.lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        for _ in range(100_000):
            if len(self.buffer) >= length:
                break
            self._fill("a response body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Response(int(status), headers, body, raw_head)

    def at_eof(self) -> bool:
        """Nothing more came, and the server ended the stream."""
        return not self.buffer and self.sock.recv(1) == b""


def get(port: int, target: str, *headers: str, method: str = "GET") -> Response:
    """One request on a new connection."""
    with connect(port) as sock:
        sock.sendall(request(target, *headers, method=method))
        return Reader(sock).next(head_only=method == "HEAD")


# == 1. GET and HEAD of files ====================================================================
@pytest.mark.parametrize(
    ("target", "name", "kind"),
    [
        ("/hello.txt", "hello.txt", "text/plain"),
        ("/index.html", "index.html", "text/html"),
        ("/data.bin", "data.bin", "application/octet-stream"),
        ("/empty.txt", "empty.txt", "text/plain"),
        ("/no_extension", "no_extension", "application/octet-stream"),
        ("/with%20space.txt", "with space.txt", "text/plain"),
        ("/sub/page.txt", "sub/page.txt", "text/plain"),
        ("/hello.txt?version=2&x=%2e%2e", "hello.txt", "text/plain"),
        ("/./hello.txt", "hello.txt", "text/plain"),
        ("/sub//page.txt", "sub/page.txt", "text/plain"),
        ("/inlink.txt", "hello.txt", "text/plain"),  # a link that stays inside
    ],
)
def test_get_serves_the_file_with_its_type_and_length(static, site, target, name, kind):
    data = site.files[name]
    response = get(static.port, target)
    assert response.raw_head == ok_head(kind, len(data))
    assert response.body == data


@pytest.mark.parametrize(
    ("target", "name"),
    [("/", "index.html"), ("/sub/", "sub/index.html"), ("/sub", "sub/index.html")],
)
def test_root_and_directories_are_their_index_html(static, site, target, name):
    data = site.files[name]
    response = get(static.port, target)
    assert response.raw_head == ok_head("text/html", len(data))
    assert response.body == data


def test_head_answers_the_head_without_the_body(static, site):
    with connect(static.port) as sock:
        reader = Reader(sock)
        sock.sendall(request("/data.bin", method="HEAD"))
        response = reader.next(head_only=True)
        assert response.raw_head == ok_head("application/octet-stream", 300 * KiB + 7)
        sock.sendall(request("/", method="HEAD") + request("/missing", method="HEAD"))
        index = site.files["index.html"]
        assert reader.next(head_only=True).raw_head == ok_head("text/html", len(index))
        assert reader.next(head_only=True).raw_head == not_found(head=True)
        # No body came after any of the heads: the next response follows at once.
        sock.sendall(request("/hello.txt"))
        response = reader.next()
        assert response.body == site.files["hello.txt"]
        assert not reader.buffer


def test_other_methods_on_a_file_get_405(static):
    with connect(static.port) as sock:
        sock.sendall(request("/hello.txt", "Content-Length: 3", method="POST") + b"abc")
        response = Reader(sock).next()
        assert response.status == 405
        assert response.headers["allow"] == "GET, HEAD"


# == 2. 404: missing, not a regular file, and every way out of the root ==========================
@pytest.mark.parametrize(
    "target",
    ["/missing.txt", "/sub/missing", "/empty_dir", "/empty_dir/", "/data.bin/x", "/sub/.x"],
)
def test_missing_files_and_directories_without_index_get_404(static, target):
    with connect(static.port) as sock:
        sock.sendall(request(target) + request("/hello.txt"))
        reader = Reader(sock)
        assert reader.next().raw_head + b"Not Found\n" == not_found()
        assert reader.next().status == 200  # kept alive


def test_a_unix_socket_in_the_root_gets_404(static, site):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(site.root / "a.sock"))
        with connect(static.port) as sock:
            sock.sendall(request("/a.sock") + request("/a.sock", method="HEAD"))
            reader = Reader(sock)
            first = reader.next()
            assert first.raw_head + first.body == not_found()
            assert reader.next(head_only=True).raw_head == not_found(head=True)
    finally:
        listener.close()


ESCAPES = [
    "/../secret.txt",
    "/../../../../../../etc/passwd",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/..",
    "//etc/passwd",
    "///etc/passwd",
    "/etc/passwd",
    "/escape",  # a symbolic link to a file outside
    "/outdir/secret.txt",  # through a symbolic link to a directory outside
    "/outdir/",  # that directory's index.html
    "/outdir",
    "http://example/../secret.txt",  # absolute-form targets
    "http://example/hello.txt",
    "http:/../secret.txt",
    "*",
    "secret.txt",
    "../secret.txt",
    "/%00",
    "/hello.txt%00.html",
    "/..\\secret.txt",
    "/%5c..%5csecret.txt",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_every_way_out_of_the_root_gets_404(static, target):
    with connect(static.port) as sock:
        sock.sendall(request(target) + request(target, method="HEAD") + request("/hello.txt"))
        reader = Reader(sock)
        response = reader.next()
        assert response.raw_head + response.body == not_found(), (target, response)
        assert reader.next(head_only=True).raw_head == not_found(head=True)
        assert reader.next().status == 200  # and the connection is still served


def test_a_directory_index_html_linking_out_of_the_root_gets_404(static, site, tmp_path):
    """``/linked/`` is ``/linked/index.html``, a symbolic link to a file outside the root:
    refused like any other link leading out (the secret must not be served)."""
    (site.root / "linked").mkdir()
    os.symlink(tmp_path / "secret.txt", site.root / "linked" / "index.html")
    for target in ("/linked/", "/linked", "/linked/index.html"):
        response = get(static.port, target)
        assert SECRET not in response.body, f"{target} served the secret outside the root"
        assert response.raw_head + response.body == not_found(), (target, response)


def test_the_root_index_html_linking_out_gets_404(static, site, tmp_path):
    (site.root / "index.html").unlink()
    os.symlink(tmp_path / "secret.txt", site.root / "index.html")
    for target in ("/", "/index.html"):
        response = get(static.port, target)
        assert response.raw_head + response.body == not_found(), (target, response)


# == 3. pipelining, keep-alive, Connection: close =================================================
def test_pipelined_requests_for_several_files_are_answered_in_order(static, site):
    big = site.root / "big.bin"
    big_sha = write_big_file(big, 8 * MiB + 5, seed=2)
    stream = b"".join(
        [
            request("/hello.txt"),
            request("/big.bin"),
            request("/missing"),
            request("/data.bin", method="HEAD"),
            request("/"),
            request("/data.bin"),
            request("/big.bin"),
            request("/empty.txt"),
            request("/sub/page.txt", "Connection: close"),
            request("/hello.txt"),  # after the close: never answered
        ]
    )
    with connect(static.port) as sock:
        # In odd pieces, all of it before reading anything.
        for start in range(0, len(stream), 77):
            sock.sendall(stream[start : start + 77])
        reader = Reader(sock)
        assert reader.next().body == site.files["hello.txt"]
        response = reader.next()
        assert response.raw_head == ok_head("application/octet-stream", 8 * MiB + 5)
        assert hashlib.sha256(response.body).hexdigest() == big_sha
        assert reader.next().status == 404
        head = reader.next(head_only=True)
        assert head.raw_head == ok_head("application/octet-stream", len(site.files["data.bin"]))
        assert reader.next().body == site.files["index.html"]
        assert reader.next().body == site.files["data.bin"]
        assert hashlib.sha256(reader.next().body).hexdigest() == big_sha
        assert reader.next().raw_head == ok_head("text/plain", 0)
        last = reader.next()
        assert last.raw_head == ok_head("text/plain", 14, connection="close")
        assert last.body == site.files["sub/page.txt"]
        assert reader.at_eof()


def test_a_client_pipelining_faster_than_it_reads_gets_every_file_intact(static, site):
    """100 requests for a 1 MiB file sent at once, before any response is read: the
    server queues more than its watermark, stops reading (flow control) and resumes as the
    client catches up; every response comes whole and in order."""
    sha = write_big_file(site.root / "mib.bin", MiB, seed=3)
    count = 100
    with connect(static.port) as sock:
        reader = Reader(sock)
        sock.sendall(request("/mib.bin") * (count - 1) + request("/mib.bin", "Connection: close"))
        for index in range(count):
            response = reader.next()
            assert response.status == 200, index
            assert hashlib.sha256(response.body).hexdigest() == sha, index
        assert reader.at_eof()


def test_keep_alive_serves_many_requests_on_one_connection(static, site):
    with connect(static.port) as sock:
        reader = Reader(sock)
        for index in range(30):
            name = ["hello.txt", "data.bin", "sub/page.txt"][index % 3]
            sock.sendall(request("/" + name))
            response = reader.next()
            assert response.body == site.files[name]
            assert "connection" not in response.headers
    wait_until(lambda: static.stats()["accepted"] == 1, what="the accept in stats")
    assert static.stats()["accepted"] == 1


@pytest.mark.parametrize(
    ("headers", "version", "connection"),
    [
        (("Connection: close",), "1.1", "close"),
        ((), "1.0", "close"),
        (("Connection: keep-alive",), "1.0", "keep-alive"),
    ],
)
def test_connection_header_and_http10(static, site, headers, version, connection):
    with connect(static.port) as sock:
        sock.sendall(request("/hello.txt", *headers, version=version))
        reader = Reader(sock)
        response = reader.next()
        data = site.files["hello.txt"]
        assert response.raw_head == ok_head("text/plain", len(data), connection=connection)
        assert response.body == data
        if connection == "close":
            assert reader.at_eof()
        else:
            sock.sendall(request("/missing", version=version))
            assert reader.next().raw_head == not_found(connection="close")[:-10]
            assert reader.at_eof()


def test_no_descriptor_is_left_open_after_many_requests(static, site):
    fds = open_fds()
    stream = b"".join(
        request(target, method=method)
        for target in ("/hello.txt", "/data.bin", "/", "/missing", "/escape", "/sub/")
        for method in ("GET", "HEAD")
    )
    with connect(static.port) as sock:
        for _ in range(10):
            sock.sendall(stream)
        sock.sendall(request("/hello.txt", "Connection: close"))
        recv_until_eof(sock)
    wait_fds_back_to(fds)


# == 4. the protocol's parts, without a transport =================================================
def test_feed_parts_gives_heads_and_open_files_in_order(site, tmp_path):
    """Small files come inline (head + body, one bytes); a file over SMALL_FILE comes as
    its head, then the open file for the transport to sendfile."""
    large = bytes(range(256)) * (SMALL_FILE // 256 + 1)
    (site.root / "large.bin").write_bytes(large)
    conn = HttpConnection(files=StaticFiles(str(site.root)))
    stream = (
        request("/hello.txt")
        + request("/missing")
        + request("/large.bin")
        + request("/data.bin", method="HEAD")
        + request("/sub/page.txt", "Connection: close")
    )
    parts, close = conn.feed_parts(stream)
    try:
        assert close is True
        assert [type(part) is bytes for part in parts] == [True, True, True, False, True, True]
        hello = site.files["hello.txt"]
        assert parts[0] == ok_head("text/plain", len(hello)) + hello
        assert parts[1] == not_found()
        assert parts[2] == ok_head("application/octet-stream", len(large))
        assert parts[3].read() == large  # type: ignore[union-attr]
        assert parts[4] == ok_head("application/octet-stream", len(site.files["data.bin"]))
        page = site.files["sub/page.txt"]
        assert parts[5] == ok_head("text/plain", len(page), connection="close") + page
    finally:
        for part in parts:
            if not isinstance(part, bytes):
                part.close()
    assert conn.feed_parts(request("/hello.txt")) == ([], True)


def test_static_files_refuses_a_root_that_is_not_a_directory(site, tmp_path):
    with pytest.raises(NotADirectoryError):
        StaticFiles(str(tmp_path / "nowhere"))
    with pytest.raises(NotADirectoryError):
        StaticFiles(str(site.root / "hello.txt"))
    with pytest.raises(NotADirectoryError):
        http_server.HttpHandler(root=str(tmp_path / "nowhere"))


def test_program_option_root():
    assert http_server.parse_args([]).root is None
    assert http_server.parse_args(["81", "--root", "/srv/www"]).root == "/srv/www"


# == 5. curl, and the example as a program =======================================================
def run_curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    curl = real_client("curl", "curl")
    proc = subprocess.run([curl, "-sS", "--max-time", "30", *args], capture_output=True, timeout=45)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_curl_gets_files_heads_and_404s_on_one_connection(static, site):
    base = f"http://127.0.0.1:{static.port}"
    proc = run_curl(
        "-w",
        r"%{http_code} %{content_type} %{size_download} %{num_connects}\n",
        "-o",
        "/dev/null",
        f"{base}/hello.txt",
        "-o",
        "/dev/null",
        f"{base}/",
        "-o",
        "/dev/null",
        f"{base}/missing",
        "-o",
        "/dev/null",
        f"{base}/data.bin",
    )
    lines = proc.stdout.decode().splitlines()
    assert lines == [
        f"200 text/plain {len(site.files['hello.txt'])} 1",
        f"200 text/html {len(site.files['index.html'])} 0",  # 0: the connection reused
        "404 text/plain 10 0",
        f"200 application/octet-stream {len(site.files['data.bin'])} 0",
    ]
    wait_until(lambda: static.stats()["accepted"] >= 1, what="the accept in stats")
    assert static.stats()["accepted"] == 1
    head = run_curl("-I", f"{base}/data.bin").stdout
    assert head == ok_head("application/octet-stream", len(site.files["data.bin"]))
    assert run_curl("-i", f"{base}/with%20space.txt").stdout == (
        ok_head("text/plain", 7) + b"spaced\n"
    )


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "//etc/passwd",
        "/escape",
        "/outdir/secret.txt",
    ],
)
def test_curl_with_path_as_is_gets_404_for_escapes(static, target):
    url = f"http://127.0.0.1:{static.port}{target}"
    proc = run_curl("--path-as-is", "-i", url)
    assert proc.stdout == not_found(), proc.stdout[:200]


@pytest.mark.timeout(90)
def test_program_serves_a_100_mib_file_to_curl(procs, site, tmp_path):
    sha = write_big_file(site.root / "big.bin", 100 * MiB, seed=4)
    port = free_port()
    proc = procs(str(EXAMPLES / "http_server.py"), str(port), "--root", str(site.root))
    proc.wait_line("http: listening")
    base = f"http://127.0.0.1:{port}"
    out = tmp_path / "downloaded.bin"
    result = run_curl(
        "-w",
        r"%{http_code} %{size_download}\n",
        "-o",
        str(out),
        f"{base}/big.bin",
        "-o",
        str(tmp_path / "hello.txt"),
        f"{base}/hello.txt",
    )
    assert result.stdout.decode().splitlines() == [
        f"200 {100 * MiB}",
        f"200 {len(site.files['hello.txt'])}",
    ]
    digest = hashlib.sha256()
    with open(out, "rb") as file:
        for chunk in iter(functools.partial(file.read, 8 * MiB), b""):
            digest.update(chunk)
    assert digest.hexdigest() == sha
    assert (tmp_path / "hello.txt").read_bytes() == site.files["hello.txt"]
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(proc.stderr)


def answered(port: int, timeout: float = 2.0) -> bool:
    """Whether a GET /hello.txt on a new connection gets a response within ``timeout``."""
    try:
        with connect(port, timeout=timeout) as sock:
            sock.sendall(request("/hello.txt"))
            return Reader(sock).next().status == 200
    except (TimeoutError, socket.timeout):
        return False


@pytest.mark.timeout(60)
def test_program_answers_404_for_a_fifo_without_blocking(procs, site):
    """A named pipe in the root is not a regular file: 404, at once. (Opening one for
    reading waits for a writer; a server that does so stops answering anyone.)"""
    fifo = site.root / "fifo"
    os.mkfifo(fifo)
    port = free_port()
    proc = procs(str(EXAMPLES / "http_server.py"), str(port), "--root", str(site.root))
    proc.wait_line("http: listening")
    try:
        with connect(port, timeout=5.0) as sock:
            sock.sendall(request("/fifo") + request("/hello.txt"))
            reader = Reader(sock)
            try:
                first: Response | None = reader.next()
            except (TimeoutError, socket.timeout):
                first = None
            if first is None:
                pytest.fail(
                    "no answer to GET /fifo within 5 s: the server blocks opening the FIFO "
                    "(open() of a FIFO waits for a writer); meanwhile another connection's "
                    f"GET /hello.txt is {'answered' if answered(port) else 'not answered'}",
                    pytrace=False,
                )
            assert first.raw_head + first.body == not_found()
            assert reader.next().body == site.files["hello.txt"]
    finally:
        # Whatever happened, let a server stuck in open() go (a writer that leaves at once).
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(proc.stderr)


# The example run as a program with at most 256 descriptors (RLIMIT_NOFILE).
LOW_FD_LIMIT_PROGRAM = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.timeout(60)
def test_program_answers_more_pipelined_requests_than_it_has_descriptors(procs, site):
    """600 pipelined GETs in one packet (24 KB) to a server allowed 256 descriptors: each
    is answered, in order. A server that opens every requested file (and sendfile keeps a
    duplicate of each) before sending any runs out of descriptors: it answers 404 for
    files that exist, or its on_recv raises and the connection is aborted."""
    port = free_port()
    script = str(EXAMPLES / "http_server.py")
    proc = procs("-c", LOW_FD_LIMIT_PROGRAM, script, str(port), "--root", str(site.root))
    proc.wait_line("http: listening")
    count = 600
    data = site.files["hello.txt"]
    with connect(port) as sock:
        sock.sendall(request("/hello.txt") * (count - 1) + request("/", "Connection: close"))
        reader = Reader(sock)
        for index in range(count - 1):
            try:
                response = reader.next()
            except (AssertionError, ConnectionResetError) as exc:
                pytest.fail(
                    f"the connection ended after {index} of {count} responses ({exc!r}); "
                    f"the server said: {''.join(proc.stderr)[-600:]}",
                    pytrace=False,
                )
            assert response.raw_head + response.body == ok_head("text/plain", len(data)) + data, (
                index,
                response,
            )
        last = reader.next()
        assert last.body == site.files["index.html"]
        assert reader.at_eof()
    assert proc.popen.poll() is None
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(proc.stderr)
    assert "Error" not in "".join(proc.stderr), "".join(proc.stderr)


@pytest.mark.timeout(90)
def test_program_with_tls_serves_files_to_curl(procs, site, tmp_path):
    pki = make_pki(tmp_path)
    sha = write_big_file(site.root / "big.bin", 20 * MiB, seed=5)
    port = free_port()
    proc = procs(
        str(EXAMPLES / "http_server.py"),
        str(port),
        "--root",
        str(site.root),
        "--tls",
        pki.cert,
        pki.key,
    )
    line = proc.wait_line("http: listening")
    assert line.strip() == f"http: listening on https://127.0.0.1:{port}/"
    base = f"https://127.0.0.1:{port}"
    out = tmp_path / "big.out"
    result = run_curl(
        "--cacert",
        pki.ca,
        "-w",
        r"%{http_code} %{content_type} %{size_download} %{num_connects}\n",
        "-o",
        str(tmp_path / "hello.out"),
        f"{base}/hello.txt",
        "-o",
        str(out),
        f"{base}/big.bin",
        "-o",
        str(tmp_path / "missing.out"),
        f"{base}/../secret.txt",
        "--path-as-is",
    )
    assert result.stdout.decode().splitlines() == [
        f"200 text/plain {len(site.files['hello.txt'])} 1",
        f"200 application/octet-stream {20 * MiB} 0",
        "404 text/plain 10 0",
    ]
    assert (tmp_path / "hello.out").read_bytes() == site.files["hello.txt"]
    assert (tmp_path / "missing.out").read_bytes() == b"Not Found\n"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    head = run_curl("--cacert", pki.ca, "-I", f"{base}/index.html").stdout
    assert head == ok_head("text/html", len(site.files["index.html"]))
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(proc.stderr)


def test_handler_serving_files_is_a_hamanet_handler(site):
    handler = http_server.HttpHandler(root=str(site.root))
    assert isinstance(handler, hamanet.Handler)
    assert handler.files is not None and handler.files.root == os.path.realpath(site.root)
