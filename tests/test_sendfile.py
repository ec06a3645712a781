"""session.sendfile(file, offset=0, count=None): parts of regular files queued in the write
buffer between the bytes written before and after them, sent by sendfile(2) (read and
encrypted on a TLS session). Ordering, the descriptor it keeps, what it refuses, the
watermarks (file bytes count) and the hard cap (they do not), on_send, close, abort and
shutdown_write with a file queued, a file truncated while it is sent, TLS both ways, client
sessions, Unix sockets, and several sessions at once on a worker pool and two reactors.

Every peer is on loopback; every file is written under the test's tmp_path (the large ones
sparse, with markers where they are read back)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import io
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, Callable

import hamanet
import pytest
from _tls_support import Pki, SslServer, make_pki, tls_connect
from conftest import (
    WAIT,
    Recorder,
    connect,
    open_fds,
    pattern,
    read_until_end,
    recv_exactly,
    recv_until_eof,
    reset_close,
    wait_fds_back_to,
    wait_until,
)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# More than the kernel can hold between a server with send_buffer=16 KiB and a peer with
# SO_RCVBUF 16 KiB that does not read (both doubled by the kernel, plus rustls's own
# buffer on a TLS session): a file larger than this cannot have left the write buffer.
KERNEL_SLACK = 1 * MiB

pytestmark = pytest.mark.timeout(60)


# -- files ---------------------------------------------------------------------------------------
@functools.cache
def _block(seed: int) -> bytes:
    return pattern(seed, MiB)


def content(seed: int, size: int) -> bytes:
    """``size`` bytes of a file unique to ``seed``: ``pattern`` with each MiB numbered (the
    pattern alone repeats every 64 KiB, so a block sent twice or skipped would go unseen)."""
    base = _block(seed)
    chunks = (struct.pack(">QQ", seed, index) + base[16:] for index in range(size // MiB + 1))
    return b"".join(chunks)[:size]


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = content(seed, size)
    path.write_bytes(data)
    return data


def sparse_file(path: Path, size: int, marks: dict[int, bytes]) -> None:
    """A file of ``size`` bytes that takes no disk: zeros, but ``marks`` (offset: bytes)."""
    with open(path, "wb") as file:
        file.truncate(size)
        for offset, mark in marks.items():
            file.seek(offset)
            file.write(mark)


def unused_fd() -> int:
    """A descriptor number this process has not open (well above every open one)."""
    number = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1000
    with pytest.raises(OSError):
        os.fstat(number)
    return number


def assert_same(got: bytes, expected: bytes) -> None:
    """Equal, or a short message: where the first difference is (not a diff of MiBs)."""
    if got == expected:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected))
    )
    pytest.fail(
        f"got {len(got)} bytes, expected {len(expected)}; first difference at byte {first}: "
        f"got {got[first : first + 16]!r}, expected {expected[first : first + 16]!r}",
        pytrace=False,
    )


# -- peers and handlers --------------------------------------------------------------------------
def slow_peer(port: int) -> socket.socket:
    """A client socket with a 16 KiB receive buffer that the test does not read yet: what
    the server queues backs up in its write buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def tls_read_until_end(sock: ssl.SSLSocket, limit: int = 64 * MiB) -> tuple[bytes, str]:
    """Reads a TLS stream to its end: (plaintext, "close_notify" | the error that ended it)."""
    chunks = bytearray()
    while len(chunks) <= limit:
        try:
            chunk = sock.recv(1 << 20)
        except (ssl.SSLError, OSError) as exc:
            return bytes(chunks), type(exc).__name__
        if not chunk:
            return bytes(chunks), "close_notify"
        chunks.extend(chunk)
    raise AssertionError("peer sent more than the limit without ending the stream")


def read_until_end_or_stall(sock: socket.socket, stall: float = 5.0) -> tuple[bytes, str]:
    """``read_until_end``, or (what came, "stalled") if nothing comes for ``stall`` s."""
    sock.settimeout(stall)
    try:
        chunks = bytearray()
        for _ in range(100_000):
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                return bytes(chunks), "reset"
            except (TimeoutError, socket.timeout):
                return bytes(chunks), "stalled"
            if not chunk:
                return bytes(chunks), "eof"
            chunks.extend(chunk)
        raise AssertionError("peer sent too much without ending the stream")
    finally:
        sock.settimeout(WAIT)


class Scripted(Recorder):
    """A Recorder that runs ``script(session)`` in on_connect and keeps what it returned
    (or raised) in ``results``; it records pauses and resumes of writing too."""

    def __init__(self, script: Callable[[Any], Any]) -> None:
        super().__init__()
        self.script = script
        self.results: dict[int, Any] = {}

    def on_connect(self, session):
        super().on_connect(session)
        try:
            result = self.script(session)
        except Exception as exc:  # kept for the test to look at
            result = exc
        with self.lock:
            self.results[session.id] = result

    def on_pause_writing(self, session):
        self._add("pause", session)

    def on_resume_writing(self, session):
        self._add("resume", session)

    def result(self, session_id: int) -> Any:
        wait_until(lambda: session_id in self.results, what="the script's result")
        with self.lock:
            result = self.results[session_id]
        if isinstance(result, BaseException):
            raise AssertionError(f"the script raised {result!r}") from result
        return result


class FileServer(hamanet.Handler):
    """Answers each line ``OFFSET COUNT`` with ``<OFFSET COUNT>`` and then that part of the
    file at ``path`` (sendfile), and a line ``QUIT`` with ``<bye>`` and a close."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_connect(self, session):
        session.pending = b""

    def on_recv(self, session, data):
        *lines, session.pending = (session.pending + bytes(data)).split(b"\n")
        with open(self.path, "rb") as file:
            for line in lines:
                if line == b"QUIT":
                    session.write(b"<bye>")
                    session.close()
                    return
                offset, count = (int(word) for word in line.split())
                session.write(b"<%d %d>" % (offset, count))
                session.sendfile(file, offset, count)


def requests_and_answer(data: bytes, requests: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """What a FileServer client sends for ``requests``, and what it must get back."""
    sent = b"".join(b"%d %d\n" % request for request in requests) + b"QUIT\n"
    expected = b"".join(
        b"<%d %d>" % (offset, count) + data[offset : offset + count] for offset, count in requests
    )
    return sent, expected + b"<bye>"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sendfile-pki"))


@pytest.fixture
def tls_serve(pki):
    """``tls_serve(handler, **options)`` -> a started Server with a TLS listener."""
    servers: list[hamanet.Server] = []

    def start(handler: hamanet.Handler, **options: Any) -> hamanet.Server:
        server = hamanet.Server(handler, **options)
        servers.append(server)
        server.open(0, tls=hamanet.TLSServerContext(pki.cert, pki.key))
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(timeout=2.0)


# == 1. order and what is sent ===================================================================
def test_files_go_between_the_bytes_written_before_and_after_them(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 3 * MiB + 12345, seed=1)

    def script(session):
        with open(path, "rb") as file:
            session.write(b"<head>")
            whole = session.sendfile(file)
            session.write(b"<mid>")
            part = session.sendfile(file, 1000, 70000)
            session.writelines([b"<a>", b"<b>"])
            tail = session.sendfile(file.fileno(), offset=len(data) - 5)  # a descriptor
            again = session.sendfile(file, count=3)
            session.write(b"<tail>")
        session.close()
        return [whole, part, tail, again]

    recorder = Scripted(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        got = recv_until_eof(sock)
    (session,) = recorder.wait_sessions(1)
    assert recorder.result(session.id) == [len(data), 70000, 5, 3]
    expected = (
        b"<head>"
        + data
        + b"<mid>"
        + data[1000:71000]
        + b"<a><b>"
        + data[-5:]
        + data[:3]
        + b"<tail>"
    )
    assert_same(got, expected)
    assert recorder.wait_closed(session.id) == [None]


def test_large_writes_around_a_file_keep_their_place(serve, tmp_path):
    """Writes large enough to be sent in part at once (and the rest buffered) before and
    after a file, and two files back to back: still one stream, in order."""
    path = tmp_path / "file.bin"
    data = make_file(path, 2 * MiB + 1, seed=2)
    before, after = content(3, 5 * MiB + 7), content(4, 3 * MiB)

    def script(session):
        session.write(before)
        with open(path, "rb") as file:
            session.sendfile(file, 1, 2 * MiB)
            session.sendfile(file, 0, 1)
        session.write(after)
        session.close()

    recorder = Scripted(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        got = recv_until_eof(sock)
    assert_same(got, before + data[1:] + data[:1] + after)


def test_the_caller_may_close_and_even_delete_the_file_at_once(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 1 * MiB + 3, seed=5)

    def script(session):
        fd = os.open(path, os.O_RDONLY)
        try:
            first = session.sendfile(fd, 0, 100)
        finally:
            os.close(fd)
        with open(path, "rb") as file:
            file.seek(7)
            second = session.sendfile(file)  # from offset 0, wherever the file stands
            position = file.tell()
        os.unlink(path)  # the queued descriptor keeps the file's bytes
        session.write(b"!")
        session.close()
        return [first, second, position]

    recorder = Scripted(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        got = recv_until_eof(sock)
    (session,) = recorder.wait_sessions(1)
    assert recorder.result(session.id) == [100, len(data), 7]  # its position untouched
    assert_same(got, data[:100] + data + b"!")


def test_nothing_to_send_returns_0_and_sends_nothing(serve, tmp_path):
    empty, small = tmp_path / "empty", tmp_path / "small"
    empty.write_bytes(b"")
    small.write_bytes(b"0123456789")

    def script(session):
        with open(empty, "rb") as none, open(small, "rb") as ten:
            counts = [
                session.sendfile(none),
                session.sendfile(none, 0, 0),
                session.sendfile(ten, 10),  # the offset may be the end itself
                session.sendfile(ten, 4, 0),
                session.sendfile(ten, 4, 6),
            ]
        session.close()
        return counts

    recorder = Scripted(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        assert recv_until_eof(sock) == b"456789"
    (session,) = recorder.wait_sessions(1)
    assert recorder.result(session.id) == [0, 0, 0, 0, 6]


def test_offsets_past_4_gib_and_a_count_of_5_gib(serve, tmp_path):
    """64-bit offsets and counts, on a sparse 5 GiB file: a mark read from past 4 GiB, and
    all 5 GiB queued (counted in write_buffer_size) before an abort drops them."""
    path = tmp_path / "sparse.bin"
    size = 5 * GiB
    far = 4 * GiB + 12345
    sparse_file(path, size, {far: b"far away mark"})

    def script(session):
        with open(path, "rb") as file:
            return [session.sendfile(file, far, 13), session.sendfile(file, size - 2)]

    recorder = Scripted(script)
    server = serve(recorder, send_buffer=16 * KiB)
    with slow_peer(server.port) as sock:
        assert recv_exactly(sock, 15) == b"far away mark\0\0"
        (session,) = recorder.wait_sessions(1)
        assert recorder.result(session.id) == [13, 2]
        wait_until(lambda: "send" in recorder.kinds(session.id), what="on_send")
        with open(path, "rb") as file:
            assert session.sendfile(file) == size
        assert session.write_buffer_size > size - KERNEL_SLACK
        session.abort()
        recorder.wait_closed(session.id)


# == 2. what it refuses ==========================================================================
def test_sendfile_refuses_what_is_not_a_regular_file_or_not_in_it(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 1000, seed=6)
    recorder = Recorder(echo=True)
    server = serve(recorder)
    with connect(server.port) as sock:
        (session,) = recorder.wait_sessions(1)
        fds = open_fds()

        for wrong in (str(path), path, data, 2.5, None, [3]):
            with pytest.raises(TypeError, match="binary mode|descriptor"):
                session.sendfile(wrong)
        with pytest.raises((TypeError, io.UnsupportedOperation)):
            session.sendfile(io.BytesIO(data))  # a file object with no descriptor

        read_end, write_end = os.pipe()
        try:
            with pytest.raises(
                ValueError, match=rf"needs a regular file open for reading, and fd {read_end} is a "
            ):
                session.sendfile(read_end)
            with pytest.raises(ValueError, match=rf"fd {write_end} is a pipe"):
                session.sendfile(write_end)
        finally:
            os.close(read_end)
            os.close(write_end)
        directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(ValueError, match=rf"fd {directory} is a directory"):
                session.sendfile(directory)
        finally:
            os.close(directory)
        with pytest.raises(ValueError, match=rf"fd {sock.fileno()} is a socket"):
            session.sendfile(sock)  # a socket object: it has fileno() too
        with open(os.devnull, "rb") as null, pytest.raises(ValueError, match="character device"):
            session.sendfile(null)

        with open(path, "rb") as file:
            with pytest.raises(ValueError, match="offset"):
                session.sendfile(file, -1)
            with pytest.raises(ValueError, match="count"):
                session.sendfile(file, 0, -1)
            with pytest.raises(ValueError, match="past the end"):
                session.sendfile(file, 1001)
            with pytest.raises(ValueError, match="past the end"):
                session.sendfile(file, 1001, 0)
            with pytest.raises(ValueError, match="count 1001 is more than the file holds"):
                session.sendfile(file, 0, 1001)
            with pytest.raises(ValueError, match="more than the file holds"):
                session.sendfile(file, 10, 991)
        closed = open(path, "rb")  # noqa: SIM115 (closed on purpose before the call)
        closed.close()
        with pytest.raises(ValueError, match="closed file"):
            session.sendfile(closed)
        with pytest.raises(OSError):
            session.sendfile(unused_fd())  # a descriptor number that names nothing

        # Nothing was queued, no descriptor kept, and the session works as before.
        assert session.write_buffer_size == 0
        assert open_fds() == fds
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        with open(path, "rb") as file:
            assert session.sendfile(file, 10, 990) == 990
        assert recv_exactly(sock, 990) == data[10:]
        assert not session.closing


def test_a_bad_descriptor_raises_an_oserror_with_its_errno(serve, tmp_path):
    """Like every OSError hamanet raises (src/py/errors.rs): errno set, so callers can test
    ``exc.errno == errno.EBADF`` as with the socket module."""
    recorder = Recorder()
    server = serve(recorder)
    with connect(server.port):
        (session,) = recorder.wait_sessions(1)
        with pytest.raises(OSError) as info:
            session.sendfile(unused_fd())
    assert info.value.errno == errno.EBADF, repr(info.value)
    assert info.value.strerror, repr(info.value)


def test_a_file_open_only_for_writing_is_refused_at_the_call(serve, tmp_path):
    """sendfile(2) cannot read a descriptor opened O_WRONLY: refused when queued, like a
    pipe or a directory, not accepted and then the connection killed with EBADF."""
    path = tmp_path / "file.bin"
    make_file(path, 1000)
    recorder = Recorder(echo=True)
    server = serve(recorder)
    with connect(server.port) as sock:
        (session,) = recorder.wait_sessions(1)
        with open(path, "ab") as file, pytest.raises((ValueError, OSError)):
            session.sendfile(file)
        assert session.write_buffer_size == 0
        sock.sendall(b"still here")
        assert recv_exactly(sock, 10) == b"still here"
    assert recorder.wait_closed(session.id) == [None]


def test_sendfile_on_a_closing_or_closed_session_raises_like_write(serve, tmp_path):
    path = tmp_path / "file.bin"
    make_file(path, 100)

    def script(session):
        session.write(b"bye")
        session.close()
        raised = []
        with open(path, "rb") as file:
            for call in (lambda: session.write(b"x"), lambda: session.sendfile(file)):
                try:
                    call()
                except Exception as exc:
                    raised.append(exc)
        return raised

    recorder = Scripted(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        assert recv_until_eof(sock) == b"bye"
    (session,) = recorder.wait_sessions(1)
    on_write, on_sendfile = recorder.result(session.id)
    assert isinstance(on_write, hamanet.SessionClosedError)
    assert type(on_sendfile) is type(on_write)
    assert "sendfile" in str(on_sendfile) and "is closed" in str(on_sendfile)
    recorder.wait_closed(session.id)
    # And once it has ended, from another thread, with a file that would be fine.
    with open(path, "rb") as file, pytest.raises(hamanet.SessionClosedError, match="is closed"):
        session.sendfile(file)
    with open(path, "rb") as file, pytest.raises(hamanet.SessionClosedError):
        session.sendfile(file, 100)  # nothing to send: refused all the same, like write(b"")


def test_shutdown_write_sends_the_file_then_fin_and_refuses_more(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 2 * MiB + 99, seed=7)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)
            session.shutdown_write()
            raised = []
            for call in (lambda: session.write(b"x"), lambda: session.sendfile(file)):
                try:
                    call()
                except Exception as exc:
                    raised.append(exc)
        return raised

    class Peer(Scripted):
        def on_eof(self, session):
            session.close()  # both directions done

    recorder = Peer(script)
    server = serve(recorder)
    with connect(server.port) as sock:
        got = recv_until_eof(sock)  # the whole file, then the FIN
        assert_same(got, data)
        (session,) = recorder.wait_sessions(1)
        on_write, on_sendfile = recorder.result(session.id)
        assert isinstance(on_write, hamanet.SessionClosedError), repr(on_write)
        assert type(on_sendfile) is type(on_write)
        assert "sendfile" in str(on_sendfile) and "shut down" in str(on_sendfile)
        sock.sendall(b"still heard")  # the read side is still open
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: recorder.received(session.id) == b"still heard", what="the bytes")
    assert recorder.wait_closed(session.id) == [None]


# == 3. watermarks, the cap, on_send, close and abort ============================================
def test_file_bytes_count_toward_the_watermarks_but_not_the_cap(serve, tmp_path):
    path = tmp_path / "file.bin"
    size = 8 * MiB
    data = make_file(path, size, seed=8)
    cap = 1 * MiB
    queued: dict[str, int] = {}

    def script(session):
        with open(path, "rb") as file:
            queued["count"] = session.sendfile(file)
        queued["size"] = session.write_buffer_size

    recorder = Scripted(script)
    limits = {"max_write_buffer": cap, "write_high": 64 * KiB, "write_low": 16 * KiB}
    server = serve(recorder, send_buffer=16 * KiB, **limits)
    sock = slow_peer(server.port)
    try:
        (session,) = recorder.wait_sessions(1)
        recorder.result(session.id)
        assert queued["count"] == size
        assert size - KERNEL_SLACK < queued["size"] <= size
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        assert session.writing_paused
        assert size - KERNEL_SLACK < session.write_buffer_size <= size
        assert "send" not in recorder.kinds(session.id)  # the file is not all sent yet

        # The cap is on bytes in memory: 8 MiB of file leave all of it to write().
        fill = content(9, cap)
        session.write(fill)
        with pytest.raises(hamanet.WriteBufferFullError):
            session.write(b"!")  # behind the file: none of the cap can have drained
        assert session.write_buffer_size > cap

        got = recv_exactly(sock, size + cap)
        assert_same(got, data + fill)
        wait_until(lambda: "send" in recorder.kinds(session.id), what="on_send")
        kinds = [kind for kind in recorder.kinds(session.id) if kind != "recv"]
        assert kinds == ["connect", "pause", "resume", "send"], kinds
        assert session.write_buffer_size == 0
        assert not session.writing_paused
    finally:
        sock.close()


@pytest.mark.timeout(90)
def test_a_200_mib_file_is_queued_under_the_default_128_mib_cap(serve, tmp_path):
    path = tmp_path / "big.bin"
    size = 200 * MiB
    marks = {0: b"<first>", 150 * MiB: b"<middle>", size - 6: b"<last>"}
    sparse_file(path, size, marks)
    tail = content(10, 2 * MiB)

    def script(session):
        assert session.get_write_buffer_limits()[2] == 128 * MiB
        with open(path, "rb") as file:
            count = session.sendfile(file)
        session.write(b"<after>")
        session.write(tail)  # 2 MiB more bytes: 200 MiB of file took none of the cap
        session.close()
        return count

    recorder = Scripted(script)
    server = serve(recorder)
    digest, total, seen = hashlib.sha256(), 0, bytearray()
    with connect(server.port) as sock:
        for _ in range(100_000):  # bounded: ~215 MiB in chunks of up to 1 MiB
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            for offset, mark in marks.items():
                if total <= offset < total + len(chunk):
                    seen += chunk[offset - total : offset - total + len(mark)]
            digest.update(chunk)
            total += len(chunk)
    (session,) = recorder.wait_sessions(1)
    assert recorder.result(session.id) == size
    assert total == size + 7 + len(tail)
    assert bytes(seen) == b"".join(marks.values())
    expected = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(functools.partial(file.read, 8 * MiB), b""):
            expected.update(chunk)
    expected.update(b"<after>" + tail)
    assert digest.hexdigest() == expected.hexdigest()
    assert recorder.wait_closed(session.id) == [None]


def test_on_send_comes_once_the_file_is_all_sent(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 4 * MiB, seed=11)
    sends: list[int] = []

    class Watcher(Scripted):
        def on_send(self, session):
            sends.append(session.write_buffer_size)
            super().on_send(session)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)
        session.write(b"x" * 10)  # behind the file: not handed to the kernel before it

    recorder = Watcher(script)
    server = serve(recorder, send_buffer=16 * KiB)
    sock = slow_peer(server.port)
    try:
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        assert sends == []
        assert_same(recv_exactly(sock, len(data) + 10), data + b"x" * 10)
        wait_until(lambda: sends, what="on_send")
        assert sends == [0]
        sock.sendall(b"more")  # traffic on, but nothing more written: no second on_send
        wait_until(lambda: recorder.received(session.id) == b"more", what="the bytes")
        assert sends == [0]
    finally:
        sock.close()


def test_close_sends_the_whole_file_then_fin(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 6 * MiB + 5, seed=12)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)
        session.close()

    recorder = Scripted(script)
    server = serve(recorder, send_buffer=16 * KiB)
    sock = slow_peer(server.port)
    with sock:
        (session,) = recorder.wait_sessions(1)
        recorder.result(session.id)
        # The peer does not read: most of the file waits, and the session with it.
        assert session.write_buffer_size > len(data) - KERNEL_SLACK
        assert session.closing and not session.closed
        got, end = read_until_end(sock)
    assert end == "eof"
    assert_same(got, data)
    assert recorder.wait_closed(session.id) == [None]


def test_abort_drops_the_queued_file_and_its_descriptor(serve, tmp_path):
    path = tmp_path / "sparse.bin"
    size = 64 * MiB
    sparse_file(path, size, {})
    recorder = Scripted(lambda session: None)
    server = serve(recorder, send_buffer=16 * KiB)
    fds = open_fds()
    sock = slow_peer(server.port)
    try:
        (session,) = recorder.wait_sessions(1)
        with open(path, "rb") as file:
            assert session.sendfile(file) == size
        # Both ends of the connection, and the queued file's duplicate.
        assert open_fds() == fds + 3
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        session.abort()
        got, end = read_until_end(sock)
        assert end == "reset"
        assert len(got) < size - KERNEL_SLACK
        recorder.wait_closed(session.id)
    finally:
        sock.close()
    assert session.write_buffer_size == 0  # the session object stays, its file went
    wait_fds_back_to(fds)  # the server's socket and the file's descriptor are both gone


def test_a_peer_reset_drops_the_queued_file_and_its_descriptor(serve, tmp_path):
    path = tmp_path / "sparse.bin"
    sparse_file(path, 64 * MiB, {})
    recorder = Scripted(lambda session: None)
    server = serve(recorder, send_buffer=16 * KiB)
    fds = open_fds()
    sock = slow_peer(server.port)
    (session,) = recorder.wait_sessions(1)
    with open(path, "rb") as file:
        session.sendfile(file)
        session.sendfile(file, 5, 1000)
    wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
    reset_close(sock)
    (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, ConnectionError), repr(exc)
    assert session.write_buffer_size == 0
    wait_fds_back_to(fds)


def test_descriptors_are_released_once_sent(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 300 * KiB, seed=13)
    recorder = Recorder()
    server = serve(recorder)
    fds = open_fds()
    with connect(server.port) as sock:
        (session,) = recorder.wait_sessions(1)
        with open(path, "rb") as file:
            for _ in range(20):
                session.sendfile(file)
        assert_same(recv_exactly(sock, 20 * len(data)), data * 20)
        wait_until(lambda: open_fds() == fds + 2, what="the 20 duplicates closed")
    recorder.wait_closed(session.id)


# == 4. a file truncated while it is sent ========================================================
def test_a_file_truncated_while_being_sent_ends_the_session_naming_it(serve, tmp_path):
    path = tmp_path / "file.bin"
    size, new_size = 16 * MiB, 6 * MiB + 4321  # not on a page: the end comes mid-call
    data = make_file(path, size, seed=14)

    def script(session):
        with open(path, "rb") as file:
            return session.sendfile(file)

    recorder = Scripted(script)
    server = serve(recorder, send_buffer=16 * KiB)
    sock = slow_peer(server.port)
    with sock:
        (session,) = recorder.wait_sessions(1)
        assert recorder.result(session.id) == size
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        # Less than new_size has left: the server sends up to new_size, then finds the end.
        assert session.write_buffer_size > size - new_size
        os.truncate(path, new_size)
        got, end = read_until_end_or_stall(sock)
        if end == "stalled":
            pytest.fail(
                f"the session stalled after sending {len(got)} bytes (the file's new end): "
                f"write_buffer_size={session.write_buffer_size}, closed={session.closed}, "
                f"on_close={recorder.closes.get(session.id)}; it should end with an error",
                pytrace=False,
            )
    (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, OSError), repr(exc)
    assert f"ended {size - new_size} bytes short" in str(exc), str(exc)
    assert "truncated" in str(exc)
    assert session.closed
    assert len(got) <= new_size
    assert_same(got, data[: len(got)])


def test_a_file_truncated_as_it_is_queued_ends_the_session(serve, tmp_path):
    """Queued in answer to a request, then truncated in the same callback before anything
    is sent: the first sendfile(2) sends what is left (5,000 bytes, far less than the
    socket has room for) and the session must then end, naming the rest as missing,
    rather than wait for room it already has. workers=0: the callback runs on the reactor,
    so nothing is sent before the truncate."""
    path = tmp_path / "file.bin"
    size, new_size = 4 * MiB, 5000
    data = make_file(path, size, seed=25)

    class Truncator(Recorder):
        def on_recv(self, session, data):
            super().on_recv(session, data)
            with open(path, "rb") as file:
                session.sendfile(file)
            os.truncate(path, new_size)

    recorder = Truncator()
    server = serve(recorder, workers=0)
    with connect(server.port) as sock:
        (session,) = recorder.wait_sessions(1)
        sock.sendall(b"go")
        got, end = read_until_end_or_stall(sock)
        if end == "stalled":
            pytest.fail(
                f"the session stalled after sending {len(got)} bytes (the file's new end): "
                f"write_buffer_size={session.write_buffer_size}, closed={session.closed}, "
                f"on_close={recorder.closes.get(session.id)}; it should end with an error",
                pytrace=False,
            )
    (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, OSError), repr(exc)
    assert f"ended {size - new_size} bytes short" in str(exc), str(exc)
    assert_same(got, data[: len(got)])
    assert len(got) <= new_size


def test_a_file_truncated_before_its_turn_ends_the_session(serve, tmp_path):
    """Truncated to nothing while the bytes in front of it still wait: the session ends
    with the whole count missing, after the bytes before the file."""
    path = tmp_path / "file.bin"
    make_file(path, 3 * MiB, seed=15)
    front = content(16, 4 * MiB)

    def script(session):
        session.write(front)
        with open(path, "rb") as file:
            session.sendfile(file)
        session.write(b"never")
        os.truncate(path, 0)

    recorder = Scripted(script)
    server = serve(recorder, send_buffer=16 * KiB)
    sock = slow_peer(server.port)
    with sock:
        (session,) = recorder.wait_sessions(1)
        recorder.result(session.id)
        got, _end = read_until_end(sock)
    (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, OSError), repr(exc)
    assert f"ended {3 * MiB} bytes short" in str(exc), str(exc)
    assert_same(got, front[: len(got)])


# == 5. TLS ======================================================================================
def test_tls_session_sends_files_encrypted_in_order(tls_serve, pki, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 6 * MiB + 777, seed=17)

    def script(session):
        session.write(b"<head>")
        with open(path, "rb") as file:
            counts = [session.sendfile(file), session.sendfile(file, 5, 100_000)]
        session.write(b"<mid>")
        with open(path, "rb") as file:
            counts.append(session.sendfile(file.fileno(), len(data) - 20_000))
        session.write(b"<tail>")
        session.close()
        return counts

    recorder = Scripted(script)
    server = tls_serve(recorder)
    with tls_connect(server.port, pki.ca) as sock:
        got, end = tls_read_until_end(sock)
    assert end == "close_notify"
    expected = b"<head>" + data + data[5:100_005] + b"<mid>" + data[-20_000:] + b"<tail>"
    assert len(got) == len(expected)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest()
    (session,) = recorder.wait_sessions(1)
    assert recorder.result(session.id) == [len(data), 100_000, 20_000]
    assert recorder.wait_closed(session.id) == [None]


def test_tls_file_counts_toward_the_watermark_and_on_send_follows_it(tls_serve, pki, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 5 * MiB, seed=18)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)

    recorder = Scripted(script)
    server = tls_serve(recorder, send_buffer=16 * KiB)
    with tls_connect(server.port, pki.ca, rcvbuf=16 * KiB) as sock:
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        assert session.write_buffer_size > len(data) - KERNEL_SLACK
        assert "send" not in recorder.kinds(session.id)
        got = recv_exactly(sock, len(data))
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        wait_until(lambda: "send" in recorder.kinds(session.id), what="on_send")
        assert session.write_buffer_size == 0


def test_tls_file_truncated_while_being_sent_ends_the_session(tls_serve, pki, tmp_path):
    path = tmp_path / "file.bin"
    size, new_size = 12 * MiB, 4 * MiB
    data = make_file(path, size, seed=19)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)

    recorder = Scripted(script)
    server = tls_serve(recorder, send_buffer=16 * KiB)
    with tls_connect(server.port, pki.ca, rcvbuf=16 * KiB) as sock:
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: "pause" in recorder.kinds(session.id), what="on_pause_writing")
        assert session.write_buffer_size > size - new_size
        os.truncate(path, new_size)
        got, end = tls_read_until_end(sock)
    assert end != "close_notify"  # the peer must not take a short file for a whole one
    (exc,) = recorder.wait_closed(session.id)
    assert isinstance(exc, OSError), repr(exc)
    assert f"ended {size - new_size} bytes short" in str(exc), str(exc)
    assert len(got) <= new_size
    assert_same(got, data[: len(got)])


# == 6. client sessions, Unix sockets, several sessions at once ==================================
def test_client_session_sends_a_file_from_another_thread(serve, client_factory, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 3 * MiB + 1, seed=20)
    recorder = Recorder()
    server = serve(recorder)
    client_side = Recorder()
    session = client_factory(client_side).connect("127.0.0.1", server.port)
    session.write(b"<")
    with open(path, "rb") as file:
        assert session.sendfile(file, 1) == len(data) - 1
        assert session.sendfile(file, 0, 1) == 1
    session.write(b">")
    session.close()
    (accepted,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(accepted.id) == [None]
    assert_same(recorder.received(accepted.id), b"<" + data[1:] + data[:1] + b">")
    assert client_side.wait_closed(session.id) == [None]


def test_tls_client_session_sends_a_file(client_factory, pki, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 4 * MiB + 3, seed=21)
    received: list[bytes] = []

    def serve_one(sock: ssl.SSLSocket) -> None:
        chunks = bytearray()
        for _ in range(100_000):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks += chunk
        received.append(bytes(chunks))
        with contextlib.suppress(OSError):
            sock.unwrap()

    peer = SslServer(pki.cert, pki.key, serve=serve_one)
    try:
        client_side = Recorder()
        client = client_factory(client_side)
        context = hamanet.TLSClientContext(pki.ca)
        session = client.connect("127.0.0.1", peer.port, tls=context, server_hostname="localhost")
        with open(path, "rb") as file:
            assert session.sendfile(file) == len(data)
        session.write(b"<end>")
        session.close()
        wait_until(lambda: received or peer.errors, what="the peer to read to the end")
        assert not peer.errors, peer.errors
        assert_same(received[0], data + b"<end>")
        assert client_side.wait_closed(session.id) == [None]
    finally:
        peer.close()


def test_unix_socket_session(tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 2 * MiB + 17, seed=22)

    def script(session):
        with open(path, "rb") as file:
            session.sendfile(file)
        session.write(b"<end>")
        session.close()

    server = hamanet.Server(Scripted(script))
    try:
        address = server.open_unix(str(tmp_path / "server.sock"))
        server.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(address)
            got = recv_until_eof(sock)
    finally:
        server.stop(timeout=2.0)
    assert_same(got, data + b"<end>")


@pytest.mark.parametrize(
    "options", [{}, {"workers": 2}, {"reactors": 2}, {"workers": 2, "reactors": 2}]
)
def test_many_sessions_request_parts_of_files_at_once(serve, tmp_path, options):
    path = tmp_path / "file.bin"
    data = make_file(path, 2 * MiB + 333, seed=23)
    server = serve(FileServer(path), **options)

    def one_client(index: int) -> int:
        requests = [(index * 1000, 50_000 + index), (0, len(data)), (len(data) - index - 1, 1)]
        sent, expected = requests_and_answer(data, requests)
        with connect(server.port) as sock:
            sock.sendall(sent)
            got = recv_until_eof(sock)
        assert_same(got, expected)
        return len(got)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one_client, range(8), timeout=30))
    assert len(sizes) == 8


def test_pipelined_requests_answered_in_order_a_byte_at_a_time(serve, tmp_path):
    path = tmp_path / "file.bin"
    data = make_file(path, 100 * KiB, seed=24)
    server = serve(FileServer(path))
    requests = [(i * 997, 1 + i * 31) for i in range(60)]
    sent, expected = requests_and_answer(data, requests)
    with connect(server.port) as sock:
        for byte in range(0, len(sent), 3):
            sock.sendall(sent[byte : byte + 3])
        got = recv_until_eof(sock)
    assert_same(got, expected)
