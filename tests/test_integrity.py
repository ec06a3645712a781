"""Byte-exact data integrity: large transfers, many sessions, ordering, FIN/RST, close/abort.

Every byte stream is a per-session pattern whose 64 KiB blocks are all different (a rotated
pseudo-random block, rotation depending on the block index), so a lost, duplicated,
reordered or cross-session chunk is caught, not only a wrong length.
"""

from __future__ import annotations

import contextlib
import errno
import random
import selectors
import socket
import struct
import threading
import time

import hamanet
import pytest
from conftest import (
    WAIT,
    Echo,
    Recorder,
    connect,
    recv_exactly,
    recv_until_eof,
    round_trip,
    unacked_bytes,
    wait_until,
)

MiB = 1 << 20
KiB = 1 << 10
BLOCK = 1 << 16


# -- helpers ----------------------------------------------------------------------------
class Pattern:
    """An endless byte stream unique to ``seed``; ``slice(offset, n)`` is random access."""

    def __init__(self, seed: int) -> None:
        base = random.Random(seed).randbytes(BLOCK)
        self._base2 = base + base

    def _block(self, index: int) -> bytes:
        rotation = (index * 40503 + 12345) % BLOCK  # odd multiplier: distinct for 2**16 blocks
        return self._base2[rotation : rotation + BLOCK]

    def slice(self, offset: int, size: int) -> bytes:
        out = bytearray()
        index, skip = divmod(offset, BLOCK)
        while len(out) < size:
            block = self._block(index)
            out += block[skip : skip + size - len(out)]
            skip = 0
            index += 1
        return bytes(out)


def first_difference(got: bytes, expected: bytes) -> int | None:
    """Offset of the first differing byte (or of the shorter end), None if equal."""
    if got == expected:
        return None
    step = 1 << 16
    for start in range(0, min(len(got), len(expected)), step):
        a, b = got[start : start + step], expected[start : start + step]
        if a != b:
            for i, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    return start + i
    return min(len(got), len(expected))


def assert_same(got: bytes, expected: bytes, what: str = "stream") -> None:
    diff = first_difference(got, expected)
    assert diff is None, (
        f"{what}: got {len(got)} bytes, expected {len(expected)}; first difference at offset {diff}"
    )


def small_buffer_socket(port: int, size: int = 65536, timeout: float = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def server_session_for(recorder: Recorder, sock: socket.socket) -> hamanet.Session:
    local = sock.getsockname()[:2]

    def find():
        with recorder.lock:
            for session in recorder.sessions.values():
                if tuple(session.peer_addr[:2]) == local:
                    return session
        return None

    return wait_until(find, what=f"server session for {local}")


# -- 1. 128 MiB each way through an echo server with small buffers ----------------------
@pytest.mark.timeout(120)
def test_128mib_each_way_through_echo_with_small_buffers(serve):
    total = 128 * MiB
    server = serve(Echo(), recv_buffer=65536, send_buffer=65536)
    pattern = Pattern(1)
    sock = small_buffer_socket(server.port)
    send_error: list[BaseException] = []

    def sender():
        try:
            rng = random.Random(11)
            offset = 0
            while offset < total:
                size = min(total - offset, rng.randint(1, 2 * MiB))
                sock.sendall(pattern.slice(offset, size))
                offset += size
        except BaseException as exc:  # reported by the main thread
            send_error.append(exc)

    thread = threading.Thread(target=sender, name="sender", daemon=True)
    thread.start()
    try:
        buffer = bytearray(MiB)
        view = memoryview(buffer)
        received = 0
        while received < total:
            n = sock.recv_into(view, min(MiB, total - received))
            assert n, f"EOF after {received} of {total} echoed bytes"
            if view[:n] != pattern.slice(received, n):
                expected = pattern.slice(received, n)
                diff = first_difference(bytes(view[:n]), expected)
                pytest.fail(f"echoed byte {received + diff} differs from what was sent")
            received += n
        thread.join(WAIT)
        assert not thread.is_alive(), "sender did not finish"
        assert not send_error, f"sender failed: {send_error[0]!r}"
        assert received == total
        # Nothing beyond what was sent comes back.
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    finally:
        sock.close()
        thread.join(WAIT)


# -- 2. 100 concurrent sessions, each gets exactly its own bytes back --------------------
@pytest.mark.timeout(60)
def test_100_sessions_each_get_exactly_their_own_bytes(serve):
    count, size = 100, 256 * KiB
    recorder = Recorder(echo=True)
    server = serve(recorder)
    rng = random.Random(2)
    patterns = [Pattern(1000 + i).slice(0, size) for i in range(count)]
    sockets = [connect(server.port) for _ in range(count)]
    selector = selectors.DefaultSelector()
    state = []
    for i, sock in enumerate(sockets):
        sock.setblocking(False)
        entry = {"i": i, "sent": 0, "got": bytearray()}
        state.append(entry)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, entry)
    try:
        done = 0
        while done < count:  # the whole run is bounded by pytest-timeout, not a deadline
            ready = selector.select(timeout=WAIT)
            assert ready, f"no session made progress in {WAIT}s ({done} of {count} done)"
            for key, events in ready:
                sock, entry = key.fileobj, key.data
                data = patterns[entry["i"]]
                if events & selectors.EVENT_WRITE and entry["sent"] < size:
                    piece = rng.randint(1, 16 * KiB)
                    with contextlib.suppress(BlockingIOError):
                        entry["sent"] += sock.send(data[entry["sent"] : entry["sent"] + piece])
                    if entry["sent"] == size:
                        selector.modify(sock, selectors.EVENT_READ, entry)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(64 * KiB)
                    except BlockingIOError:
                        continue
                    assert chunk, f"session {entry['i']}: EOF after {len(entry['got'])} bytes"
                    entry["got"] += chunk
                    assert len(entry["got"]) <= size, f"session {entry['i']} got too much"
                    if len(entry["got"]) == size:
                        selector.unregister(sock)
                        done += 1
        for entry in state:
            assert_same(bytes(entry["got"]), patterns[entry["i"]], f"session {entry['i']} echo")
        # The server side saw each client's bytes on that client's session only.
        for i, sock in enumerate(sockets):
            session = server_session_for(recorder, sock)
            assert_same(recorder.received(session.id), patterns[i], f"server session of {i}")
        assert len(recorder.sessions) == count
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


# -- 3. server-side small writes interleaved with large ones, then 10 MB + small ---------
def _small(i: int) -> bytes:
    return b"<%d:%s>" % (i, b"x" * (i % 23))


def _big(k: int) -> bytes:
    return Pattern(5000 + k).slice(0, 100 * KiB)


def _interleaved(first: int, last: int) -> list[bytes]:
    pieces = []
    for i in range(first, last):
        pieces.append(_small(i))
        if i % 100 == 99:
            pieces.append(_big(i // 100))
    return pieces


@pytest.mark.timeout(60)
def test_server_small_and_large_writes_arrive_exact_and_in_order(serve):
    part_a = _interleaved(0, 5000)
    part_b = _interleaved(5000, 10000)
    huge = Pattern(77).slice(0, 10 * 1000 * 1000)
    tail = b"<the small write after 10 MB>"

    class Writer(hamanet.Handler):
        def on_connect(self, session):
            for piece in part_a:
                session.write(piece)

        def on_recv(self, session, data):
            for trigger in data:
                if trigger == ord("1"):
                    # The buffer is partially sent at this point: appends land behind it.
                    for piece in part_b:
                        session.write(piece)
                elif trigger == ord("2"):
                    session.write(huge)
                    session.write(tail)
                    session.close()

    server = serve(Writer())
    sock = connect(server.port, timeout=30)
    try:
        got = bytearray(recv_exactly(sock, 256 * KiB))
        sock.sendall(b"1")
        got += recv_exactly(sock, 256 * KiB)
        sock.sendall(b"2")
        got += recv_until_eof(sock, limit=64 * MiB)
    finally:
        sock.close()
    expected = b"".join(part_a) + b"".join(part_b) + huge + tail
    assert len(part_a) + len(part_b) == 10000 + 100
    assert_same(bytes(got), expected, "server writes")


# -- 4. 10k pipelined length-prefixed frames ------------------------------------------------
@pytest.mark.timeout(60)
def test_10k_pipelined_frames_reassembled_exact(serve):
    count = 10000
    frame_bytes = Pattern(4)

    def payload(i: int) -> bytes:
        return struct.pack(">I", i) + frame_bytes.slice(i * 1499, (i * 37) % 1500)

    class Framer(hamanet.Handler):
        def __init__(self):
            self.lock = threading.Lock()
            self.frames: list[bytes] = []
            self.pending = bytearray()
            self.recv_calls = 0

        def on_recv(self, session, data):
            self.pending += data
            frames = []
            pos = 0
            while len(self.pending) - pos >= 4:
                (length,) = struct.unpack_from(">I", self.pending, pos)
                if len(self.pending) - pos < 4 + length:
                    break
                frames.append(bytes(self.pending[pos + 4 : pos + 4 + length]))
                pos += 4 + length
            del self.pending[:pos]
            with self.lock:
                self.frames.extend(frames)
                self.recv_calls += 1
            if frames:
                session.write(struct.pack(">I", len(frames)))

    handler = Framer()
    server = serve(handler)
    payloads = [payload(i) for i in range(count)]
    wire = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    sock = connect(server.port, timeout=30)
    try:
        sock.sendall(wire)  # all of it in one go, before reading any acknowledgement
        acked = 0
        while acked < count:
            (n,) = struct.unpack(">I", recv_exactly(sock, 4))
            acked += n
        assert acked == count
    finally:
        sock.close()
    with handler.lock:
        frames = list(handler.frames)
    assert len(frames) == count
    for i, (got, expected) in enumerate(zip(frames, payloads)):
        assert got == expected, f"frame {i} differs"
    assert not handler.pending


# -- 5. both sides write 64 MiB before reading --------------------------------------------
@pytest.mark.timeout(90)
def test_both_sides_write_64mib_before_reading(serve):
    total = 64 * MiB
    server_pattern, client_pattern = Pattern(51), Pattern(52)

    class Both(hamanet.Handler):
        def __init__(self):
            self.lock = threading.Lock()
            self.received = 0
            self.mismatch_at: int | None = None
            self.closes: list = []

        def on_connect(self, session):
            for offset in range(0, total, 4 * MiB):
                session.write(server_pattern.slice(offset, 4 * MiB))

        def on_recv(self, session, data):
            with self.lock:
                offset = self.received
                self.received += len(data)
            if self.mismatch_at is None and data != client_pattern.slice(offset, len(data)):
                expected = client_pattern.slice(offset, len(data))
                self.mismatch_at = offset + first_difference(data, expected)

        def on_close(self, session, exc):
            self.closes.append(exc)

    handler = Both()
    server = serve(handler)
    sock = connect(server.port, timeout=60)
    try:
        for offset in range(0, total, MiB):  # the client writes everything before reading
            sock.sendall(client_pattern.slice(offset, MiB))
        buffer = bytearray(MiB)
        view = memoryview(buffer)
        received = 0
        while received < total:
            n = sock.recv_into(view, min(MiB, total - received))
            assert n, f"EOF after {received} bytes of the server's 64 MiB"
            expected = server_pattern.slice(received, n)
            if view[:n] != expected:
                diff = first_difference(bytes(view[:n]), expected)
                pytest.fail(f"the server's byte {received + diff} differs")
            received += n
        wait_until(lambda: handler.received >= total, what="server read the client's 64 MiB")
        assert handler.received == total
        mismatch = handler.mismatch_at
        assert mismatch is None, f"the client's byte {mismatch} differs at the server"
    finally:
        sock.close()


# -- 6. data then FIN / data then RST -------------------------------------------------------
@pytest.mark.timeout(60)
def test_data_then_fin_every_byte_before_clean_close(serve):
    size = 4 * MiB
    recorder = Recorder()
    server = serve(recorder)
    data = Pattern(61).slice(0, size)
    rng = random.Random(6)
    sock = connect(server.port)
    try:
        offset = 0
        while offset < size:
            piece = rng.randint(1, 256 * KiB)
            sock.sendall(data[offset : offset + piece])
            offset += piece
        sock.shutdown(socket.SHUT_WR)
        session = server_session_for(recorder, sock)
        closes = recorder.wait_closed(session.id)
        assert closes == [None]
        assert_same(recorder.received(session.id), data, "bytes before FIN")
        kinds = recorder.kinds(session.id)
        assert kinds[0] == "connect" and kinds[-2:] == ["eof", "close"], kinds[-5:]
        assert kinds.count("close") == 1 and kinds.count("eof") == 1
        assert set(kinds[1:-2]) == {"recv"}
        assert sock.recv(1) == b""  # the server closed after the FIN
    finally:
        sock.close()


@pytest.mark.timeout(30)
def test_fin_with_more_than_one_read_budget_already_queued_is_seen(serve):
    """Minimal repro: 300 KB + FIN sit in the kernel before the reactor reads them.

    The reactor reads 256 KiB (its per-session budget), re-queues the session, and on the
    next turn takes the short read of the remaining bytes as "queue empty" although the
    FIN was already reported: EOF must still be seen (on_eof, then on_close).
    """
    size = 300_000
    gate = threading.Event()

    class Gated(Recorder):
        def on_connect(self, session):
            super().on_connect(session)
            gate.wait(WAIT)  # hold the reactor until the bytes and the FIN are queued

    recorder = Gated()
    server = serve(recorder, recv_buffer=4 * MiB)
    data = Pattern(62).slice(0, size)
    sock = connect(server.port)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: unacked_bytes(sock) == 0, what="the server's kernel to take all bytes")
        gate.set()
        session = recorder.wait_sessions(1)[0]
        closes = recorder.wait_closed(session.id)
        assert closes == [None]
        assert_same(recorder.received(session.id), data, "bytes before FIN")
        assert recorder.kinds(session.id)[-2:] == ["eof", "close"]
    finally:
        gate.set()
        sock.close()


@pytest.mark.timeout(60)
def test_many_sessions_with_data_and_fin_queued_at_once(serve):
    """40 sessions x (300 KB + FIN) all queued in the kernel before the reactor looks: one
    turn cannot read them all (per-session and per-turn read limits), yet every session
    gets every byte, then on_eof, then on_close(None)."""
    count, size = 40, 300_000
    gate = threading.Event()

    class Gated(Recorder):
        def on_connect(self, session):
            super().on_connect(session)
            gate.wait(WAIT)  # the first connection holds the reactor; the rest queue up

    recorder = Gated()
    server = serve(recorder, recv_buffer=4 * MiB)
    holder = connect(server.port)
    sockets = []
    try:
        recorder.wait_sessions(1)
        sockets = [connect(server.port) for _ in range(count)]
        datas = [Pattern(300 + i).slice(0, size) for i in range(count)]
        for sock, data in zip(sockets, datas):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        wait_until(
            lambda: all(unacked_bytes(sock) == 0 for sock in sockets),
            what="the server's kernel to take every byte",
        )
        gate.set()
        for i, sock in enumerate(sockets):
            session = server_session_for(recorder, sock)
            closes = recorder.wait_closed(session.id)
            assert closes == [None], f"session {i}: {closes}"
            assert_same(recorder.received(session.id), datas[i], f"session {i}")
            assert recorder.kinds(session.id)[-2:] == ["eof", "close"]
    finally:
        gate.set()
        holder.close()
        for sock in sockets:
            sock.close()


@pytest.mark.timeout(30)
def test_bytes_like_writes_are_snapshotted(serve):
    """bytearray / memoryview writes are copied at write(): mutating them afterwards does
    not change what the peer receives."""

    class Mutating(hamanet.Handler):
        def on_connect(self, session):
            buf = bytearray(b"A" * 100_000)
            session.write(buf)
            buf[:] = b"B" * 100_000
            view = memoryview(bytearray(b"C" * 1000))
            session.write(view[10:20])
            view[10:20] = b"D" * 10
            parts = [bytearray(b"E" * 10), memoryview(b"F" * 10)]
            session.writelines(parts)
            parts[0][:] = b"G" * 10
            session.close()

    server = serve(Mutating())
    sock = connect(server.port)
    try:
        got = recv_until_eof(sock)
    finally:
        sock.close()
    assert_same(got, b"A" * 100_000 + b"C" * 10 + b"E" * 10 + b"F" * 10, "snapshotted writes")


@pytest.mark.timeout(60)
def test_data_then_rst_prefix_delivered_and_one_close(serve):
    for round_ in range(5):
        recorder = Recorder()
        server = serve(recorder)
        data = Pattern(70 + round_).slice(0, 2 * MiB)
        sock = connect(server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(data)
        session = server_session_for(recorder, sock)
        sock.close()  # RST
        closes = recorder.wait_closed(session.id)
        assert len(closes) == 1, closes
        assert isinstance(closes[0], ConnectionResetError), closes
        assert closes[0].errno == errno.ECONNRESET, closes
        got = recorder.received(session.id)
        assert data.startswith(got), f"round {round_}: delivered bytes are not a prefix"
        kinds = recorder.kinds(session.id)
        assert kinds.count("close") == 1 and kinds[-1] == "close"
        # The close is final: after the reactor has gone round twice more, nothing came.
        round_trip(server)
        assert recorder.kinds(session.id) == kinds


# -- 7. server writes then close() / abort() ------------------------------------------------
@pytest.mark.timeout(60)
def test_server_writes_32mib_then_close_peer_gets_all_then_eof(serve):
    size = 32 * MiB
    data = Pattern(71).slice(0, size)
    closes: list = []

    class WriteClose(hamanet.Handler):
        def on_connect(self, session):
            session.write(data)
            session.close()

        def on_close(self, session, exc):
            closes.append(exc)

    server = serve(WriteClose())
    sock = connect(server.port, timeout=30)
    try:
        got = recv_until_eof(sock, limit=size + MiB)
    finally:
        sock.close()
    assert_same(got, data, "32 MiB then close")
    wait_until(lambda: closes, what="on_close")
    assert closes == [None]


@pytest.mark.timeout(60)
def test_server_abort_after_writing_peer_sees_reset(serve):
    size = 32 * MiB
    data = Pattern(72).slice(0, size)
    closes: list = []

    class WriteAbort(hamanet.Handler):
        def on_connect(self, session):
            session.write(data)

        def on_recv(self, session, data_):
            session.abort()

        def on_close(self, session, exc):
            closes.append(exc)

    # Small buffers: at most a few hundred KB can be in flight, so most of the 32 MiB is
    # still in the session's buffer when it is aborted.
    server = serve(WriteAbort(), send_buffer=65536)
    sock = small_buffer_socket(server.port)
    try:
        got = bytearray(recv_exactly(sock, MiB))
        sock.sendall(b"!")  # the server aborts with most of its 32 MiB still buffered
        with pytest.raises(ConnectionResetError):
            while len(got) <= size:
                chunk = sock.recv(MiB)
                if not chunk:
                    break  # an orderly EOF is a failure: the pytest.raises will report it
                got += chunk
    finally:
        sock.close()
    received = len(got)
    assert received < size, "everything arrived although the session was aborted"
    assert data.startswith(bytes(got)), "bytes before the reset are not a prefix"
    wait_until(lambda: closes, what="on_close")
    assert closes == [None]


# -- 8. hamanet Client to hamanet Server ------------------------------------------------------
@pytest.mark.timeout(60)
def test_hamanet_client_to_server_echo_exact(serve, client_factory):
    size = 8 * MiB
    server = serve(Echo())

    class Collect(hamanet.Handler):
        def __init__(self):
            self.lock = threading.Lock()
            self.data = bytearray()
            self.closes: list = []

        def on_recv(self, session, data):
            with self.lock:
                self.data += data

        def on_close(self, session, exc):
            self.closes.append(exc)

    collector = Collect()
    client = client_factory(collector)
    session = client.connect("127.0.0.1", server.port)
    data = Pattern(81).slice(0, size)
    rng = random.Random(8)
    offset = 0
    while offset < size:
        piece = rng.randint(1, 128 * KiB)
        session.write(data[offset : offset + piece])
        offset += piece
    wait_until(lambda: len(collector.data) >= size, timeout=30, what="the echo")
    with collector.lock:
        got = bytes(collector.data)
    assert_same(got, data, "client echo")
    session.close()
    assert client.join(WAIT)
    wait_until(lambda: collector.closes, what="the client's on_close")
    assert collector.closes == [None]
    assert len(collector.data) == size


@pytest.mark.timeout(30)
def test_client_join_returns_only_after_on_close_ran(serve, client_factory):
    """Client.join() "waits until all of this client's sessions closed": code after it
    must be able to rely on every on_close having run (a slow on_close widens the window)."""
    server = serve(Echo())

    class SlowClose(hamanet.Handler):
        def __init__(self):
            self.closes: list = []

        def on_close(self, session, exc):
            time.sleep(0.3)  # a handler doing some cleanup work
            self.closes.append(exc)

    handler = SlowClose()
    client = client_factory(handler)
    session = client.connect("127.0.0.1", server.port)
    session.write(b"ping")
    session.close()
    assert client.join(WAIT)
    assert handler.closes == [None], "join() returned before on_close ran"
