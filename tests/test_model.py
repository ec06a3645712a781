"""The model-based lifecycle test: issue 9's standing guard.

A hypothesis ``RuleBasedStateMachine`` runs a hamanet.Server whose sessions' peers are
plain loopback sockets (small or default receive buffers) or sessions of a hamanet.Client,
through random sequences of what peers and handlers do:

- peers: write (each session's own verifiable stream), half-close, reset (linger 0;
  ``abort()`` for a client), read, read slowly, stop reading (``pause_reading()``);
- handlers: write (from the reactor thread through ``call_soon_threadsafe``, from the
  test thread, with ``write`` or ``writelines``, from ``on_recv`` and ``on_eof``),
  ``pause_reading``/``resume_reading``, write past a small (and per-session changed) high
  watermark and up to a small ``max_write_buffer``, ``shutdown_write``, ``close``
  (also inside ``on_recv``, and while input arrives), ``abort``, raise in ``on_recv`` or
  ``on_eof``; and ``server.stop(timeout)`` from a thread or a callback, after which a new
  server (and client) takes over.

The model knows, for every session, what each side sent and what each side must see.
After every step it waits (bounded) for what must happen, then checks what must hold:

- every byte the peer sent is delivered to ``on_recv`` once, in order, before ``on_eof``
  and ``on_close`` (for an RST: every byte the server's kernel acknowledged); once the
  handler gave the session up (close/abort/stop, on_eof's default close, a raise) nothing
  more is delivered; while reading is paused nothing is, and what arrived meanwhile (data,
  FIN, RST) comes after the resume;
- every byte the handler wrote reaches a peer that reads, in order; after ``close()``
  (or stop, or ``shutdown_write``) followed by EOF; ``abort()`` (or a raising callback)
  gives the peer RST;
- a write after ``shutdown_write``/``close``/``abort`` raises ``SessionClosedError``; one
  past ``max_write_buffer`` ``WriteBufferFullError``, and only then;
- ``on_pause_writing``/``on_resume_writing`` alternate and match the buffered amount;
- ``on_connect`` comes first, ``on_close`` exactly once and last (server and client
  sessions), with the reason the model expects (None; ConnectionResetError/BrokenPipeError
  after the peer's RST; the very exception a callback raised; TimeoutError when stop()
  gave up); a session whose both directions are finished closes by itself;
  ``server.session_count`` and ``stats()["handler_errors"]`` match; the ``hamanet`` logger
  reports exactly the callbacks that raised;
- after each server's stop: no fd left behind (``/proc/self/fd``), and RSS stays within a
  generous bound over the whole run.

CI runs a fixed, derandomized budget (HAMANET_MODEL_EXAMPLES=120 examples of up to
HAMANET_MODEL_STEPS=40 steps), plus fixed scenarios (SCENARIOS, at the end) for paths
that once had bugs. To hunt longer, locally::

    HAMANET_MODEL_EXAMPLES=2000 HAMANET_MODEL_STEPS=40 HAMANET_MODEL_RANDOM=1 \
        .venv/bin/python -m pytest tests/test_model.py -k lifecycle_model -s

(HAMANET_MODEL_SHRINK=1 shrinks a failure to fewer steps, HAMANET_MODEL_VERBOSE=1 prints
every example). A failure prints its steps (hypothesis' falsifying example, each step
with what the model did) and the model's view of every session; to keep it as a
regression, copy its steps into SCENARIOS. ``-s`` also prints how often each rule ran.
"""

from __future__ import annotations

import collections
import errno
import functools
import gc
import os
import threading
import time
from typing import Any, Callable

import hamanet
import pytest
from _model_support import (
    WAIT,
    ClientHandler,
    ClientPeer,
    KiB,
    MiB,
    ModelHandler,
    Peer,
    SessionLog,
    Timeout,
    mismatch,
    wait_for,
    write_out,
)
from conftest import open_fds, rss_bytes, wait_fds_back_to
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

EXAMPLES = int(os.environ.get("HAMANET_MODEL_EXAMPLES") or 120)
STEPS = int(os.environ.get("HAMANET_MODEL_STEPS") or 40)
RANDOM = os.environ.get("HAMANET_MODEL_RANDOM") == "1"
SHRINK = os.environ.get("HAMANET_MODEL_SHRINK") == "1"
VERBOSE = os.environ.get("HAMANET_MODEL_VERBOSE") == "1"
LONG_RUN = EXAMPLES > 120 or RANDOM or SHRINK

# The server under test: small watermarks, a small cap and a small kernel send buffer, so
# that pausing, the cap and a full kernel buffer all happen with little data.
WRITE_HIGH = 32 * KiB
WRITE_LOW = 8 * KiB
MAX_WRITE_BUFFER = 512 * KiB
SEND_BUFFER = 16 * KiB
PEER_RCVBUF = 16 * KiB

MAX_SESSIONS = 3  # open at once
SESSIONS_PER_SERVER = 8
STEPS_BEFORE_STOP = 12  # a server lives at least this many steps before a stop rule
MAX_IN = 2 * MiB  # most bytes one peer sends
MAX_OUT = 3 * MiB  # most bytes written to one session
# Most bytes a peer has sent and the session has not read while paused: well within what
# the kernel buffers and what a graceful close reads away (256 KiB) before its FIN.
PAUSED_UNREAD_MAX = 160 * KiB
# With a server whose SO_RCVBUF is BIG_RECV_BUFFER: more than one turn's read budget.
BIG_RECV_BUFFER = 1 * MiB
PAUSED_UNREAD_MAX_BIG = 700 * KiB
# RSS may grow this much over the run, plus a little per server for hypothesis' own
# records of the examples it ran (a fixed scenario run over and over stays flat).
RSS_GROWTH_MAX = 128 * MiB
RSS_GROWTH_PER_SERVER = 256 * KiB


class RssWatch:
    baseline: int | None = None  # at the first server's release
    servers = 0


_rss = RssWatch()


# Whether the next server's fd count is taken after a garbage collection (at the start,
# and after a failure, when garbage may still hold fds).
_collect_first = [True]
# The hamanet logger's ERROR records (conftest's hamanet_errors), for the test to check
# that each is the report of a callback that raised on purpose.
_error_records: list[Any] = []


_scenario_notes: list[str] = []


def note(text: str) -> None:
    """Notes a step for hypothesis' report (or a fixed scenario's)."""
    if currently_in_test_context():
        hypothesis_note(text)
    else:
        _scenario_notes.append(text)


class Sess:
    """The model of one session: its peer, and what the server side must do."""

    def __init__(
        self, index: int, peer: Peer | ClientPeer, session: hamanet.Session, log: SessionLog
    ):
        self.index = index
        self.peer = peer
        self.session: hamanet.Session | None = session
        self.log = log
        self.mode = "reading"  # the peer: "reading", "slow" (4 KiB a step) or "stopped"
        self.paused = False
        self.delivered_at_pause = 0
        self.shut = False  # shutdown_write() while open
        # Why the server side is closing: None while open; "close", "abort", "eof" (on_eof
        # did not keep it open), "both" (own shutdown_write and the peer's FIN), "stop".
        self.ending: str | None = None
        self.frozen_at: int | None = None  # input delivered when the handler gave up
        self.tail = "strong"  # "strong": a reading peer gets every byte written, then EOF
        self.abort_strict = False  # the peer must see RST (not EOF)
        self.eof_seen = False
        self.raised: BaseException | None = None  # what a callback raised on purpose
        self.acked_at_reset: int | None = None
        self.closed = False
        self.exc: BaseException | None = None
        self.recv_checked = 0
        self.got_checked = 0
        self.tail_checked = False

    def describe(self) -> str:
        log, peer = self.log, self.peer
        kind = "client" if peer.is_client else "socket"
        return (
            f"session {self.index} (id {log.id}): {kind} peer mode={self.mode} "
            f"queued={peer.queued} "
            f"sent={peer.sent} fin={peer.fin} reset={peer.reset} "
            f"acked_at_reset={self.acked_at_reset} got={len(peer.got)} end={peer.end}; "
            f"server received={len(log.received)} eof_at={log.eof_at} "
            f"written={log.out_offset} paused={self.paused}@{self.delivered_at_pause} "
            f"shut={self.shut} ending={self.ending} frozen_at={self.frozen_at} "
            f"tail={self.tail} keep_open={log.keep_open} echo={log.echo} "
            f"closes={log.closes!r} writing_paused={log.writing_paused} "
            f"callbacks={compress(log.kinds)}"
        )


def compress(kinds: list[str]) -> str:
    """connect recv*3 send eof close: a callback list, runs counted."""
    out: list[str] = []
    for kind in kinds:
        if out and out[-1].split("*")[0] == kind:
            head, _, count = out[-1].partition("*")
            out[-1] = f"{head}*{int(count or 1) + 1}"
        else:
            out.append(kind)
    return " ".join(out)


def reset_errno(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


# How often each rule ran (printed by the test: run with -s to see what a budget covers).
rule_counts: collections.Counter[str] = collections.Counter()


def checked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Marks the machine failed when a step raises, so teardown only cleans up."""

    @functools.wraps(method)
    def wrapper(self: LifecycleModel, *args: Any, **kwargs: Any) -> Any:
        rule_counts[method.__name__] += 1
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return wrapper


# Which sessions a rule can act on (a rule runs only when one can).
def can_peer_write(s: Sess) -> bool:
    return s.peer.sock is not None and not s.peer.fin and s.ending is None and not s.closed


def has_peer(s: Sess) -> bool:
    return s.peer.sock is not None


def can_reset(s: Sess) -> bool:
    return s.peer.sock is not None and not s.closed


def is_open(s: Sess) -> bool:
    return not s.closed


def can_close_in_recv(s: Sess) -> bool:
    return not s.closed and s.ending is None and s.peer.sock is not None and not s.log.close_on_recv


def can_pause(s: Sess) -> bool:
    return not s.closed and not s.paused


def is_paused(s: Sess) -> bool:
    return s.paused


def any_session(s: Sess) -> bool:
    return True


# Preconditions see only what the steps decide (never what the library did by when), or
# hypothesis finds the rules it may draw from differing between runs of one example: a
# rule that finds no session to act on does nothing.
def has_sessions(self: LifecycleModel) -> bool:
    return bool(self.sessions)


def may_connect(self: LifecycleModel) -> bool:
    return self.server is not None and len(self.sessions) < SESSIONS_PER_SERVER


SESSION = st.integers(0, 7)
VIA = st.sampled_from(["thread", "reactor"])
PEER_SIZES = st.sampled_from([1, 1000, 30_000, 100_000])
HANDLER_SIZES = st.sampled_from([1, 700, 16 * KiB, 40_000, 300_000])
BUFFERS = st.sampled_from(["small-send", "default", "big-recv"])
PEER_KIND = st.sampled_from(["socket", "small-socket", "client"])
PEER_KINDS = st.lists(PEER_KIND, min_size=MAX_SESSIONS, max_size=MAX_SESSIONS)


class LifecycleModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False
        self.server: hamanet.Server | None = None
        self.handler: ModelHandler | None = None
        self.client: hamanet.Client | None = None
        self.sessions: list[Sess] = []
        self.count = 0

    # -- the server's life ---------------------------------------------------------------
    def start_server(self, buffers: str) -> None:
        """A new server (and client). ``buffers`` sets the server's socket buffers:
        "small-send" (a 16 KiB SO_SNDBUF: the kernel takes little, the write buffer
        fills), "default" (the kernel's), "big-recv" (a 1 MiB SO_RCVBUF: more input than
        a turn reads, 256 KiB, can wait while reading is paused)."""
        rule_counts["__init__"] += 1
        if _collect_first[0]:
            gc.collect()
            _collect_first[0] = False
        self.fds_before = open_fds()
        self.handler = ModelHandler()
        self.server = hamanet.Server(
            self.handler,
            write_high=WRITE_HIGH,
            write_low=WRITE_LOW,
            max_write_buffer=MAX_WRITE_BUFFER,
            send_buffer=SEND_BUFFER if buffers == "small-send" else None,
            recv_buffer=BIG_RECV_BUFFER if buffers == "big-recv" else None,
        )
        big = buffers == "big-recv"
        self.paused_unread_max = PAUSED_UNREAD_MAX_BIG if big else PAUSED_UNREAD_MAX
        self.server.open(0)
        self.server.start()
        # Peers of some sessions are sessions of a hamanet.Client (its reactor starts
        # with the first connect).
        self.client = hamanet.Client(
            ClientHandler(), recv_buffer=PEER_RCVBUF, send_buffer=SEND_BUFFER
        )
        self.sessions = []
        self.steps_since_start = 0
        self.stopping = False

    def stop_server(self, timeout: float, via: str = "thread", busy: bool = False) -> None:
        """stop(timeout), from another thread or from a callback (then join()), while
        reading peers read; then every session must have had its on_close, and each
        peer sees what the model says. ``busy``: every open session's peer is sending
        and its handler writing as the stop begins (and the peers go on sending), so
        the stop meets input in flight (which may cost the peers their tail: RST)."""
        server = self.server
        assert server is not None
        for s in self.sessions:
            if busy and can_peer_write(s):
                s.ending = "stop"  # nothing is frozen: input may arrive until the close
                s.tail = "weak"
                self.send_from_peer(s, 100_000)
                if s.session is not None:
                    write_out(s.session, s.log, 100_000)
                continue
            s.peer.drop_unsent()
            if not s.closed and s.ending is None:
                self.prepare_close(s)
                s.ending = "stop"
                s.frozen_at = len(s.log.received)
        self.stopping = True
        if via == "reactor":  # a callback only requests the stop
            self.on_reactor(lambda: server.stop(timeout))
            stopper = threading.Thread(target=server.join, args=(timeout + WAIT,))
        else:
            stopper = threading.Thread(target=server.stop, kwargs={"timeout": timeout})
        stopper.start()
        deadline = time.monotonic() + timeout + WAIT
        while stopper.is_alive() and time.monotonic() < deadline:
            for s in self.sessions:
                s.peer.pump()
                if s.mode != "stopped":
                    s.peer.read()
            time.sleep(0.001)
        for s in self.sessions:
            s.peer.drop_unsent()
        stopper.join(0.1)
        assert not stopper.is_alive(), f"server.stop({timeout}) did not return"
        self.refresh()
        not_closed = [s.describe() for s in self.sessions if not s.closed]
        assert not not_closed, "stop() returned before on_close of:\n" + "\n".join(not_closed)
        assert server.session_count == 0
        for s in self.sessions:
            s.mode = "reading"
            s.peer.set_reading(True)
            wait_for(
                lambda s=s: s.peer.read() or s.peer.sock is None or s.peer.end is not None,
                lambda s=s: f"the peer's EOF or RST after stop: {s.describe()}",
            )
        self.check_safety(after_stop=True)
        for s in self.sessions:
            self.check_tail(s)

    def release_server(self) -> None:
        """Drops every reference to the stopped server and its sessions; then no fd of
        theirs may be left, and memory stays bounded."""
        assert self.client is not None
        self.client.stop(timeout=1.0)
        self.check_client_sessions()
        self.check_error_log()
        for s in self.sessions:
            s.peer.close()
            s.session = None
        self.sessions = []
        self.server = self.handler = self.client = None
        # Nothing here is garbage of a cycle, so the fds go at once; only if they do not
        # is the (slow, over hypothesis' growing heap) garbage collector asked.
        try:
            wait_for(lambda: open_fds() == self.fds_before, "fds released", timeout=0.5)
        except Timeout:
            wait_fds_back_to(self.fds_before)
        now = rss_bytes()
        _rss.servers += 1
        if _rss.baseline is None:
            _rss.baseline = now
        bound = RSS_GROWTH_MAX + _rss.servers * RSS_GROWTH_PER_SERVER
        assert now - _rss.baseline < bound, (
            f"RSS grew from {_rss.baseline >> 20} MiB to {now >> 20} MiB over "
            f"{_rss.servers} servers (bound {bound >> 20} MiB)"
        )

    def teardown(self) -> None:
        if self.server is None:
            return
        if not self.failed:
            try:
                self.stop_server(timeout=0.5)
                self.release_server()
                return
            except BaseException:
                self.failed = True
                raise
            finally:
                if self.failed:
                    self.clean_up()
        self.clean_up()

    def clean_up(self) -> None:
        """After a failure (already reported): release everything, check nothing."""
        _collect_first[0] = True
        if _error_records:
            del _error_records[0][:]
        for endpoint in (self.server, self.client):
            if endpoint is not None:
                endpoint.stop(timeout=0.5)
        for s in self.sessions:
            s.peer.close()
        self.sessions = []
        self.server = self.handler = self.client = None

    def check_error_log(self) -> None:
        """Every ERROR the hamanet logger reported is a callback raising on purpose, one
        for each time it did."""
        if not _error_records:
            return
        records = _error_records[0]
        ours = [s.raised for s in self.sessions if s.raised is not None]
        seen = [r.exc_info[1] if r.exc_info else r.getMessage() for r in records]
        del records[:]
        assert len(seen) == len(ours) and all(
            any(exc is raised for raised in ours) for exc in seen
        ), f"hamanet logged {seen!r}; callbacks raised {ours!r}"

    def check_client_sessions(self) -> None:
        """Every client session: on_connect first, on_close once and last."""
        problems = []
        for s in self.sessions:
            if not s.peer.is_client:
                continue
            log = s.peer.log
            problems += [f"session {s.index}: {v}" for v in log.violations]
            if log.kinds[:1] != ["connect"] or log.kinds.count("connect") != 1:
                problems.append(f"session {s.index}: client callbacks {compress(log.kinds)}")
            if len(log.closes) != 1 or log.kinds[-1] != "close":
                problems.append(
                    f"session {s.index}: client on_close {log.closes!r}, callbacks "
                    f"{compress(log.kinds)}"
                )
        if problems:
            raise AssertionError("\n".join([*problems, "model:", self.describe()]))

    # -- helpers ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.server is not None

    def open_sessions(self) -> list[Sess]:
        return [s for s in self.sessions if not s.closed]

    def pick(self, i: int, eligible: Callable[[Sess], bool]) -> Sess | None:
        choices = [s for s in self.sessions if eligible(s)]
        if not choices:
            note("  (no session qualifies: nothing done)")
            rule_counts["(nothing to do)"] += 1
            return None
        return choices[i % len(choices)]

    def sync(self) -> None:
        """Returns once the reactor has delivered every event of the turns that began
        before this call (a call_soon_threadsafe callback comes after them)."""
        self.on_reactor(lambda: None)

    def on_reactor(self, fn: Callable[[], Any]) -> Any:
        assert self.server is not None
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # handed to the test thread
                box["error"] = exc
            finally:
                done.set()

        self.server.call_soon_threadsafe(run)
        if not done.wait(WAIT):
            raise Timeout("the reactor did not run a call_soon_threadsafe callback")
        if "error" in box:
            raise box.pop("error")
        return box.get("result")

    def prepare_close(self, s: Sess) -> None:
        """Before the server closes ``s`` gracefully: the peer sends nothing more, and if
        all it sent is in the server's kernel (and little enough to be read away), the
        close is clean and a reading peer must get every byte written, then EOF.
        Otherwise its unread bytes may turn the close into RST (README, "One limit")."""
        peer = s.peer
        peer.drop_unsent()
        if peer.sock is None:
            return
        unread = peer.sent - len(s.log.received)
        if unread and peer.is_client:  # what its kernel holds is not known
            s.tail = "weak"
        elif unread:
            try:
                wait_for(lambda: peer.unacked() == 0, "the peer's bytes acknowledged", 0.5)
            except Timeout:
                s.tail = "weak"
        if unread > 200 * KiB:
            s.tail = "weak"

    def describe(self) -> str:
        return "\n".join(s.describe() for s in self.sessions)

    # -- the model follows what the callbacks recorded -------------------------------------
    def refresh(self) -> None:
        for s in self.sessions:
            peer, log = s.peer, s.log
            peer.pump()
            if s.mode == "reading":
                peer.read()
            if s.ending is None and log.closed_in_recv_at is not None:
                s.ending = "close"
                s.frozen_at = log.closed_in_recv_at
                peer.drop_unsent()
                if peer.sent > s.frozen_at:  # bytes the close did not read: RST possible
                    s.tail = "weak"
            if log.raised is not None and s.raised is None:
                s.raised = log.raised
                if s.ending is None:
                    s.ending = "abort"  # a callback raised: the session is aborted
                    s.abort_strict = not s.shut
                    s.frozen_at = log.raised_at
                    peer.drop_unsent()
            if log.eof_at is not None and not s.eof_seen:
                s.eof_seen = True
                assert peer.fin, f"on_eof without the peer's FIN: {s.describe()}"
                if s.frozen_at is None:
                    assert log.eof_at == peer.sent, (
                        f"on_eof after {log.eof_at} bytes, but the peer sent {peer.sent} "
                        f"before its FIN: {s.describe()}"
                    )
                if s.ending is None and not log.keep_open:
                    s.ending = "eof"
                    s.frozen_at = log.eof_at
                elif s.ending is None and s.shut:
                    s.ending = "both"
                    s.frozen_at = log.eof_at
            if log.closes and not s.closed:
                s.closed = True
                s.exc = log.closes[0]
                self.check_close_reason(s)

    def check_close_reason(self, s: Sess) -> None:
        exc = s.exc
        if s.raised is not None:  # what a callback raised takes precedence
            assert exc is s.raised, f"on_close({exc!r}), not the callback's: {s.describe()}"
        elif s.ending is None:
            assert s.peer.reset, f"on_close({exc!r}) nobody asked for: {s.describe()}"
            assert reset_errno(exc), f"on_close({exc!r}) after the peer's RST: {s.describe()}"
            assert len(s.log.received) >= (s.acked_at_reset or 0), (
                f"bytes the server's kernel acknowledged before the peer's RST were never "
                f"delivered: {s.describe()}"
            )
        elif s.peer.reset and exc is not None:
            assert isinstance(exc, OSError), f"on_close({exc!r}): {s.describe()}"
        elif self.stopping and isinstance(exc, TimeoutError):
            pass  # stop() gave up on flushing it (the peer gets RST, see check_tail)
        elif s.ending == "stop":
            assert exc is None, f"on_close({exc!r}) at stop: {s.describe()}"
        else:
            assert exc is None, f"on_close({exc!r}) after {s.ending}: {s.describe()}"

    def unmet(self) -> list[str]:
        """What must still happen (the model waits for it after each step)."""
        self.refresh()
        out = []
        for s in self.sessions:
            peer, log = s.peer, s.log
            name = f"session {s.index}"
            if not s.closed:
                if s.ending is None and not s.paused and not peer.reset:
                    if peer.sent < peer.queued:
                        out.append(f"{name}: the peer's kernel to take its bytes")
                    if len(log.received) < peer.sent:
                        out.append(f"{name}: on_recv of all {peer.sent} bytes the peer sent")
                    if peer.fin and not s.eof_seen:
                        out.append(f"{name}: on_eof after the peer's FIN")
                if peer.reset and s.ending is None and not s.paused:
                    out.append(f"{name}: on_close after the peer's RST")
                if s.ending == "abort":
                    out.append(f"{name}: on_close after abort()")
                if s.ending in ("close", "eof", "both") and s.mode == "reading":
                    out.append(f"{name}: on_close after {s.ending} (the peer reads)")
            if peer.sock is not None and s.mode == "reading" and peer.end is None:
                with log.lock:
                    written = log.out_offset
                if s.ending != "abort" and len(peer.got) < written:
                    out.append(f"{name}: the peer to get all {written} bytes written")
                if s.closed or (s.shut and len(peer.got) >= written):
                    out.append(f"{name}: the peer to see the end of the stream")
        return out

    def check_safety(self, after_stop: bool = False) -> None:
        """What must hold at every moment."""
        self.refresh()
        assert self.handler is not None
        problems = list(self.handler.violations)
        for s in self.sessions:
            peer, log = s.peer, s.log
            name = f"session {s.index}"
            problems += [f"{name}: {v}" for v in log.violations]
            received = len(log.received)
            if received > peer.sent:
                problems.append(f"{name}: on_recv got {received} bytes, the peer sent {peer.sent}")
            bad = mismatch(peer.in_seed, s.recv_checked, log.received[s.recv_checked : received])
            if bad is not None:
                problems.append(f"{name}: on_recv's byte {bad} is not what the peer sent there")
            else:
                s.recv_checked = received
            if s.paused and received != s.delivered_at_pause and s.frozen_at is None:
                problems.append(
                    f"{name}: on_recv while reading was paused "
                    f"({s.delivered_at_pause} -> {received})"
                )
            if s.frozen_at is not None and received != s.frozen_at:
                problems.append(
                    f"{name}: input delivered after the session was given up "
                    f"({s.frozen_at} -> {received})"
                )
            got = len(peer.got)
            bad = mismatch(log.out_seed, s.got_checked, peer.got[s.got_checked : got])
            if bad is not None:
                problems.append(f"{name}: the peer's byte {bad} is not what the handler wrote")
            else:
                s.got_checked = got
            with log.lock:
                written = log.out_offset
            if got > written:
                problems.append(f"{name}: the peer got {got} bytes, the handler wrote {written}")
            kinds = list(log.kinds)
            if kinds[:1] != ["connect"] or kinds.count("connect") != 1:
                problems.append(f"{name}: on_connect not first and once: {compress(kinds)}")
            if len(log.closes) > 1:
                problems.append(f"{name}: on_close {len(log.closes)} times: {log.closes!r}")
            if log.closes and kinds[-1] != "close":
                problems.append(f"{name}: a callback after on_close: {compress(kinds)}")
            if log.eof_at is not None and "recv" in kinds[kinds.index("eof") :]:
                problems.append(f"{name}: on_recv after on_eof: {compress(kinds)}")
            session = s.session
            if (
                not after_stop
                and session is not None
                and not s.closed
                and session.reading_paused != s.paused
            ):
                problems.append(f"{name}: reading_paused is {session.reading_paused}")
            if s.closed and s.session is not None and not s.session.closed:
                problems.append(f"{name}: on_close ran but session.closed is False")
        if problems:
            raise AssertionError("\n".join([*problems, "model:", self.describe()]))
        for s in self.sessions:
            self.check_tail(s)

    def check_tail(self, s: Sess) -> None:
        """Once the peer's stream ended: did it end as the model says?"""
        peer, log = s.peer, s.log
        if peer.reset or peer.end is None or s.tail_checked:
            return
        assert peer.end in ("eof", "reset"), f"the peer's stream ended: {s.describe()}"
        if not s.closed:
            if s.ending is None:  # the stream of an open session ends after shutdown_write
                assert peer.end == "eof" and s.shut, f"the peer saw {peer.end}: {s.describe()}"
                assert len(peer.got) == log.out_offset, f"EOF before all was sent: {s.describe()}"
            return
        s.tail_checked = True
        if s.ending == "abort":
            want = {"reset"} if s.abort_strict else {"reset", "eof"}
            assert peer.end in want, f"after abort() the peer saw {peer.end}: {s.describe()}"
        elif isinstance(s.exc, TimeoutError):
            assert peer.end == "reset", f"stop() gave up, the peer saw {peer.end}: {s.describe()}"
        elif s.exc is None and s.tail == "strong":
            assert peer.end == "eof" and len(peer.got) == log.out_offset, (
                f"after a clean close the peer must get all {log.out_offset} bytes written, "
                f"then EOF: {s.describe()}"
            )

    def check_write_pause(self) -> None:
        """The pause/resume-writing state matches the buffered amount (see README)."""
        for s in self.sessions:
            if s.closed or s.ending is not None or s.peer.reset or s.session is None:
                continue
            low, high, _ = s.session.get_write_buffer_limits()
            buffered = s.session.write_buffer_size
            self.sync()
            log = s.log
            if buffered > high and log.write_pauses == 0:
                raise AssertionError(
                    f"{buffered} bytes buffered (> {high}) and no on_pause_writing: {s.describe()}"
                )
            if buffered <= low and log.writing_paused:
                raise AssertionError(
                    f"{buffered} bytes buffered (<= {low}) and writing still paused: {s.describe()}"
                )

    @invariant()
    @checked
    def settled_and_consistent(self) -> None:
        if not self.running:
            return
        self.steps_since_start += 1
        for s in self.sessions:
            if s.mode == "slow":
                s.peer.read(4 * KiB)
        self.sync()
        try:
            wait_for(lambda: not self.unmet(), lambda: "; ".join(self.unmet()))
        except Timeout as exc:
            self.check_safety()
            raise AssertionError(f"{exc}\nmodel:\n{self.describe()}") from None
        self.sync()
        self.check_safety()
        self.check_write_pause()
        raised = sum(s.raised is not None for s in self.sessions)
        assert self.server.stats()["handler_errors"] == raised, (
            f"stats()['handler_errors'] is {self.server.stats()['handler_errors']}, "
            f"callbacks raised {raised} times"
        )
        open_count = [0]

        def counts_match() -> bool:
            self.refresh()
            open_count[0] = len(self.open_sessions())
            return self.server.session_count == open_count[0]

        wait_for(
            counts_match,
            lambda: f"server.session_count {self.server.session_count} == {open_count[0]}",
        )

    # -- rules -------------------------------------------------------------------------------
    def connect_one(self, keep_open: bool, kind: str) -> None:
        """A new session whose peer is a plain socket (with a small receive buffer or the
        kernel's default) or a session of the hamanet.Client."""
        assert self.server is not None and self.handler is not None
        assert self.client is not None
        if kind == "client":
            peer: Peer | ClientPeer = ClientPeer(self.client, self.server.port)
            # connect() may return before on_connect ran, and a session given up before
            # then never gets it (see the report): the step ends once it has.
            log = peer.log
            wait_for(lambda: "connect" in log.kinds, "the client's on_connect")
        else:
            peer = Peer(self.server.port, PEER_RCVBUF if kind == "small-socket" else None)
        handler = self.handler
        session, log = wait_for(
            lambda: handler.by_port.get(peer.port), f"on_connect for peer port {peer.port}"
        )
        log.keep_open = keep_open
        s = Sess(self.count, peer, session, log)
        self.count += 1
        self.sessions.append(s)
        note(f"  -> session {s.index} ({kind} peer, keep_open={keep_open})")

    @initialize(
        buffers=BUFFERS,
        count=st.integers(1, MAX_SESSIONS),
        keep_open=st.booleans(),
        kinds=PEER_KINDS,
    )
    @checked
    def first_sessions(self, buffers: str, count: int, keep_open: bool, kinds: list[str]) -> None:
        self.start_server(buffers)
        for i in range(count):
            self.connect_one(keep_open if i % 2 == 0 else not keep_open, kinds[i])

    @precondition(may_connect)
    @rule(keep_open=st.booleans(), kind=PEER_KIND)
    @checked
    def connect(self, keep_open: bool, kind: str) -> None:
        if len(self.open_sessions()) >= MAX_SESSIONS:
            note("  (enough sessions open: nothing done)")
            rule_counts["(nothing to do)"] += 1
            return
        self.connect_one(keep_open, kind)

    @precondition(has_sessions)
    @rule(i=SESSION, size=PEER_SIZES)
    @checked
    def peer_write(self, i: int, size: int) -> None:
        s = self.pick(i, can_peer_write)
        if s is not None:
            self.send_from_peer(s, size)

    @precondition(has_sessions)
    @rule(i=SESSION, peer_size=PEER_SIZES, handler_size=HANDLER_SIZES, via=VIA)
    @checked
    def traffic(self, i: int, peer_size: int, handler_size: int, via: str) -> None:
        """Both directions in one step: the peer sends, the handler writes at once."""
        s = self.pick(i, can_peer_write)
        if s is not None:
            self.send_from_peer(s, peer_size)
            self.write_from_handler(s, handler_size, via)

    def send_from_peer(self, s: Sess, size: int) -> None:
        peer = s.peer
        size = min(size, MAX_IN - peer.queued)
        if s.paused:
            size = min(size, self.paused_unread_max - (peer.queued - s.delivered_at_pause))
        if size <= 0:
            note("  (budget spent: nothing sent)")
            return
        note(f"  session {s.index}: peer sends {size} bytes at {peer.queued}")
        peer.queued += size
        peer.pump()

    @precondition(has_sessions)
    @rule(i=SESSION)
    @checked
    def peer_half_close(self, i: int) -> None:
        s = self.pick(i, can_peer_write)
        if s is None:
            return
        s.peer.pump()
        s.peer.drop_unsent()
        note(f"  session {s.index}: peer FIN after {s.peer.sent} bytes")
        s.peer.half_close()

    def peer_reset(self, s: Sess, then_write: bool) -> None:
        peer = s.peer
        peer.pump()
        if peer.is_client:  # what its kernel holds is not known: what was delivered
            s.acked_at_reset = len(s.log.received)
        else:
            s.acked_at_reset = peer.sent - peer.unacked()
        note(f"  session {s.index}: peer RST after {peer.sent} bytes ({s.acked_at_reset} acked)")
        peer.reset_close()
        s.mode = "gone"
        if then_write and s.session is not None:
            outcome = write_out(s.session, s.log, 20_000)
            note(f"  session {s.index}: handler write right after the RST: {outcome}")

    @precondition(has_sessions)
    @rule(i=SESSION, mode=st.sampled_from(["reading", "slow", "stopped"]))
    @checked
    def peer_reading(self, i: int, mode: str) -> None:
        s = self.pick(i, has_peer)
        if s is None:
            return
        note(f"  session {s.index}: the peer is {mode}")
        s.mode = mode
        s.peer.set_reading(mode != "stopped")

    @precondition(has_sessions)
    @rule(i=SESSION, size=HANDLER_SIZES, via=VIA, pieces=st.sampled_from([1, 3]))
    @checked
    def handler_write(self, i: int, size: int, via: str, pieces: int) -> None:
        s = self.pick(i, any_session)
        if s is not None:
            self.write_from_handler(s, size, via, pieces)

    def write_from_handler(self, s: Sess, size: int, via: str, pieces: int = 1) -> None:
        session, log = s.session, s.log
        if session is None:
            return
        size = min(size, MAX_OUT - log.out_offset)
        if size <= 0:
            return
        # A close or a raise armed for the next on_recv may be happening right now.
        armed = log.close_on_recv or log.raise_in is not None
        ended_in_callback = (log.closed_in_recv_at is not None or log.raised is not None) and (
            s.ending is None
        )
        if s.closed or s.shut or s.ending in ("close", "abort", "eof", "both"):
            allowed = {"closed"}
        elif s.peer.reset or armed or ended_in_callback:
            allowed = {"ok", "closed", "full"}
        else:
            allowed = {"ok", "full"}
        if via == "reactor":
            outcome = self.on_reactor(lambda: write_out(session, log, size, pieces))
        else:
            outcome = write_out(session, log, size, pieces)
        how = f"{via}, writelines of {pieces}" if pieces > 1 else via
        note(f"  session {s.index}: handler writes {size} bytes ({how}): {outcome}")
        assert outcome in allowed, f"write() said {outcome}, expected {allowed}: {s.describe()}"

    @precondition(has_sessions)
    @rule(
        i=SESSION,
        setting=st.sampled_from(
            [
                *(("echo", size) for size in (0, 1, 100, 5000)),
                *(("eof_reply", size) for size in (0, 1, 20_000)),
                ("raise", "recv"),
                ("raise", "eof"),
                *(("limits", high) for high in (0, 4 * KiB, WRITE_HIGH, 256 * KiB)),
            ]
        ),
        via=VIA,
    )
    @checked
    def handler_setting(self, i: int, setting: tuple[str, Any], via: str) -> None:
        """What the handler does in its callbacks: write from on_recv (an echo of up to
        so many bytes a call) or on_eof, raise in on_recv or on_eof; or the session's
        write-buffer limits."""
        what, value = setting
        if what == "raise":
            s = self.pick(i, can_close_in_recv)
            if s is not None:
                note(f"  session {s.index}: the next on_{value} raises")
                s.log.raise_in = value
            return
        s = self.pick(i, is_open)
        if s is None or s.session is None:
            return
        if what == "echo":
            note(f"  session {s.index}: on_recv writes up to {value} bytes a call")
            s.log.echo = value
        elif what == "eof_reply":
            note(f"  session {s.index}: on_eof writes {value} bytes")
            s.log.eof_reply = value
        else:
            self.set_write_limits(s, value, via)

    def set_write_limits(self, s: Sess, high: int, via: str) -> None:
        session = s.session
        assert session is not None
        note(f"  session {s.index}: set_write_buffer_limits(high={high}, low={high // 4})")
        if via == "reactor":
            self.on_reactor(lambda: session.set_write_buffer_limits(high=high, low=high // 4))
        else:
            session.set_write_buffer_limits(high=high, low=high // 4)
        assert session.get_write_buffer_limits() == (high // 4, high, MAX_WRITE_BUFFER)

    def close_in_next_recv(self, s: Sess) -> None:
        note(f"  session {s.index}: the next on_recv closes the session")
        s.log.close_on_recv = True

    @precondition(has_sessions)
    @rule(i=SESSION, via=VIA)
    @checked
    def pause_reading(self, i: int, via: str) -> None:
        s = self.pick(i, can_pause)
        if s is None or s.session is None:
            return
        session, log = s.session, s.log
        if via == "reactor":

            def pause() -> int:
                session.pause_reading()
                return len(log.received)

            s.delivered_at_pause = self.on_reactor(pause)
        else:
            session.pause_reading()
            self.sync()  # what a turn under way read is delivered, then nothing more
            s.delivered_at_pause = len(log.received)
        s.paused = True
        note(f"  session {s.index}: pause_reading ({via}) at {s.delivered_at_pause}")

    @precondition(has_sessions)
    @rule(i=SESSION, via=VIA)
    @checked
    def resume_reading(self, i: int, via: str) -> None:
        s = self.pick(i, is_paused)
        if s is None or s.session is None:
            return
        note(f"  session {s.index}: resume_reading ({via})")
        if via == "reactor":
            self.on_reactor(s.session.resume_reading)
        else:
            s.session.resume_reading()
        s.paused = False

    @precondition(has_sessions)
    @rule(i=SESSION, via=VIA)
    @checked
    def shutdown_write(self, i: int, via: str) -> None:
        s = self.pick(i, is_open)
        if s is None or s.session is None:
            return
        note(f"  session {s.index}: shutdown_write ({via})")
        if s.ending is None:
            s.shut = True
            if s.eof_seen:
                s.ending = "both"
                s.frozen_at = s.log.eof_at
        if via == "reactor":
            self.on_reactor(s.session.shutdown_write)
        else:
            s.session.shutdown_write()

    def close(self, s: Sess, via: str) -> None:
        session, log = s.session, s.log
        assert session is not None
        first = s.ending is None
        if first:
            self.prepare_close(s)
        note(f"  session {s.index}: close ({via}){'' if first else ' again'}")
        if via == "reactor":

            def close() -> int:
                session.close()
                return len(log.received)

            at = self.on_reactor(close)
        else:
            at = len(log.received)
            session.close()
        if first:
            s.ending = "close"
            s.frozen_at = at

    def abort(self, s: Sess, via: str) -> None:
        session, log = s.session, s.log
        assert session is not None
        note(f"  session {s.index}: abort ({via}), ending was {s.ending}")
        s.peer.drop_unsent()
        if via == "reactor":

            def abort() -> int:
                session.abort()
                return len(log.received)

            at = self.on_reactor(abort)
        else:
            at = len(log.received)
            session.abort()
        if s.ending is None:
            s.abort_strict = not s.shut
            s.frozen_at = at
        if s.ending != "abort":
            s.ending = "abort"

    def end_during_input(self, s: Sess, how: str, via: str) -> None:
        """close() or abort() while the peer's bytes are arriving (no settling first):
        whatever on_recv got is a prefix, and nothing comes once the reactor has had a
        turn after the call; the peer may lose the tail of its input to RST."""
        session, log = s.session, s.log
        assert session is not None
        note(f"  session {s.index}: {how} ({via}) while the peer sends 100000 bytes")
        # An on_recv armed to close may do so first: the abort then finds it closed.
        armed = log.close_on_recv
        self.send_from_peer(s, 100_000)
        method = session.close if how == "close" else session.abort
        if via == "reactor":
            self.on_reactor(method)
        else:
            method()
        s.peer.drop_unsent()
        self.sync()
        s.frozen_at = len(log.received)
        s.ending = how
        s.tail = "weak"
        s.abort_strict = how == "abort" and not s.shut and not armed

    @precondition(has_sessions)
    @rule(
        i=SESSION,
        how=st.sampled_from(
            [
                "close",
                "abort",
                "peer_reset",
                "peer_reset_then_write",
                "close_in_next_recv",
                "close_during_input",
                "abort_during_input",
            ]
        ),
        via=VIA,
    )
    @checked
    def end_session(self, i: int, how: str, via: str) -> None:
        """The ways a session ends (one rule, so that they are not most of the steps)."""
        if how in ("close", "abort"):
            s = self.pick(i, is_open)
            if s is not None:
                (self.close if how == "close" else self.abort)(s, via)
        elif how.startswith("peer_reset"):
            s = self.pick(i, can_reset)
            if s is not None:
                self.peer_reset(s, then_write=how.endswith("write"))
        elif how.endswith("during_input"):
            s = self.pick(i, can_peer_write)
            if s is not None:
                self.end_during_input(s, how.split("_")[0], via)
        else:
            s = self.pick(i, can_close_in_recv)
            if s is not None:
                self.close_in_next_recv(s)

    @precondition(lambda self: self.steps_since_start >= STEPS_BEFORE_STOP)
    @rule(timeout=st.sampled_from([0.3, 1.5]), via=VIA, busy=st.booleans(), buffers=BUFFERS)
    @checked
    def stop_and_restart(self, timeout: float, via: str, busy: bool, buffers: str) -> None:
        note(f"  server.stop({timeout}) ({via}{', busy' if busy else ''}), then a new server")
        self.stop_server(timeout, via, busy)
        self.release_server()
        self.start_server(buffers)


def model_settings() -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if SHRINK:
        phases.append(Phase.shrink)
    return settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=phases,
        print_blob=RANDOM,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        verbosity=Verbosity.verbose if VERBOSE else Verbosity.normal,
    )


@pytest.mark.handler_errors  # callbacks raise on purpose; each ERROR is checked above
@pytest.mark.timeout(3600 if LONG_RUN else 240)
def test_lifecycle_model(hamanet_errors):
    _error_records[:] = [hamanet_errors]
    rule_counts.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(LifecycleModel, settings=model_settings())
    finally:
        _error_records.clear()
        steps = sum(
            n for name, n in rule_counts.items() if not name.startswith(("settled", "(", "__"))
        )
        print(
            f"model: {rule_counts['__init__']} servers, {steps} steps in "
            f"{time.monotonic() - started:.1f}s: {dict(rule_counts.most_common())}"
        )


# -- fixed scenarios -----------------------------------------------------------------------------
# Step sequences that once found a bug (or walk a path random runs reach rarely), run
# through the same model and checks on every CI run.
SCENARIOS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    # Reading paused, data then RST: the data comes after the resume, then
    # on_close(ConnectionResetError) (issue 9 edge; once the data was lost).
    "paused-data-then-rst": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("pause_reading", {"i": 0, "via": "thread"}),
        ("peer_write", {"i": 0, "size": 30_000}),
        ("end_session", {"i": 0, "how": "peer_reset", "via": "thread"}),
        ("resume_reading", {"i": 0, "via": "reactor"}),
    ],
    "paused-data-then-rst-from-a-client": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "client"}),
        ("pause_reading", {"i": 0, "via": "reactor"}),
        ("peer_write", {"i": 0, "size": 1000}),
        ("end_session", {"i": 0, "how": "peer_reset", "via": "thread"}),
        ("resume_reading", {"i": 0, "via": "thread"}),
    ],
    # More input than a turn reads is waiting when the RST comes: all of it is delivered
    # over several turns after the resume, then on_close(ConnectionResetError).
    "paused-600k-then-rst": [
        ("start_server", {"buffers": "big-recv"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("pause_reading", {"i": 0, "via": "reactor"}),
        *[("peer_write", {"i": 0, "size": 100_000})] * 6,
        ("end_session", {"i": 0, "how": "peer_reset", "via": "thread"}),
        ("resume_reading", {"i": 0, "via": "thread"}),
    ],
    # The RST arrives while a write is queued: the data before it is still delivered.
    "rst-then-handler-write": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("peer_write", {"i": 0, "size": 100_000}),
        ("pause_reading", {"i": 0, "via": "reactor"}),
        ("peer_write", {"i": 0, "size": 30_000}),
        ("end_session", {"i": 0, "how": "peer_reset_then_write", "via": "thread"}),
        ("resume_reading", {"i": 0, "via": "thread"}),
    ],
    # Own shutdown_write, then the peer's FIN with on_eof keeping the session open: both
    # directions are finished, so it closes by itself (once it stayed open forever).
    "shutdown-write-then-peer-fin": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": True, "kind": "socket"}),
        ("handler_write", {"i": 0, "size": 40_000, "via": "reactor", "pieces": 3}),
        ("shutdown_write", {"i": 0, "via": "thread"}),
        ("peer_half_close", {"i": 0}),
    ],
    "peer-fin-then-shutdown-write-with-a-stopped-reader": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": True, "kind": "small-socket"}),
        ("peer_reading", {"i": 0, "mode": "stopped"}),
        ("handler_write", {"i": 0, "size": 300_000, "via": "thread", "pieces": 1}),
        ("peer_half_close", {"i": 0}),
        ("shutdown_write", {"i": 0, "via": "reactor"}),
        ("peer_reading", {"i": 0, "mode": "reading"}),
    ],
    "client-half-closes-both-ways": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": True, "kind": "client"}),
        ("peer_write", {"i": 0, "size": 100_000}),
        ("peer_half_close", {"i": 0}),
        ("handler_write", {"i": 0, "size": 16 * KiB, "via": "reactor", "pieces": 1}),
        ("shutdown_write", {"i": 0, "via": "thread"}),
    ],
    # A close with unread input (reading paused) reads it away, so the peer gets a clean
    # EOF after everything written.
    "close-while-paused-with-unread-input": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("handler_write", {"i": 0, "size": 40_000, "via": "thread", "pieces": 1}),
        ("pause_reading", {"i": 0, "via": "thread"}),
        ("peer_write", {"i": 0, "size": 100_000}),
        ("end_session", {"i": 0, "how": "close", "via": "reactor"}),
    ],
    # Pausing and resuming writing, then the cap, with a peer that stops and resumes.
    "write-pause-cap-and-resume": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "small-socket"}),
        ("peer_reading", {"i": 0, "mode": "stopped"}),
        ("handler_write", {"i": 0, "size": 300_000, "via": "reactor", "pieces": 1}),
        ("handler_write", {"i": 0, "size": 300_000, "via": "thread", "pieces": 1}),
        ("handler_setting", {"i": 0, "setting": ("limits", 256 * KiB), "via": "thread"}),
        ("peer_reading", {"i": 0, "mode": "slow"}),
        ("peer_reading", {"i": 0, "mode": "reading"}),
        ("end_session", {"i": 0, "how": "close", "via": "thread"}),
    ],
    # Callbacks that raise: only their session is aborted, with their exception.
    "raising-callbacks": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("connect", {"keep_open": True, "kind": "client"}),
        ("handler_setting", {"i": 0, "setting": ("raise", "recv"), "via": "thread"}),
        ("handler_setting", {"i": 1, "setting": ("raise", "eof"), "via": "thread"}),
        ("peer_write", {"i": 0, "size": 1000}),
        ("peer_half_close", {"i": 0}),
    ],
    # stop() gives up on a peer that does not read: TimeoutError, and the peer sees RST.
    "stop-gives-up-on-a-stopped-reader": [
        ("start_server", {"buffers": "small-send"}),
        ("connect", {"keep_open": False, "kind": "small-socket"}),
        ("connect", {"keep_open": False, "kind": "socket"}),
        ("peer_reading", {"i": 0, "mode": "stopped"}),
        ("handler_write", {"i": 0, "size": 300_000, "via": "reactor", "pieces": 1}),
        ("handler_write", {"i": 1, "size": 300_000, "via": "reactor", "pieces": 1}),
        (
            "stop_and_restart",
            {"timeout": 0.3, "via": "reactor", "busy": False, "buffers": "default"},
        ),
        ("connect", {"keep_open": False, "kind": "client"}),
    ],
}


@pytest.mark.handler_errors
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lifecycle_scenario(name, hamanet_errors):
    _error_records[:] = [hamanet_errors]
    _scenario_notes.clear()
    machine = LifecycleModel()
    try:
        for rule_name, arguments in SCENARIOS[name]:
            _scenario_notes.append(f"state.{rule_name}({arguments})")
            getattr(machine, rule_name)(**arguments)
            machine.steps_since_start = STEPS_BEFORE_STOP  # stop_and_restart may run
            machine.settled_and_consistent()
        machine.teardown()
    except BaseException as exc:
        machine.failed = True
        machine.teardown()
        raise AssertionError("steps:\n" + "\n".join(_scenario_notes)) from exc
    finally:
        _error_records.clear()
