"""What the benchmark runs: the echo servers under test and the load scenarios.

Every server echoes every byte to the connection it came from and closes on EOF, so the
load generator's byte-for-byte check holds for all of them and the comparison is like
for like. uvloop is the baseline of every ratio.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
PYTHON = REPO / ".venv" / "bin" / "python"
LOADGEN_CRATE = BENCH / "loadgen"
RUST_ECHO_CRATE = BENCH / "servers" / "rust_echo"
LOADGEN = LOADGEN_CRATE / "target" / "release" / "loadgen"
RUST_ECHO = RUST_ECHO_CRATE / "target" / "release" / "rust_echo"
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

    def available(self) -> bool:
        return self.needs_module is None or importlib.util.find_spec(self.needs_module) is not None


def _py(script: Path) -> tuple[str, ...]:
    return (str(PYTHON), str(script))


# The run order within a round: every server runs once per scenario per round (A B C A B C).
SERVERS = (
    Server("uvloop", _py(BENCH / "servers" / "uvloop_echo.py"), "uvloop"),
    Server("asyncio", _py(BENCH / "servers" / "asyncio_echo.py")),
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
    Server("hamanet", _py(REPO / "examples" / "echo_server.py"), "hamanet"),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # the load generator's mode: rr, accept or idle
    conns: int
    size: int
    depth: int = 1
    unit: str = "msg"  # what one counted "message" is, for the table

    def loadgen_args(self) -> list[str]:
        args = [self.mode, "--conns", str(self.conns), "--size", str(self.size)]
        if self.mode == "rr":
            args += ["--depth", str(self.depth)]
        return args

    def describe(self) -> str:
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
HAMANET_VS_RUST_RR64 = 1.10
