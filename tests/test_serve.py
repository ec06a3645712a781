"""``python -m hamanet serve``, the pre-fork supervisor, run as a program on loopback.

Every test starts the supervisor as a subprocess with ``--port 0`` (it logs the port it
bound), reads its log from a file, and leaves no process behind. The load tests assert
counts, never speeds: a verifying load (every echo compared byte for byte) runs through a
SIGHUP reload and through a ``kill -9`` of a child, and nothing may be refused, reset,
corrupted or left waiting.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import hamanet
import pytest

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 30.0  # seconds any one expectation may take before the test fails
GREETING = re.compile(rb"hamanet serve pid (\d+)\n")


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")  # a zombie has exited


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
                found.add(int(entry))
    return found


def wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Supervisor:
    """``python -m hamanet serve ...`` with its log in a file."""

    def __init__(self, tmp_path: Path, app: str, *args: str, app_dir: Path = EXAMPLES):
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, "-m", "hamanet", "serve", app, "--app-dir", str(app_dir)]
        self.proc = subprocess.Popen(
            [*command, *args], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.port: int | None = None
        self.pids_seen: set[int] = set()

    @property
    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        self.pids_seen.update(int(pid) for pid in re.findall(r"pid (\d+) gen", text))
        return text

    def wait_log(self, pattern: str, what: str | None = None, timeout: float = WAIT):
        def found():
            exited = self.proc.poll() is not None
            match = re.search(pattern, self.log)
            if not match and exited:
                pytest.fail(f"the supervisor exited ({self.proc.returncode}):\n{self.log}")
            return match

        return wait_until(found, what or repr(pattern), timeout)

    def wait_serving(self, processes: int) -> None:
        match = self.wait_log(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))
        self.wait_log(rf"serving: {processes} processes ready", "every process ready")

    def children(self) -> set[int]:
        return children_of(self.proc.pid)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {timeout:g} s:\n{self.log}")

    def close(self) -> None:
        """Whatever the test did: no process left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log  # noqa: B018 (collects the pids it logged)
        for pid in self.pids_seen:
            with contextlib.suppress(OSError):
                if alive(pid) and b"hamanet._child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def supervisors(tmp_path):
    started: list[Supervisor] = []

    def start(app: str, *args: str, app_dir: Path = EXAMPLES) -> Supervisor:
        supervisor = Supervisor(tmp_path, app, *args, app_dir=app_dir)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.close()


def start_serving(supervisors, processes: int, *args: str, app: str = "serve_app:Echo"):
    supervisor = supervisors(
        app, "--port", "0", "--processes", str(processes), "--graceful-timeout", "5", *args
    )
    supervisor.wait_serving(processes)
    return supervisor


def recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def recv_up_to(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only if the peer closed first."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def exchange(port: int, payload: bytes = b"ping") -> int:
    """One connection: the greeting's pid, and the echo checked."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        match = GREETING.fullmatch(recv_line(sock))
        assert match, "no greeting"
        sock.sendall(payload)
        assert recv_up_to(sock, len(payload)) == payload
        return int(match.group(1))


class Load:
    """Threads that open connections one after another, each sending its own random
    pattern and comparing every echoed byte, until stopped (or a connection cap)."""

    OUTCOMES = ("ok", "refused", "reset", "cut", "corrupted", "timeout", "connect_error")

    def __init__(self, port: int, threads: int = 4, cap: int = 50_000):
        self.port = port
        self.threads = threads
        self.cap = cap
        self.phase = "before"
        self.counts: Counter[str] = Counter()
        self.pids: dict[str, Counter[int]] = {}
        self.ended_on: Counter[int] = Counter()  # pid of connections that ended early
        self.bytes_verified = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in self._threads)

    @property
    def made(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def ok_in(self, phase: str) -> int:
        with self._lock:
            return sum(self.pids.get(phase, Counter()).values())

    def _record(self, outcome: str, pid: int | None = None, verified: int = 0) -> None:
        with self._lock:
            self.counts[outcome] += 1
            self.bytes_verified += verified
            if outcome == "ok":
                self.pids.setdefault(self.phase, Counter())[pid] += 1
            elif pid is not None:
                self.ended_on[pid] += 1

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        number = 0
        while not self._stop.is_set() and self.made < self.cap:
            number += 1
            size = rng.randint(1, 16 * 1024)
            payload = f"{index}:{number}:".encode() + rng.getrandbits(size * 8).to_bytes(
                size, "big"
            )
            self._one(payload)

    def _one(self, payload: bytes) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        except ConnectionRefusedError:
            return self._record("refused")
        except socket.timeout:
            return self._record("timeout")
        except OSError:
            return self._record("connect_error")
        pid = None
        with sock:
            try:
                line = recv_line(sock)
                match = GREETING.fullmatch(line)
                if not match:
                    return self._record("corrupted" if line else "cut")
                pid = int(match.group(1))
                sock.sendall(payload)
                echo = recv_up_to(sock, len(payload))
            except ConnectionResetError:
                return self._record("reset", pid)
            except socket.timeout:
                return self._record("timeout", pid)
            except OSError:
                return self._record("connect_error", pid)
        if echo != payload[: len(echo)]:
            return self._record("corrupted", pid)
        if len(echo) < len(payload):
            return self._record("cut", pid)
        return self._record("ok", pid, len(payload))

    def report(self) -> str:
        counts = ", ".join(f"{name} {self.counts[name]}" for name in self.OUTCOMES)
        return f"{self.made} connections: {counts}; {self.bytes_verified} bytes verified"


def test_importing_hamanet_loads_no_supervisor():
    # The supervisor's modules (and subprocess, json, select) load when serve() runs:
    # a program that never serves does not pay for them at start-up.
    probe = "import sys, hamanet; print(sorted(m for m in sys.modules if 'supervisor' in m))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert callable(hamanet.serve)


def test_several_processes_serve_one_port(supervisors):
    supervisor = start_serving(supervisors, 3)
    children = supervisor.children()
    assert len(children) == 3
    pids = Counter(exchange(supervisor.port, f"hello {i}".encode()) for i in range(60))
    assert set(pids) <= children
    assert len(pids) > 1, pids
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


def test_the_function_takes_a_factory(tmp_path):
    code = (
        "import hamanet, logging, sys\n"
        "logging.basicConfig(level='INFO')\n"
        f"hamanet.serve('serve_app:create', port=0, processes=2, app_dir={str(EXAMPLES)!r})\n"
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    try:
        text = wait_until(
            lambda: "serving: 2 processes ready" in log_path.read_text() and log_path.read_text(),
            "every process ready",
        )
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
        assert exchange(port, b"from a factory") in children_of(proc.pid)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a graceful stop, too
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_verifying_load_runs_through_a_reload(supervisors):
    supervisor = start_serving(supervisors, 2)
    before = supervisor.children()
    with Load(supervisor.port) as load:
        wait_until(lambda: load.ok_in("before") >= 200, "200 connections before the reload")
        load.phase = "during"
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_log(r"reload done: generation 2", "the reload")
        wait_until(lambda: not (before & supervisor.children()), "the old processes to exit")
        after = supervisor.children()
        load.phase = "after"
        wait_until(lambda: load.ok_in("after") >= 200, "200 connections after the reload")
    print(f"reload: {load.report()}; old pids {sorted(before)}, new {sorted(after)}")
    assert len(after) == 2
    assert not before & after
    assert set(load.pids["after"]) <= after
    # An old process drains: it stops accepting and serves its open exchanges to the end,
    # so none is cut.
    for outcome in ("refused", "reset", "cut", "corrupted", "timeout", "connect_error"):
        assert load.counts[outcome] == 0, load.report()
    assert supervisor.proc.poll() is None
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


def test_a_verifying_load_runs_through_a_kill_9(supervisors):
    supervisor = start_serving(supervisors, 2)
    before = supervisor.children()
    victim = min(before)
    with Load(supervisor.port) as load:
        wait_until(lambda: load.ok_in("before") >= 200, "200 connections before the kill")
        load.phase = "during"
        os.kill(victim, signal.SIGKILL)
        match = supervisor.wait_log(rf"\[slot (\d+) pid {victim} gen 1\] was killed by SIGKILL")
        slot = match.group(1)
        supervisor.wait_log(rf"\[slot {slot} pid (?!{victim}\b)\d+ gen 1\] ready", "a new child")
        after = supervisor.children()
        load.phase = "after"
        wait_until(lambda: load.ok_in("after") >= 200, "200 connections after the restart")
    print(f"kill -9: {load.report()}; ended early on {dict(load.ended_on)}")
    assert len(after) == 2
    assert victim not in after
    assert before - {victim} <= after
    assert set(load.pids["after"]) <= after
    for outcome in ("refused", "corrupted", "timeout", "connect_error"):
        assert load.counts[outcome] == 0, load.report()
    # Only a connection the killed process held may end early (EOF or RST); a connection
    # still queued in its slot waits for the new process instead.
    assert set(load.ended_on) <= {victim}, load.ended_on
    assert load.counts["cut"] + load.counts["reset"] <= load.threads, load.report()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


def test_sigterm_stops_every_process_gracefully(supervisors):
    supervisor = start_serving(supervisors, 2)
    children = supervisor.children()
    assert len(children) == 2
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as idle:
        assert GREETING.fullmatch(recv_line(idle))
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait_exit() == 0
        assert idle.recv(1) == b""  # its session was closed with FIN, not reset
    assert not any(alive(pid) for pid in children)
    assert "stopped" in supervisor.log


def test_no_child_outlives_a_killed_supervisor(supervisors):
    supervisor = start_serving(supervisors, 2)
    children = supervisor.children()
    assert len(children) == 2
    supervisor.signal(signal.SIGKILL)
    supervisor.wait_exit()
    wait_until(lambda: not any(alive(pid) for pid in children), "the orphans to exit")


def test_unix_socket_shared_by_every_process(supervisors, tmp_path):
    path = tmp_path / "serve.sock"
    supervisor = supervisors(
        "serve_app:Echo", "--unix", str(path), "--processes", "2", "--graceful-timeout", "5"
    )
    supervisor.wait_log(r"serving: 2 processes ready", "every process ready")
    pids = set()
    for i in range(20):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(path))
            match = GREETING.fullmatch(recv_line(sock))
            assert match
            pids.add(int(match.group(1)))
            sock.sendall(b"unix %d" % i)
            assert recv_up_to(sock, len(b"unix %d" % i)) == b"unix %d" % i
    assert pids <= supervisor.children()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0
    assert not path.exists()


APP_V1 = """\
import os
import hamanet

class App(hamanet.Handler):
    def on_connect(self, session):
        session.write(b"VERSION pid %d\\n" % os.getpid())
"""


def test_reload_imports_new_code_and_a_broken_reload_keeps_the_old(supervisors, tmp_path):
    app = tmp_path / "reloaded_app.py"
    app.write_text(APP_V1.replace("VERSION", "one"))
    supervisor = supervisors(
        "reloaded_app:App", "--port", "0", "--processes", "2", app_dir=tmp_path
    )
    supervisor.wait_serving(2)
    old = supervisor.children()

    def greeting() -> bytes:
        with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as sock:
            return recv_line(sock).split(b" pid ")[0]

    assert greeting() == b"one"
    app.write_text("raise RuntimeError('half-written deploy')\n")
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_log(r"reload to generation 2 failed: .*half-written deploy", "the failure")
    assert old <= supervisor.children()
    assert greeting() == b"one"
    app.write_text(APP_V1.replace("VERSION", "two"))
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_log(r"reload done: generation 2 serves", "the second reload")
    wait_until(lambda: not (old & supervisor.children()), "the old processes to exit")
    assert greeting() == b"two"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


@pytest.mark.parametrize(
    ("source", "app", "error"),
    [
        (
            "raise RuntimeError('boom at import')\n",
            "broken_app:App",
            "RuntimeError: boom at import",
        ),
        ("", "broken_app:App", "module 'broken_app' has no attribute 'App'"),
        ("App = 42\n", "broken_app:App", "is not a hamanet.Handler subclass"),
        ("", "no_such_module:App", "ModuleNotFoundError: No module named 'no_such_module'"),
    ],
    ids=["raises", "no-attribute", "not-a-handler", "no-module"],
)
def test_an_app_that_cannot_load_fails_at_once(supervisors, tmp_path, source, app, error):
    (tmp_path / "broken_app.py").write_text(source)
    supervisor = supervisors(app, "--port", "0", "--processes", "2", app_dir=tmp_path)
    assert supervisor.wait_exit() == 1
    log = supervisor.log
    assert f"giving up: cannot load the app {app}: " in log, log
    assert error in log, log
    assert "Traceback" in log  # the child's, for the user to read
    assert not any(alive(pid) for pid in supervisor.pids_seen)


def test_a_crash_loop_stops_with_an_error(supervisors, tmp_path):
    (tmp_path / "dying_app.py").write_text("import os\nos._exit(7)\n")
    supervisor = supervisors("dying_app:App", "--port", "0", "--processes", "2", app_dir=tmp_path)
    assert supervisor.wait_exit(60) == 1
    log = supervisor.log
    assert re.search(r"giving up: crash loop: slot \d died 5 times in a row", log), log
    assert "exited with code 7" in log
    assert "restarting in 0.1 s" in log and "restarting in 0.8 s" in log
    assert not any(alive(pid) for pid in supervisor.pids_seen)


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "hamanet", "--version"], capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0
    assert result.stdout == f"hamanet {hamanet.__version__}\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "serve_app"], "'serve_app' has no colon"),
        (["serve", "serve_app:"], "names no attribute"),
        (["serve", "serve-app:Echo"], "is not a dotted Python name"),
        (["serve", "serve_app:Echo", "--processes", "0"], "--processes: must be at least 1"),
        (["serve", "serve_app:Echo", "--port", "70000"], "a port is 0..65535"),
        (["serve", "serve_app:Echo", "--tls-cert", "cert.pem"], "--tls-cert and --tls-key go"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_usage_errors(args, words):
    result = subprocess.run(
        [sys.executable, "-m", "hamanet", *args], capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 2
    assert words in result.stderr


def test_the_function_checks_its_arguments():
    with pytest.raises(ValueError, match="has no colon"):
        hamanet.serve("serve_app")
    with pytest.raises(ValueError, match="processes must be an int >= 1"):
        hamanet.serve("serve_app:Echo", processes=0)
    with pytest.raises(ValueError, match="TLS needs both"):
        hamanet.serve("serve_app:Echo", tls_cert="cert.pem")
    with pytest.raises(FileNotFoundError):
        hamanet.serve("serve_app:Echo", tls_cert="no-cert.pem", tls_key="no-key.pem")


def test_a_port_in_use_is_refused(supervisors):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = supervisors("serve_app:Echo", "--port", str(port), "--processes", "2")
        assert supervisor.wait_exit() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in supervisor.log


def test_tls_with_several_reactors_and_workers(supervisors, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    tls = ("--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"))
    supervisor = start_serving(supervisors, 2, *tls, "--reactors", "2", "--workers", "2")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    address = ("127.0.0.1", supervisor.port)
    for i in range(10):
        raw = socket.create_connection(address, timeout=WAIT)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert GREETING.fullmatch(recv_line(sock))
            payload = b"over TLS %d" % i
            sock.sendall(payload)
            assert recv_up_to(sock, len(payload)) == payload
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


SLOW_APP = """\
import os, time
import hamanet

if os.path.exists(os.path.join(os.path.dirname(__file__), "slow")):
    time.sleep(60)  # a reload that never gets ready

class App(hamanet.Handler):
    def on_connect(self, session):
        session.write(b"hamanet serve pid %d\\n" % os.getpid())

    def on_recv(self, session, data):
        time.sleep(60)  # a callback that holds a graceful stop
"""


def test_a_reload_that_is_never_ready_keeps_the_old_processes(supervisors, tmp_path):
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    supervisor = supervisors(
        "slow_app:App", "--port", "0", "--processes", "2", "--ready-timeout", "1", app_dir=tmp_path
    )
    supervisor.wait_serving(2)
    old = supervisor.children()
    (tmp_path / "slow").write_text("")
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_log(r"reload to generation 2 failed: .* was not ready after 1 s", "failure")
    wait_until(lambda: supervisor.children() == old, "the new processes to be stopped")
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as sock:
        match = GREETING.fullmatch(recv_line(sock))
        assert match and int(match.group(1)) in old
    assert supervisor.proc.poll() is None
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait_exit() == 0


def test_a_second_sigterm_kills_what_a_graceful_stop_waits_for(supervisors, tmp_path):
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    supervisor = supervisors(
        "slow_app:App", "--port", "0", "--processes", "2", "--graceful-timeout", "30",
        app_dir=tmp_path,
    )  # fmt: skip
    supervisor.wait_serving(2)
    children = supervisor.children()
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as sock:
        assert GREETING.fullmatch(recv_line(sock))
        sock.sendall(b"x")  # its on_recv sleeps: the stop cannot finish
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_log(r"stopping \(SIGTERM received\)")
        supervisor.wait_log(r"gen 1\] exited with code 0", "the idle process to stop")
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait_exit() == 0
    assert "a second SIGTERM: killing 1 process" in supervisor.log
    assert not any(alive(pid) for pid in children)


ADOPTER = """\
import socket, sys, time
import hamanet

class Hello(hamanet.Handler):
    def on_connect(self, session):
        session.write(b"hello\\n")

server = hamanet.Server(Hello())
server.open_socket(socket.socket(fileno=int(sys.argv[1])))
server.start()
if sys.argv[2] == "retiring":
    server.stop_accepting()
    time.sleep(0.2)  # the reactor closes its listener in its next turn
print("ready", flush=True)
sys.stdin.read()  # until the test is done
server.stop(0.1)
"""


def test_a_process_that_stopped_accepting_leaves_the_socket_to_the_next():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = str(listener.fileno())
        processes = []
        try:
            for role in ("retiring", "serving"):
                process = subprocess.Popen(
                    [sys.executable, "-c", ADOPTER, fd, role],
                    pass_fds=[listener.fileno()],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                processes.append(process)
                assert process.stdout.readline() == b"ready\n"
            served = 0
            for _ in range(3):
                with socket.create_connection(listener.getsockname(), timeout=WAIT) as sock:
                    sock.settimeout(2.0)
                    with contextlib.suppress(socket.timeout):
                        served += recv_line(sock) == b"hello\n"
            assert served == 3
        finally:
            for process in processes:
                process.stdin.close()
                try:
                    process.wait(WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                process.stdout.close()


def test_proxy_protocol_reaches_every_process(supervisors, tmp_path):
    """--proxy-protocol: each process's listener reads the PROXY header, and the client's
    address it names is the session's peer_addr (written back by the app)."""
    (tmp_path / "peer_app.py").write_text(
        "import hamanet\n"
        "class Peer(hamanet.Handler):\n"
        "    def on_connect(self, session):\n"
        "        host, port = session.peer_addr[:2]\n"
        "        session.write(f'{host} {port}\\n'.encode())\n"
    )
    supervisor = supervisors(
        "peer_app:Peer",
        "--port",
        "0",
        "--processes",
        "2",
        "--proxy-protocol",
        app_dir=tmp_path,
    )
    supervisor.wait_serving(2)
    for i in range(6):
        with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as sock:
            sock.sendall(f"PROXY TCP4 192.0.2.{i + 1} 127.0.0.1 {40000 + i} 80\r\n".encode())
            assert recv_line(sock) == f"192.0.2.{i + 1} {40000 + i}\n".encode()
    # Without the header the connection is closed and the app never hears of it.
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_up_to(sock, 100) == b""
