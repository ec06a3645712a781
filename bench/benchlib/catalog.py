"""What the benchmark runs: the servers under test and the load scenarios.

The echo scenarios: every server echoes every byte to the connection it came from and
closes on EOF, so the load generator's byte-for-byte check holds for all of them and the
comparison is like for like. The real-client scenarios (`redis`, `http`) drive the
example protocol servers with redis-benchmark and wrk; hamanet runs the examples as they
are, asyncio and uvloop run the very same protocol classes (examples/protocols/) in an
`asyncio.Protocol`. The work scenarios (`blocking`, `hash`) are echo servers whose handler
does blocking work per chunk first (a 5 ms sleep, a SHA-256): hamanet on its worker pool
(and, for scale, with `workers=0`), asyncio and uvloop with `loop.run_in_executor` on a
thread pool of the same size. The TLS scenarios (`tls-rr1k`, `tls-stream100k`,
`tls-handshake`, `redis-tls`, `https`) are their plain twins over TLS 1.3 with fresh
certificates (`benchlib/tls.py`), on the servers that have a TLS program. The asyncio
integration scenarios (`streams-rr1k`, `streams-lines`, `aio-rr64`) run one streams echo
program on asyncio's streams and on hamanet.aio's, and hamanet's echo handler under
`hamanet.aio.serve` against hamanet's own thread. The static-file scenario (`static10m`)
has the load generator fetch a 10 MiB file over keep-alive HTTP and check every body byte:
hamanet's HTTP example with `--root` (`session.sendfile`), asyncio and uvloop running the
same protocol code with `loop.sendfile` (bench/servers/static_server.py), and a native
sendfile server; its figure is server CPU per MiB sent. uvloop is the baseline of every
ratio.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchlib.static import FILE_SIZE, ROOT_ARG
from benchlib.tls import CERT_ARG, KEY_ARG

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
PYTHON = REPO / ".venv" / "bin" / "python"
LOADGEN_CRATE = BENCH / "loadgen"
RUST_ECHO_CRATE = BENCH / "servers" / "rust_echo"
# The bench crates build in the repository's target directory, as `make lint` checks
# them: rustls and aws-lc (a C build) compile once for all of them.
CARGO_TARGET_DIR = REPO / "target"
LOADGEN = CARGO_TARGET_DIR / "release" / "loadgen"
# The two native floors (bench/servers/rust_echo): the plain echo, one `send` per `recv`,
# and the best one we know, a wakeup's input gathered into one 256 KiB buffer and sent
# straight from it (src/best.rs).
RUST_ECHO = CARGO_TARGET_DIR / "release" / "rust_echo"
NATIVE_BEST = CARGO_TARGET_DIR / "release" / "native_best"
# The native floor of static10m (bench/servers/rust_echo/src/static_files.rs): sendfile(2)
# for every body, in the native-best column of that scenario.
NATIVE_STATIC = CARGO_TARGET_DIR / "release" / "native_static"
# The native floor of udp64 (bench/servers/rust_echo/src/udp.rs): recvmmsg, then sendmmsg
# of the same batch back to its senders, in the native-best column of that scenario.
NATIVE_UDP = CARGO_TARGET_DIR / "release" / "native_udp"
EXAMPLES = REPO / "examples"
REDIS_LOGIC_SERVER = BENCH / "servers" / "redis_logic_server.py"
HTTP_LOGIC_SERVER = BENCH / "servers" / "http_logic_server.py"
EXECUTOR_SERVER = BENCH / "servers" / "executor_server.py"
HASH_SERVER = BENCH / "servers" / "hash_server.py"
BLOCKING_EXAMPLE = EXAMPLES / "blocking_server.py"
REACTORS_ECHO = BENCH / "servers" / "reactors_echo.py"
UVLOOP_ECHO = BENCH / "servers" / "uvloop_echo.py"
ASYNCIO_ECHO = BENCH / "servers" / "asyncio_echo.py"
TLS_ECHO = BENCH / "servers" / "tls_echo.py"
STREAMS_ECHO = BENCH / "servers" / "streams_echo.py"
AIO_ECHO = BENCH / "servers" / "aio_echo.py"
STATIC_SERVER = BENCH / "servers" / "static_server.py"
HTTP_EXAMPLE = EXAMPLES / "http_server.py"
HTTP_PROTOCOL = EXAMPLES / "protocols" / "http.py"
# udp64: hamanet's UDP example as it is, and a DatagramProtocol echo on asyncio/uvloop.
UDP_EXAMPLE = EXAMPLES / "udp_echo.py"
UDP_ECHO_ASYNCIO = BENCH / "servers" / "udp_echo_asyncio.py"
# The applications served over TLS: their servers take `--tls CERT KEY`.
TLS_APPS = ("tls-echo", "redis-tls", "https")
# scale: reactors=1, 2, ... up to the CPUs the load generator leaves (at least 2, so a
# 2-CPU machine still shows what a second reactor does there).
SCALE_REACTORS = tuple(range(1, max(2, (os.cpu_count() or 2) - 1) + 1))
# The work scenarios' pool sizes; the sleep of `blocking` is the 5 ms default of both
# examples/blocking_server.py and bench/servers/executor_server.py.
BLOCKING_WORKERS = 32
HASH_WORKERS = 2
BASELINE = "uvloop"


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...] | None  # the echo server (the port is appended); None: none
    needs_module: str | None = None  # a Python package that must import, else skipped
    # False for a server known to leave connections open after the peer's FIN: the load
    # generator then closes without waiting for the server's FIN, and file descriptors the
    # server keeps afterwards are reported rather than failing the run.
    closes_on_eof: bool = True
    note: str = ""
    # The other servers it runs, by application (Scenario.app): (("redis", argv), ...).
    apps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Every program of it runs hamanet.aio: left out while the built module has none.
    aio: bool = False

    def available(self) -> bool:
        return self.needs_module is None or importlib.util.find_spec(self.needs_module) is not None

    def argv_for(self, app: str) -> tuple[str, ...] | None:
        """The command line (before the port) serving `app`, or None if it has none (it is
        then left out of the scenarios of that application)."""
        if app == "echo":
            return self.argv
        return dict(self.apps).get(app)

    def missing_for(self, app: str) -> str | None:
        """Why this server cannot serve `app` here although it has a program for it: only
        hamanet's TLS, while the built module has none."""
        if app in TLS_APPS and self.needs_module == "hamanet" and not _hamanet_has_tls():
            return "the built hamanet has no TLSServerContext (rebuild it: make build)"
        if self.aio and not _hamanet_has_aio():
            return "the built hamanet has no hamanet.aio (Loop.start_driven; make build)"
        if app == "static" and self.needs_module == "hamanet" and not _hamanet_has_sendfile():
            return "the built hamanet has no Session.sendfile (rebuild it: make build)"
        if app == "udp" and self.needs_module == "hamanet" and not _hamanet_has_udp():
            return "the built hamanet has no Server.open_udp (rebuild it: make build)"
        return None


def _hamanet_probe(code: str) -> bool:
    """Asked of the benchmark's Python in a child process: the runner itself never loads
    the extension module it measures."""
    return subprocess.run([str(PYTHON), "-c", code], capture_output=True).returncode == 0


@functools.cache
def _hamanet_has_tls() -> bool:
    return _hamanet_probe("import hamanet; hamanet.TLSServerContext")


@functools.cache
def _hamanet_has_aio() -> bool:
    return _hamanet_probe("import hamanet.aio; hamanet.aio.Loop.start_driven")


@functools.cache
def _hamanet_has_sendfile() -> bool:
    return _hamanet_probe("import hamanet; hamanet.Session.sendfile")


@functools.cache
def _hamanet_has_udp() -> bool:
    return _hamanet_probe("import hamanet; hamanet.Server.open_udp")


def _tls_missing(mode: str) -> str | None:
    """Why a TLS scenario driven by `mode` cannot run here, if it cannot."""
    if importlib.util.find_spec("trustme") is None:
        return "trustme is not installed (bench/run.sh installs it into .venv)"
    if mode == REDIS_BENCHMARK and not _redis_benchmark_has_tls():
        return "this redis-benchmark was built without TLS (no --tls in its --help)"
    return None


@functools.cache
def _redis_benchmark_has_tls() -> bool:
    proc = subprocess.run(["redis-benchmark", "--help"], capture_output=True, text=True)
    return "--tls" in proc.stdout + proc.stderr


def _tls(argv: tuple[str, ...]) -> tuple[str, ...]:
    """`argv` serving TLS: the certificate files are filled in when the server starts."""
    return (*argv, "--tls", CERT_ARG, KEY_ARG)


def _py(script: Path) -> tuple[str, ...]:
    return (str(PYTHON), str(script))


def _logic(loop: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The protocol servers on an asyncio-compatible loop (bench/servers/*_logic_server.py),
    and the work servers with their thread pool (bench/servers/executor_server.py)."""
    executor = _py(EXECUTOR_SERVER)
    return (
        ("redis", (*_py(REDIS_LOGIC_SERVER), loop)),
        ("http", (*_py(HTTP_LOGIC_SERVER), loop)),
        ("redis-tls", _tls((*_py(REDIS_LOGIC_SERVER), loop))),
        ("https", _tls((*_py(HTTP_LOGIC_SERVER), loop))),
        ("blocking", (*executor, loop, "sleep", "--workers", str(BLOCKING_WORKERS))),
        ("hash", (*executor, loop, "sha256", "--workers", str(HASH_WORKERS))),
    )


def _static(loop: str) -> tuple[str, tuple[str, ...]]:
    """static10m's server on an asyncio-compatible loop: the HTTP example's static files
    with `loop.sendfile` (bench/servers/static_server.py); the directory is filled in
    when the server starts."""
    return ("static", (*_py(STATIC_SERVER), loop, "--root", ROOT_ARG))


def _udp(loop: str) -> tuple[str, tuple[str, ...]]:
    """udp64's server on an asyncio-compatible loop: a DatagramProtocol echo
    (bench/servers/udp_echo_asyncio.py)."""
    return ("udp", (*_py(UDP_ECHO_ASYNCIO), loop))


def _streams(loop: str, streams: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The streams scenarios' servers: bench/servers/streams_echo.py on `loop` with
    `streams`' start_server (asyncio's or hamanet.aio's), by echo (read or readline)."""
    argv = (*_py(STREAMS_ECHO), loop, streams)
    return (("streams-read", (*argv, "read")), ("streams-lines", (*argv, "lines")))


def _hamanet_work(blocking_workers: int, hash_workers: int) -> tuple[tuple[str, ...], ...]:
    """hamanet's work servers: the blocking example (its port comes after `--port`) and
    bench/servers/hash_server.py, each with that many workers."""
    return (
        ("blocking", (*_py(BLOCKING_EXAMPLE), "--workers", str(blocking_workers), "--port")),
        ("hash", (*_py(HASH_SERVER), "--workers", str(hash_workers))),
    )


# The run order within a round: every server runs once per scenario per round (A B C A B C).
SERVERS = (
    Server(
        "uvloop",
        _py(UVLOOP_ECHO),
        "uvloop",
        apps=(
            *_logic("uvloop"),
            _static("uvloop"),
            _udp("uvloop"),
            ("tls-echo", _tls(_py(UVLOOP_ECHO))),
            *_streams("uvloop", "asyncio"),
            # aio-rr64 compares hamanet with itself; uvloop's protocol echo is the
            # baseline column every table needs.
            ("aio-echo", _py(UVLOOP_ECHO)),
        ),
    ),
    Server(
        "asyncio",
        _py(ASYNCIO_ECHO),
        apps=(
            *_logic("asyncio"),
            _static("asyncio"),
            _udp("asyncio"),
            ("tls-echo", _tls(_py(ASYNCIO_ECHO))),
            *_streams("asyncio", "asyncio"),
        ),
    ),
    Server(
        "rloop",
        _py(BENCH / "servers" / "rloop_echo.py"),
        "rloop",
        closes_on_eof=False,
        note="rloop 0.5.0 leaves some connections open (CLOSE_WAIT, fd kept) after the "
        "peer's FIN, even when eof_received closes the transport, so it is measured without "
        "the close check and its figures are informational",
    ),
    # The native floors: no Python. rust-epoll is the plain echo (one `send` per `recv`,
    # and the floor of the TLS rows with `--tls`); native-best the best we know (TCP echo
    # scenarios only).
    Server(
        "rust-epoll",
        (str(RUST_ECHO),),
        apps=(("tls-echo", _tls((str(RUST_ECHO),))),),
        note="the plain native floor (`bench/servers/rust_echo`, Rust, no Python): one "
        "edge-triggered epoll thread, each `recv` (256 KiB buffer) echoed by its own `send`",
    ),
    Server(
        "native-best",
        (str(NATIVE_BEST),),
        apps=(
            ("static", (str(NATIVE_STATIC), "--root", ROOT_ARG)),
            ("udp", (str(NATIVE_UDP),)),
        ),
        note="the best native floor (`bench/servers/rust_echo/src/best.rs`, Rust, no Python): "
        "one edge-triggered epoll thread that reads each wakeup's input until the socket is "
        "drained into one shared 256 KiB buffer and sends it straight from there, keeping "
        "only the unsent remainder per connection; TCP echo scenarios only, and in "
        "static10m `native_static` (`bench/servers/rust_echo/src/static_files.rs`): the same "
        "kind of loop serving the file over HTTP/1.1 keep-alive, each body by sendfile(2); in "
        "udp64 `native_udp` (`bench/servers/rust_echo/src/udp.rs`): one UDP socket, each "
        "wakeup's datagrams read with recvmmsg (64 a call) and sent back with one sendmmsg "
        "per batch",
    ),
    Server(
        "hamanet",
        _py(EXAMPLES / "echo_server.py"),
        "hamanet",
        apps=(
            ("redis", _py(EXAMPLES / "redis_server.py")),
            ("http", _py(EXAMPLES / "http_server.py")),
            # static10m: the HTTP example as it is, serving the run's directory.
            ("static", (*_py(HTTP_EXAMPLE), "--root", ROOT_ARG)),
            # udp64: the UDP example as it is (on_datagrams, endpoint.sendto).
            ("udp", _py(UDP_EXAMPLE)),
            # TLS: the echo handler of examples/echo_server.py with session_tickets=0
            # (bench/servers/tls_echo.py); the protocol examples as they are.
            ("tls-echo", _tls(_py(TLS_ECHO))),
            ("redis-tls", _tls(_py(EXAMPLES / "redis_server.py"))),
            ("https", _tls(_py(EXAMPLES / "http_server.py"))),
            *_hamanet_work(BLOCKING_WORKERS, HASH_WORKERS),
            ("serial", (*_py(REACTORS_ECHO), "--reactors", "1")),
            ("scale", (*_py(REACTORS_ECHO), "--reactors", "1")),
            # aio-rr64's reference: the same handler on hamanet's own reactor thread.
            ("aio-echo", _py(EXAMPLES / "echo_server.py")),
        ),
    ),
    # hamanet.aio: the reactor driven by a uvloop loop (the streams servers, and the echo
    # handler under hamanet.aio.serve), and the same on asyncio's own loop, for scale:
    # what the loop underneath costs.
    Server(
        "hamanet-aio",
        None,
        "hamanet",
        apps=(*_streams("uvloop", "hamanet"), ("aio-echo", (*_py(AIO_ECHO), "uvloop"))),
        aio=True,
        note="hamanet.aio on a uvloop loop (streams-*: hamanet.aio.start_server; aio-rr64: "
        "hamanet.aio.serve with examples/echo_server.py's handler)",
    ),
    Server(
        "hamanet-aio-asyncio",
        None,
        "hamanet",
        apps=(*_streams("asyncio", "hamanet"), ("aio-echo", (*_py(AIO_ECHO), "asyncio"))),
        aio=True,
        note="hamanet.aio as hamanet-aio, on asyncio's own loop instead of uvloop",
    ),
    # The work servers without a pool (workers=0: the reactor thread runs the handler), for
    # scale: what the pool adds. No echo server, so no column in the echo scenarios.
    Server("hamanet-w0", None, "hamanet", apps=_hamanet_work(0, 0)),
    # The echo on more reactors, for `scale` only.
    *(
        Server(
            f"hamanet-r{n}",
            None,
            "hamanet",
            apps=(("scale", (*_py(REACTORS_ECHO), "--reactors", str(n))),),
        )
        for n in SCALE_REACTORS[1:]
    ),
    # The same with one SO_REUSEPORT listener per reactor (the kernel spreads connections)
    # instead of one shared listener whose sessions go to each reactor in turn.
    *(
        Server(
            f"hamanet-r{n}-reuseport",
            None,
            "hamanet",
            apps=(("scale", (*_py(REACTORS_ECHO), "--reactors", str(n), "--reuse-port")),),
        )
        for n in SCALE_REACTORS[1:]
    ),
)

# Real-client scenarios: the client drives the load and checks the replies itself.
REDIS_BENCHMARK = "redis-benchmark"
WRK = "wrk"
# The load generator's HTTP client mode (static10m): keep-alive GETs of one file, every
# body byte checked against it.
HTTP_GET = "http-get"
# redis-benchmark runs a fixed number of requests, not a duration: this many per test
# (PING_INLINE, PING_MBULK, SET, GET) per second of --duration, about one second of work
# per test for the example servers here. The warm-up pass is a SET/GET run sized the same
# way, per second of --warm-pass.
REDIS_REQUESTS_PER_SECOND = 300_000


@dataclass(frozen=True)
class Scenario:
    name: str
    # The load generator's mode (rr, accept, idle, http-get, udp), or the real client.
    mode: str
    conns: int
    size: int
    depth: int = 1
    unit: str = "msg"  # what one counted "message" is, for the table
    # What the servers serve: echo, redis, http, static, blocking, hash, ... (Server.argv_for).
    app: str = "echo"
    needs: tuple[Path, ...] = ()  # files the scenario's servers need (else it is skipped)
    # The headline figure is THROUGHPUT (requests/s as a ratio to uvloop, higher is better)
    # with CPU per request beside it, rather than CPU per message (see `by_throughput`).
    throughput: bool = False
    # False: the server may run on every CPU (the load generator stays pinned to its own),
    # for servers that do work in parallel; True: pinned to one core, like every echo run.
    pin_server: bool = True
    # Over TLS (benchlib/tls.py): the clients speak TLS 1.3 and verify the certificate.
    tls: bool = False
    # The load generator's `--lines`: every message a line ending in its only b"\n", for
    # servers that echo by readline (bench/loadgen/src/pattern.rs keeps every byte checked).
    lines: bool = False

    @property
    def real_client(self) -> bool:
        """Driven by redis-benchmark or wrk (not the load generator)."""
        return self.mode in (REDIS_BENCHMARK, WRK)

    @property
    def by_throughput(self) -> bool:
        """Reported by THROUGHPUT (requests/s, higher is better), with CPU per request
        beside it: the real-client scenarios and those that say so (`throughput`)."""
        return self.throughput or self.real_client

    @property
    def by_byte(self) -> bool:
        """Reported by server CPU per MiB sent (lower is better), with MiB/s beside it:
        the static-file scenario (the load generator's `http-get` mode)."""
        return self.mode == HTTP_GET

    @property
    def by_message(self) -> bool:
        """Reported by server CPU per message (the echo table): every other scenario."""
        return not (self.by_throughput or self.by_byte)

    def missing(self) -> str | None:
        """Why this scenario cannot run here (a client not installed, a file not there)."""
        if self.real_client and shutil.which(self.mode) is None:
            package = "redis-tools" if self.mode == REDIS_BENCHMARK else "wrk"
            return f"{self.mode} is not installed (Debian: apt-get install {package})"
        if self.tls:
            why = _tls_missing(self.mode)
            if why:
                return why
        absent = [str(p.relative_to(REPO)) for p in self.needs if not p.exists()]
        return f"{', '.join(absent)} not found" if absent else None

    def loadgen_args(self) -> list[str]:
        """The load generator's arguments for this scenario's shape (static10m: the file's
        path and `--expect-file` come from the run, `StaticFiles.loadgen_args`)."""
        if self.mode == HTTP_GET:
            return [self.mode, "--conns", str(self.conns), "--depth", str(self.depth)]
        args = [self.mode, "--conns", str(self.conns), "--size", str(self.size)]
        if self.mode in ("rr", "udp"):
            args += ["--depth", str(self.depth)]
        if self.lines:
            args.append("--lines")
        return args

    def describe(self) -> str:
        if not self.tls:
            return self._describe_plain()
        tickets = (
            "hamanet's example with its default session tickets, asyncio/uvloop none"
            if self.real_client
            else "no session tickets, no resumption"
        )
        return (
            f"{self._describe_plain()}; over TLS 1.3 (TLS_AES_128_GCM_SHA256, X25519, "
            f"ECDSA P-256 certificate; {tickets})"
        )

    def _describe_plain(self) -> str:
        if self.mode == REDIS_BENCHMARK:
            return (
                f"redis-benchmark -t ping,set,get -P {self.depth} -c {self.conns} against the "
                "Redis-protocol example (`examples/protocols/resp.py`): requests/s is the mean "
                "of its four tests (PING_INLINE, PING_MBULK, SET, GET)"
            )
        if self.mode == WRK:
            return (
                f"wrk -t1 -c{self.conns} (keep-alive) GET / against the HTTP example "
                "(`examples/protocols/http.py`): requests/s as wrk reports it"
            )
        if self.mode == HTTP_GET:
            return (
                f"the load generator's `http-get`: {self.conns} keep-alive connections, "
                f"{self.depth} GET at a time each, of a {self.size // (1024 * 1024)} MiB file "
                "of random bytes made for the run; every response a 200 whose Content-Length "
                "and every body byte are checked against the file. hamanet: "
                "`examples/http_server.py --root DIR` (`session.sendfile`); asyncio and "
                "uvloop: the same protocol code (`HttpConnection(files=StaticFiles(DIR))`, "
                "`feed_parts`) with `await loop.sendfile(transport, file, 0, size)` "
                "(`bench/servers/static_server.py`): os.sendfile on asyncio; uvloop has no "
                "loop.sendfile (NotImplementedError), so its bodies are read (os.pread, "
                "256 KiB) and written (transport.write); native-best: `native_static`, "
                "sendfile(2) from Rust. The figure is server CPU per MiB of body sent"
            )
        if self.mode == "udp":
            return (
                f"{self.conns} UDP sockets, {self.depth} datagrams of {self.size} B in flight "
                f"each ({self.conns * self.depth} in all); every echoed byte checked, a "
                "datagram not echoed within 0.2 s counted lost and replaced (more than 1% "
                "lost fails the run). hamanet: `examples/udp_echo.py` (recvmmsg, one "
                "`on_datagrams` call per wakeup, sendmmsg); asyncio and uvloop: a "
                "`DatagramProtocol` (`bench/servers/udp_echo_asyncio.py`: one recvfrom, one "
                "`datagram_received` and one sendto per datagram); native-best: `native_udp` "
                "(Rust, recvmmsg/sendmmsg). The figure is server CPU per datagram echoed"
            )
        if self.app == "blocking":
            return (
                f"{self.conns} connections, one {self.size} B request at a time each; the "
                "handler sleeps 5 ms (a blocking call) per chunk received, then echoes it: "
                f"hamanet `examples/blocking_server.py` with {BLOCKING_WORKERS} workers "
                f"(hamanet-w0: `--workers 0`), asyncio/uvloop `run_in_executor` on "
                f"{BLOCKING_WORKERS} threads"
            )
        if self.app == "hash":
            return (
                f"{self.conns} connections, one {self.size // 1024} KiB request at a time "
                "each; the handler computes SHA-256 of each chunk received (hashlib releases "
                f"the GIL), then echoes it: hamanet with {HASH_WORKERS} workers (hamanet-w0: "
                f"0), asyncio/uvloop `run_in_executor` on {HASH_WORKERS} threads; the server "
                "is not pinned to one CPU"
            )
        if self.app == "streams-read":
            return (
                f"{self.conns} connections, one {self.size // 1024} KiB request at a time "
                "each, through streams: `bench/servers/streams_echo.py`, per connection "
                "`reader.read(64 KiB)`, `writer.write`, `await writer.drain()`; the uvloop "
                "and asyncio columns are `asyncio.start_server` on that loop, hamanet-aio "
                "the same program with `hamanet.aio.start_server` on uvloop "
                "(hamanet-aio-asyncio: on asyncio's loop)"
            )
        if self.app == "streams-lines":
            return (
                f"{self.conns} connections, {self.depth} lines of {self.size} B "
                f"({self.size - 1} bytes and b'\\n') in flight each (pipelined), through "
                "streams: `bench/servers/streams_echo.py`, per connection "
                "`reader.readline()`, `writer.write`, `await writer.drain()`; servers as in "
                "streams-rr1k"
            )
        if self.app == "aio-echo":
            return (
                "rr64 with hamanet's echo handler (`examples/echo_server.py`) under "
                "`hamanet.aio.serve` on a uvloop loop (hamanet-aio; hamanet-aio-asyncio: on "
                "asyncio's loop), against the same handler on hamanet's own reactor thread "
                "(hamanet); uvloop is its protocol echo, as in rr64"
            )
        if self.mode == "accept":
            if self.tls:
                return (
                    f"{self.conns} concurrent connect / full TLS handshake / echo {self.size} B "
                    "/ close_notify and close loops"
                )
            return f"{self.conns} concurrent connect / echo {self.size} B / close loops"
        if self.mode == "idle":
            return f"{self.conns:,} idle connections, one {self.size} B echo each"
        inflight = f"{self.depth} x " if self.depth > 1 else ""
        size = f"{self.size // 1024} KiB" if self.size >= 1024 else f"{self.size} B"
        return f"{self.conns} connections, {inflight}{size} in flight each"


SCENARIOS = (
    Scenario("rr64", "rr", conns=100, size=64),
    Scenario("rr1k", "rr", conns=100, size=1024),
    Scenario("pipe64x16", "rr", conns=100, size=64, depth=16),
    Scenario("stream100k", "rr", conns=10, size=100 * 1024),
    Scenario("accept", "accept", conns=50, size=64, unit="conn"),
    Scenario("idle10k", "idle", conns=10_000, size=16, unit="conn"),
    Scenario(
        "redis",
        REDIS_BENCHMARK,
        conns=50,
        size=3,
        depth=16,
        unit="req",
        app="redis",
        needs=(EXAMPLES / "redis_server.py", EXAMPLES / "protocols" / "resp.py"),
    ),
    Scenario(
        "http",
        WRK,
        conns=100,
        size=0,
        unit="req",
        app="http",
        needs=(EXAMPLES / "http_server.py", EXAMPLES / "protocols" / "http.py"),
    ),
    # Work in the handler: request/response through the load generator (every byte
    # verified), reported by throughput.
    Scenario(
        "blocking",
        "rr",
        conns=64,
        size=64,
        unit="req",
        app="blocking",
        needs=(BLOCKING_EXAMPLE,),
        throughput=True,
    ),
    Scenario(
        "hash",
        "rr",
        conns=8,
        size=256 * 1024,
        unit="req",
        app="hash",
        needs=(HASH_SERVER,),
        throughput=True,
        pin_server=False,  # hashlib releases the GIL: two workers can use both cores
    ),
    # TLS: the plain scenarios above over TLS (benchlib/tls.py). tls-handshake counts
    # connections, each a full handshake (no resumption, no tickets).
    Scenario("tls-rr1k", "rr", conns=100, size=1024, app="tls-echo", tls=True),
    Scenario("tls-stream100k", "rr", conns=10, size=100 * 1024, app="tls-echo", tls=True),
    Scenario("tls-handshake", "accept", conns=50, size=64, unit="conn", app="tls-echo", tls=True),
    Scenario(
        "redis-tls",
        REDIS_BENCHMARK,
        conns=50,
        size=3,
        depth=16,
        unit="req",
        app="redis-tls",
        needs=(EXAMPLES / "redis_server.py", EXAMPLES / "protocols" / "resp.py"),
        tls=True,
    ),
    Scenario(
        "https",
        WRK,
        conns=100,
        size=0,
        unit="req",
        app="https",
        needs=(EXAMPLES / "http_server.py", EXAMPLES / "protocols" / "http.py"),
        tls=True,
    ),
    # rr64 on hamanet with one reactor: the share of its busy time spent attached to the
    # interpreter (the serial fraction), and Amdahl's bound for more reactors.
    Scenario("serial-fraction", "rr", conns=100, size=64, app="serial", needs=(REACTORS_ECHO,)),
    # rr64 on hamanet with reactors=1, 2, ...: messages/s and CPU per message. The server
    # is not pinned (its reactors may use every CPU the load generator leaves).
    Scenario(
        "scale",
        "rr",
        conns=100,
        size=64,
        app="scale",
        needs=(REACTORS_ECHO,),
        throughput=True,
        pin_server=False,
    ),
    # hamanet inside asyncio (issue 13): one streams program on asyncio's streams and on
    # hamanet.aio's (bench/servers/streams_echo.py), and rr64's handler under
    # hamanet.aio.serve against hamanet's own thread.
    Scenario("streams-rr1k", "rr", conns=100, size=1024, app="streams-read", needs=(STREAMS_ECHO,)),
    Scenario(
        "streams-lines",
        "rr",
        conns=100,
        size=64,
        depth=16,
        app="streams-lines",
        needs=(STREAMS_ECHO,),
        lines=True,
    ),
    Scenario("aio-rr64", "rr", conns=100, size=64, app="aio-echo", needs=(AIO_ECHO,)),
    # A 10 MiB file over keep-alive HTTP, every body byte checked: zero-copy sendfile
    # (hamanet's session.sendfile, asyncio's loop.sendfile, a native server) against
    # uvloop, which has no loop.sendfile and reads and writes the file instead.
    Scenario(
        "static10m",
        HTTP_GET,
        conns=4,
        size=FILE_SIZE,
        unit="MiB",
        app="static",
        needs=(HTTP_EXAMPLE, HTTP_PROTOCOL, STATIC_SERVER),
    ),
    # 64-byte datagram echo, many in flight: hamanet's recvmmsg/on_datagrams/sendmmsg
    # against a DatagramProtocol on asyncio and uvloop. 8 x 16 = 128 in flight: at 256 the
    # server's default receive buffer (rmem_default, 208 KiB; a 64 B loopback datagram
    # costs about 1 KiB of it) overflows whenever a server falls behind (bench/README.md).
    Scenario(
        "udp64",
        "udp",
        conns=8,
        size=64,
        depth=16,
        unit="datagram",
        app="udp",
        needs=(UDP_EXAMPLE, UDP_ECHO_ASYNCIO),
    ),
)


@dataclass(frozen=True)
class Target:
    """One of hamanet's targets from the issues: the median of per-round ratios of
    `server` to `against` in `scenario`, of CPU per message or request ("cpu", lower is
    better: at most `limit`), of requests/s ("throughput", higher is better: at least
    `limit`, or more than it if `ahead`) or of messages per server CPU-second ("per-cpu",
    the inverse of "cpu": higher is better, like throughput, but what the server's CPU
    buys rather than what the client got; for tls-handshake, where the load generator's
    own handshakes could cap the rate)."""

    scenario: str
    figure: str  # "cpu", "throughput" or "per-cpu"
    limit: float
    against: str = BASELINE
    ahead: bool = False
    server: str = "hamanet"

    def met(self, ratio: float) -> bool:
        if self.figure == "cpu":
            return ratio <= self.limit
        return ratio > self.limit if self.ahead else ratio >= self.limit

    def wanted(self) -> str:
        """The target as text, e.g. `<= 0.90`, `> 1.00, higher is better`."""
        # "throughput" and "per-cpu" are both higher-is-better.
        if self.figure == "cpu":
            return f"<= {self.limit:.2f}"
        return f"{'>' if self.ahead else '>='} {self.limit:.2f}, higher is better"


HAMANET_TARGETS = (
    # The benchmark issue: CPU-us per message as a ratio to uvloop.
    Target("rr64", "cpu", 0.90),
    Target("rr1k", "cpu", 0.90),
    Target("pipe64x16", "cpu", 0.80),
    Target("stream100k", "cpu", 0.95),
    Target("accept", "cpu", 0.75),
    Target("rr64", "cpu", 1.10, against="rust-epoll"),
    # The real clients: requests/s ahead of uvloop.
    Target("redis", "throughput", 1.0, ahead=True),
    Target("http", "throughput", 1.0, ahead=True),
    # The worker pool's issue: a blocking handler on 32 workers serves at least as many
    # requests/s as uvloop's run_in_executor on 32 threads, for at most 0.6 x its CPU per
    # request; hashing on 2 workers gets 1.6 x the requests/s of workers=0 (the GIL is
    # released) and is ahead of uvloop's executor.
    Target("blocking", "throughput", 1.0),
    Target("blocking", "cpu", 0.60),
    Target("hash", "throughput", 1.6, against="hamanet-w0"),
    Target("hash", "throughput", 1.0, ahead=True),
    # TLS (issue 12): the echo over TLS for at most 0.6 x uvloop's server CPU per message;
    # 1.5 x its full handshakes per server CPU-second; the real clients ahead of uvloop.
    Target("tls-rr1k", "cpu", 0.60),
    Target("tls-stream100k", "cpu", 0.60),
    Target("tls-handshake", "per-cpu", 1.5),
    Target("redis-tls", "throughput", 1.0, ahead=True),
    Target("https", "throughput", 1.0, ahead=True),
    # hamanet inside asyncio (issue 13): the streams echo on hamanet.aio (on uvloop) for at
    # most 0.6 x the server CPU per message of the same program on uvloop's asyncio
    # streams; the echo handler driven by the uvloop loop within 1.15 x its CPU per
    # message on hamanet's own reactor thread.
    Target("streams-rr1k", "cpu", 0.60, server="hamanet-aio"),
    Target("streams-lines", "cpu", 0.60, server="hamanet-aio"),
    Target("aio-rr64", "cpu", 1.15, against="hamanet", server="hamanet-aio"),
    # Static files (session.sendfile): server CPU per MiB sent at most 0.8 x uvloop's.
    Target("static10m", "cpu", 0.80),
    # UDP (recvmmsg/sendmmsg, one handler call per wakeup): server CPU per datagram at
    # most 0.5 x uvloop's DatagramProtocol (a recvfrom, a sendto, a Python call each).
    Target("udp64", "cpu", 0.50),
)
# Each TLS scenario and its plain twin: what TLS costs a server (summary.tls_cost_lines).
TLS_TWINS = (
    ("tls-rr1k", "rr1k"),
    ("tls-stream100k", "stream100k"),
    ("tls-handshake", "accept"),
    ("redis-tls", "redis"),
    ("https", "http"),
)
# idle10k: bytes of server RSS per idle connection.
HAMANET_IDLE_BYTES_TARGET = 600
