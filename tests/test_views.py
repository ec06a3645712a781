"""Handler.recv_views: on_recv gets a read-only memoryview lent onto hamanet's receive buffer.

Covered: what the view is (a read-only, one-dimensional memoryview holding exactly the bytes
received, in order) and that a plain handler still gets bytes; that the view is released
when on_recv returns (a kept view raises ValueError, also when written; a new view of its
``obj`` raises BufferError) and is never writable (TypeError from Python, BufferError for a
C-level writable request); that views derived from it and kept (a slice,
``memoryview(data)``, a view of ``data.obj``, a strided one, a cast, an export of the view
itself) still hold the bytes originally received after many more reads on that session and
others, after the server stopped, and after on_recv raised, with one WARNING per process
(checked in a fresh interpreter, so independent of test order); ``write(view)``,
``write(view[a:b])`` and ``writelines`` of views, byte-exact through a 32 MiB echo on
several sessions at once (sha256 both ways), behind bytes already buffered, relayed to
another session (on another reactor with reactors=2), and over TLS; that ``write()`` and
``writelines()`` still send the bytes a bytearray, memoryview or array held when they got
it, whatever the caller does next; the setup errors, each by name; ``hamanet.aio``; a
worker pool, two reactors, and client sessions (``hamanet.Client``, and a per-connection
handler).

The "modes" run on the suite's defaults, on a pool of 2 workers and on 2 reactors, whatever
HAMANET_TEST_WORKERS / HAMANET_TEST_REACTORS say (an explicit option wins over those).
Loopback only; every wait is bounded.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import hashlib
import io
import json
import pickle
import random
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import hamanet
import hamanet.aio as aio
import pytest
from _tls_support import Pki, make_pki
from conftest import (
    ROOT,
    WAIT,
    Echo,
    Recorder,
    connect,
    recv_exactly,
    recv_until_eof,
    wait_until,
)
from hamanet.framing import Delimiter, LengthPrefixed

pytestmark = pytest.mark.timeout(60)

KiB = 1 << 10
MiB = 1 << 20
EAGER_SEND_MIN = 16 * KiB  # a write this large into an empty buffer goes to the kernel at once
LENT_ONLY = "lent to on_recv only while it runs"
OUTLIVED = "a view of received bytes outlived on_recv"

MODES = [
    pytest.param({}, id="defaults"),
    pytest.param({"workers": 2}, id="workers2"),
    pytest.param({"reactors": 2}, id="reactors2"),
]


@pytest.fixture(params=MODES)
def mode(request) -> dict[str, int]:
    """Options for every Server and Client of the test: the suite's defaults, a pool of 2
    workers, or 2 reactors."""
    return dict(request.param)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("views-pki"))


# -- helpers --------------------------------------------------------------------------------
def stream(seed: int, size: int) -> bytes:
    """``size`` pseudo-random bytes for ``seed``: no block repeats, so a chunk that is lost,
    duplicated, misplaced or taken from another session (or from a later read that reused
    the memory) is caught."""
    return random.Random(seed).randbytes(size)


def assert_same(got: bytes | bytearray | memoryview, want: bytes, what: str) -> None:
    """Equality of two possibly huge byte strings, failing with the first differing offset
    (not a diff of megabytes)."""
    got = bytes(got)
    if got == want:
        return
    size = min(len(got), len(want))
    first = next((i for i in range(size) if got[i] != want[i]), size)
    pytest.fail(
        f"{what}: {len(got)} bytes, want {len(want)}; first difference at offset {first}: "
        f"got {got[first : first + 16].hex()} want {want[first : first + 16].hex()}"
    )


def send_and_read_echo(port: int, payload: bytes, chunk: int = 256 * KiB) -> bytes:
    """Sends ``payload`` from a thread of its own, then half-closes; meanwhile reads the echo
    until the server closes. Returns what came back."""
    sock = connect(port)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(payload)
            for start in range(0, len(payload), chunk):
                sock.sendall(view[start : start + chunk])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the reading side
            failure.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        echoed = recv_until_eof(sock, limit=len(payload) + MiB)
    finally:
        sender.join(WAIT)
        sock.close()
    assert not failure, f"sending failed: {failure[0]!r}"
    return echoed


def exchange(sock: socket.socket, message: bytes, answer_size: int) -> bytes:
    """Sends ``message`` on ``sock`` and reads an answer of ``answer_size`` bytes."""
    sock.sendall(message)
    return recv_exactly(sock, answer_size)


def byte_counters(endpoint: hamanet.Server | hamanet.Client) -> tuple[int, int]:
    """``(bytes_in, bytes_out)`` from ``stats()``, after asking for a wakeup (which
    publishes the counters): poll it."""
    endpoint.call_soon_threadsafe(lambda: None)
    stats = endpoint.stats()
    return stats["bytes_in"], stats["bytes_out"]


def request_writable_buffer(obj: Any) -> None:
    """``PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE)``: what a C extension that means to
    write into ``obj`` asks for. Raises what the exporter raises (AssertionError if granted)."""
    api = ctypes.PyDLL(None)  # a handle of its own: ctypes.pythonapi's functions stay as is
    get_buffer = api.PyObject_GetBuffer
    get_buffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
    get_buffer.restype = ctypes.c_int
    release = api.PyBuffer_Release
    release.argtypes = [ctypes.c_void_p]
    view = ctypes.create_string_buffer(256)  # room for a Py_buffer (80 bytes on 64-bit)
    if get_buffer(obj, view, 1) == 0:  # PyBUF_WRITABLE
        release(view)
        raise AssertionError(f"a writable buffer of {obj!r} was granted")


class ViewEcho(hamanet.Handler):
    """Writes every view back; hashes what it received, per session."""

    recv_views = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hashes: dict[int, Any] = {}
        self.received: dict[int, int] = {}
        self.types: set[type] = set()
        self.eager: list[bool] = []  # per large write: did part of it reach the kernel at once

    def on_recv(self, session, data):
        with self.lock:
            self.types.add(type(data))
            self.hashes.setdefault(session.id, hashlib.sha256()).update(data)
            self.received[session.id] = self.received.get(session.id, 0) + len(data)
        empty = session.write_buffer_size == 0
        session.write(data)
        if empty and len(data) >= EAGER_SEND_MIN:
            with self.lock:
                self.eager.append(session.write_buffer_size < len(data))


class ViewCollector(hamanet.Handler):
    """Copies every view it gets (per session) and notes what each one was."""

    recv_views = True

    def __init__(self, ack: bytes = b"") -> None:
        self.ack = ack
        self.lock = threading.Lock()
        self.data: dict[int, bytearray] = {}
        self.seen: list[tuple[type, bool, str, int, bool]] = []

    def on_recv(self, session, data):
        with self.lock:
            self.seen.append((type(data), data.readonly, data.format, data.ndim, data.c_contiguous))
            self.data.setdefault(session.id, bytearray()).extend(data)
        if self.ack:
            session.write(self.ack)

    def received(self, session_id: int) -> bytes:
        with self.lock:
            return bytes(self.data.get(session_id, b""))

    def total(self) -> int:
        with self.lock:
            return sum(len(data) for data in self.data.values())


class TypeRecorder(Recorder):
    """A Recorder that also notes the type of every ``data`` on_recv gets."""

    def __init__(self) -> None:
        super().__init__()
        self.types: list[type] = []

    def on_recv(self, session, data):
        with self.lock:
            self.types.append(type(data))
        super().on_recv(session, data)

    def total_received(self) -> int:
        with self.lock:
            return sum(len(data) for data in self.data.values())


def assert_views_seen(seen: list[tuple[type, bool, str, int, bool]]) -> None:
    assert seen, "on_recv was never called"
    assert set(seen) == {(memoryview, True, "B", 1, True)}


# -- what the view is ---------------------------------------------------------------------------
def test_on_recv_gets_a_read_only_memoryview_of_exactly_the_bytes_received(serve, mode):
    handler = ViewCollector(ack=b"+")
    server = serve(handler, **mode)
    payloads = [stream(seed, size) for seed, size in enumerate((1, 7, 1000, 70 * KiB, 3 * MiB))]
    with connect(server.port) as sock:
        for payload in payloads:
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        acks = recv_until_eof(sock)
    assert acks and set(acks) == {ord("+")}  # one per call, and the session closed at EOF
    (session_id,) = handler.data
    assert_same(handler.received(session_id), b"".join(payloads), "bytes seen through views")
    assert_views_seen(handler.seen)
    assert len(acks) == len(handler.seen)


def test_recv_views_defaults_to_false_and_on_recv_then_gets_bytes(serve, mode):
    assert hamanet.Handler.recv_views is False
    recorder = TypeRecorder()
    server = serve(recorder, **mode)
    with connect(server.port) as sock:
        sock.sendall(b"plain")
        wait_until(lambda: recorder.total_received() == 5, what="on_recv")
    assert recorder.types == [bytes]


def test_a_kept_view_is_released_and_its_obj_lends_nothing_after_the_call(serve, mode):
    """The view kept from the first call is used in the second (which starts only once the
    first has returned) and from the test: ValueError; a new view of its ``obj``: BufferError
    naming the rule. During the call, a view of ``obj`` could be made."""
    outcomes: dict[str, Any] = {}
    kept: list[tuple[memoryview, Any]] = []

    def attempt(name: str, action: Callable[[], Any]) -> None:
        try:
            outcomes[name] = ("returned", action())
        except Exception as exc:
            outcomes[name] = (type(exc), str(exc))

    class Keeper(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            if not kept:
                attempt("obj view during the call", lambda: bytes(memoryview(data.obj)))
                kept.append((data, data.obj))
            else:
                view, obj = kept[0]
                attempt("index", lambda: view[0])
                attempt("bytes", lambda: bytes(view))
                attempt("len", lambda: len(view))
                attempt("obj view", lambda: memoryview(obj))
            session.write(b"+")

    server = serve(Keeper(), **mode)
    with connect(server.port) as sock:
        assert exchange(sock, b"first", 1) == b"+"
        assert exchange(sock, b"second", 1) == b"+"
    assert outcomes.pop("obj view during the call") == ("returned", b"first")
    for name in ("index", "bytes", "len"):
        kind, message = outcomes[name]
        assert kind is ValueError and "released memoryview" in message, (name, message)
    kind, message = outcomes["obj view"]
    assert kind is BufferError and LENT_ONLY in message
    view, obj = kept[0]
    with pytest.raises(ValueError, match="released"):
        view.tobytes()
    view.release()  # releasing again is harmless
    with pytest.raises(BufferError, match=LENT_ONLY):
        memoryview(obj)


def test_a_kept_obj_lends_nothing_in_any_later_call(serve, mode):
    """Holding ``data.obj`` past the call (and nothing else): it is never the object a later
    view is lent from, in that session or another, and lends no view itself, while calls
    that keep nothing go on (and hamanet may reuse what they leave)."""
    held: list[Any] = []
    outcomes: list[tuple[str, str]] = []

    class Holder(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            if not held:
                held.append(data.obj)
            else:
                try:
                    lent = bytes(memoryview(held[0]))
                except BufferError:
                    lent = b""
                outcomes.append(("same" if data.obj is held[0] else "other", repr(lent)))
            session.write(bytes(data))

    server = serve(Holder(), **mode)
    with connect(server.port) as one, connect(server.port) as two:
        for round_ in range(20):
            for sock in (one, two):
                message = b"%d" % round_
                assert exchange(sock, message, len(message)) == message
    assert len(outcomes) == 39
    assert set(outcomes) == {("other", "b''")}
    assert repr(held[0]).endswith(" 1 bytes>")


def test_writing_a_kept_view_after_the_call_raises_value_error(serve):
    """Writing the view kept from an earlier call is using it: ValueError, as for any other
    use (and as socket.send gives for a released memoryview), not a TypeError saying that
    write() takes no memoryview and the caller should encode text."""
    kept: list[memoryview] = []
    outcomes: dict[str, tuple[type, str]] = {}

    class Writer(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            if not kept:
                kept.append(data)
            else:
                for name, call in (
                    ("write", lambda: session.write(kept[0])),
                    ("writelines", lambda: session.writelines([kept[0]])),
                ):
                    try:
                        call()
                    except Exception as exc:
                        outcomes[name] = (type(exc), str(exc))
            session.write(b"+")

    server = serve(Writer())
    with connect(server.port) as sock:
        assert exchange(sock, b"first", 1) == b"+"
        assert exchange(sock, b"second", 1) == b"+"  # nothing of the kept view before it
    assert sorted(outcomes) == ["write", "writelines"]
    for name, (kind, message) in outcomes.items():
        assert kind is ValueError and "released" in message, (name, kind, message)


def test_the_view_refuses_writes_and_writable_buffer_requests(serve, mode):
    outcomes: dict[str, tuple[type, str]] = {}
    after: list[bytes] = []

    def attempt(name: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            outcomes[name] = (type(exc), str(exc))
        else:
            outcomes[name] = (type(None), "no error")

    class Writer(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            attempt("item", lambda: data.__setitem__(0, 1))
            attempt("slice", lambda: data.__setitem__(slice(0, 2), b"zz"))
            attempt("readinto", lambda: io.BytesIO(b"zz").readinto(data))
            attempt("C request on the view", lambda: request_writable_buffer(data))
            attempt("C request on obj", lambda: request_writable_buffer(data.obj))
            after.append(bytes(data))
            session.write(b"+")

    server = serve(Writer(), **mode)
    with connect(server.port) as sock:
        assert exchange(sock, b"untouchable", 1) == b"+"
    assert outcomes["item"][0] is TypeError
    assert outcomes["slice"][0] is TypeError
    assert outcomes["readinto"][0] is TypeError
    assert outcomes["C request on the view"][0] is BufferError
    kind, message = outcomes["C request on obj"]
    assert kind is BufferError and "read-only" in message
    assert after == [b"untouchable"]


# -- views that outlive the call ------------------------------------------------------------------
class SliceKeeper(hamanet.Handler):
    """Keeps, from the first ``limit`` calls of each session, views derived from the lent one
    (with the stream offset they start at), and counts every byte received."""

    recv_views = True

    def __init__(self, limit: int = 6) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.offsets: dict[int, int] = {}
        self.calls: dict[int, int] = {}
        self.kept: list[tuple[int, int, str, Any]] = []  # (session, offset, kind, view)

    def on_recv(self, session, data):
        with self.lock:
            offset = self.offsets.get(session.id, 0)
            self.offsets[session.id] = offset + len(data)
            calls = self.calls.get(session.id, 0)
            self.calls[session.id] = calls + 1
        if calls < self.limit:
            derived = {
                "slice": data[3:],
                "memoryview": memoryview(data),
                "obj": memoryview(data.obj),
                "strided": data[1::3],
                "cast": data.cast("c"),
                # An export of the lent view itself: hamanet's release() of it then fails
                # (the view stays usable), and the bytes must be kept all the same.
                "exported": pickle.PickleBuffer(data),
            }
            with self.lock:
                self.kept.extend((session.id, offset, k, v) for k, v in derived.items())
        self.after_recv(session, data)

    def after_recv(self, session: hamanet.Session, data: memoryview) -> None:
        """Nothing; a subclass writes here."""

    def received(self, session_id: int) -> int:
        with self.lock:
            return self.offsets.get(session_id, 0)

    def wait_received(self, session_id: int, size: int) -> None:
        wait_until(lambda: self.received(session_id) >= size, what=f"{size} bytes received")

    def received_total(self) -> int:
        with self.lock:
            return sum(self.offsets.values())

    def session_ids(self) -> list[int]:
        """The sessions, in the order of their first on_recv."""
        with self.lock:
            return list(self.offsets)


def expected_view(sent: bytes, offset: int, size: int, kind: str) -> bytes:
    """What a view of ``kind`` made in a call that got ``size`` bytes at ``offset`` holds."""
    whole = sent[offset : offset + size]
    return {"slice": whole[3:], "strided": whole[1::3]}.get(kind, whole)


def kept_sizes(keeper: SliceKeeper) -> dict[tuple[int, int], int]:
    """(session, offset) -> the size of the call that kept views there."""
    return {(s, o): len(v) for s, o, kind, v in keeper.kept if kind == "memoryview"}


def check_kept(
    keeper: SliceKeeper, sent: dict[int, bytes], sizes: dict[tuple[int, int], int]
) -> None:
    """Every view ``keeper`` kept holds what its session sent at that offset."""
    for session_id, offset, kind, view in keeper.kept:
        want = expected_view(sent[session_id], offset, sizes[(session_id, offset)], kind)
        assert_same(view, want, f"kept {kind} of session {session_id} at {offset}")


def test_kept_derived_views_hold_the_received_bytes_after_much_more_traffic(serve, mode):
    keeper = SliceKeeper()
    server = serve(keeper, **mode)
    first: list[bytearray] = [bytearray() for _ in range(3)]
    socks = [connect(server.port) for _ in range(3)]
    try:
        # Small separate reads, session after session: each call keeps views of its bytes,
        # and the sessions make their first calls in the order of ``socks``.
        for round_ in range(keeper.limit):
            for index, sock in enumerate(socks):
                piece = stream(100 * index + round_, 1000 + 97 * round_)
                first[index] += piece
                sock.sendall(piece)
                wait_until(
                    lambda: keeper.received_total() == sum(map(len, first)),
                    what="the piece's on_recv",
                )
        ids = keeper.session_ids()
        assert len(ids) == 3
        sent = {session_id: bytes(first[index]) for index, session_id in enumerate(ids)}
        sizes = kept_sizes(keeper)
        assert len(sizes) == 3 * keeper.limit  # every session's first calls kept views
        check_kept(keeper, sent, sizes)
        # Then many more reads on every session, into memory a careless reactor would reuse.
        more = [stream(1000 + index, 6 * MiB) for index in range(3)]
        with ThreadPoolExecutor(3) as pool:
            sending = [pool.submit(sock.sendall, data) for sock, data in zip(socks, more)]
            for future in sending:
                future.result(timeout=4 * WAIT)
        totals = {s: len(first[i]) + len(more[i]) for i, s in enumerate(ids)}
        wait_until(
            lambda: all(keeper.received(s) == total for s, total in totals.items()),
            what="every byte read",
        )
        check_kept(keeper, sent, sizes)
    finally:
        for sock in socks:
            sock.close()
    server.stop(timeout=WAIT)
    gc.collect()
    check_kept(keeper, sent, sizes)  # the reactor is gone: the memory the views hold is not
    keeper.kept.clear()
    gc.collect()


@pytest.mark.handler_errors
def test_an_on_recv_that_raises_still_releases_its_view_and_keeps_derived_ones(serve, mode):
    kept: list[tuple[memoryview, memoryview]] = []
    closes: list[BaseException | None] = []

    class Raising(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            kept.append((data, data[2:]))
            raise RuntimeError("on purpose")

        def on_close(self, session, exc):
            closes.append(exc)

    server = serve(Raising(), **mode)
    with connect(server.port) as sock:
        sock.sendall(b"doomed bytes")
        wait_until(lambda: closes, what="the abort")
    (exc,) = closes
    assert isinstance(exc, RuntimeError) and str(exc) == "on purpose"
    ((view, derived),) = kept
    with pytest.raises(ValueError, match="released"):
        bytes(view)
    assert bytes(derived) == b"omed bytes"


def test_the_outlived_warning_is_logged_once_per_process():
    """In a fresh interpreter (the warning is once per process, so this is independent of
    the tests that ran before): copying keeps the log quiet; then kept views on two servers,
    two sessions and many calls log exactly one WARNING on the ``hamanet`` logger."""
    script = textwrap.dedent(
        """
        import json, logging, os, socket, sys
        import hamanet

        options = {
            option: int(os.environ[variable])
            for variable, option in (
                ("HAMANET_TEST_WORKERS", "workers"), ("HAMANET_TEST_REACTORS", "reactors")
            )
            if os.environ.get(variable)
        }
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append((record.name, record.levelname, record.getMessage()))

        logging.getLogger("hamanet").addHandler(Keep())
        kept = []

        class Views(hamanet.Handler):
            recv_views = True
            keep = False

            def on_recv(self, session, data):
                kept.append(data[1:] if self.keep else bytes(data[1:]))
                session.write(b"+")

        def run(keep, sessions, rounds):
            handler = Views()
            handler.keep = keep
            server = hamanet.Server(handler, **options)
            server.open(0)
            server.start()
            for _ in range(sessions):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.settimeout(10)
                    for _ in range(rounds):
                        sock.sendall(b"xyz")
                        assert sock.recv(1) == b"+"
            server.stop(timeout=10)  # every callback (and its warning) is over
            return len(records)

        counts = [run(False, 2, 3), run(True, 2, 3), run(True, 1, 2)]
        print(json.dumps({"counts": counts, "records": records, "kept": len(kept)}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * WAIT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kept"] == 2 * 3 + 2 * 3 + 1 * 2
    assert report["counts"] == [0, 1, 1], report
    ((name, level, message),) = report["records"]
    assert name == "hamanet" and level == "WARNING"
    assert OUTLIVED in message and "bytes(data[start:end])" in message


# -- writing views -------------------------------------------------------------------------------
def test_a_32_mib_echo_of_views_on_several_sessions_is_byte_exact(serve, mode):
    handler = ViewEcho()
    server = serve(handler, **mode)
    payloads = [stream(seed, 32 * MiB) for seed in range(3)]
    with ThreadPoolExecutor(len(payloads)) as pool:
        futures = [pool.submit(send_and_read_echo, server.port, p) for p in payloads]
        echoes = [future.result(timeout=6 * WAIT) for future in futures]
    for index, (payload, echoed) in enumerate(zip(payloads, echoes)):
        assert_same(echoed, payload, f"the echo of session {index}")
    want = sorted(hashlib.sha256(payload).hexdigest() for payload in payloads)
    with handler.lock:
        got = sorted(digest.hexdigest() for digest in handler.hashes.values())
        types, eager = set(handler.types), list(handler.eager)
    assert got == want  # what the server received, hashed from the views
    assert types == {memoryview}
    total = sum(map(len, payloads))
    # Bytes sent straight from a view count as sent, as those sent from the buffer do.
    wait_until(lambda: byte_counters(server) == (total, total), what="bytes_in == bytes_out")
    if server.stats()["workers"] == 0:
        # The echo went at least partly straight from the views to the kernel (not
        # only through the write buffer): that path is what this test checked.
        assert any(eager), "no large write into an empty buffer reached the kernel at once"


class Interleaver(hamanet.Handler):
    """Writes each view twice behind bytes already buffered, then in pieces by writelines;
    records each call's size so the test can rebuild the output."""

    recv_views = True
    HEAD = b"<" * 100  # small: copied into the buffer, never sent at once

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.buffered: list[int] = []

    def on_recv(self, session, data):
        self.sizes.append(len(data))
        session.write(self.HEAD)
        self.buffered.append(session.write_buffer_size)
        session.write(data)
        session.write(data)
        half = len(data) // 2
        session.write(data[:half])
        session.writelines([data[half:], b"|", data, memoryview(data)[: half // 2]])
        session.write(b"x" * 20000)
        session.write(data)


def interleaved(sent: bytes, sizes: list[int]) -> bytes:
    out = bytearray()
    offset = 0
    for size in sizes:
        data = sent[offset : offset + size]
        half = size // 2
        out += Interleaver.HEAD + data + data + data[:half]
        out += data[half:] + b"|" + data + data[: half // 2] + b"x" * 20000 + data
        offset += size
    assert offset == len(sent)
    return bytes(out)


def test_views_written_behind_buffered_bytes_arrive_exact(serve, mode):
    handler = Interleaver()
    server = serve(handler, **mode)
    sent = stream(7, 6 * MiB)
    with connect(server.port) as sock:
        pieces = [sent[i : i + 300 * KiB] for i in range(0, len(sent), 300 * KiB)]
        pieces[0:1] = [pieces[0][:10], pieces[0][10:]]  # small views too
        echoed = bytearray()
        for piece in pieces:
            sock.sendall(piece)
            # Takes only what has arrived, never waiting for the rest: this side reads
            # more slowly than the server writes, so the server's buffer fills.
            sock.setblocking(False)
            try:
                while chunk := sock.recv(1 << 20):
                    echoed += chunk
            except BlockingIOError:
                pass
            sock.settimeout(WAIT)
        sock.shutdown(socket.SHUT_WR)
        echoed += recv_until_eof(sock, limit=64 * MiB)
    assert_same(echoed, interleaved(sent, handler.sizes), "the interleaved writes")
    if server.stats()["workers"] == 0:
        assert min(handler.buffered) >= len(Interleaver.HEAD)


def test_views_relayed_to_another_session_arrive_exact(client_factory, mode):
    """A client writes what session A receives, as views, to session B: with two reactors,
    from A's reactor thread into a session of the other (client sessions go to the reactors
    in turn), which must not send from the view while B's own reactor flushes."""

    class Relay(hamanet.Handler):
        recv_views = True
        target: hamanet.Session | None = None

        def on_recv(self, session, data):
            assert self.target is not None and session is not self.target
            self.target.write(data)

    relay = Relay()
    payload = stream(11, 16 * MiB)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        client = client_factory(relay, **mode)
        relay.target = client.connect("127.0.0.1", port)
        b_peer, _ = listener.accept()
        client.connect("127.0.0.1", port)
        a_peer, _ = listener.accept()
        with a_peer, b_peer:
            b_peer.settimeout(WAIT)
            if len(client.stats()["reactors"]) == 2:
                wait_until(
                    lambda: [r["sessions_open"] for r in client.stats()["reactors"]] == [1, 1],
                    what="one session on each reactor",
                )
            with ThreadPoolExecutor(1) as pool:
                sending = pool.submit(a_peer.sendall, payload)
                relayed = recv_exactly(b_peer, len(payload))
                sending.result(timeout=WAIT)
    assert_same(relayed, payload, "the relayed views")


def test_write_takes_other_buffers_as_they_are_at_the_call(serve, mode):
    """bytearray, memoryview, array.array and non-contiguous views written from on_recv:
    each is sent as it was when write() returned, though the caller changes (and resizes)
    it at once; small and large, into an empty buffer and behind others."""
    expected = bytearray()
    done = threading.Event()

    def scribble(session: hamanet.Session, size: int, seed: int) -> None:
        original = stream(seed, size)
        buffer = bytearray(original)
        session.write(buffer)
        buffer[:] = bytes(size)  # overwritten at once...
        buffer += b"more"  # ...and resized: write() holds no export of it any more
        expected.extend(original)
        as_view = bytearray(original)
        session.write(memoryview(as_view)[1:])
        as_view[:] = b"\xff" * size
        expected.extend(original[1:])
        numbers = array.array("i", range(size // 4))
        # The stub lists bytes, bytearray and memoryview; write() takes any buffer.
        session.write(numbers)  # type: ignore[arg-type]
        expected.extend(numbers.tobytes())
        numbers[0] = -1
        numbers.append(7)
        session.write(memoryview(bytearray(original))[::-1])  # non-contiguous: gathered
        expected.extend(original[::-1])
        strided = bytearray(original)
        session.writelines([memoryview(strided)[::2], strided])
        strided[:] = bytes(size)
        strided += b"more"
        expected.extend(original[::2] + original)

    class Scribbler(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            if not done.is_set():
                for seed, size in enumerate((5, 4096, 40 * KiB, MiB)):
                    scribble(session, size, seed)
                done.set()
            session.write(data)

    server = serve(Scribbler(), **mode)
    with connect(server.port) as sock:
        sock.sendall(b"go")
        assert done.wait(WAIT)
        got = recv_exactly(sock, len(expected) + 2)
    assert_same(got, bytes(expected) + b"go", "buffers written from on_recv")


def test_write_from_another_thread_takes_a_bytearray_as_it_was(serve, mode):
    sessions: list[hamanet.Session] = []

    class Hold(hamanet.Handler):
        recv_views = True

        def on_connect(self, session):
            sessions.append(session)

        def on_recv(self, session, data):
            pass

    server = serve(Hold(), **mode)
    with connect(server.port) as sock:
        wait_until(lambda: sessions, what="on_connect")
        expected = bytearray()
        for seed, size in enumerate((3, 20 * KiB, 2 * MiB)):
            original = stream(seed, size)
            buffer = bytearray(original)
            sessions[0].write(buffer)
            buffer[:] = bytes(size)
            buffer += b"changed"
            expected += original
        assert_same(recv_exactly(sock, len(expected)), bytes(expected), "thread writes")


def test_writelines_sends_each_chunk_as_it_was_when_the_iterable_gave_it(serve):
    """A bytearray yielded by a generator and changed in place before the next item: the
    bytes sent are those it held when yielded (each item taken as it comes, as writelines
    always did), not what it holds once the iteration ends."""

    class Lines(hamanet.Handler):
        recv_views = True

        def on_recv(self, session, data):
            buffer = bytearray(b"AAAA")

            def chunks() -> Iterator[bytearray | memoryview]:
                yield buffer
                buffer[:] = b"BBBB"  # same size: the buffer is reused for the next line
                yield buffer
                yield data

            session.writelines(chunks())

    server = serve(Lines())
    with connect(server.port) as sock:
        sock.sendall(b"!")
        assert recv_exactly(sock, 9) == b"AAAABBBB!"


def test_writelines_lets_the_iterable_reuse_a_yielded_bytearray(serve):
    """The generator grows the bytearray it yielded before giving the next item: writelines
    must not hold an export of it across the iteration (BufferError: cannot be re-sized)."""
    errors: list[BaseException] = []

    class Lines(hamanet.Handler):
        def on_recv(self, session, data):
            buffer = bytearray(b"head:")

            def chunks() -> Iterator[bytearray]:
                yield buffer
                buffer.extend(b"tail")
                yield buffer

            try:
                session.writelines(chunks())
            except BufferError as exc:
                errors.append(exc)
            session.write(b"!")

    server = serve(Lines())
    with connect(server.port) as sock:
        sock.sendall(b"?")
        answer = bytearray()
        while not answer.endswith(b"!"):
            answer += sock.recv(64)
    assert not errors, f"writelines refused a generator that reuses its buffer: {errors[0]!r}"
    assert answer == b"head:head:tail!"


# -- setup errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_recv_views_must_be_a_bool(value, client_factory):
    class Bad(hamanet.Handler):
        recv_views = value

        def on_recv(self, session, data):
            pass

    match = rf"Bad\.recv_views must be True or False, not {value!r}"
    with pytest.raises(TypeError, match=match):
        hamanet.Server(Bad())
    with pytest.raises(TypeError, match=match):
        hamanet.Client(Bad())
    server = hamanet.Server(Echo())
    with pytest.raises(TypeError, match=match):
        server.set_handler(Bad())
    client = client_factory(Echo())
    with pytest.raises(TypeError, match=match):
        client.connect_nowait("127.0.0.1", 9, handler=Bad())


def test_recv_views_with_framing_is_refused():
    class Framed(hamanet.Handler):
        recv_views = True

        def on_messages(self, session, messages):
            pass

    class FramedByItself(Framed):
        framing = Delimiter(b"\n")

    match = r"recv_views is True, but this endpoint frames its sessions"
    with pytest.raises(TypeError, match=rf"Framed\.{match}"):
        hamanet.Server(Framed(), framing=LengthPrefixed())
    with pytest.raises(TypeError, match=rf"Framed\.{match}"):
        hamanet.Client(Framed(), framing=LengthPrefixed())
    with pytest.raises(TypeError, match=rf"FramedByItself\.{match}"):
        hamanet.Server(FramedByItself())

    class Plain(hamanet.Handler):
        def on_messages(self, session, messages):
            pass

    server = hamanet.Server(Plain(), framing=LengthPrefixed())
    with pytest.raises(TypeError, match=rf"Framed\.{match}"):
        server.set_handler(Framed())

    async def main() -> None:
        with pytest.raises(TypeError, match=rf"Framed\.{match}"):
            await aio.serve(Framed(), framing=LengthPrefixed())

    asyncio.run(asyncio.wait_for(main(), WAIT))


# -- hamanet.aio -------------------------------------------------------------------------------
def test_aio_refuses_recv_views_with_an_async_on_recv():
    class AsyncRecv(hamanet.Handler):
        recv_views = True

        async def on_recv(self, session, data):
            pass

    match = r"AsyncRecv\.recv_views is True, but AsyncRecv\.on_recv is async"

    async def main() -> None:
        with pytest.raises(TypeError, match=match):
            await aio.serve(AsyncRecv())
        with pytest.raises(TypeError, match=match):
            aio.Client(AsyncRecv())
        with pytest.raises(TypeError, match=match):
            await aio.connect(AsyncRecv(), "127.0.0.1", 9)

    asyncio.run(asyncio.wait_for(main(), WAIT))


@pytest.mark.parametrize("callback", ["on_connect", "on_send", "on_eof", "on_close"])
def test_aio_refuses_recv_views_with_any_async_callback(callback):
    async def coroutine(self, session, *args):
        return None

    def on_recv(self, session, data):
        pass

    handler_class = type(
        "AsyncOther",
        (hamanet.Handler,),
        {"recv_views": True, "on_recv": on_recv, callback: coroutine},
    )
    match = r"recv_views = True needs every callback to be a plain def on hamanet\.aio"

    async def main() -> None:
        with pytest.raises(TypeError, match=match):
            await aio.serve(handler_class())
        with pytest.raises(TypeError, match=match):
            aio.Client(handler_class())

    asyncio.run(asyncio.wait_for(main(), WAIT))


class KeepingEcho(SliceKeeper):
    """Keeps views from each session's first calls, and echoes every view."""

    def after_recv(self, session: hamanet.Session, data: memoryview) -> None:
        session.write(data)


def test_aio_serves_and_connects_with_a_plain_recv_views_handler():
    """On the asyncio thread, a server echoing views (and keeping some) and a client whose
    handler gets views."""
    server_handler = KeepingEcho(limit=4)
    client_handler = ViewCollector()
    payload = stream(21, 4 * MiB)

    async def main() -> None:
        async with await aio.serve(server_handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(payload)
            await writer.drain()
            echoed = await reader.readexactly(len(payload))
            assert_same(echoed, payload, "the aio echo")
            session = await aio.connect(client_handler, "127.0.0.1", server.port)
            session.write(payload)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while client_handler.total() < len(payload) and loop.time() < deadline:
                await asyncio.sleep(0.005)
            session.close()
            writer.close()
            await writer.wait_closed()
            while not session.closed and loop.time() < deadline:
                await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(main(), 4 * WAIT))
    (received,) = client_handler.data.values()
    assert_same(received, payload, "what the aio client's views held")
    assert_views_seen(client_handler.seen)
    ids = server_handler.session_ids()
    assert len(ids) == 2
    check_kept(server_handler, dict.fromkeys(ids, payload), kept_sizes(server_handler))


# -- client sessions, TLS, set_handler -------------------------------------------------------
def test_client_sessions_get_views(serve, client_factory, mode):
    """A Client whose handler sets recv_views, and a per-connection handler that does on a
    Client whose handler does not."""
    server = serve(ViewEcho(), **mode)
    payload = stream(31, 8 * MiB)
    collector = ViewCollector()
    client = client_factory(collector, **mode)
    session = client.connect("127.0.0.1", server.port)
    session.write(payload)
    wait_until(lambda: collector.total() >= len(payload), what="the echo")
    assert_same(collector.received(session.id), payload, "the client's views")
    assert_views_seen(collector.seen)

    plain = TypeRecorder()
    other = client_factory(plain, **mode)
    own = ViewCollector()
    session = other.connect("127.0.0.1", server.port, handler=own)
    session.write(payload[:MiB])
    wait_until(lambda: own.total() >= MiB, what="the echo to the per-connection handler")
    assert_same(own.received(session.id), payload[:MiB], "the per-connection handler's views")
    assert_views_seen(own.seen)
    assert plain.events == []  # that session's callbacks were all its own handler's
    # The other way round: a plain per-connection handler on the views client gets bytes.
    session = client.connect("127.0.0.1", server.port, handler=plain)
    session.write(b"bytes again")
    wait_until(lambda: plain.received(session.id) == b"bytes again", what="the plain echo")
    assert set(plain.types) == {bytes}


def test_client_kept_views_survive_later_reads(serve, client_factory, mode):
    server = serve(ViewEcho(), **mode)
    keeper = SliceKeeper(limit=3)
    client = client_factory(keeper, **mode)
    session = client.connect("127.0.0.1", server.port)
    sent = bytearray()
    for round_ in range(keeper.limit):
        piece = stream(40 + round_, 500 + round_)
        sent += piece
        session.write(piece)
        keeper.wait_received(session.id, len(sent))
    sizes = kept_sizes(keeper)
    more = stream(50, 8 * MiB)
    session.write(more)
    keeper.wait_received(session.id, len(sent) + len(more))
    check_kept(keeper, {session.id: bytes(sent)}, sizes)


def test_tls_sessions_get_views_of_plaintext(serve, client_factory, pki, mode):
    server = hamanet.Server(ViewEcho(), **mode)
    server.open(0, tls=hamanet.TLSServerContext(pki.cert, pki.key))
    server.start()
    try:
        collector = ViewCollector()
        client = client_factory(collector, **mode)
        context = hamanet.TLSClientContext(pki.ca)
        session = client.connect("127.0.0.1", server.port, tls=context, server_hostname="localhost")
        payload = stream(61, 4 * MiB)
        session.write(payload)
        wait_until(lambda: collector.total() >= len(payload), what="the TLS echo")
        assert_same(collector.received(session.id), payload, "the TLS echo")
        assert_views_seen(collector.seen)
    finally:
        server.stop(timeout=2.0)


def test_set_handler_switches_to_views_from_the_next_wakeup(serve, mode):
    plain = TypeRecorder()
    server = serve(plain, **mode)
    views = ViewCollector(ack=b"+")
    with connect(server.port) as sock:
        sock.sendall(b"before")
        wait_until(lambda: any(plain.data.values()), what="the plain on_recv")
        server.set_handler(views)
        assert exchange(sock, b"after", 1) == b"+"
    assert list(plain.data.values()) == [bytearray(b"before")]
    assert plain.types == [bytes]
    assert list(views.data.values()) == [bytearray(b"after")]
    assert_views_seen(views.seen)
