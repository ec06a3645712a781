"""Lifecycle: stop/join from other threads, graceful and forced stops, restarts on the same
port, fd hygiene over many connections, lifecycle errors, Ctrl-C/SIGTERM, handlers that
interrupt or hog the GIL, and the examples as real processes."""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import hamanet
import pytest
from conftest import (
    EXAMPLES,
    ROOT,
    WAIT,
    Recorder,
    connect,
    open_fds,
    pattern,
    read_until_end,
    recv_exactly,
    recv_until_eof,
    reset_close,
    run_example,
    wait_fds_back_to,
    wait_until,
)

# -- helpers -------------------------------------------------------------------------------


def refuses(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port any more."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except ConnectionRefusedError:
        return True
    sock.close()
    return False


def small_rcvbuf_connect(port: int) -> socket.socket:
    """A client socket with a small receive buffer, so the server's writes back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def time_wait_on(port: int) -> bool:
    """Whether /proc/net/tcp shows a TIME_WAIT connection whose local port is ``port``."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "06":
                return True
    return False


def session_of(recorder: Recorder, sock: socket.socket) -> hamanet.Session:
    """The server's session for the client socket ``sock``."""
    local = sock.getsockname()[:2]
    with recorder.lock:
        (session,) = [s for s in recorder.sessions.values() if s.peer_addr[:2] == local]
    return session


def started_server(handler: hamanet.Handler, **options) -> hamanet.Server:
    server = hamanet.Server(handler, **options)
    server.open(0)
    server.start()
    return server


# -- 1. stop() from another thread ---------------------------------------------------------


JOIN_WHILE_STOPPING = textwrap.dedent(
    """
    import threading, time, hamanet
    for i in range(20):
        server = hamanet.Server(hamanet.Handler())
        server.open(0)
        server.start()
        def stop_soon():
            time.sleep(0.05)  # not synchronisation: either order must work
            server.stop()
        stopper = threading.Thread(target=stop_soon)
        stopper.start()
        assert server.join(timeout=10) is True  # main thread joins while another stops
        stopper.join(10)
        assert not stopper.is_alive()
    print("all joined", flush=True)
    """
)


@pytest.mark.timeout(60)
def test_stop_from_other_thread_while_main_thread_joins(procs):
    """The usual shape of a server program: the main thread blocks in join() (or
    serve_forever()) and another thread calls stop(). Both calls wait for the reactor at
    the same time. Run in a subprocess: if they deadlock, this test fails instead of
    hanging the test run (a thread stuck holding the GIL cannot be interrupted)."""
    proc = procs("-c", JOIN_WHILE_STOPPING)
    try:
        code = proc.popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(
            "deadlock: join() in the main thread + stop() in another thread never "
            f"returned (completed rounds: {proc.stdout})"
        )
    proc.wait()
    assert code == 0, "".join(proc.stderr)
    assert proc.stdout == ["all joined\n"]


def test_stop_from_other_thread_while_idle():
    server = started_server(hamanet.Handler())
    try:
        assert server.running
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
        assert server.join(timeout=WAIT) is True
        assert not server.running
        assert refuses(server.port)
    finally:
        server.stop(timeout=1.0)


@pytest.mark.timeout(60)
def test_stop_from_other_thread_while_streaming():
    """stop() while a peer streams to an echo and reads the echo back: stop() returns,
    the session's buffered echo is handed to the reading peer and it is closed cleanly
    (on_close(None)); every byte the peer got is the echo of its stream, in order.

    The peer keeps sending after the close, so its kernel gets RST (the documented limit
    of a graceful close), which can cost it the tail of the echo. Which of its two threads
    sees ECONNRESET is a race: the writer's send can take the error, and the reader then
    sees a plain EOF. So neither the end the reader sees nor the echo's length is checked,
    only that the echo is a prefix and that the stream did end."""
    recorder = Recorder(echo=True)
    server = started_server(recorder)
    sock = connect(server.port)
    chunk = pattern(5, 64 * 1024)
    sent = [0]
    received = bytearray()
    ends: dict[str, object] = {}

    def writer():
        for _ in range(100_000):  # 6.4 GB at most; the stop ends it long before
            try:
                sock.sendall(chunk)
            except OSError as exc:
                ends["writer"] = exc
                return
            sent[0] += len(chunk)
        ends["writer"] = "sent everything"

    def reader():
        for _ in range(1_000_000):
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                ends["reader"] = "reset"
                return
            except OSError as exc:
                ends["reader"] = exc
                return
            if not data:
                ends["reader"] = "eof"
                return
            received.extend(data)
        ends["reader"] = "still reading"

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: len(received) > 2 << 20, what="the echo stream to be under way")
        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 5.0})
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
        assert server.join(timeout=WAIT) is True
    finally:
        server.stop(timeout=1.0)
        for thread in threads:
            thread.join(WAIT)
        sock.close()
    assert not any(thread.is_alive() for thread in threads)
    assert ends["reader"] in ("eof", "reset"), ends
    assert isinstance(ends["writer"], (BrokenPipeError, ConnectionResetError)), ends
    closes = recorder.wait_closed(session.id)
    assert closes == [None], "the reading peer took the whole flush: a clean close"
    assert recorder.kinds(session.id).count("close") == 1
    assert server.session_count == 0
    # The echo is the stream itself, from its first byte, with nothing lost or repeated.
    got = bytes(received)
    whole, rest = divmod(len(got), len(chunk))
    assert got == chunk * whole + chunk[:rest], "the echo is not a prefix of the stream"
    echoed = recorder.received(session.id)
    assert len(got) <= len(echoed) <= sent[0] + len(chunk)  # + a partly sent chunk
    whole, rest = divmod(len(echoed), len(chunk))
    assert echoed == chunk * whole + chunk[:rest], "the server read the stream wrongly"


# -- 2. stop() mid-transfer ----------------------------------------------------------------

BIG = 8 << 20


class Pusher(Recorder):
    """Writes 8 MiB to every session as soon as it connects."""

    payload = pattern(8, BIG)

    def on_connect(self, session):
        super().on_connect(session)
        session.write(self.payload)


def test_graceful_stop_flushes_everything_to_a_reading_peer():
    recorder = Pusher()
    server = started_server(recorder)
    try:
        sock = small_rcvbuf_connect(server.port)
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: session.write_buffer_size > 0, what="bytes left in the write buffer")

        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 5.0})
        stopper.start()
        # The stop has begun once the listener is gone; only then start reading.
        wait_until(lambda: refuses(server.port), what="the listener to close")
        assert session.write_buffer_size > 0, "the transfer finished before the stop"
        data = recv_until_eof(sock)
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
    finally:
        server.stop(timeout=1.0)
    assert len(data) == BIG
    assert data == Pusher.payload
    assert recorder.wait_closed(session.id) == [None]
    sock.close()


def test_stop_timeout_aborts_a_peer_that_never_reads():
    recorder = Pusher()
    server = started_server(recorder)
    try:
        sock = small_rcvbuf_connect(server.port)
        (session,) = recorder.wait_sessions(1)
        wait_until(lambda: session.write_buffer_size > 0, what="bytes left in the write buffer")

        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 0.5})
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
        assert server.join(timeout=0) is True
    finally:
        server.stop(timeout=1.0)
    closes = recorder.wait_closed(session.id)
    assert len(closes) == 1, closes
    assert isinstance(closes[0], TimeoutError), repr(closes[0])
    data, outcome = read_until_end(sock)
    sock.close()
    assert len(data) < BIG
    assert outcome == "reset", f"the peer saw {outcome} after {len(data)} bytes, not RST"


# -- 3. restarts and shared ports ----------------------------------------------------------


class EchoThenClose(hamanet.Handler):
    def on_recv(self, session, data):
        session.write(data)
        session.close()


def echo_round_trip(port: int, message: bytes) -> bytes:
    sock = connect(port)
    try:
        sock.sendall(message)
        return recv_until_eof(sock)
    finally:
        sock.close()


def test_restart_on_same_port_and_address_in_use():
    first = started_server(EchoThenClose())
    port = first.port
    try:
        assert echo_round_trip(port, b"first") == b"first"
        # The server closed first, so its side of the connection sits in TIME_WAIT.
        wait_until(lambda: time_wait_on(port), what="a TIME_WAIT connection on the port")
    finally:
        first.stop()
    assert time_wait_on(port)

    second = hamanet.Server(EchoThenClose())
    try:
        assert second.open(port) == ("127.0.0.1", port)
        second.start()
        assert echo_round_trip(port, b"second") == b"second"

        third = hamanet.Server(EchoThenClose())
        try:
            with pytest.raises(OSError) as info:
                third.open(port)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            third.stop()
        assert echo_round_trip(port, b"still second") == b"still second"
    finally:
        second.stop()


def test_reuse_port_allows_two_live_servers():
    a = hamanet.Server(EchoThenClose())
    b = hamanet.Server(EchoThenClose())
    plain = hamanet.Server(EchoThenClose())
    try:
        _, port = a.open(0, reuse_port=True)
        assert b.open(port, reuse_port=True) == ("127.0.0.1", port)
        with pytest.raises(OSError) as info:
            plain.open(port)  # without reuse_port the port is still busy
        assert info.value.errno == errno.EADDRINUSE
        a.start()
        b.start()
        for i in range(20):
            message = b"message %d" % i
            assert echo_round_trip(port, message) == message
        a.stop()
        # b alone still serves the port.
        assert echo_round_trip(port, b"after a stopped") == b"after a stopped"
    finally:
        for server in (a, b, plain):
            server.stop()


# -- 4. fd hygiene over many connections ---------------------------------------------------


@pytest.mark.timeout(90)
def test_thousand_connect_close_cycles_leak_no_fds():
    gc.collect()
    very_first = open_fds()
    recorder = Recorder(echo=True)
    server = started_server(recorder)
    client = hamanet.Client(hamanet.Handler())
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    dead_port = dead.getsockname()[1]
    try:
        # Warm up: start the client's reactor.
        client.connect("127.0.0.1", server.port).close()
        wait_until(
            lambda: client.session_count == 0 and server.session_count == 0,
            what="warm-up session closed",
        )
        baseline = open_fds()

        refused = resets = closed = 0
        for i in range(1000):
            kind = i % 3
            if kind == 0:
                session = client.connect("127.0.0.1", server.port, timeout=WAIT)
                session.close()
                closed += 1
            elif kind == 1:
                with pytest.raises(ConnectionRefusedError):
                    client.connect("127.0.0.1", dead_port, timeout=WAIT)
                refused += 1
            else:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
                reset_close(sock)
                resets += 1
        assert (closed, refused, resets) == (334, 333, 333)

        wait_until(lambda: client.session_count == 0, timeout=30, what="client sessions closed")
        wait_until(lambda: server.session_count == 0, timeout=30, what="server sessions closed")
        wait_until(
            lambda: open_fds() == baseline,
            timeout=30,
            what=f"fd count back to {baseline} (now {open_fds()})",
        )
        # Still serving after all that.
        sock = connect(server.port)
        sock.sendall(b"alive")
        assert recv_exactly(sock, 5) == b"alive"
        sock.close()
        # Every session the server saw got exactly one on_close.
        wait_until(lambda: server.session_count == 0, what="last session closed")
        with recorder.lock:
            assert set(recorder.closes) == set(recorder.sessions)
            assert all(len(excs) == 1 for excs in recorder.closes.values())
    finally:
        client.stop(timeout=2.0)
        server.stop(timeout=2.0)
        dead.close()
    # The endpoints' eventfds live as long as their objects and their Session objects.
    client = server = recorder = session = None
    wait_fds_back_to(very_first)


# -- 5. lifecycle errors -------------------------------------------------------------------


def test_lifecycle_errors():
    assert issubclass(hamanet.LifecycleError, RuntimeError)
    server = hamanet.Server(hamanet.Handler())
    try:
        with pytest.raises(hamanet.LifecycleError):
            server.join()
        with pytest.raises(hamanet.LifecycleError):
            server.join(timeout=1.0)
        server.open(0)
        server.start()
        with pytest.raises(hamanet.LifecycleError):
            server.start()
        assert server.running
    finally:
        server.stop()
    with pytest.raises(hamanet.LifecycleError):
        server.open(0)
    with pytest.raises(hamanet.LifecycleError):
        server.start()

    never_started = hamanet.Server(hamanet.Handler())
    never_started.stop()
    with pytest.raises(hamanet.LifecycleError):
        never_started.open(0)


def test_client_connect_after_stop_raises():
    server = started_server(Recorder(echo=True))
    try:
        client = hamanet.Client(hamanet.Handler())
        session = client.connect("127.0.0.1", server.port)
        session.write(b"x")
        client.stop()
        with pytest.raises(hamanet.LifecycleError):
            client.connect("127.0.0.1", server.port)
        assert session.closed

        unused = hamanet.Client(hamanet.Handler())
        unused.stop()
        with pytest.raises(hamanet.LifecycleError):
            unused.connect("127.0.0.1", server.port)
    finally:
        server.stop()


def test_context_manager_stops_server():
    recorder = Recorder(echo=True)
    with hamanet.Server(recorder) as server:
        server.open(0)
        server.start()
        port = server.port
        sock = connect(port)
        sock.sendall(b"inside")
        assert recv_exactly(sock, 6) == b"inside"
    assert not server.running
    assert recv_until_eof(sock) == b""  # the session was closed by the stop
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    (session,) = recorder.wait_sessions(1)
    assert recorder.wait_closed(session.id) == [None]


# -- 6. Ctrl-C and SIGTERM -----------------------------------------------------------------

SERVE_SCRIPT = textwrap.dedent(
    """
    import hamanet

    class Echo(hamanet.Handler):
        def on_recv(self, session, data):
            session.write(data)

    server = hamanet.Server(Echo())
    server.open(0)
    server.start()
    print("ready", server.port, flush=True)
    server.join()
    print("join returned without an exception", flush=True)
    """
)


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_join(procs):
    proc = procs("-c", SERVE_SCRIPT)
    port = int(proc.wait_line("ready").split()[1])
    sock = connect(port)
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    proc.popen.send_signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    stderr = "".join(proc.stderr)
    assert code != 0, (code, proc.stdout, stderr)
    assert "KeyboardInterrupt" in stderr, stderr
    assert not any("join returned" in line for line in proc.stdout)
    data, outcome = read_until_end(sock)
    assert (data, outcome) == (b"", "eof"), "Ctrl-C stops the server cleanly: EOF, not RST"
    sock.close()


@pytest.mark.timeout(60)
def test_echo_server_example_stops_on_sigterm(procs):
    proc, port, line = run_example(procs, "echo_server.py", "echo: listening")
    assert line.strip().endswith(f":{port}")
    sock = connect(port)
    for i in range(5):
        message = pattern(i, 10_000 * (i + 1))
        sock.sendall(message)
        assert recv_exactly(sock, len(message)) == message
    proc.popen.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    assert code == 0, (code, "".join(proc.stderr))
    # The graceful stop closed the session: EOF, not a hang.
    assert recv_until_eof(sock) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)


# -- 7. KeyboardInterrupt from a handler ---------------------------------------------------


@pytest.mark.parametrize("exit_exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_callback_surfaces_from_join(exit_exc):
    class Interrupting(Recorder):
        def on_recv(self, session, data):
            super().on_recv(session, data)
            raise exit_exc

    recorder = Interrupting()
    server = started_server(recorder)
    port = server.port
    try:
        bystander = connect(port)
        sock = connect(port)
        recorder.wait_sessions(2)
        sock.sendall(b"^C")
        with pytest.raises(exit_exc):
            server.join(timeout=WAIT)
        assert not server.running
        assert refuses(port)
    finally:
        server.stop(timeout=1.0)
    # The session whose callback raised is aborted, as for any raising callback (RST, and
    # on_close gets the exception); the stop closes every other session cleanly (EOF).
    raising = session_of(recorder, sock)
    assert read_until_end(sock) == (b"", "reset")
    assert read_until_end(bystander) == (b"", "eof"), "the stop is clean for the others"
    sock.close()
    bystander.close()
    with recorder.lock:
        closes = dict(recorder.closes)
    assert len(closes) == 2
    assert [type(exc) for exc in closes.pop(raising.id)] == [exit_exc]
    assert list(closes.values()) == [[None]]
    # Joining again after the stop neither hangs nor raises again.
    assert server.join(timeout=WAIT) is True


def test_keyboard_interrupt_in_client_callback_surfaces_from_client_join():
    """The client side of the same rule: a callback raising KeyboardInterrupt stops the
    client, and the client's join() (what a client program blocks in, see
    examples/lyrics_reader.py) re-raises it rather than returning as if all went well."""

    class Echo(hamanet.Handler):
        def on_recv(self, session, data):
            session.write(data)

    class Interrupting(hamanet.Handler):
        def on_recv(self, session, data):
            raise KeyboardInterrupt

    server = started_server(Echo())
    client = hamanet.Client(Interrupting())
    from_join = from_stop = False
    joined = None
    try:
        session = client.connect("127.0.0.1", server.port)
        session.write(b"echo me")
        try:
            joined = client.join(timeout=WAIT)
        except KeyboardInterrupt:
            from_join = True
        wait_until(lambda: session.closed, what="the client session to close")
    finally:
        try:
            client.stop(timeout=1.0)
        except KeyboardInterrupt:  # must not escape: it would end the whole test run
            from_stop = True
        server.stop(timeout=1.0)
    assert not client.running
    assert from_join, f"client.join() returned {joined!r} instead of raising KeyboardInterrupt" + (
        "; it was raised later, by client.stop()" if from_stop else ""
    )
    assert not from_stop, "raised twice: by join() and again by stop()"


# -- 8. a handler that hogs the GIL --------------------------------------------------------


@pytest.mark.timeout(60)
def test_gil_hogging_handler_loses_no_data():
    """A callback spins in Python (holding the GIL but for the interpreter's switch
    interval) while a peer pushes into the stuck reactor everything the kernel will take.
    Once it returns, every byte is echoed, in order, and the server still answers."""

    class Hog(hamanet.Handler):
        def __init__(self):
            self.hog_ports: set[int] = set()
            self.spinning = threading.Event()
            self.release = threading.Event()
            self.released: bool | None = None

        def on_recv(self, session, data):
            if session.peer_addr[1] in self.hog_ports:
                self.spinning.set()
                spins = 0
                while not self.release.is_set() and spins < 10**9:  # holds the GIL
                    spins += 1
                self.released = self.release.is_set()
                session.write(b"done")
                return
            session.write(data)

    handler = Hog()
    server = started_server(handler)
    total = 8 << 20
    payload = pattern(9, total)
    try:
        streamer = connect(server.port)
        hog = socket.socket()
        hog.settimeout(WAIT)
        hog.bind(("127.0.0.1", 0))
        handler.hog_ports.add(hog.getsockname()[1])
        hog.connect(("127.0.0.1", server.port))

        errors: list[BaseException] = []
        pushed = [0]

        def send_stream():
            try:
                half = total // 2
                streamer.sendall(payload[:half])
                hog.sendall(b"hog the GIL")
                if not handler.spinning.wait(WAIT):
                    raise AssertionError("the handler never started spinning")
                # While the reactor is stuck: push until the kernel takes no more (through a
                # non-blocking twin: a socket with a timeout waits for room even with
                # MSG_DONTWAIT).
                sent = half
                with socket.socket(fileno=os.dup(streamer.fileno())) as pusher:
                    pusher.setblocking(False)
                    for _ in range(half // 65536 + 1):
                        try:
                            sent += pusher.send(payload[sent : sent + 65536])
                        except BlockingIOError:
                            break
                        if sent == total:
                            break
                pushed[0] = sent - half
                handler.release.set()
                streamer.sendall(payload[sent:])
            except BaseException as exc:
                errors.append(exc)
            finally:
                handler.release.set()

        sender = threading.Thread(target=send_stream)
        sender.start()
        echoed = recv_exactly(streamer, total)
        sender.join(WAIT)
        assert not sender.is_alive()
        assert errors == []
        assert recv_exactly(hog, 4) == b"done"
        assert handler.released, (
            "the callback returned before the push into the stuck reactor ended"
        )
        print(f"pushed {pushed[0]} bytes into the stuck reactor")
        assert echoed == payload
        # Still responsive afterwards.
        streamer.sendall(b"after")
        assert recv_exactly(streamer, 5) == b"after"
        streamer.close()
        hog.close()
    finally:
        server.stop(timeout=2.0)


# -- 9. the lyrics examples ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_lyrics_examples(procs):
    poet, port, _ = run_example(procs, "lyrics_poet.py", "LyricsPoet: listening")
    reader = subprocess.run(
        [sys.executable, str(EXAMPLES / "lyrics_reader.py"), "4", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reader.returncode == 0, reader.stderr
    out = reader.stdout
    assert out.count("Hello client !!") == 3, out
    assert "LyricsReader: connected to" in out
    assert "LyricsReader: server closed the session (cleanly)" in out, out
    assert out.index("Hello client !!") < out.index("server closed the session")
    poet.popen.send_signal(signal.SIGINT)
    assert poet.wait(timeout=10) == 0, "".join(poet.stderr)
    assert any("LyricsPoet: recv b'4'" in line for line in poet.stdout), poet.stdout
    assert any("LyricsPoet: stopped" in line for line in poet.stdout), poet.stdout


def reactor_threads() -> int:
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip().startswith("hamanet-reactor")
        except OSError:
            pass
    return count


def test_stopped_endpoints_leave_no_reactor_thread():
    before = reactor_threads()
    server = started_server(Recorder(echo=True))
    client = hamanet.Client(hamanet.Handler())
    client.connect("127.0.0.1", server.port).write(b"x")
    # A new thread names itself once it runs: wait for that.
    started = len(server.stats()["reactors"]) + len(client.stats()["reactors"])
    wait_until(lambda: reactor_threads() == before + started, what="the named reactor threads")
    client.stop()
    server.stop()
    wait_until(lambda: reactor_threads() == before, what="both reactor threads to end")
