"""Regression tests for the edges an adversarial probe found (issue 9): each failed before
its fix. Data lost at a Unix path, under a paused reader, at a refusal; a half-closed
session that never ended; a forked child that never exited; a stop() without a bound."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import hamanet
import pytest
from conftest import (
    WAIT,
    Recorder,
    connect,
    pattern,
    read_until_end,
    recv_exactly,
    reset_close,
    unacked_bytes,
    wait_until,
)


# == 1. open_unix never deletes what is not a socket ==========================================
def test_open_unix_refuses_a_regular_file_and_leaves_it_alone(tmp_path):
    precious = tmp_path / "important.txt"
    precious.write_bytes(b"precious data")
    server = hamanet.Server(Recorder())
    with pytest.raises(FileExistsError) as info:
        server.open_unix(precious)
    assert str(precious) in str(info.value)
    assert (
        "exists and is not a socket; open_unix() replaces only a socket file left by a dead "
        "server: choose another path or remove it yourself"
    ) in str(info.value)
    assert precious.read_bytes() == b"precious data"
    server.stop()


def test_open_unix_refuses_a_symlink_and_leaves_it_and_its_target_alone(tmp_path):
    target = tmp_path / "target.txt"
    target.write_bytes(b"target data")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    server = hamanet.Server(Recorder())
    with pytest.raises(FileExistsError):
        server.open_unix(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"target data"
    server.stop()


def test_open_unix_still_replaces_a_dead_servers_socket_file(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: a server that died
    server = hamanet.Server(Recorder())
    try:
        assert server.open_unix(path) == path
        server.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
    finally:
        server.stop()


# == 2. data, then RST, while reading is paused ================================================
class PausedFromTheStart(Recorder):
    def on_connect(self, session):
        session.pause_reading()
        super().on_connect(session)


def test_data_then_reset_while_paused_is_delivered_after_resume(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    socks = [connect(server.port) for _ in range(5)]
    sessions = recorder.wait_sessions(5)
    by_port = {session.peer_addr[1]: session for session in sessions}
    sent = {}
    for i, sock in enumerate(socks):
        sent[by_port[sock.getsockname()[1]].id] = payload = pattern(i, 100_000)
        sock.sendall(payload)
    # The bytes are in the server's receive queues before the resets follow them.
    wait_until(lambda: all(unacked_bytes(sock) == 0 for sock in socks), what="data acked")
    for sock in socks:
        reset_close(sock)
    # The reactor sees every reset (a write is now refused) but keeps the session...
    wait_until(lambda: all(s.closing for s in sessions), what="the resets seen")
    for session in sessions:
        with pytest.raises(hamanet.SessionClosedError):
            session.write(b"too late")
    with recorder.lock:
        assert recorder.closes == {}, "on_close came while reading was paused"
    # ...and delivers what came before each reset after the resume, then the reset.
    for session in sessions:
        session.resume_reading()
    for session in sessions:
        excs = recorder.wait_closed(session.id)
        assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
        assert recorder.received(session.id) == sent[session.id]
        kinds = recorder.kinds(session.id)
        assert kinds[0] == "connect" and kinds[-1] == "close" and "recv" in kinds, kinds


def test_a_reset_with_nothing_unread_closes_a_paused_session_at_once(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    reset_close(sock)
    excs = recorder.wait_closed(session.id)
    assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
    assert recorder.kinds(session.id) == ["connect", "close"]


def test_closing_a_paused_session_whose_peer_reset_reports_the_reset(serve):
    recorder = PausedFromTheStart()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    sock.sendall(b"x" * 1000)
    wait_until(lambda: unacked_bytes(sock) == 0, what="data acked")
    reset_close(sock)
    wait_until(lambda: session.closing, what="the reset seen")
    session.close()
    excs = recorder.wait_closed(session.id)
    assert len(excs) == 1 and isinstance(excs[0], ConnectionResetError), excs
    assert recorder.received(session.id) == b""  # closed without resuming: not delivered


# == 5. a peer refused by max_connections gets EOF, not RST ====================================
def test_a_refused_peer_that_sent_its_request_first_gets_eof(serve):
    recorder = Recorder(echo=True)
    server = serve(recorder, max_connections=2)
    held = [connect(server.port) for _ in range(2)]
    recorder.wait_sessions(2)
    outcomes = []
    for i in range(40):
        sock = connect(server.port)
        try:
            # The request goes out before the server even accepts: unread at the refusal.
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n" * (1 + i % 8))
            outcomes.append(read_until_end(sock)[1])
        finally:
            sock.close()
    assert outcomes == ["eof"] * 40
    wait_until(lambda: server.stats()["refused_by_limit"] == 40, what="40 refusals counted")
    with recorder.lock:
        assert len(recorder.sessions) == 2
    for sock in held:
        sock.close()


def test_a_refused_peer_that_never_sends_or_closes_is_dropped_after_a_while(serve):
    server = serve(Recorder(), max_connections=1)
    held = connect(server.port)
    lingering = connect(server.port)
    try:
        # EOF at once; the refused socket is closed by the server later, though the peer
        # never closes: a second read after the linger sees nothing new, and the server's
        # fd count returns (checked through a third connection being refused cleanly).
        assert lingering.recv(1) == b""
        third = connect(server.port)
        third.sendall(b"hello")
        assert read_until_end(third) == (b"", "eof")
        third.close()
    finally:
        held.close()
        lingering.close()


# == 7. both directions finished: the session closes by itself =================================
class KeepAfterEof(Recorder):
    def on_eof(self, session):
        super().on_eof(session)
        return True


class HalfCloser(KeepAfterEof):
    """Replies and half-closes at once; keeps the session after the peer's EOF."""

    def on_connect(self, session):
        super().on_connect(session)
        session.write(b"bye")
        session.shutdown_write()


def test_own_shutdown_then_the_peers_eof_closes_the_session(serve):
    recorder = HalfCloser()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    assert read_until_end(sock) == (b"bye", "eof")
    sock.sendall(b"last words")
    sock.shutdown(socket.SHUT_WR)
    assert recorder.wait_closed(session.id) == [None]
    assert recorder.received(session.id) == b"last words"
    assert recorder.kinds(session.id)[-2:] == ["eof", "close"]
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="no session open")
    sock.close()


def test_the_peers_eof_then_own_shutdown_closes_the_session(serve):
    recorder = KeepAfterEof()
    server = serve(recorder)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: "eof" in recorder.kinds(session.id), what="on_eof")
    round_trip = threading.Event()
    server.call_soon_threadsafe(round_trip.set)  # the reactor is past the EOF, and...
    assert round_trip.wait(WAIT)
    assert session.id not in recorder.closes  # ...kept the session open
    session.write(b"reply after your eof")
    session.shutdown_write()
    assert read_until_end(sock) == (b"reply after your eof", "eof")
    assert recorder.wait_closed(session.id) == [None]
    sock.close()


def run_script(path, source: str) -> subprocess.CompletedProcess:
    """Runs ``source`` as a Python program in a process of its own; it must exit 0."""
    path.write_text(source)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


# == 3. fork() after start(): the child's copies are dead, and the child can exit ==============
FORK_SCRIPT = """
import os, socket, sys
import hamanet

class Echo(hamanet.Handler):
    def on_connect(self, session):
        sessions.append(session)
    def on_recv(self, session, data):
        session.write(data)

sessions = []
server = hamanet.Server(Echo())
port = server.open(0)[1]
server.start()
client = hamanet.Client(hamanet.Handler())
client_session = client.connect("127.0.0.1", port)
peer = socket.create_connection(("127.0.0.1", port), timeout=10)
peer.sendall(b"ping")
assert peer.recv(4) == b"ping"
told, tell = os.pipe()
wait, release = os.pipe()
pid = os.fork()
if pid == 0:
    seen = [f"running={server.running}", f"client_running={client.running}"]
    for name, use in [
        ("call_soon", lambda: server.call_soon_threadsafe(print)),
        ("open", lambda: server.open(0)),
        ("stats", server.stats),
        ("connect", lambda: client.connect("127.0.0.1", port)),
        ("write", lambda: sessions[0].write(b"x")),
        ("client_write", lambda: client_session.write(b"x")),
    ]:
        try:
            use()
            seen.append(f"{name}=accepted")
        except (hamanet.LifecycleError, hamanet.SessionClosedError) as exc:
            seen.append(f"{name}={type(exc).__name__}")
    server.stop()
    seen.append(f"joined={server.join()}")
    os.write(tell, (" ".join(seen) + "\\n").encode())
    os.read(wait, 1)  # alive until the parent has closed its session
    sys.exit(0)  # the exit hook must not wait for the parent's reactor
print(os.read(told, 1000).decode().strip())
# The parent stops: its peer sees EOF although the child, holding copies, still lives.
server.stop()
peer.settimeout(10)
print("peer_eof", peer.recv(10) == b"")
os.write(release, b"x")
_, status = os.waitpid(pid, 0)
print("child_exit", os.waitstatus_to_exitcode(status))
client.stop()
"""


def test_a_forked_child_sees_dead_copies_and_exits(tmp_path):
    done = run_script(tmp_path / "fork.py", FORK_SCRIPT)
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "running=False",
        "client_running=False",
        "call_soon=LifecycleError",
        "open=LifecycleError",
        "stats=LifecycleError",
        "connect=LifecycleError",
        "write=SessionClosedError",
        "client_write=SessionClosedError",
        "joined=True",
    ]
    assert lines[1:] == ["peer_eof True", "child_exit 0"]


FORK_IN_CALLBACK_SCRIPT = """
import os, socket, sys
import hamanet

class Forker(hamanet.Handler):
    def on_recv(self, session, data):
        if data != b"fork":
            session.write(data)
            return
        pid = os.fork()
        if pid == 0:
            print("child ran", flush=True)
            return  # back onto the parent's reactor: hamanet ends the child
        session.write(str(pid).encode())

server = hamanet.Server(Forker())
port = server.open(0)[1]
server.start()
peer = socket.create_connection(("127.0.0.1", port), timeout=10)
peer.sendall(b"fork")
pid = int(peer.recv(100))
_, status = os.waitpid(pid, 0)
print("child_exit", os.waitstatus_to_exitcode(status))
peer.sendall(b"again")  # the parent's reactor still serves
print("served", len(peer.recv(100)) > 0)
server.stop()
"""


def test_a_child_forked_in_a_callback_that_returns_ends(tmp_path):
    done = run_script(tmp_path / "fork_in_callback.py", FORK_IN_CALLBACK_SCRIPT)
    assert done.stdout.splitlines() == ["child ran", "child_exit 0", "served True"]
    assert "the child exits now" in done.stderr


# == 4. stop(timeout): bounded, and what cannot be bounded is named ============================
class Blocker(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_recv(self, session, data):
        super().on_recv(session, data)
        self.entered.set()
        self.release.wait(WAIT)


def test_stop_names_the_callback_that_holds_it_past_its_timeout(serve, caplog):
    recorder = Blocker()
    server = serve(recorder)
    sock = connect(server.port)
    sock.sendall(b"block")
    assert recorder.entered.wait(WAIT)
    (session,) = recorder.wait_sessions(1)
    timer = threading.Timer(3.0, recorder.release.set)  # a callback that returns, late
    timer.start()
    with caplog.at_level("WARNING", logger="hamanet"):
        server.stop(timeout=0.2)
    timer.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"on_recv of session {session.id}" in w and "stop(timeout=0.2)" in w for w in warnings
    ), warnings
    # Nothing was left to send when the callback returned: a clean close, late.
    assert recorder.wait_closed(session.id) == [None]
    sock.close()


def test_a_second_stop_shortens_the_deadline_of_the_first(serve):
    recorder = Recorder()
    server = serve(recorder, write_high=1 << 20, max_write_buffer=64 << 20)
    sock = connect(server.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    (session,) = recorder.wait_sessions(1)
    session.write(b"x" * (32 << 20))  # a peer that never reads: the flush cannot finish
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 600.0})
    stopper.start()
    wait_until(lambda: not server.running or session.closing, what="the stop begun")
    server.stop(timeout=0.0)  # aborts what is left now, not in 600 s
    stopper.join(WAIT)
    assert not stopper.is_alive()
    excs = recorder.wait_closed(session.id)
    assert len(excs) == 1 and isinstance(excs[0], TimeoutError), excs
    sock.close()


CTRL_C_SCRIPT = """
import logging, sys
import hamanet
import hamanet._endpoint

logging.basicConfig(stream=sys.stdout, format="%(message)s")
hamanet._endpoint.DEFAULT_STOP_TIMEOUT = 600.0  # a graceful stop that would hang the test

class Flooder(hamanet.Handler):
    def on_connect(self, session):
        session.write(b"x" * (32 << 20))  # the peer never reads: the flush cannot finish
        print("flooding", flush=True)
    def on_close(self, session, exc):
        print("closed", type(exc).__name__, flush=True)

server = hamanet.Server(Flooder(), write_high=1 << 20, max_write_buffer=64 << 20)
print("port", server.open(0)[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_a_second_ctrl_c_aborts_a_graceful_stop_at_once(procs, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = procs(str(script))
    port = int(proc.wait_line("port").split()[1])
    sock = connect(port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        proc.wait_line("flooding")
        proc.popen.send_signal(signal.SIGINT)
        proc.wait_line("hamanet: stopping")  # graceful, and says how to cut it short
        proc.popen.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # well before the 600 s graceful deadline
        assert proc.stdout[-2:] == ["closed TimeoutError\n", "interrupted\n"]
        assert read_until_end(sock, limit=64 << 20)[1] == "reset"
    finally:
        sock.close()


# == 14-16. mistakes refused loudly, counters that say what they count =========================
@pytest.mark.parametrize("cls", [hamanet.Server, hamanet.Client])
def test_a_misspelt_option_names_the_class_and_the_closest_option(cls):
    with pytest.raises(TypeError) as info:
        cls(Recorder(), idle_timout=5)
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}() got an unknown option 'idle_timout'")
    assert "did you mean 'idle_timeout'?" in message
    assert "_Endpoint" not in message


@pytest.mark.parametrize("cls", [hamanet.Server, hamanet.Client])
def test_help_lists_the_options(cls):
    import inspect

    parameters = inspect.signature(cls).parameters
    assert {"idle_timeout", "max_connections", "write_high", "framing"} <= set(parameters)
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: hamanet.Server(Recorder(), max_write_buffer=2**64), "max_write_buffer"),
        (lambda: hamanet.Server(Recorder(), write_high=2**64), "write_high"),
        (lambda: hamanet.Server(Recorder(), recv_buffer=2**40), "recv_buffer"),
        (lambda: hamanet.Server(Recorder(), max_connections=2**64), "max_connections"),
        (lambda: hamanet.Server(Recorder()).open(0, backlog=2**40), "backlog"),
        (lambda: hamanet.framing.FixedSize(2**70), "size"),
    ],
)
def test_huge_numbers_are_a_value_error_naming_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_nul_in_a_host_or_path_is_named_as_such():
    server = hamanet.Server(Recorder())
    with pytest.raises(ValueError, match="host must not contain a NUL"):
        server.open(0, host="127.0.0.1\0evil")
    with pytest.raises(ValueError, match="path must not contain a NUL"):
        server.open_unix("/tmp/a\0b")
    client = hamanet.Client(Recorder())
    with pytest.raises(ValueError, match="host must not contain a NUL"):
        client.connect("local\0host", 80)
    server.stop()
    client.stop()


def test_call_soon_threadsafe_on_a_client_not_yet_connected_runs(client_factory):
    client = client_factory(Recorder())
    ran = threading.Event()
    handle = client.call_soon_threadsafe(ran.set)
    assert ran.wait(WAIT), "a call_soon_threadsafe before any connect() never ran"
    assert not handle.pending()
    stats = client.stats()
    assert (stats["calls_soon"], stats["timers_fired"]) == (1, 0)


def test_timers_and_soon_calls_are_counted_apart(serve):
    server = serve(Recorder())
    done = threading.Event()
    server.call_soon_threadsafe(lambda: None)
    server.call_later(0.01, done.set)
    assert done.wait(WAIT)
    wait_until(lambda: server.stats()["timers_fired"] == 1, what="the timer counted")
    assert server.stats()["calls_soon"] == 1


def test_a_coroutine_timer_callback_is_refused(serve):
    server = serve(Recorder())

    async def later():
        pass

    with pytest.raises(TypeError, match="coroutine"):
        server.call_soon_threadsafe(later)
    with pytest.raises(TypeError, match="coroutine"):
        server.call_later(1, later)


# == 6. a proxy on one reactor: outbound sessions with their own handler =======================
class Upstream(hamanet.Handler):
    """The upstream half of a proxy: what the upstream says goes to its downstream."""

    def __init__(self, downstream: hamanet.Session) -> None:
        self.downstream = downstream

    def on_recv(self, session, data):
        self.downstream.write(data)

    def on_close(self, session, exc):
        self.downstream.close()


class Proxy(hamanet.Handler):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server: hamanet.Server | None = None

    def on_connect(self, session):
        assert self.server is not None
        session.upstream = self.server.connect_nowait(
            "127.0.0.1", self.upstream_port, handler=Upstream(session)
        )

    def on_recv(self, session, data):
        session.upstream.write(data)

    def on_close(self, session, exc):
        session.upstream.close()


class Greeter(hamanet.Handler):
    """An upstream that speaks first (as SMTP, SSH and Redis replies do)."""

    def on_connect(self, session):
        session.write(b"220 hello %d\n" % session.id)

    def on_recv(self, session, data):
        session.write(data)


def test_a_server_proxies_to_an_upstream_that_speaks_first_on_its_own_reactor(serve):
    upstream = serve(Greeter())
    proxy_handler = Proxy(upstream.port)
    proxy = serve(proxy_handler)
    proxy_handler.server = proxy
    for round_ in range(200):
        with connect(proxy.port) as sock:
            banner = b""
            while not banner.endswith(b"\n"):
                chunk = sock.recv(100)
                assert chunk, f"round {round_}: EOF before the upstream's banner"
                banner += chunk
            assert banner.startswith(b"220 hello ")
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
    wait_until(lambda: proxy.stats()["sessions_open"] == 0, what="proxy sessions closed")


def test_a_connects_own_handler_gets_its_callbacks_and_the_clients_does_not(serve, client_factory):
    server = serve(Greeter())
    shared, own = Recorder(), Recorder()
    client = client_factory(shared)
    session = client.connect("127.0.0.1", server.port, handler=own)
    other = client.connect("127.0.0.1", server.port)
    wait_until(lambda: own.received(session.id).endswith(b"\n"), what="own banner")
    wait_until(lambda: shared.received(other.id).endswith(b"\n"), what="shared banner")
    session.close()
    assert own.wait_closed(session.id) == [None]
    assert session.id not in shared.sessions and session.id not in shared.closes
    assert other.id not in own.sessions


def test_server_connect_nowait_before_start_is_refused():
    server = hamanet.Server(Recorder())
    with pytest.raises(hamanet.LifecycleError, match="started first"):
        server.connect_nowait("127.0.0.1", 9)
    server.stop()


def test_any_buffer_is_written_as_its_bytes_and_text_is_refused(serve):
    import array

    recorder = Recorder()
    server = serve(recorder)
    with connect(server.port) as sock:
        (session,) = recorder.wait_sessions(1)
        numbers = array.array("i", range(1000))
        session.write(numbers)
        session.write(memoryview(array.array("d", [1.5, -2.25])))
        session.write(memoryview(b"abcdef")[::2])  # strided: its logical bytes, in order
        expected = numbers.tobytes() + array.array("d", [1.5, -2.25]).tobytes() + b"ace"
        assert recv_exactly(sock, len(expected)) == expected
        with pytest.raises(TypeError, match="encode text first"):
            session.write("text")


def test_timers_due_in_the_past_run_in_when_order(serve):
    # workers=0: the holding callback must hold the reactor itself (on a pool it would
    # hold a worker, and the timers could come due in separate turns).
    server = serve(Recorder(), workers=0)
    order: list[str] = []
    done = threading.Event()
    now = server.time()
    with_held_reactor = threading.Event()
    server.call_soon_threadsafe(with_held_reactor.wait, WAIT)  # all three land in one turn
    server.call_at(now - 1.0, order.append, "later")
    server.call_at(now - 2.0, order.append, "earlier")
    server.call_at(now - 3.0, order.append, "earliest")
    server.call_at(now - 0.5, done.set)
    with_held_reactor.set()
    assert done.wait(WAIT)
    assert order == ["earliest", "earlier", "later"]


@pytest.mark.parametrize("end", ["close", "abort"])
def test_a_client_session_ended_right_after_connect_still_gets_on_connect_first(
    serve, client_factory, end
):
    server = serve(Recorder())
    recorder = Recorder()
    client = client_factory(recorder)
    for _ in range(20):
        session = client.connect("127.0.0.1", server.port)
        getattr(session, end)()
        recorder.wait_closed(session.id)
        assert recorder.kinds(session.id) == ["connect", "close"]
