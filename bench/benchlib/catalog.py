"""What the benchmark runs: the servers under test and the load scenarios.

The echo scenarios: every server echoes every byte to the connection it came from and
closes on EOF, so the load generator's byte-for-byte check holds for all of them and the
comparison is like for like. The real-client scenarios (`redis`, `http`) drive the
example protocol servers with redis-benchmark and wrk; hamanet runs the examples as they
are, asyncio and uvloop run the very same protocol classes (examples/protocols/) in an
`asyncio.Protocol`. uvloop is the baseline of every ratio.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
PYTHON = REPO / ".venv" / "bin" / "python"
LOADGEN_CRATE = BENCH / "loadgen"
RUST_ECHO_CRATE = BENCH / "servers" / "rust_echo"
LOADGEN = LOADGEN_CRATE / "target" / "release" / "loadgen"
RUST_ECHO = RUST_ECHO_CRATE / "target" / "release" / "rust_echo"
EXAMPLES = REPO / "examples"
REDIS_LOGIC_SERVER = BENCH / "servers" / "redis_logic_server.py"
HTTP_LOGIC_SERVER = BENCH / "servers" / "http_logic_server.py"
BASELINE = "uvloop"


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...]  # the port is appended
    needs_module: str | None = None  # a Python package that must import, else skipped
    # False for a server known to leave connections open after the peer's FIN: the load
    # generator then closes without waiting for the server's FIN, and file descriptors the
    # server keeps afterwards are reported rather than failing the run.
    closes_on_eof: bool = True
    note: str = ""
    # The protocol servers it also runs, by application: (("redis", argv), ("http", argv)).
    apps: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def available(self) -> bool:
        return self.needs_module is None or importlib.util.find_spec(self.needs_module) is not None

    def argv_for(self, app: str) -> tuple[str, ...] | None:
        """The command line (before the port) serving `app`, or None if it has none."""
        if app == "echo":
            return self.argv
        return dict(self.apps).get(app)


def _py(script: Path) -> tuple[str, ...]:
    return (str(PYTHON), str(script))


# The run order within a round: every server runs once per scenario per round (A B C A B C).
def _logic(loop: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The protocol servers on an asyncio-compatible loop (bench/servers/*_logic_server.py)."""
    return (
        ("redis", (*_py(REDIS_LOGIC_SERVER), loop)),
        ("http", (*_py(HTTP_LOGIC_SERVER), loop)),
    )


SERVERS = (
    Server("uvloop", _py(BENCH / "servers" / "uvloop_echo.py"), "uvloop", apps=_logic("uvloop")),
    Server("asyncio", _py(BENCH / "servers" / "asyncio_echo.py"), apps=_logic("asyncio")),
    Server(
        "rloop",
        _py(BENCH / "servers" / "rloop_echo.py"),
        "rloop",
        closes_on_eof=False,
        note="rloop 0.5.0 leaves some connections open (CLOSE_WAIT, fd kept) after the "
        "peer's FIN, even when eof_received closes the transport, so it is measured without "
        "the close check and its figures are informational",
    ),
    Server("rust-epoll", (str(RUST_ECHO),)),
    Server(
        "hamanet",
        _py(EXAMPLES / "echo_server.py"),
        "hamanet",
        apps=(
            ("redis", _py(EXAMPLES / "redis_server.py")),
            ("http", _py(EXAMPLES / "http_server.py")),
        ),
    ),
)

# Real-client scenarios: the client drives the load and checks the replies itself.
REDIS_BENCHMARK = "redis-benchmark"
WRK = "wrk"
# redis-benchmark runs a fixed number of requests, not a duration: this many per test
# (PING_INLINE, PING_MBULK, SET, GET) per second of --duration, about one second of work
# per test for the example servers here. The warmup is a SET/GET run sized the same way.
REDIS_REQUESTS_PER_SECOND = 300_000


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # the load generator's mode: rr, accept or idle
    conns: int
    size: int
    depth: int = 1
    unit: str = "msg"  # what one counted "message" is, for the table
    app: str = "echo"  # what the servers serve: echo, redis or http (Server.argv_for)
    needs: tuple[Path, ...] = ()  # files the scenario's servers need (else it is skipped)

    @property
    def real_client(self) -> bool:
        """Driven by redis-benchmark or wrk: the headline figure is THROUGHPUT
        (requests/s, higher is better), with CPU per request beside it."""
        return self.mode in (REDIS_BENCHMARK, WRK)

    def missing(self) -> str | None:
        """Why this scenario cannot run here (a client not installed, a file not there)."""
        if self.real_client and shutil.which(self.mode) is None:
            package = "redis-tools" if self.mode == REDIS_BENCHMARK else "wrk"
            return f"{self.mode} is not installed (Debian: apt-get install {package})"
        absent = [str(p.relative_to(REPO)) for p in self.needs if not p.exists()]
        return f"{', '.join(absent)} not found" if absent else None

    def loadgen_args(self) -> list[str]:
        args = [self.mode, "--conns", str(self.conns), "--size", str(self.size)]
        if self.mode == "rr":
            args += ["--depth", str(self.depth)]
        return args

    def describe(self) -> str:
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
        if self.mode == "accept":
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
)

# hamanet's targets from the benchmark issue: CPU-us per message as a ratio to uvloop
# (lower is better), and for idle10k bytes of server RSS per idle connection.
HAMANET_TARGETS = {
    "rr64": 0.90,
    "rr1k": 0.90,
    "pipe64x16": 0.80,
    "stream100k": 0.95,
    "accept": 0.75,
}
HAMANET_IDLE_BYTES_TARGET = 600
# The real-client scenarios: requests/s as a ratio to uvloop (higher is better); the issue
# asks for hamanet ahead of uvloop on both.
HAMANET_THROUGHPUT_TARGETS = {"redis": 1.0, "http": 1.0}
HAMANET_VS_RUST_RR64 = 1.10
