"""A small HTTP/1.1 server's protocol logic, independent of any transport.

``HttpConnection().feed(data)`` takes whatever bytes arrived on one connection and returns
``(response_bytes, close_after_sending)``: the responses to every complete request in
``data`` (pipelined requests are answered in order), and whether the connection must be
closed once they are sent. The hamanet example (``examples/http_server.py``) and the
asyncio/uvloop servers of the benchmark drive the same class, so they serve identical bytes.

What it serves:

* ``GET /`` (also ``/?query``): 200, ``text/plain``, ``Hello, World!\\n``; other paths: 404.
  ``HEAD`` is answered like ``GET`` without the body. Other methods: 405 with ``Allow``.
* Keep-alive by default for HTTP/1.1; ``Connection: close`` is honoured (answer, then close);
  HTTP/1.0 closes unless it asks for ``Connection: keep-alive``.
* A request body announced by ``Content-Length`` is consumed (skipped, never buffered).
  Over ``MAX_BODY`` bytes: 413, then close. ``Transfer-Encoding`` (chunked bodies): 501,
  then close.
* A malformed request line or header, a bad ``Content-Length``, or an HTTP/1.1 request
  without exactly one ``Host``: 400, then close. An HTTP version other than 1.0/1.1: 505.
* A request head (request line and headers) longer than ``MAX_HEAD`` bytes: 431, then
  close. The unparsed tail kept between calls is always shorter than ``MAX_HEAD``, so a
  peer that never sends the blank line cannot make the buffer grow.
* Deadlines, with ``HttpConnection(head_timeout=seconds)`` (the transport arms a timer
  for ``deadline`` and calls ``expire()`` when it passes): once the first byte of a
  request has arrived (a stray empty line before it counts), its head must be whole
  within ``head_timeout`` seconds, and the body it announces within ``head_timeout``
  seconds of the head's end. A head that misses its deadline gets 408 Request Timeout,
  then close; a body that misses it, or empty lines with no request after them, are
  closed without a word (the request was answered already; there is no request to
  answer). So a peer that trickles a head or a body (slowloris) cannot hold a
  connection longer than that. Between requests the connection is idle: closing idle
  keep-alive connections is the transport's idle timeout.

After a response that closes, ``feed`` discards everything and returns ``(b"", True)``.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import stat
import time
import urllib.parse
from typing import BinaryIO, Callable

__all__ = ["BODY", "MAX_BODY", "MAX_HEAD", "HttpConnection", "StaticFiles"]

BODY = b"Hello, World!\n"
MAX_HEAD = 8192  # bytes of request line + headers + the blank line
MAX_BODY = 1 << 20  # largest Content-Length accepted (and skipped)
SMALL_FILE = 64 * 1024  # StaticFiles: files up to this size are sent from memory

# RFC 9110 token characters (method and header names); `translate(None, _TCHAR)` deletes
# them, so a non-empty result means a bad character.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes allowed anywhere in a head: everything but the controls other than HTAB, CR, LF.
_HEAD_OK = bytes(b for b in range(256) if (b >= 0x20 and b != 0x7F) or b in (0x09, 0x0A, 0x0D))
_DIGITS_MAX = 18  # a Content-Length with more digits than this is over any limit anyway

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}
_BODIES = {200: BODY}

# Connection handling of a response: the header line it carries.
_KEEP11 = 0  # HTTP/1.1 keep-alive: no Connection header needed
_KEEP10 = 1  # HTTP/1.0 keep-alive: must say so
_CLOSE = 2
_CONNECTION_LINE = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")


def _build(status: int, mode: int, head_only: bool) -> bytes:
    body = _BODIES.get(status, _REASONS[status] + b"\n")
    allow = b"Allow: GET, HEAD\r\n" if status == 405 else b""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"Content-Type: text/plain\r\n",
            b"Content-Length: %d\r\n" % len(body),
            allow,
            _CONNECTION_LINE[mode],
            b"\r\n",
            b"" if head_only else body,
        )
    )


# Every response this server can send, precomputed: _RESPONSES[(status, mode, head_only)].
_RESPONSES = {
    (status, mode, head_only): _build(status, mode, head_only)
    for status in _REASONS
    for mode in (_KEEP11, _KEEP10, _CLOSE)
    for head_only in (False, True)
}
_ERROR_CLOSE = {status: _RESPONSES[(status, _CLOSE, False)] for status in _REASONS}

# What a request head comes to: (response, close, body bytes to skip, route), where route
# is (target, connection mode, head_only) for a GET or HEAD whose answer depends on the
# target (a StaticFiles root answers it anew), None when the response is final.
_Parsed = tuple[bytes, bool, int, "tuple[bytes, int, bool] | None"]


# Parsing a head is a pure function of its bytes, and real clients repeat the same head
# (wrk sends one head over and over), so results are memoised in a small bounded table
# (emptied when full, so a peer sending many different heads only costs speed).
_CACHE: dict[bytes, _Parsed] = {}
_CACHE_MAX = 1024
_CACHEABLE_HEAD = 512  # only short heads are memoised


class _Bad(Exception):
    """A request that gets an error status and a close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parse(head: bytes) -> _Parsed:
    """One request head (without the final CRLFCRLF) -> what it comes to (see _Parsed)."""
    try:
        return _parse_or_raise(head)
    except _Bad as bad:
        return _ERROR_CLOSE[bad.status], True, 0, None


def _parse_or_raise(head: bytes) -> _Parsed:
    if head.translate(None, _HEAD_OK):
        raise _Bad(400)  # a control character
    lines = head.split(b"\r\n")
    separators = len(lines) - 1
    if head.count(b"\n") != separators or head.count(b"\r") != separators:
        raise _Bad(400)  # a bare CR or LF
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _Bad(400)
    method, target, version = parts
    if not method or method.translate(None, _TCHAR) or not target or b"\t" in target:
        raise _Bad(400)
    if version == b"HTTP/1.1":
        mode = _KEEP11
    elif version == b"HTTP/1.0":
        mode = _CLOSE
    elif (
        len(version) == 8
        and version.startswith(b"HTTP/")
        and version[5:6].isdigit()
        and version[6:7] == b"."
        and version[7:8].isdigit()
    ):
        raise _Bad(505)
    else:
        raise _Bad(400)

    connection: list[bytes] = []
    content_length = -1
    hosts = 0
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0:
            raise _Bad(400)
        name = line[:colon]
        if name.translate(None, _TCHAR):
            raise _Bad(400)  # whitespace before the colon, obs-fold, or a bad character
        first = name[0] | 0x20  # ASCII lower case of the first letter: a cheap pre-filter
        if first == 0x63:  # c
            lname = name.lower()
            if lname == b"connection":
                connection.extend(line[colon + 1 :].lower().split(b","))
            elif lname == b"content-length":
                value = line[colon + 1 :].strip(b" \t")
                if not value.isdigit():
                    raise _Bad(400)
                length = int(value) if len(value) <= _DIGITS_MAX else MAX_BODY + 1
                if content_length not in (-1, length):
                    raise _Bad(400)  # two different lengths
                content_length = length
        elif first == 0x68:  # h
            if name.lower() == b"host":
                hosts += 1
        elif first == 0x74 and name.lower() == b"transfer-encoding":  # t
            raise _Bad(501)

    if connection:
        tokens = {token.strip(b" \t") for token in connection}
        if b"close" in tokens:
            mode = _CLOSE
        elif mode == _CLOSE and b"keep-alive" in tokens:
            mode = _KEEP10
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        raise _Bad(400)  # RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0
    if content_length > MAX_BODY:
        raise _Bad(413)
    skip = max(content_length, 0)

    if method == b"GET":
        head_only = False
    elif method == b"HEAD":
        head_only = True
    else:
        return _RESPONSES[(405, mode, False)], mode == _CLOSE, skip, None
    status = 200 if target == b"/" or target.startswith(b"/?") else 404
    return _RESPONSES[(status, mode, head_only)], mode == _CLOSE, skip, (target, mode, head_only)


class StaticFiles:
    """Answers GET and HEAD with the files under ``root`` (``/`` is ``/index.html``): a
    head (Content-Type, Content-Length) followed by the open file, for the transport to
    send with ``sendfile``; 404 for anything missing, not a regular file, or outside the
    root: ``..`` segments, percent-encoded or not, a target that is not a path from the
    root, and symbolic links that resolve outside it are all refused the same way.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"the root to serve, {root!r}, is not a directory")

    def path_of(self, target: bytes) -> str | None:
        """The file ``target`` names under the root, or None if it names none there."""
        path = urllib.parse.unquote_to_bytes(target.partition(b"?")[0])
        if not path.startswith(b"/") or b"\0" in path or b"\\" in path:
            return None
        segments = [s for s in path.split(b"/") if s not in (b"", b".")]
        if b".." in segments:
            return None
        relative = os.fsdecode(b"/".join(segments)) or "index.html"
        candidate = os.path.realpath(os.path.join(self.root, relative))
        if os.path.isdir(candidate):
            candidate = os.path.realpath(os.path.join(candidate, "index.html"))
        if os.path.commonpath((self.root, candidate)) != self.root:
            return None  # a symbolic link out of the root
        return candidate

    def respond(self, target: bytes, mode: int, head_only: bool) -> list[bytes | BinaryIO]:
        """The response to a GET (HEAD: ``head_only``) of ``target``: bytes, then (for a
        GET of a file over SMALL_FILE bytes) the open file, which the caller closes once
        queued. A small file's bytes come in the response itself: copying them costs less
        than a sendfile, and a pipeline of many small requests holds no descriptors."""
        path = self.path_of(target)
        fd = -1
        if path is not None:
            with contextlib.suppress(OSError):
                # Non-blocking: opening a FIFO would otherwise wait for a writer.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            fd = -1
        if fd < 0 or path is None:
            return [_RESPONSES[(404, mode, head_only)]]
        file = os.fdopen(fd, "rb")
        size = os.fstat(fd).st_size
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        head = b"".join(
            (
                b"HTTP/1.1 200 OK\r\n",
                b"Content-Type: %s\r\n" % kind.encode(),
                b"Content-Length: %d\r\n" % size,
                _CONNECTION_LINE[mode],
                b"\r\n",
            )
        )
        if head_only or size <= SMALL_FILE:
            with file:
                body = b"" if head_only else file.read(size)
            if len(body) < (0 if head_only else size):
                return [_ERROR_CLOSE[404]]  # truncated under us: no promise can be kept
            return [head + body]
        return [head, file]


class HttpConnection:
    """The HTTP/1.1 state of one connection: feed it bytes, send what it returns.

    With ``head_timeout`` (seconds; None: no deadline), ``deadline`` is the time on
    ``clock`` by which the request in progress must be complete, or None while no request
    is in progress. The transport calls ``expire()`` once that time has passed with the
    deadline still set, sends what it returns, and closes.
    """

    __slots__ = (
        "_blank",
        "_buffer",
        "_clock",
        "_done",
        "_files",
        "_head_timeout",
        "_skip",
        "deadline",
    )

    def __init__(
        self,
        head_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        files: StaticFiles | None = None,
    ) -> None:
        self._files = files  # GET and HEAD answered from these files, with feed_parts()
        self._buffer = b""  # an incomplete head, always shorter than MAX_HEAD
        self._skip = 0  # request body bytes still to be consumed
        self._done = False  # a closing response was produced: ignore the rest
        self._blank = False  # empty lines came after the last request: the next has begun
        self._head_timeout = head_timeout
        self._clock = clock
        self.deadline: float | None = None

    def postpone(self) -> None:
        """Gives the request in progress a whole ``head_timeout`` from now: for when the
        transport stopped reading (flow control), so the peer is not the one late."""
        if self.deadline is not None and self._head_timeout is not None:
            self.deadline = max(self.deadline, self._clock() + self._head_timeout)

    def expire(self) -> bytes:
        """The deadline has passed: returns what to send before closing. 408 for a part of
        a head; nothing for a body (its request was answered already) or for empty lines
        alone (some clients send one after a body: the connection looks idle to them).
        Feed then ignores everything, as after any closing response."""
        if self._done or self.deadline is None:
            return b""
        partial_head = bool(self._buffer)
        self._done = True
        self._buffer = b""
        self._skip = 0
        self._blank = False
        self.deadline = None
        return _ERROR_CLOSE[408] if partial_head else b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Consumes ``data``; returns (responses to every complete request, close after)."""
        responses, close = self._feed(data)
        if len(responses) == 1:
            return responses[0], close  # type: ignore[return-value]
        return b"".join(responses), close  # type: ignore[arg-type]

    def feed_parts(self, data: bytes) -> tuple[list[bytes | BinaryIO], bool]:
        """``feed`` for a connection that serves files: the responses as bytes and open
        files in order, for the transport to write and ``sendfile`` (closing each file
        once queued), and whether to close after them."""
        return self._feed(data)

    def _feed(self, data: bytes) -> tuple[list[bytes | BinaryIO], bool]:
        if self._done:
            return [], True
        buffer = self._buffer + data if self._buffer else bytes(data)
        size = len(buffer)
        pos = 0
        finished = False  # a request was completed here: one still in progress is new
        if self._skip:
            pos = min(self._skip, size)
            self._skip -= pos
            finished = not self._skip
        blank = self._blank
        responses: list[bytes | BinaryIO] = []
        files = self._files
        close = False
        cache = _CACHE
        while pos < size:
            if buffer.startswith(b"\r\n", pos):
                pos += 2  # an empty line before a request line (RFC 9112 2.2)
                blank = True
                continue
            end = buffer.find(b"\r\n\r\n", pos, pos + MAX_HEAD)
            if end < 0:
                if size - pos >= MAX_HEAD:
                    responses.append(_ERROR_CLOSE[431])
                    close = True
                elif buffer.find(b"\n\n", pos) >= 0:
                    responses.append(_ERROR_CLOSE[400])  # LF-only line ends: never complete
                    close = True
                break
            head = buffer[pos:end]
            pos = end + 4
            result = cache.get(head)
            if result is None:
                result = _parse(head)
                if len(head) <= _CACHEABLE_HEAD:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()  # bounded, and heals after a burst of odd heads
                    cache[head] = result
            response, close, skip, route = result
            if files is not None and route is not None:
                responses.extend(files.respond(*route))
            else:
                responses.append(response)
            blank = False
            if close:
                break
            if skip:
                taken = min(skip, size - pos)
                pos += taken
                self._skip = skip - taken
        if close:
            self._done = True
            self._buffer = b""
            self._skip = 0
            self.deadline = None
        else:
            self._buffer = buffer[pos:] if pos < size else b""
            self._blank = blank
            if self._head_timeout is not None:
                if not (self._buffer or self._skip or blank):
                    self.deadline = None  # idle, between requests
                elif self.deadline is None or finished or responses:
                    self.deadline = self._clock() + self._head_timeout
        return responses, close
