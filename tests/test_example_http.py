"""The HTTP/1.1 example: its protocol logic (examples/protocols/http.py) byte for byte, then
the hamanet server (examples/http_server.py) with clients nobody here wrote: Python's
http.client, and wrk and curl when they are installed (in CI, with CI set, a missing one
fails its test instead of skipping it). Also the deadlines that end slowloris and idle
connections, with short values."""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import subprocess
import threading
import time

import hamanet
import http_server
import pytest
from conftest import (
    EXAMPLES,
    WAIT,
    connect,
    free_port,
    read_until_end,
    real_client,
    recv_exactly,
    recv_until_eof,
    run_example,
    wait_until,
)
from protocols.http import BODY, MAX_BODY, MAX_HEAD, HttpConnection

HOST = b"Host: example\r\n"


def response(
    status: int,
    reason: str,
    body: bytes | None = None,
    *,
    connection: str | None = None,
    head: bool = False,
) -> bytes:
    """What the server must send, spelled out independently of the module under test."""
    if body is None:
        body = reason.encode() + b"\n"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    if connection:
        lines.append(f"Connection: {connection}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (b"" if head else body)


OK = response(200, "OK", BODY)
OK_HEAD = response(200, "OK", BODY, head=True)
OK_CLOSE = response(200, "OK", BODY, connection="close")
NOT_FOUND = response(404, "Not Found")
NOT_FOUND_HEAD = response(404, "Not Found", head=True)
NOT_ALLOWED = response(405, "Method Not Allowed")
BAD = response(400, "Bad Request", connection="close")
TOO_LARGE_HEAD = response(431, "Request Header Fields Too Large", connection="close")
TOO_LARGE_BODY = response(413, "Content Too Large", connection="close")
TIMEOUT = response(408, "Request Timeout", connection="close")


def get(path: str = "/", *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: example", *headers]
    return "\r\n".join(lines).encode() + b"\r\n\r\n"


def feed_all(chunks) -> tuple[bytes, bool]:
    """Feeds the chunks to a fresh HttpConnection; the concatenated output and last close."""
    conn = HttpConnection()
    out = bytearray()
    close = False
    for chunk in chunks:
        data, close = conn.feed(chunk)
        out += data
    return bytes(out), close


# -- 1. HttpConnection: responses -----------------------------------------------------------


def test_get_root_and_not_found_and_head():
    assert HttpConnection().feed(get("/")) == (OK, False)
    assert HttpConnection().feed(get("/?name=value")) == (OK, False)
    assert HttpConnection().feed(get("/missing")) == (NOT_FOUND, False)
    assert HttpConnection().feed(get("/", method="HEAD")) == (OK_HEAD, False)
    assert HttpConnection().feed(get("/missing", method="HEAD")) == (NOT_FOUND_HEAD, False)


def test_get_response_is_well_formed():
    data, close = HttpConnection().feed(get("/"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain" in head.split(b"\r\n")
    assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")
    assert body == BODY == b"Hello, World!\n"
    assert not close


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get", "PATCH"])
def test_other_methods_get_405_and_keep_alive(method):
    conn = HttpConnection()
    assert conn.feed(get("/", method=method)) == (NOT_ALLOWED, False)
    assert conn.feed(get("/")) == (OK, False)


def test_request_body_is_consumed_not_parsed_as_a_request():
    # The body looks like a request: it must be skipped, not answered.
    body = get("/missing") * 3
    post = get("/", f"Content-Length: {len(body)}", method="POST") + body
    assert feed_all([post + get("/")]) == (NOT_ALLOWED + OK, False)
    # Across reads, including a body that arrives a byte at a time.
    stream = post + get("/")
    assert feed_all(stream[i : i + 1] for i in range(len(stream))) == (NOT_ALLOWED + OK, False)
    # A GET with a body: the body is skipped too.
    stream = get("/", "Content-Length: 5") + b"abcde" + get("/x")
    assert feed_all([stream]) == (OK + NOT_FOUND, False)


def test_every_split_of_a_pipelined_stream_gives_the_same_responses():
    body = b"x" * 7
    stream = (
        b"\r\n"  # a stray empty line before a request is allowed
        + get("/")
        + get("/a", method="HEAD")
        + get("/", f"Content-Length: {len(body)}", method="POST")
        + body
        + get("/", "Connection: keep-alive")
        + get("/?q", "Connection: close")
        + get("/after-close-is-ignored")
    )
    expected = OK + NOT_FOUND_HEAD + NOT_ALLOWED + OK + OK_CLOSE
    assert feed_all([stream]) == (expected, True)
    for cut in range(len(stream) + 1):
        assert feed_all([stream[:cut], stream[cut:]]) == (expected, True), cut
    for first in range(0, len(stream), 7):
        for second in range(first, len(stream), 11):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert feed_all(chunks) == (expected, True), (first, second)
    assert feed_all(stream[i : i + 1] for i in range(len(stream))) == (expected, True)


def test_responses_to_one_read_come_in_request_order():
    paths = [f"/{i}" if i % 3 else "/" for i in range(50)]
    stream = b"".join(get(path) for path in paths)
    expected = b"".join(OK if path == "/" else NOT_FOUND for path in paths)
    assert HttpConnection().feed(stream) == (expected, False)


# -- 2. HttpConnection: keep-alive and close ------------------------------------------------


def test_http11_keeps_alive_by_default_and_closes_on_request():
    conn = HttpConnection()
    for _ in range(3):
        assert conn.feed(get("/")) == (OK, False)
    assert conn.feed(get("/", "Connection: close")) == (OK_CLOSE, True)
    # Nothing more is answered on a closing connection.
    assert conn.feed(get("/")) == (b"", True)


@pytest.mark.parametrize(
    "value", ["close", "Close", "CLOSE", "keep-alive, close", "Upgrade,  close ", "close,TE"]
)
def test_connection_close_token_is_case_insensitive_and_found_in_a_list(value):
    assert HttpConnection().feed(get("/", f"Connection: {value}")) == (OK_CLOSE, True)
    assert HttpConnection().feed(get("/", f"connection:{value}")) == (OK_CLOSE, True)


def test_http10_closes_unless_keep_alive_is_asked_for():
    assert HttpConnection().feed(get("/", version="1.0")) == (OK_CLOSE, True)
    # HTTP/1.0 needs no Host.
    assert HttpConnection().feed(b"GET / HTTP/1.0\r\n\r\n") == (OK_CLOSE, True)
    keep = response(200, "OK", BODY, connection="keep-alive")
    conn = HttpConnection()
    assert conn.feed(get("/", "Connection: Keep-Alive", version="1.0")) == (keep, False)
    assert conn.feed(get("/", "Connection: keep-alive", version="1.0")) == (keep, False)
    assert conn.feed(get("/", version="1.0")) == (OK_CLOSE, True)


# -- 3. HttpConnection: errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n" + HOST + b"\r\n",
        b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET / HTTP/1.1 extra\r\n" + HOST + b"\r\n",
        b"GET / HTTX/1.1\r\n" + HOST + b"\r\n",
        b"GET / http/1.1\r\n" + HOST + b"\r\n",
        b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n",
        b" GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET /\x00 HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b": empty name\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Bad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Name : space before colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X: bell\x07\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X: bare\rCR\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X: bare\nLF\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\n" + HOST + HOST + b"\r\n",  # two Hosts
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: +5\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: 1_0\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: \r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\n\n",  # LF-only line ends: answered, not waited on forever
    ],
)
def test_malformed_requests_get_400_and_close(head):
    conn = HttpConnection()
    assert conn.feed(head + get("/")) == (BAD, True)
    assert conn.feed(get("/")) == (b"", True)
    # The same split a byte at a time.
    assert feed_all(head[i : i + 1] for i in range(len(head))) == (BAD, True)


def test_a_good_request_before_a_bad_one_is_answered_first():
    assert HttpConnection().feed(get("/") + b"BAD\r\n\r\n" + get("/")) == (OK + BAD, True)


def test_unsupported_version_and_transfer_encoding_close():
    data, close = HttpConnection().feed(b"GET / HTTP/2.0\r\n" + HOST + b"\r\n")
    assert data.startswith(b"HTTP/1.1 505 ") and b"Connection: close\r\n" in data and close
    data, close = HttpConnection().feed(get("/", "Transfer-Encoding: chunked", method="POST"))
    assert data.startswith(b"HTTP/1.1 501 ") and b"Connection: close\r\n" in data and close


def test_body_over_the_limit_gets_413_and_close():
    conn = HttpConnection()
    assert conn.feed(get("/", f"Content-Length: {MAX_BODY}", method="POST")) == (
        NOT_ALLOWED,
        False,
    )
    assert conn.feed(b"y" * MAX_BODY + get("/")) == (OK, False)
    over = get("/", f"Content-Length: {MAX_BODY + 1}", method="POST")
    assert HttpConnection().feed(over) == (TOO_LARGE_BODY, True)
    huge = get("/", "Content-Length: " + "9" * 40, method="PUT")
    assert HttpConnection().feed(huge) == (TOO_LARGE_BODY, True)


def test_head_size_limit_boundary():
    def head_of_size(size: int) -> bytes:
        base = get("/", "X-Fill: ")
        return base[:-4] + b"f" * (size - len(base)) + b"\r\n\r\n"

    at_limit = head_of_size(MAX_HEAD)
    assert len(at_limit) == MAX_HEAD
    assert HttpConnection().feed(at_limit) == (OK, False)
    assert feed_all([at_limit[:-1], at_limit[-1:]]) == (OK, False)
    over = head_of_size(MAX_HEAD + 1)
    assert HttpConnection().feed(over) == (TOO_LARGE_HEAD, True)
    assert feed_all([over[:100], over[100:]]) == (TOO_LARGE_HEAD, True)


def test_unterminated_headers_are_bounded_and_get_431():
    """1 MiB of header bytes and never a blank line: 431, and the buffer never grows past
    the limit on the way there."""
    conn = HttpConnection()
    first = b"GET / HTTP/1.1\r\nHost: example\r\n"
    data, close = conn.feed(first)
    assert (data, close) == (b"", False)
    sent = len(first)
    chunk = b"X-Header-Line: " + b"v" * 40 + b"\r\n"
    outcome = None
    for _ in range((1 << 20) // len(chunk)):
        data, close = conn.feed(chunk)
        sent += len(chunk)
        assert len(conn._buffer) < MAX_HEAD
        if data or close:
            outcome = (data, close, sent)
            break
    assert outcome is not None, "1 MiB of headers never answered"
    assert outcome[:2] == (TOO_LARGE_HEAD, True)
    assert outcome[2] <= MAX_HEAD + len(chunk)
    # And from then on everything is dropped.
    assert conn.feed(chunk * 1000) == (b"", True)
    assert conn._buffer == b""
    # All at once: the same answer, nothing kept.
    conn = HttpConnection()
    assert conn.feed(first + b"X: " + b"v" * (1 << 20)) == (TOO_LARGE_HEAD, True)
    assert conn._buffer == b""


def test_request_line_without_end_is_bounded():
    conn = HttpConnection()
    assert conn.feed(b"GET /" + b"a" * (MAX_HEAD - 10)) == (b"", False)
    assert conn.feed(b"a" * 100) == (TOO_LARGE_HEAD, True)


def test_connections_are_independent():
    one, two = HttpConnection(), HttpConnection()
    assert one.feed(get("/")[:10]) == (b"", False)
    assert two.feed(get("/x")) == (NOT_FOUND, False)
    assert one.feed(get("/")[10:]) == (OK, False)


def test_many_distinct_heads_stay_correct_and_the_memo_stays_bounded():
    from protocols import http as protocol

    conn = HttpConnection()
    for i in range(3 * protocol._CACHE_MAX):
        path = "/" if i % 3 == 0 else f"/{i}"
        assert conn.feed(get(path, f"X-Seq: {i}")) == (OK if path == "/" else NOT_FOUND, False)
        assert len(protocol._CACHE) <= protocol._CACHE_MAX
    # A cached error stays an error for a new connection; a cached close stays a close.
    for _ in range(2):
        assert HttpConnection().feed(b"BAD\r\n\r\n") == (BAD, True)
        assert HttpConnection().feed(get("/", "Connection: close")) == (OK_CLOSE, True)


def test_feed_accepts_bytes_like_input():
    assert HttpConnection().feed(bytearray(get("/"))) == (OK, False)
    assert HttpConnection().feed(memoryview(get("/"))) == (OK, False)


# -- 3b. HttpConnection: the head deadline, on a clock the test moves ---------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def timed(head_timeout: float = 10.0) -> tuple[HttpConnection, Clock]:
    clock = Clock()
    return HttpConnection(head_timeout, clock), clock


def test_no_deadline_without_a_head_timeout():
    conn = HttpConnection()
    assert conn.feed(get("/")[:5]) == (b"", False)
    assert conn.deadline is None
    assert conn.expire() == b""  # nothing to expire: still usable
    assert conn.feed(get("/")[5:]) == (OK, False)


def test_deadline_runs_from_a_requests_first_bytes_until_it_is_whole():
    conn, clock = timed()
    assert conn.feed(get("/")) == (OK, False)
    assert conn.deadline is None  # whole requests never arm a deadline
    assert conn.feed(b"GET / HT") == (b"", False)
    assert conn.deadline == 1010.0
    clock.now += 6
    assert conn.feed(b"TP/1.1\r\n") == (b"", False)
    assert conn.deadline == 1010.0  # more of the same head: the same deadline
    clock.now += 3
    assert conn.feed(b"Host: x\r\n\r\n" + get("/a")[:3]) == (OK, False)
    assert conn.deadline == 1019.0  # a new request began: its own deadline
    assert conn.feed(get("/a")[3:]) == (NOT_FOUND, False)
    assert conn.deadline is None


def test_late_head_gets_408_and_everything_after_is_ignored():
    conn, clock = timed()
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    clock.now += 10
    assert conn.expire() == TIMEOUT
    assert conn.deadline is None
    assert conn.feed(b"\r\n" + get("/")) == (b"", True)
    assert conn.expire() == b""


def test_body_gets_its_own_deadline_and_a_late_one_closes_without_a_response():
    conn, clock = timed()
    post = get("/", "Content-Length: 100", method="POST")
    assert conn.feed(post[:10]) == (b"", False)
    assert conn.deadline == 1010.0
    clock.now += 5
    assert conn.feed(post[10:] + b"b" * 40) == (NOT_ALLOWED, False)  # answered at its head
    assert conn.deadline == 1015.0
    clock.now += 4
    assert conn.feed(b"b" * 59) == (b"", False)
    assert conn.deadline == 1015.0  # one byte of the body still missing
    assert conn.expire() == b""  # already answered: just close
    assert conn.feed(b"b" + get("/")) == (b"", True)
    # A body that does come whole leaves the connection idle.
    conn, clock = timed()
    conn.feed(post + b"b" * 99)
    assert conn.deadline == 1010.0
    assert conn.feed(b"b") == (b"", False)
    assert conn.deadline is None


def test_empty_lines_start_the_deadline_and_expire_quietly():
    """A peer that sends nothing but CRLFs (allowed before a request line) cannot hold the
    connection: the deadline starts with the first and is not moved by the next."""
    conn, clock = timed()
    assert conn.feed(b"\r\n") == (b"", False)
    assert conn.deadline == 1010.0
    clock.now += 9
    assert conn.feed(b"\r\n\r\n") == (b"", False)
    assert conn.deadline == 1010.0
    assert conn.expire() == b""  # no request to answer
    # After a request, a trailing CRLF (some clients send one after a body) counts too.
    conn, clock = timed()
    assert conn.feed(get("/") + b"\r\n") == (OK, False)
    assert conn.deadline == 1010.0
    assert conn.feed(get("/")) == (OK, False)
    assert conn.deadline is None


def test_postpone_restarts_the_deadline_of_a_request_in_progress():
    conn, clock = timed()
    conn.postpone()
    assert conn.deadline is None  # nothing in progress: nothing to postpone
    conn.feed(b"GET /")
    clock.now += 8
    conn.postpone()
    assert conn.deadline == 1018.0
    clock.now -= 5
    conn.postpone()
    assert conn.deadline == 1018.0  # never earlier


def test_closing_responses_clear_the_deadline():
    conn, _ = timed()
    conn.feed(b"GET / HTTP/1.1\r\n")
    assert conn.deadline is not None
    assert conn.feed(b"Bad Header\r\n\r\n") == (BAD, True)
    assert conn.deadline is None
    assert conn.expire() == b""


# -- 4. the hamanet server with real clients ------------------------------------------------


def serve_http(serve, handler: http_server.HttpHandler | None = None, **timeouts):
    """A started server running ``handler`` (the example's, with ``timeouts``), wired to
    it as ``http_server.new_server`` does: its head deadline needs the server's timers."""
    handler = http_server.HttpHandler(**timeouts) if handler is None else handler
    server = serve(handler)
    handler.server = server
    return server


@pytest.fixture
def http_port(serve) -> int:
    return serve_http(serve).port


def http_client(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)


def test_http_client_keep_alive_on_one_connection(serve):
    server = serve_http(serve)
    client = http_client(server.port)
    try:
        client.request("GET", "/")
        first = client.getresponse()
        assert (first.status, first.read()) == (200, BODY)
        assert first.getheader("Content-Type") == "text/plain"
        assert not first.will_close
        sock = client.sock
        local = sock.getsockname()
        for i in range(20):
            path = "/" if i % 2 else f"/missing/{i}"
            method = "HEAD" if i % 5 == 0 else "GET"
            client.request(method, path)
            resp = client.getresponse()
            body = resp.read()
            assert resp.status == (200 if path == "/" else 404)
            assert body == (b"" if method == "HEAD" else (BODY if path == "/" else b"Not Found\n"))
            assert not resp.will_close
        # A body the server does not want is consumed; the connection stays usable.
        client.request("POST", "/", body=b"z" * 100_000)
        resp = client.getresponse()
        assert (resp.status, resp.getheader("Allow")) == (405, "GET, HEAD")
        resp.read()
        client.request("GET", "/")
        assert client.getresponse().read() == BODY
        assert client.sock is sock and sock.getsockname() == local
    finally:
        client.close()
    # Each reactor publishes its own counters at the end of its turn: with two, the one
    # that registered the session may publish before the one that accepted it.
    wait_until(lambda: server.stats()["accepted"] >= 1, what="stats")
    assert server.stats()["accepted"] == 1


def test_http_client_connection_close_is_honoured(http_port):
    client = http_client(http_port)
    try:
        client.request("GET", "/", headers={"Connection": "close"})
        resp = client.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        assert resp.will_close
        assert resp.read() == BODY
    finally:
        client.close()
    # Over a raw socket: exactly one response, then the server's FIN.
    sock = connect(http_port)
    with sock:
        sock.sendall(get("/", "Connection: close") + get("/"))
        assert recv_until_eof(sock) == OK_CLOSE


def test_http10_over_a_socket_closes(http_port):
    with connect(http_port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_until_eof(sock) == OK_CLOSE


def test_pipelined_requests_over_a_socket_are_answered_in_order(http_port):
    paths = [("/" if i % 4 else f"/p{i}", "HEAD" if i % 7 == 3 else "GET") for i in range(200)]
    stream = b"".join(get(path, method=method) for path, method in paths) + get(
        "/", "Connection: close"
    )
    expected = b"".join(
        (OK_HEAD if method == "HEAD" else OK)
        if path == "/"
        else (NOT_FOUND_HEAD if method == "HEAD" else NOT_FOUND)
        for path, method in paths
    )
    with connect(http_port) as sock:
        sock.sendall(stream)
        assert recv_until_eof(sock) == expected + OK_CLOSE
    # The same stream dribbled in small writes, with the requests cut anywhere.
    with connect(http_port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(stream), 997):
            sock.sendall(stream[start : start + 997])
        assert recv_until_eof(sock) == expected + OK_CLOSE


def test_malformed_request_gets_400_and_close(http_port):
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n"):
        with connect(http_port) as sock:
            sock.sendall(get("/") + garbage + get("/"))
            assert recv_until_eof(sock) == OK + BAD
    # The server still serves others.
    client = http_client(http_port)
    try:
        client.request("GET", "/")
        assert client.getresponse().read() == BODY
    finally:
        client.close()


def test_oversized_headers_get_431(http_port):
    with connect(http_port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (MAX_HEAD + 100))
        assert recv_until_eof(sock) == TOO_LARGE_HEAD
    client = http_client(http_port)
    try:
        client.putrequest("GET", "/")
        client.putheader("X-Big", "b" * (MAX_HEAD + 100))
        client.endheaders()
        resp = client.getresponse()
        assert resp.status == 431 and resp.will_close
        resp.read()
    finally:
        client.close()


def test_body_too_large_gets_413(http_port):
    with connect(http_port) as sock:
        sock.sendall(get("/", f"Content-Length: {MAX_BODY + 1}", method="POST"))
        assert recv_until_eof(sock) == TOO_LARGE_BODY


class WatchedHttp(http_server.HttpHandler):
    """The example's handler, also noting the largest write buffer it left behind."""

    def __init__(self, **timeouts) -> None:
        super().__init__(**timeouts)
        self.lock = threading.Lock()
        self.sessions: list[hamanet.Session] = []
        self.max_buffered = 0

    def on_connect(self, session):
        super().on_connect(session)
        with self.lock:
            self.sessions.append(session)

    def on_recv(self, session, data):
        super().on_recv(session, data)
        with self.lock:
            self.max_buffered = max(self.max_buffered, session.write_buffer_size)


@pytest.mark.timeout(60)
def test_a_client_that_pipelines_without_reading_is_pushed_back(serve):
    """Responses do not pile up without bound for a client that sends requests and reads
    nothing: the server stops reading it, and every response still arrives, in order."""
    handler = WatchedHttp()
    server = serve_http(serve, handler)
    count = 300_000  # about 8 MB of requests, 26 MB of responses: more than the kernel holds
    request = get("/")
    sock = connect(server.port)
    errors: list[BaseException] = []

    def send_all():
        try:
            sock.sendall(request * count)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    with sock:
        wait_until(lambda: handler.sessions, what="the session")
        session = handler.sessions[0]
        wait_until(lambda: session.reading_paused, what="the server to stop reading")
        received = recv_exactly(sock, len(OK) * count)
        sender.join(timeout=WAIT)
        assert not sender.is_alive() and not errors, errors
    assert received == OK * count
    with handler.lock:
        # The watermark (64 KiB) plus the responses to one wakeup's read (at most 256 KiB
        # of requests), not the 26 MB the client asked for.
        assert handler.max_buffered <= 4 << 20, handler.max_buffered


def test_many_connections_at_once(http_port):
    clients = [http_client(http_port) for _ in range(20)]
    try:
        for round_ in range(3):
            for client in clients:
                client.request("GET", "/" if round_ != 1 else "/nope")
            for client in clients:
                resp = client.getresponse()
                assert resp.status == (404 if round_ == 1 else 200)
                resp.read()
    finally:
        for client in clients:
            client.close()


# -- 4b. the deadlines, with short values ----------------------------------------------------


def read_all(sock: socket.socket) -> tuple[bytes, str, float]:
    """Everything until the server ends the stream: (bytes, "eof" | "reset", when)."""
    data, end = read_until_end(sock)
    return data, end, time.monotonic()


@pytest.mark.timeout(60)
def test_slowloris_heads_get_408_at_the_deadline(serve):
    """Clients that trickle a head, a header line every 100 ms, never finishing it: the
    idle timeout never fires (each line is traffic), but the head deadline does: 408 Request
    Timeout, then FIN, while a normal client is served meanwhile."""
    server = serve_http(serve, head_timeout=0.5, keepalive_timeout=5.0)
    socks = [connect(server.port) for _ in range(50)]
    try:
        start = time.monotonic()
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        for i in range(10):  # 1 s of trickling, twice the deadline
            if time.monotonic() - start > 1.0:
                break
            for sock in socks:
                with contextlib.suppress(OSError):  # closed by the server already
                    sock.sendall(b"X-Trickle-%d: slow\r\n" % i)
            time.sleep(0.1)
        with connect(server.port) as other:  # still served, at once
            other.sendall(get("/"))
            assert recv_exactly(other, len(OK)) == OK
        for sock in socks:
            data, _, when = read_all(sock)
            assert data == TIMEOUT
            assert when - start < 0.5 + 2.0, when - start
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="every session closed")
    assert server.stats()["handler_errors"] == 0


@pytest.mark.timeout(60)
def test_idle_keepalive_connections_are_closed_quietly(serve):
    """An idle keep-alive connection, and one that never sends a byte, are closed after
    the keep-alive timeout with a FIN and no response; an active one is not."""
    server = serve_http(serve, head_timeout=5.0, keepalive_timeout=0.5)
    with connect(server.port) as used, connect(server.port) as silent:
        used.sendall(get("/"))
        assert recv_exactly(used, len(OK)) == OK
        start = time.monotonic()
        for sock in (used, silent):
            data, end, when = read_all(sock)
            assert (data, end) == (b"", "eof")
            # The idle sweep runs at a quarter of the timeout: closed within 1.25 of it.
            assert 0.4 < when - start < 0.5 * 1.25 + 1.5, when - start
    with connect(server.port) as busy:  # requests more often than the timeout: kept
        for _ in range(6):
            busy.sendall(get("/"))
            assert recv_exactly(busy, len(OK)) == OK
            time.sleep(0.2)
    assert server.stats()["idle_timeouts"] == 2


@pytest.mark.timeout(60)
def test_a_trickled_body_is_closed_at_its_deadline(serve):
    server = serve_http(serve, head_timeout=0.5, keepalive_timeout=5.0)
    with connect(server.port) as sock:
        sock.sendall(get("/", "Content-Length: 1000", method="POST"))
        assert recv_exactly(sock, len(NOT_ALLOWED)) == NOT_ALLOWED  # answered at its head
        start = time.monotonic()
        for _ in range(20):
            try:
                sock.sendall(b"b")
            except OSError:
                break
            if time.monotonic() - start > 2.0:
                break
            time.sleep(0.1)
        data, _, when = read_all(sock)
        assert data == b""  # no second response to a request answered already
        assert when - start < 0.5 + 2.0


@pytest.mark.timeout(60)
def test_heads_and_bodies_in_pieces_within_the_deadline_are_served(serve):
    server = serve_http(serve, head_timeout=0.6, keepalive_timeout=5.0)
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(2):  # each request well within its deadline, together past it
            request = get("/")
            for i in range(0, len(request), 12):
                sock.sendall(request[i : i + 12])
                time.sleep(0.1 * 12 / len(request))
            assert recv_exactly(sock, len(OK)) == OK
            time.sleep(0.3)
        post = get("/", "Content-Length: 6", method="POST")
        sock.sendall(post[:20])
        time.sleep(0.3)
        sock.sendall(post[20:] + b"abc")
        assert recv_exactly(sock, len(NOT_ALLOWED)) == NOT_ALLOWED
        time.sleep(0.4)  # the head took 0.3 s of its deadline; the body has its own
        sock.sendall(b"def" + get("/"))
        assert recv_exactly(sock, len(OK)) == OK
        time.sleep(0.8)  # idle between requests: the head deadline is not running
        sock.sendall(get("/", "Connection: close"))
        assert recv_until_eof(sock) == OK_CLOSE
    assert server.stats()["handler_errors"] == 0


@pytest.mark.timeout(60)
def test_head_deadline_waits_while_the_server_is_not_reading(serve):
    """A client that pipelines without reading makes the server stop reading it; a head
    it had begun meanwhile is not timed out for the server's own pause."""
    handler = WatchedHttp(head_timeout=0.3, keepalive_timeout=10.0)
    server = serve_http(serve, handler)
    count = 100_000  # about 9 MB of responses: far more than the socket buffers hold
    with connect(server.port) as sock:
        sock.sendall(get("/") * count + b"GET / HTTP/1.1\r\n")
        wait_until(lambda: handler.sessions, what="the session")
        session = handler.sessions[0]
        wait_until(lambda: session.reading_paused, what="the server to stop reading")
        time.sleep(0.6)  # twice the deadline, with the head begun and reading paused
        assert recv_exactly(sock, len(OK) * count) == OK * count
        time.sleep(0.1)
        sock.sendall(b"Host: x\r\n\r\n")
        assert recv_exactly(sock, len(OK)) == OK


@pytest.mark.timeout(60)
@pytest.mark.handler_errors
def test_handler_without_its_server_refuses_loudly(serve, caplog):
    server = serve(http_server.HttpHandler())  # not wired: the head deadline has no timers
    # on_connect raises, so the session is aborted: the reset can reach this client while
    # it connects, sends or reads; whichever, it is never served.
    data = b""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError), connect(server.port) as sock:
        sock.sendall(get("/"))
        data, _ = read_until_end(sock)
    assert data == b""
    wait_until(lambda: server.stats()["handler_errors"] == 1, what="the error counted")
    assert "HttpHandler.server is not set" in caplog.text
    # Without a head deadline it needs no server.
    server = serve(http_server.HttpHandler(head_timeout=None))
    with connect(server.port) as sock:
        sock.sendall(get("/"))
        assert recv_exactly(sock, len(OK)) == OK


# -- 5. wrk and curl, when installed (required in CI) ----------------------------------------


@pytest.mark.timeout(60)
def test_wrk_keep_alive_load(serve):
    wrk = real_client("wrk", "wrk")
    server = serve_http(serve)
    url = f"http://127.0.0.1:{server.port}/"
    proc = subprocess.run(
        [wrk, "-t1", "-c10", "-d1s", url], capture_output=True, text=True, timeout=30
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    match = re.search(r"(\d+) requests in", output)
    assert match and int(match.group(1)) > 0, output
    wait_until(lambda: server.stats()["accepted"] >= 10, what="wrk's connections in stats")
    # wrk kept its 10 connections alive rather than opening one per request.
    assert server.stats()["accepted"] < int(match.group(1))


def test_curl(http_port):
    curl = real_client("curl", "curl")
    base = f"http://127.0.0.1:{http_port}"
    proc = subprocess.run(
        [curl, "-sS", "-i", "--max-time", "10", f"{base}/", f"{base}/missing"],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == OK + NOT_FOUND
    proc = subprocess.run(
        [curl, "-sS", "-I", "--max-time", "10", f"{base}/"], capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == OK_HEAD
    post = [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]
    proc = subprocess.run(
        [*post, "-d", "x=1", f"{base}/"],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"405"


# -- 6. the example as a program --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_http_server_program_serves_and_stops_on_sigterm(procs):
    proc, port, line = run_example(procs, "http_server.py", "http: listening")
    assert line.strip().endswith(f":{port}/"), line
    client = http_client(port)
    try:
        for _ in range(3):
            client.request("GET", "/")
            assert client.getresponse().read() == BODY
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, "".join(proc.stderr)
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)


@pytest.mark.timeout(60)
def test_http_server_program_ends_slowloris_and_idle_connections(procs):
    """The program with short deadlines from its command line: 1,000 connections that
    begin a head and go silent get 408 and are closed at the head deadline, 200 that never
    send a byte are closed quietly at the keep-alive timeout, and meanwhile a normal
    client is served."""
    port = free_port()
    proc = procs(
        str(EXAMPLES / "http_server.py"),
        str(port),
        "--head-timeout",
        "0.5",
        "--keepalive-timeout",
        "1",
    )
    proc.wait_line("http: listening")
    slow = [connect(port) for _ in range(1000)]
    silent = [connect(port) for _ in range(200)]
    try:
        start = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
        client = http_client(port)
        try:
            client.request("GET", "/")
            assert client.getresponse().read() == BODY
        finally:
            client.close()
        for sock in slow:
            data, _, when = read_all(sock)
            assert data == TIMEOUT
        assert when - start < 0.5 + 3.0, when - start
        for sock in silent:
            data, end, when = read_all(sock)
            assert (data, end) == (b"", "eof")
        assert when - start < 1.25 + 3.0, when - start
    finally:
        for sock in slow + silent:
            sock.close()
    assert proc.popen.poll() is None, "".join(proc.stderr)
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(proc.stderr)


def test_program_options():
    args = http_server.parse_args([])
    assert (args.port, args.head_timeout, args.keepalive_timeout) == (8080, 10.0, 30.0)
    args = http_server.parse_args(["81", "--head-timeout", "none", "--keepalive-timeout", "2"])
    assert (args.port, args.head_timeout, args.keepalive_timeout) == (81, None, 2.0)
    with pytest.raises(SystemExit):
        http_server.parse_args(["--head-timeout", "0"])


def test_handler_is_a_hamanet_handler():
    assert isinstance(http_server.HttpHandler(), hamanet.Handler)
