"""Shared fixtures: servers on loopback that always stop, and a handler that records."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import hamanet
import pytest

WAIT = 10.0  # seconds any single expectation may take before the test fails


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition"):
    """Polls ``predicate`` until truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


HANDLER_ERRORS_MARKER = (
    "handler_errors: this test makes handler code raise on purpose, so the hamanet logger "
    "reporting ERRORs is expected (without the marker any such ERROR fails the test)"
)


def pytest_configure(config):
    config.addinivalue_line("markers", HANDLER_ERRORS_MARKER)
    _apply_option_defaults_from_environment()


#: Environment variables that set a default option for every Server and Client the tests
#: make (one the test gives itself wins): the whole suite then runs, say, on a worker pool.
OPTION_ENVIRONMENT = {"HAMANET_TEST_WORKERS": "workers", "HAMANET_TEST_REACTORS": "reactors"}


def _apply_option_defaults_from_environment() -> None:
    defaults = {
        option: int(os.environ[variable])
        for variable, option in OPTION_ENVIRONMENT.items()
        if os.environ.get(variable)
    }
    if not defaults:
        return
    native_loop = hamanet._endpoint.Loop

    def loop_with_defaults(owner, **options):
        # Wraps the native Loop, not Server.__init__: no stack frame is added between the
        # user's code and the warnings that point at it.
        for option, value in defaults.items():
            options.setdefault(option, value)
        return native_loop(owner, **options)

    hamanet._endpoint.Loop = loop_with_defaults


class _ErrorRecords(logging.Handler):
    """Keeps every record of ERROR or above that reaches it (from any thread)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def hamanet_errors(request) -> Iterator[list[logging.LogRecord]]:
    """Fails any test during which the ``hamanet`` logger reported an ERROR.

    hamanet logs an exception raised by handler code (and a failed reactor) on the
    ``hamanet`` logger instead of raising it anywhere a test could see it, so an
    ``assert`` inside a callback, or a callback that breaks, would otherwise pass silently.
    This fixture is autouse: every test in tests/ is covered, and the check runs after
    the test's other fixtures have stopped their servers and clients.

    OPT-OUT, for a test that makes handler code raise on purpose::

        @pytest.mark.handler_errors
        def test_a_raising_on_recv_is_logged(serve): ...

    A test that wants to look at the records asks for this fixture by name: it is the list
    of ``logging.LogRecord`` s of level ERROR or above seen so far (with or without the
    marker)."""
    logger = logging.getLogger("hamanet")
    collector = _ErrorRecords()
    saved_level = logger.level
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)  # a test that silenced the logger is still checked
    logger.addHandler(collector)
    try:
        yield collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(saved_level)
    if collector.records and request.node.get_closest_marker("handler_errors") is None:
        formatter = logging.Formatter("%(threadName)s %(levelname)s %(message)s")
        reports = "\n\n".join(formatter.format(record) for record in collector.records)
        pytest.fail(
            f"the hamanet logger reported {len(collector.records)} unexpected ERROR(s) "
            "(an exception in handler code; mark the test @pytest.mark.handler_errors if "
            f"it raises on purpose):\n{reports}",
            pytrace=False,
        )


class Echo(hamanet.Handler):
    """Writes every byte back to the session it came from."""

    def on_recv(self, session, data):
        session.write(data)


class Recorder(hamanet.Handler):
    """Records every callback; optionally echoes. Thread-safe to inspect from tests."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.lock = threading.Lock()
        self.events: list[tuple[str, Any, Any]] = []
        self.data: dict[int, bytearray] = {}
        self.sessions: dict[int, hamanet.Session] = {}
        self.closes: dict[int, list[BaseException | None]] = {}

    def _add(self, kind: str, session: hamanet.Session, arg: Any = None) -> None:
        with self.lock:
            self.events.append((kind, session.id, arg))

    def on_connect(self, session):
        with self.lock:
            self.sessions[session.id] = session
            self.data.setdefault(session.id, bytearray())
        self._add("connect", session)

    def on_recv(self, session, data):
        with self.lock:
            self.data.setdefault(session.id, bytearray()).extend(data)
        self._add("recv", session, len(data))
        if self.echo:
            session.write(data)

    def on_send(self, session):
        self._add("send", session)

    def on_eof(self, session):
        self._add("eof", session)
        return None

    def on_close(self, session, exc):
        with self.lock:
            self.closes.setdefault(session.id, []).append(exc)
        self._add("close", session, exc)

    # -- helpers for tests -------------------------------------------------------------
    def received(self, session_id: int) -> bytes:
        with self.lock:
            return bytes(self.data.get(session_id, b""))

    def kinds(self, session_id: int) -> list[str]:
        with self.lock:
            return [kind for kind, sid, _ in self.events if sid == session_id]

    def wait_sessions(self, count: int) -> list[hamanet.Session]:
        wait_until(lambda: len(self.sessions) >= count, what=f"{count} sessions")
        with self.lock:
            return list(self.sessions.values())

    def wait_closed(self, session_id: int) -> list[BaseException | None]:
        wait_until(lambda: session_id in self.closes, what=f"on_close of session {session_id}")
        with self.lock:
            return list(self.closes[session_id])


@pytest.fixture
def serve() -> Iterator[Callable[..., hamanet.Server]]:
    """``serve(handler, **options)`` -> a started Server on 127.0.0.1:<free port>."""
    servers: list[hamanet.Server] = []

    def start(handler: hamanet.Handler, **options: Any) -> hamanet.Server:
        server = hamanet.Server(handler, **options)
        server.open(0)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=2.0)


@pytest.fixture
def client_factory() -> Iterator[Callable[..., hamanet.Client]]:
    clients: list[hamanet.Client] = []

    def make(handler: hamanet.Handler, **options: Any) -> hamanet.Client:
        client = hamanet.Client(handler, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop(timeout=2.0)


def round_trip(endpoint: hamanet.Server | hamanet.Client, rounds: int = 2) -> None:
    """Waits until the reactor of ``endpoint`` has run ``rounds`` call_soon_threadsafe
    callbacks, one after the other: whatever it was doing when this was called (the rest of
    a batch, a close decided in a callback) is done, and it has gone round again."""
    for _ in range(rounds):
        ran = threading.Event()
        endpoint.call_soon_threadsafe(ran.set)
        if not ran.wait(WAIT):
            pytest.fail("the reactor did not run a call_soon_threadsafe callback")


@contextlib.contextmanager
def reactor_held(endpoint: hamanet.Server | hamanet.Client) -> Iterator[None]:
    """Holds the reactor of ``endpoint`` inside a callback (which waits on an Event, so
    other threads keep the GIL) until the block ends: what peers send meanwhile waits in
    the kernel and is read in the reactor's next wakeup."""
    if endpoint.stats()["workers"]:
        pytest.fail("reactor_held needs workers=0: on a pool, callbacks run off the reactor")
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(WAIT)

    endpoint.call_soon_threadsafe(hold)
    try:
        if not entered.wait(WAIT):
            pytest.fail("the reactor did not run the holding callback")
        yield
    finally:
        release.set()


def connect(port: int, host: str = "127.0.0.1", timeout: float = WAIT) -> socket.socket:
    """A plain blocking socket connected to the server under test."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(1 << 20, size - len(chunks)))
        if not chunk:
            raise AssertionError(f"EOF after {len(chunks)} of {size} bytes")
        chunks.extend(chunk)
    return bytes(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = bytearray()
    while len(chunks) <= limit:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(chunks)
        chunks.extend(chunk)
    raise AssertionError("peer sent more than the limit without EOF")


def reset_close(sock: socket.socket) -> None:
    """Closes ``sock`` with RST (SO_LINGER on, zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_end(sock: socket.socket, limit: int = 64 << 20) -> tuple[bytes, str]:
    """Reads until the peer ends the stream. Returns (bytes, "eof" | "reset")."""
    chunks = bytearray()
    while len(chunks) <= limit:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(chunks), "reset"
        if not chunk:
            return bytes(chunks), "eof"
        chunks.extend(chunk)
    raise AssertionError("peer sent more than the limit without ending the stream")


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", raw)[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_fds_back_to(count: int) -> None:
    """Waits for this process to hold ``count`` fds again, after freeing what is garbage:
    a stopped endpoint keeps its eventfd until the object is freed (drop the test's own
    references to it, and to exceptions whose tracebacks hold it, first)."""
    gc.collect()
    wait_until(lambda: open_fds() == count, what=f"fd count back to {count}")


@contextlib.contextmanager
def full_backlog_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose backlog is full: a further
    connect waits (the kernel drops its SYNs) until it times out. Closed on exit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # backlog 0 holds one; the rest sit in SYN_SENT
            sock = socket.socket()
            fillers.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def pattern(seed: int, size: int) -> bytes:
    """A verifiable byte pattern unique to ``seed``: a misplaced byte is caught."""
    block = bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range(65536))
    repeats, rest = divmod(size, len(block))
    return block * repeats + block[:rest]


ROOT = Path(__file__).resolve().parent.parent
# The example programs, importable by the tests (their handlers, their protocols/).
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def free_port() -> int:
    """A loopback port free right now (for programs that take a port number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A Python subprocess whose output lines are collected by background threads."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(
                target=self._pump, args=(self.popen.stdout, self.stdout, True), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.popen.stderr, self.stderr, False), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream, into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self.lines.put(line)

    def wait_line(self, prefix: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(
                    f"no line starting {prefix!r}; stdout={self.stdout} "
                    f"stderr={''.join(self.stderr)}"
                )
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    pytest.fail(
                        f"process exited ({self.popen.returncode}) before {prefix!r}; "
                        f"stderr={''.join(self.stderr)}"
                    )
                continue
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float = WAIT) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"process did not exit within {timeout}s; stdout={self.stdout}")
        for reader in self._readers:
            reader.join(WAIT)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT)


def run_example(procs: Callable[..., Proc], script: str, banner: str) -> tuple[Proc, int, str]:
    """Runs ``examples/<script> PORT`` on a free port until its line starting ``banner``:
    the process, the port and that line."""
    port = free_port()
    proc = procs(str(EXAMPLES / script), str(port))
    return proc, port, proc.wait_line(banner)


@pytest.fixture
def procs():
    started: list[Proc] = []

    def spawn(*args: str) -> Proc:
        proc = Proc(*args)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()


def rss_bytes(pid: int | str = "self") -> int:
    """The resident set size of process ``pid`` (VmRSS in /proc/PID/status), by default
    of this one."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def real_client(name: str, package: str) -> str:
    """The path of a real client (redis-cli, wrk, ...); skips the test without it, except
    in CI (CI set), where a missing client fails the test instead of silently leaving it
    untested."""
    path = shutil.which(name)
    if path is None:
        missing = f"{name} is not installed (Debian/Ubuntu: apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the real-client tests", pytrace=False)
        pytest.skip(missing)
    return path
