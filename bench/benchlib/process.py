"""One measurement: a server pinned to one core, the load generator pinned to the other,
and the server's figures read from /proc. A scenario whose server may do work in parallel
(`Scenario.pin_server` False: `hash`) leaves the server free to run on every CPU, the
load generator's too; the load generator stays pinned.

Before it, the warm-up pass (`warm_up`): the scenario's own load on connections of its
own, all closed before the measured ones open, the same for every server.

The load generator samples the server's CPU time (utime + stime from /proc/PID/stat,
every thread) itself, at the instants its measured window opens and closes, so the CPU
time and the message count cover exactly the same interval.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchlib.catalog import (
    CARGO_TARGET_DIR,
    LOADGEN,
    LOADGEN_CRATE,
    REPO,
    RUST_ECHO_CRATE,
    Scenario,
    Server,
)
from benchlib.static import StaticFiles
from benchlib.tls import TlsFiles

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
READY_TIMEOUT = 20.0  # a server that has not printed its ready line by then failed
STOP_TIMEOUT = 5.0  # SIGTERM, then SIGKILL
# A server's report about itself at exit (bench/servers/reactors_echo.py).
STATS_PREFIX = "hamanet-stats "
# After a run every connection is closed by the client, so the server's open fds must fall
# back to where they were (give or take a few it opens lazily) within FD_SETTLE seconds.
FD_SLACK = 8
FD_SETTLE = 3.0


class RunError(Exception):
    """A run that must count as failed: verification failure, crash, hang."""


@dataclass
class Timing:
    # Seconds of load on the measured connections before the window opens (in-run).
    warmup: float
    duration: float
    hold: float
    # The warm-up pass before every measured run (`warm_up`): seconds of the scenario's
    # own load on connections of their own, all closed before the measured ones connect.
    # 0: none, every server measured cold, as it starts.
    warm_pass: float = 0.0


@dataclass
class RunResult:
    server: str
    scenario: str
    round: int
    error: str | None = None
    messages: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    cpu_us_per_msg: float | None = None
    peak_rss_kb: int = 0
    idle_bytes_per_conn: float | None = None
    # static10m (reported per byte): body bytes received in the measured window, server
    # CPU-us per MiB of them, and MiB/s.
    body_bytes: int = 0
    cpu_us_per_mib: float | None = None
    mib_per_s: float = 0.0
    # udp64: datagrams the load generator sent (whole run: warmup, window and drain), those
    # not echoed within its loss timeout (lost, then replaced), and those of them echoed
    # after it (late).
    datagrams_sent: int = 0
    datagrams_lost: int = 0
    datagrams_late: int = 0
    leaked_fds: int = 0  # server fds still open after every client had closed
    server_output: list[str] = field(default_factory=list)
    # What a server reported about itself at exit (a `hamanet-stats {json}` line).
    server_stats: dict[str, float] = field(default_factory=dict)
    # Real-client scenarios: requests/s of each redis-benchmark test, and what the client
    # printed on stderr in a run that passed.
    tests: dict[str, float] = field(default_factory=dict)
    client_output: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def build_crates() -> None:
    """Release builds of the load generator and the native servers (the echoes
    `rust_echo` and `native_best`, `native_static`, static10m's sendfile server, and
    `native_udp`, udp64's recvmmsg/sendmmsg echo), in
    the repository's target directory as `make lint` checks them (rustls and aws-lc
    compile once for every crate there)."""
    for crate in (LOADGEN_CRATE, RUST_ECHO_CRATE):
        cmd = [
            "cargo",
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            str(crate / "Cargo.toml"),
            "--target-dir",
            str(CARGO_TARGET_DIR),
        ]
        print(f"$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


@dataclass(frozen=True)
class Cpus:
    """Where the runs go: the server's core, the load generator's, and every CPU we may
    run on (for a server that is not pinned to one core)."""

    server: int
    load: int
    every: tuple[int, ...]

    def for_server(self, scenario: Scenario) -> str:
        """taskset's CPU list for `scenario`'s server."""
        return str(self.server) if scenario.pin_server else ",".join(map(str, self.every))


def pick_cpus() -> Cpus:
    """The server's core and the load generator's: two distinct CPUs we may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("the benchmark needs two CPUs: one for the server, one for the load")
    return Cpus(cpus[0], cpus[1], tuple(cpus))


def raise_nofile_limit() -> None:
    """Children inherit it: servers holding 10,000 connections need the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status, e.g. VmRSS (now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RunError(f"no {key} in /proc/{pid}/status")


class ServerProcess:
    """A server under test (`argv`, then the port), pinned to `cpus` (taskset's list); its
    output goes to a file, never a pipe nobody reads (a server that logs a lot must not
    block on a full pipe)."""

    def __init__(self, server: Server, port: int, cpus: str, argv: tuple[str, ...]) -> None:
        self.server = server
        self.port = port
        fd, name = tempfile.mkstemp(prefix=f"bench-{server.name}-", suffix=".log")
        self.log = Path(name)
        try:
            self.proc = subprocess.Popen(
                ["taskset", "-c", cpus, *argv, str(port)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # a Ctrl-C of the runner is handled by the runner
            )
        finally:
            os.close(fd)
        # taskset execs the server, so this is the server's own pid.
        self.pid = self.proc.pid

    def output(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if any("listening" in line for line in self.output()):
                return
            if self.proc.poll() is not None:
                raise RunError(f"{self.server.name} exited with {self.proc.returncode} at start")
            time.sleep(0.02)
        raise RunError(f"{self.server.name} printed no ready line in {READY_TIMEOUT:.0f} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def discard_log(self) -> None:
        self.log.unlink(missing_ok=True)


def run_loadgen(
    args: list[str],
    cpu: int,
    timeout: float,
    on_event: Callable[[dict], None] | None = None,
) -> dict:
    """Runs the load generator to completion and returns its result line; any failure it
    reports (wrong byte, reset, short read, stall) becomes a RunError with its message."""
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), str(LOADGEN), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Every loadgen run stops by itself; the timer only guards against a bug in it.
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    result = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            if "event" in msg:
                if on_event:
                    on_event(msg)
            else:
                result = msg
        stderr = proc.stderr.read() if proc.stderr else ""
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        why = stderr.strip() or (f"killed after {timeout:.0f} s" if rc < 0 else "no message")
        raise RunError(f"load generator failed (exit {rc}): {why}")
    if result is None or result.get("errors") != 0:
        raise RunError(f"load generator gave no clean result: {result!r}")
    return result


def measure(
    server: Server,
    scenario: Scenario,
    round_no: int,
    timing: Timing,
    cpus: Cpus,
    tls: TlsFiles | None = None,
    static: StaticFiles | None = None,
) -> RunResult:
    """Starts `server` (its program for the scenario's application), drives `scenario` at
    it once, stops it. A TLS scenario needs `tls`, the run's certificates; the static-file
    scenario `static`, the run's file."""
    from benchlib.clients import DRIVERS  # it builds on this module

    res = RunResult(server.name, scenario.name, round_no)
    load_cpu = cpus.load
    argv = server.argv_for(scenario.app)
    if argv is None:
        raise ValueError(f"{server.name} has no {scenario.app} server")
    if scenario.tls:
        if tls is None:
            raise ValueError(f"{scenario.name} needs the run's TLS certificates")
        argv = tls.substitute(argv)
    if scenario.by_byte:
        if static is None:
            raise ValueError(f"{scenario.name} needs the run's static file")
        argv = static.substitute(argv)
    srv = ServerProcess(server, free_port(), cpus.for_server(scenario), argv)
    try:
        srv.wait_ready()
        fds_before = open_fds(srv.pid)
        common = ["--port", str(srv.port), "--server-pid", str(srv.pid)]
        if not server.closes_on_eof:
            common.append("--no-close-check")
        if scenario.tls and tls is not None:
            common += ["--tls", str(tls.ca)]
        if scenario.by_byte and static is not None:
            common += static.loadgen_args()
        if scenario.mode in DRIVERS:
            # The real clients warm the server up with a short run of their own first.
            DRIVERS[scenario.mode](srv, scenario, timing, load_cpu, res, tls)
        elif scenario.mode == "idle":
            _measure_idle(srv, scenario, timing, load_cpu, common, res)
        else:
            warm_up(scenario, timing, load_cpu, common)
            _measure_load(scenario, timing, load_cpu, common, res)
        if not srv.alive():
            raise RunError(f"{server.name} died during the run (exit {srv.proc.returncode})")
        res.peak_rss_kb = proc_status_kb(srv.pid, "VmHWM")
        settle = FD_SETTLE if server.closes_on_eof else 0.5
        # The load generator waits for the server's FIN on every connection before it
        # exits; redis-benchmark and wrk do not, so for them wait until every fd is closed.
        slack = 0 if scenario.real_client else FD_SLACK
        res.leaked_fds = _settled_fds(srv.pid, fds_before, settle, slack) - fds_before
        if res.leaked_fds > FD_SLACK and server.closes_on_eof:
            raise RunError(
                f"{server.name} still holds {res.leaked_fds} more fds than before the run, "
                f"{FD_SETTLE:.0f} s after every client closed (connections not closed on EOF?)"
            )
    except (RunError, OSError, ValueError) as e:
        res.error = str(e)
    finally:
        srv.stop()
        # Anything a server printed besides its ready line (tracebacks, logged handler
        # errors) is worth a look even when the run passed.
        for line in srv.output():
            if line.startswith(STATS_PREFIX):
                res.server_stats = json.loads(line[len(STATS_PREFIX) :])
            elif "listening" not in line:
                res.server_output.append(line)
        srv.discard_log()
    return res


def _settled_fds(pid: int, before: int, settle: float, slack: int = FD_SLACK) -> int:
    deadline = time.monotonic() + settle
    while True:
        now_open = open_fds(pid)
        if now_open <= before + slack or time.monotonic() > deadline:
            return now_open
        time.sleep(0.05)


def warm_up(scenario: Scenario, timing: Timing, cpu: int, common: list[str]) -> None:
    """The warm-up pass, the same for every server: the scenario's own load (its mode,
    connections, size, depth, lines and TLS) for `timing.warm_pass` seconds, with every
    byte verified, then every connection closed (the load generator sends FIN and waits
    for the server to close each one). The measured run then connects afresh to a server
    that has already accepted, served and closed a batch of the same shape.

    A server measured on the first connections it ever serves can be slowed until one of
    them closes: asyncio's selector transport reads with `sock.recv(256 KiB)`, and until
    a 256 KiB buffer has once been freed whole (which happens at the first EOF it reads)
    glibc serves every such allocation with mmap, so each read costs an mmap, an mremap,
    a munmap and two page faults (bench/README.md, "Warm-up")."""
    if timing.warm_pass <= 0:
        return
    args = [
        *scenario.loadgen_args(),
        *common,
        "--warmup",
        "0",
        "--duration",
        str(timing.warm_pass),
    ]
    try:
        run_loadgen(args, cpu, timeout=timing.warm_pass + 60)
    except RunError as e:
        raise RunError(f"warm-up pass: {e}") from e


def _measure_load(
    scenario: Scenario, timing: Timing, cpu: int, common: list[str], res: RunResult
) -> None:
    args = [
        *scenario.loadgen_args(),
        *common,
        "--warmup",
        str(timing.warmup),
        "--duration",
        str(timing.duration),
    ]
    out = run_loadgen(args, cpu, timeout=timing.warmup + timing.duration + 60)
    res.messages = int(out["messages"])
    res.seconds = float(out["seconds"])
    res.msgs_per_s = float(out["msgs_per_s"])
    res.p50_us = float(out["p50_us"])
    res.p99_us = float(out["p99_us"])
    if res.messages == 0:
        raise RunError("no message completed in the measured window")
    if "datagrams_sent" in out:
        res.datagrams_sent = int(out["datagrams_sent"])
        res.datagrams_lost = int(out["datagrams_lost"])
        res.datagrams_late = int(out["datagrams_late"])
    ticks = out.get("server_cpu_ticks")
    if ticks is None:
        raise RunError("the load generator could not sample the server's CPU time")
    res.cpu_us_per_msg = ticks / CLK_TCK * 1e6 / res.messages
    if scenario.by_byte:
        # Per byte: the body bytes that arrived in the window, not whole requests only.
        res.body_bytes = int(out["body_bytes"])
        if res.body_bytes == 0:
            raise RunError("no body byte arrived in the measured window")
        res.mib_per_s = res.body_bytes / MIB / res.seconds
        res.cpu_us_per_mib = ticks / CLK_TCK * 1e6 / (res.body_bytes / MIB)


def _measure_idle(
    srv: ServerProcess,
    scenario: Scenario,
    timing: Timing,
    cpu: int,
    common: list[str],
    res: RunResult,
) -> None:
    # idle10k's warm-up pass, whatever --warm-pass says (the baseline needs it): a first
    # small wave, 100 connections that echo once and close, pays every one-time cost
    # (code paths, arenas, caches, asyncio's first EOF) before the baseline is read, so
    # the growth measured is what each further connection costs.
    run_loadgen(
        ["idle", "--conns", "100", "--size", str(scenario.size), "--hold", "0", *common],
        cpu,
        timeout=60,
    )
    baseline = proc_status_kb(srv.pid, "VmRSS")
    held: list[int] = []

    def on_event(msg: dict) -> None:
        if msg.get("event") == "established":
            held.append(proc_status_kb(srv.pid, "VmRSS"))

    out = run_loadgen(
        [*scenario.loadgen_args(), *common, "--hold", str(timing.hold)],
        cpu,
        timeout=timing.hold + 120,
        on_event=on_event,
    )
    if not held:
        raise RunError("the load generator never reported all connections established")
    res.messages = int(out["messages"])
    res.seconds = float(out["seconds"])
    res.msgs_per_s = float(out["msgs_per_s"])
    res.p50_us = float(out["p50_us"])
    res.p99_us = float(out["p99_us"])
    res.idle_bytes_per_conn = (held[0] - baseline) * 1024 / scenario.conns
