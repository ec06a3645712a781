"""The worker pool (``workers=N``): handler code on N threads, a lane per session.

Each test states the promise it checks. The promises: every callback of a session runs on a
``hamanet-worker-<i>`` thread, never two at once and always in the reactor's order
(``on_connect`` first, ``on_close`` last and exactly once); different sessions run in
parallel where the GIL is released; bytes waiting for a session's handler are capped by
``worker_backlog`` (TCP pushes back, nothing is dropped); timers keep ``session=``'s order;
``run_in_worker`` returns a ``concurrent.futures.Future``; ``stop(timeout)`` lets queued work
finish until its deadline, then drops data callbacks and cancels jobs but still gives every
session its ``on_close``; a raising callback is isolated to its session.

Loopback only; every wait is bounded (``wait_until``, socket timeouts, joins with a
timeout); nothing asserts on speed or rates (the one time-based check is a causal lower
bound: work queued behind held workers waited at least as long as they were held).
Overlap is detected with an "inside" flag per session, set and cleared under a lock around
every callback.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import random
import re
import select
import socket
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import hamanet
import pytest
from conftest import (
    WAIT,
    Echo,
    Recorder,
    connect,
    pattern,
    read_until_end,
    recv_exactly,
    rss_bytes,
    wait_until,
)
from hamanet import _hamanet
from hamanet.framing import Delimiter

KiB = 1 << 10
MiB = 1 << 20
READ_BUDGET = _hamanet.READ_BUDGET  # the most one wakeup reads from one session
WORKER_NAME = re.compile(r"hamanet-worker-(\d+)\Z")


# -- helpers --------------------------------------------------------------------------------


class Inside:
    """Marks callbacks as running, per key (a session id), and counts overlaps.

    ``with inside.enter(key, what):`` around a callback body: entering a key some other
    callback is already inside records a violation. Also keeps the most callbacks (of any
    keys) that were inside at one moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[Any, str] = {}
        self.violations: list[tuple[Any, str, str]] = []
        self.current = 0
        self.most = 0

    @contextlib.contextmanager
    def enter(self, key: Any, what: str):
        with self.lock:
            if key in self.active:
                self.violations.append((key, self.active[key], what))
            self.active[key] = what
            self.current += 1
            self.most = max(self.most, self.current)
        try:
            yield
        finally:
            with self.lock:
                self.active.pop(key, None)
                self.current -= 1


def run_threads(functions: list[Callable[[], Any]], timeout: float = 40.0) -> list[Any]:
    """Runs each function on a thread of its own; returns their results in order. Fails
    the test if one raised or did not finish within ``timeout`` seconds (in all)."""
    results: list[Any] = [None] * len(functions)
    errors: list[BaseException | None] = [None] * len(functions)

    def body(index: int) -> None:
        try:
            results[index] = functions[index]()
        except BaseException as exc:  # reported below
            errors[index] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"threads {stuck} did not finish within {timeout}s"
    for index, error in enumerate(errors):
        if error is not None:
            raise AssertionError(f"thread {index} failed: {error!r}") from error
    return results


def call_bounded(function: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``function()`` on another thread; fails the test if it has not returned within
    ``timeout`` seconds (a liveness bound, not a speed check)."""
    return run_threads([function], timeout=timeout)[0]


def ids_by_port(recorder_sessions: dict[int, hamanet.Session]) -> dict[int, int]:
    """{client port: session id} for the sessions a handler saw."""
    return {session.peer_addr[1]: sid for sid, session in recorder_sessions.items()}


def is_worker(name: str, workers: int) -> bool:
    match = WORKER_NAME.match(name)
    return match is not None and int(match.group(1)) < workers


# == 1. per-session order under random handler delays =======================================
class OrderedLines(hamanet.Handler):
    """Echoes each line; sleeps a random 0-3 ms in every callback; records everything."""

    framing = Delimiter(b"\n")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.inside = Inside()
        self.lock = threading.Lock()
        # session id -> [(kind, client, seq, thread name)]
        self.events: dict[int, list[tuple[str, int, int, str]]] = defaultdict(list)

    def _delay(self) -> None:
        with self.rng_lock:
            delay = self.rng.random() * 0.003
        time.sleep(delay)

    def _record(self, session, kind: str, client: int = -1, seq: int = -1) -> None:
        with self.lock:
            self.events[session.id].append((kind, client, seq, threading.current_thread().name))

    def closed_count(self) -> int:
        with self.lock:
            return sum(1 for events in self.events.values() if events[-1][0] == "close")

    def on_connect(self, session):
        with self.inside.enter(session.id, "on_connect"):
            self._record(session, "connect")
            self._delay()

    def on_message(self, session, message):
        with self.inside.enter(session.id, "on_message"):
            client, seq = (int(part) for part in message.split(b":"))
            self._record(session, "message", client, seq)
            self._delay()
            session.write_frame(message)

    def on_eof(self, session):
        with self.inside.enter(session.id, "on_eof"):
            self._record(session, "eof")
            self._delay()

    def on_close(self, session, exc):
        with self.inside.enter(session.id, "on_close"):
            self._record(session, "close")
            self._delay()


@pytest.mark.timeout(60)
def test_per_session_order_and_no_overlap_under_random_delays(serve):
    """Promise: with workers=4, each session's callbacks run one at a time, in the order
    the reactor produced them: on_connect first, every message in sequence, on_eof, then
    on_close last and exactly once; and the pool does use several workers."""
    sessions, messages, workers = 16, 60, 4
    handler = OrderedLines(seed=1234)
    server = serve(handler, workers=workers)

    def client(index: int) -> None:
        rng = random.Random(index)
        lines = [f"{index:02d}:{seq:04d}\n".encode() for seq in range(messages)]
        sock = connect(server.port)
        try:
            sent = 0
            while sent < messages:
                burst = rng.randint(1, 8)
                sock.sendall(b"".join(lines[sent : sent + burst]))
                sent += burst
                time.sleep(rng.random() * 0.002)
            want = b"".join(lines)
            assert recv_exactly(sock, len(want)) == want, f"client {index}: echo out of order"
            sock.shutdown(socket.SHUT_WR)
            rest, how = read_until_end(sock)
            assert (rest, how) == (b"", "eof")
        finally:
            sock.close()

    run_threads([lambda i=i: client(i) for i in range(sessions)])
    wait_until(lambda: handler.closed_count() >= sessions, what="on_close of every session")

    with handler.lock:
        events = {sid: list(evs) for sid, evs in handler.events.items()}
    assert len(events) == sessions
    assert handler.inside.violations == [], "callbacks of one session overlapped"
    clients_seen = set()
    threads = set()
    for sid, evs in events.items():
        kinds = [kind for kind, *_ in evs]
        assert kinds[0] == "connect", f"session {sid}: {kinds[:3]} does not start on_connect"
        assert kinds[-1] == "close", f"session {sid}: does not end with on_close"
        assert kinds.count("connect") == 1 and kinds.count("close") == 1
        assert kinds == ["connect"] + ["message"] * messages + ["eof", "close"], sid
        clients = {client for kind, client, _, _ in evs if kind == "message"}
        assert len(clients) == 1, f"session {sid} got lines of clients {clients}"
        clients_seen |= clients
        seqs = [seq for kind, _, seq, _ in evs if kind == "message"]
        assert seqs == list(range(messages)), f"session {sid}: sequence out of order"
        threads |= {thread for *_, thread in evs}
    assert clients_seen == set(range(sessions))
    assert all(is_worker(name, workers) for name in threads), threads
    assert len(threads) > 1, f"only {threads} ran the callbacks of {sessions} sessions"


# == 2. different sessions run in parallel ===================================================
class SlowRecv(hamanet.Handler):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inside = Inside()
        self.threads: set[str] = set()

    def on_recv(self, session, data):
        with self.inside.enter(session.id, "on_recv"):
            self.threads.add(threading.current_thread().name)
            time.sleep(self.seconds)  # releases the GIL
            session.write(data)


@pytest.mark.timeout(30)
def test_different_sessions_run_in_parallel(serve):
    """Promise: with workers=4, callbacks of different sessions run at the same time
    where the GIL is released (time.sleep): at some moment at least two were inside."""
    handler = SlowRecv(0.3)
    server = serve(handler, workers=4)
    socks = [connect(server.port) for _ in range(4)]
    try:
        for index, sock in enumerate(socks):
            sock.sendall(bytes([index]))
        for index, sock in enumerate(socks):
            assert recv_exactly(sock, 1) == bytes([index])
    finally:
        for sock in socks:
            sock.close()
    assert handler.inside.violations == []
    assert handler.inside.most >= 2, "no two sessions' callbacks ever ran at once"
    assert len(handler.threads) >= 2


# == 3. the backlog cap pushes back on the peer ==============================================
class HeldThenCollect(hamanet.Handler):
    """The first on_recv waits for ``release``; then everything is collected in order."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.data = bytearray()
        self.lock = threading.Lock()
        self.calls = 0

    def on_recv(self, session, data):
        self.entered.set()
        self.release.wait(3 * WAIT)
        with self.lock:
            self.data.extend(data)
            self.calls += 1


@pytest.mark.timeout(60)
def test_worker_backlog_caps_queued_bytes_and_tcp_pushes_back(serve):
    """Promise: bytes queued for a session's handler and not yet handled are capped by
    worker_backlog: past it the reactor stops reading, so the peer's sends block (TCP
    pushes back), memory stays flat, and nothing is dropped: once the handler catches up,
    every byte arrives in order."""
    backlog = 1 * MiB
    limit = 64 * MiB
    handler = HeldThenCollect()
    server = serve(
        handler, workers=1, worker_backlog=backlog, recv_buffer=64 * KiB, send_buffer=64 * KiB
    )
    seed = 77
    period = 65536  # pattern(seed, n)[i] == block[i % 65536]
    source = pattern(seed, 2 * period)
    chunk = 64 * KiB
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
    sock.settimeout(WAIT)
    try:
        sock.connect(("127.0.0.1", server.port))
        rss_before = rss_bytes()
        sock.settimeout(0.2)
        sent = 0
        timeouts_in_a_row = 0
        deadline = time.monotonic() + 20
        while sent < limit and timeouts_in_a_row < 5 and time.monotonic() < deadline:
            start = sent % period
            try:
                sent += sock.send(source[start : start + chunk])
                timeouts_in_a_row = 0
            except socket.timeout:
                timeouts_in_a_row += 1
        rss_growth = rss_bytes() - rss_before
        stats = server.stats()

        assert handler.entered.is_set(), "the handler never got the first bytes"
        assert timeouts_in_a_row >= 5, f"sends never blocked: {sent} bytes went through"
        assert sent < 16 * MiB, f"the peer could send {sent / MiB:.1f} MiB to a stuck handler"
        assert stats["bytes_in"] <= backlog + 2 * READ_BUDGET, (
            f"the reactor read {stats['bytes_in']} bytes for a handler that took none "
            f"(worker_backlog={backlog})"
        )
        assert rss_growth < 32 * MiB, f"RSS grew by {rss_growth / MiB:.1f} MiB"
        assert handler.calls == 0
    finally:
        handler.release.set()
    sock.settimeout(WAIT)
    wait_until(lambda: len(handler.data) >= sent, what=f"all {sent} bytes at the handler")
    sock.close()
    with handler.lock:
        got = bytes(handler.data)
    assert len(got) == sent
    assert got == pattern(seed, sent), "bytes lost, duplicated or reordered"


# == 4. stop() with queued work ===============================================================
class SlowCollector(Recorder):
    """A Recorder whose on_recv sleeps ``seconds``; the first one may wait on ``gate``."""

    def __init__(self, seconds: float, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.seconds = seconds
        self.gate = gate
        self.entered = threading.Event()
        self.recv_calls = 0

    def on_recv(self, session, data):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        with self.lock:
            self.recv_calls += 1
        time.sleep(self.seconds)
        super().on_recv(session, data)


@pytest.mark.timeout(60)
def test_stop_lets_queued_work_finish_before_the_deadline(serve):
    """Promise: stop(timeout) waits for queued work until its deadline: data already read
    but still queued for a busy worker is all handled, then every session gets exactly one
    on_close."""
    gate = threading.Event()
    handler = SlowCollector(0.05, gate)
    server = serve(handler, workers=1)
    count, chunks = 6, 3
    socks = [connect(server.port) for _ in range(count)]
    try:
        total = 0
        for _ in range(chunks):
            for index, sock in enumerate(socks):
                sock.sendall(pattern(index, 1000))
                total += 1000
        assert handler.entered.wait(WAIT)  # the only worker is held: the rest queues
        wait_until(lambda: server.stats()["bytes_in"] == total, what="every byte read")
        assert server.stats()["worker_queued"] >= 1
        gate.set()
        call_bounded(lambda: server.stop(timeout=5), timeout=30)
        with handler.lock:
            closes = dict(handler.closes)
            sessions = dict(handler.sessions)
            data = {sid: bytes(buf) for sid, buf in handler.data.items()}
        assert len(sessions) == count
        assert sorted(closes) == sorted(sessions)
        assert all(len(excs) == 1 for excs in closes.values()), closes
        assert sum(len(buf) for buf in data.values()) == total, "queued data was dropped"
        for port, sid in ids_by_port(sessions).items():
            index = [s.getsockname()[1] for s in socks].index(port)
            assert data[sid] == pattern(index, 1000) * chunks
        for sid in sessions:
            kinds = handler.kinds(sid)
            assert kinds[0] == "connect" and kinds[-1] == "close"
    finally:
        gate.set()
        for sock in socks:
            sock.close()


@pytest.mark.timeout(60)
def test_stop_past_its_deadline_drops_data_and_cancels_jobs_but_closes_everyone(serve):
    """Promise: past stop's deadline, queued data callbacks are dropped and queued
    run_in_worker jobs that never started are cancelled (future.cancelled()); still every
    session gets its on_connect (queued too) and exactly one on_close, and stop returns
    once the running callback does.

    The only worker is held in the first on_recv until well after the deadline (the stop
    is seen requested, then 0.5 s more pass, against a 0.2 s timeout), so what queued
    behind it is, deterministically, past the deadline when the worker gets to it."""
    gate = threading.Event()
    handler = SlowCollector(0.2, gate)
    server = serve(handler, workers=1)
    count = 6
    socks = [connect(server.port)]
    try:
        socks[0].sendall(pattern(0, 1000))
        assert handler.entered.wait(WAIT)  # the worker is held: from now on, work queues
        socks += [connect(server.port) for _ in range(count - 1)]
        for index, sock in enumerate(socks[1:], 1):
            sock.sendall(pattern(index, 1000))
        wait_until(
            lambda: (
                server.stats()["bytes_in"] == 1000 * count and server.stats()["accepted"] == count
            ),
            what="every session accepted and its bytes read",
        )
        job = server.run_in_worker(lambda: "ran")
        assert server.stats()["worker_queued"] >= 2 * (count - 1) + 1  # on_connect, data, job
        assert len(handler.sessions) == 1

        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 0.2}, daemon=True)
        stopper.start()
        # The stop is requested (its deadline set) once the loop's phase says so.
        wait_until(lambda: server._loop.phase == "stopped", what="the stop requested")
        time.sleep(0.5)  # the deadline (0.2 s after the request) is now past
        gate.set()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"

        assert job.done()
        assert job.cancelled(), f"a job queued behind the deadline ran: {job!r}"
        with handler.lock:
            closes = dict(handler.closes)
            sessions = dict(handler.sessions)
            recv_calls = handler.recv_calls
        assert len(sessions) == count, "a session lost its on_connect"
        assert sorted(closes) == sorted(sessions)
        assert all(len(excs) == 1 for excs in closes.values()), closes
        assert recv_calls == 1, "queued data callbacks ran past the deadline"
        for sid in sessions:
            kinds = handler.kinds(sid)
            assert kinds[0] == "connect" and kinds[-1] == "close", kinds
    finally:
        gate.set()
        for sock in socks:
            sock.close()


# == 5. an exception on a worker ==============================================================
class Boom(Exception):
    """What the faulty handler raises (so nothing else is mistaken for it)."""


class BoomOrEcho(Recorder):
    def __init__(self) -> None:
        super().__init__(echo=True)
        self.raised: dict[int, Boom] = {}

    def on_recv(self, session, data):
        if b"boom" in data:
            exc = Boom(f"session {session.id}")
            self.raised[session.id] = exc
            raise exc
        super().on_recv(session, data)


@pytest.mark.handler_errors
@pytest.mark.timeout(30)
def test_exception_on_a_worker_aborts_only_its_session(serve, hamanet_errors):
    """Promise: a callback that raises on a worker is logged on the hamanet logger, its
    session is aborted and on_close gets that exception instance; another session of the
    same server keeps working; stats() counts the error."""
    handler = BoomOrEcho()
    server = serve(handler, workers=2)
    good = connect(server.port)
    bad = connect(server.port)
    try:
        good.sendall(b"before")
        assert recv_exactly(good, 6) == b"before"
        bad.sendall(b"boom")
        assert read_until_end(bad) == (b"", "reset"), "the failed session was not aborted"
        wait_until(lambda: handler.raised, what="the raising on_recv")
        ((sid, raised),) = handler.raised.items()
        assert handler.wait_closed(sid) == [raised]
        assert handler.wait_closed(sid)[0] is raised
        for round_ in range(20):
            payload = pattern(round_, 4096)
            good.sendall(payload)
            assert recv_exactly(good, len(payload)) == payload
        wait_until(lambda: server.stats()["handler_errors"] >= 1, what="handler_errors")
        assert any(record.exc_info and record.exc_info[1] is raised for record in hamanet_errors), (
            "the exception was not logged on the hamanet logger"
        )
        others = [s for s in handler.sessions if s != sid]
        assert others and all(s not in handler.closes for s in others)
    finally:
        good.close()
        bad.close()


# == 6. run_in_worker ==========================================================================
class HashOnWorker(hamanet.Handler):
    framing = Delimiter(b"\n")

    def __init__(self) -> None:
        self.server: hamanet.Server | None = None
        self.job_threads: list[str] = []

    def on_message(self, session, message):
        def digest(data: bytes) -> str:
            self.job_threads.append(threading.current_thread().name)
            return hashlib.sha256(data).hexdigest()

        future = self.server.run_in_worker(digest, message)

        def reply(done: concurrent.futures.Future) -> None:
            session.write_frame(done.result().encode())

        future.add_done_callback(reply)


@pytest.mark.timeout(30)
def test_run_in_worker_result_exception_and_from_a_callback(serve):
    """Promise: run_in_worker(fn, *args) returns a concurrent.futures.Future of fn's
    result, or of the exception fn raised; it can be called from a callback, whose reply
    is written when the future is done."""
    handler = HashOnWorker()
    server = serve(handler, workers=2)
    handler.server = server

    future = server.run_in_worker(lambda a, b: a + b, 2, 3)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(WAIT) == 5

    raised: list[BaseException] = []

    def fails() -> None:
        raised.append(ValueError("from the job"))
        raise raised[0]

    failed = server.run_in_worker(fails)
    assert failed.exception(WAIT) is raised[0]
    with pytest.raises(ValueError, match="from the job"):
        failed.result(0)

    thread_of = server.run_in_worker(lambda: threading.current_thread().name)
    assert is_worker(thread_of.result(WAIT), 2)

    sock = connect(server.port)
    try:
        for round_ in range(5):
            line = pattern(round_, 50_000).replace(b"\n", b"-")
            sock.sendall(line + b"\n")
            want = hashlib.sha256(line).hexdigest().encode() + b"\n"
            assert recv_exactly(sock, len(want)) == want
    finally:
        sock.close()
    assert len(handler.job_threads) == 5
    assert all(is_worker(name, 2) for name in handler.job_threads)


def test_run_in_worker_without_a_pool_or_after_stop_raises(serve):
    """Promise: without a pool (workers=0) run_in_worker raises LifecycleError saying to
    pass workers=N; after stop it raises LifecycleError."""
    plain = serve(Echo(), workers=0)
    with pytest.raises(hamanet.LifecycleError, match="workers="):
        plain.run_in_worker(lambda: None)

    pooled = serve(Echo(), workers=2)
    assert pooled.run_in_worker(lambda: 1).result(WAIT) == 1
    pooled.stop(timeout=2)
    with pytest.raises(hamanet.LifecycleError):
        pooled.run_in_worker(lambda: None)


# == 7. timers bound to a session ==============================================================
class Ticks(hamanet.Handler):
    """Each on_recv schedules five ticks bound to its session; a loose timer runs too."""

    TICKS = 5

    def __init__(self) -> None:
        self.server: hamanet.Server | None = None
        self.inside = Inside()
        self.lock = threading.Lock()
        self.recvs = 0
        self.bytes = 0
        self.ticks: list[tuple[int, int]] = []
        self.pokes: list[int] = []
        self.loose: list[str] = []
        self.threads: set[str] = set()
        self.rng = random.Random(7)
        self.sessions: list[hamanet.Session] = []

    def _delay(self) -> None:
        with self.lock:
            delay = self.rng.random() * 0.002
        time.sleep(delay)

    def on_connect(self, session):
        with self.inside.enter(session.id, "on_connect"):
            self.sessions.append(session)

    def on_recv(self, session, data):
        with self.inside.enter(session.id, "on_recv"):
            self.threads.add(threading.current_thread().name)
            with self.lock:
                batch = self.recvs
                self.recvs += 1
                self.bytes += len(data)
            for i in range(self.TICKS):
                self.server.call_later(0, self.tick, session, batch, i, session=session)
            self._delay()
            session.write(data)

    def tick(self, session, batch, i):
        with self.inside.enter(session.id, "tick"):
            self.threads.add(threading.current_thread().name)
            with self.lock:
                self.ticks.append((batch, i))
            self._delay()

    def poke(self, session, j):
        with self.inside.enter(session.id, "poke"):
            self.threads.add(threading.current_thread().name)
            with self.lock:
                self.pokes.append(j)
            self._delay()

    def loose_tick(self, what):
        self.loose.append(threading.current_thread().name)


@pytest.mark.timeout(30)
def test_timers_with_session_keep_its_order_and_never_overlap(serve):
    """Promise: call_later / call_soon_threadsafe with session= run on the pool in that
    session's order, never at the same time as its callbacks, each kind in the order it
    was scheduled; a timer without session= runs on the pool too; session= of a wrong
    type is a TypeError naming session."""
    handler = Ticks()
    server = serve(handler, workers=4)
    handler.server = server
    sock = connect(server.port)
    try:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        (session,) = handler.sessions
        for j in range(40):
            server.call_soon_threadsafe(handler.poke, session, j, session=session)
            payload = pattern(j, 1 + j * 97)
            sock.sendall(payload)
            assert recv_exactly(sock, len(payload)) == payload
        server.call_later(0.001, handler.loose_tick, "x")
        wait_until(lambda: len(handler.pokes) == 40, what="every poke")
        wait_until(lambda: len(handler.ticks) == handler.recvs * Ticks.TICKS, what="ticks")
        wait_until(lambda: handler.loose, what="the timer without session=")
    finally:
        sock.close()
    assert handler.inside.violations == [], "a timer overlapped its session's callbacks"
    assert handler.pokes == list(range(40))
    assert handler.ticks == sorted(handler.ticks), "session-bound timers ran out of order"
    assert handler.ticks == [(b, i) for b in range(handler.recvs) for i in range(Ticks.TICKS)]
    assert all(is_worker(name, 4) for name in handler.threads | set(handler.loose))

    for wrong in ("session", 7, object(), sock):
        with pytest.raises(TypeError, match="session"):
            server.call_later(0, handler.loose_tick, "y", session=wrong)
        with pytest.raises(TypeError, match="session"):
            server.call_soon_threadsafe(handler.loose_tick, "y", session=wrong)
        with pytest.raises(TypeError, match="session"):
            server.call_at(server.time(), handler.loose_tick, "y", session=wrong)


# == 8. thread names ===========================================================================
class Names(hamanet.Handler):
    """Records the name of the thread of every callback; echoes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[tuple[str, str]] = []
        self.closed = threading.Event()

    def _note(self, what: str) -> None:
        with self.lock:
            self.names.append((what, threading.current_thread().name))

    def on_connect(self, session):
        self._note("on_connect")

    def on_recv(self, session, data):
        self._note("on_recv")
        session.write(data)

    def on_send(self, session):
        self._note("on_send")

    def on_eof(self, session):
        self._note("on_eof")

    def on_close(self, session, exc):
        self._note("on_close")
        self.closed.set()


@pytest.mark.timeout(30)
def test_callbacks_run_on_threads_named_hamanet_worker(serve, client_factory):
    """Promise: on a pool every callback (of a Server and of a Client, timers and jobs
    included) runs on a thread named hamanet-worker-<i> with i < N, never on the reactor
    thread (hamanet-reactor) nor the caller's."""
    server_names = Names()
    server = serve(server_names, workers=3)
    client_names = Names()
    client = client_factory(client_names, workers=2)
    session = client.connect("127.0.0.1", server.port, timeout=WAIT)
    session.write(b"ping")
    wait_until(
        lambda: any(what == "on_recv" for what, _ in list(client_names.names)),
        what="the echo at the client",
    )
    extra: list[tuple[str, str]] = []

    def note(what: str) -> None:
        extra.append((what, threading.current_thread().name))

    for endpoint, workers in ((server, 3), (client, 2)):
        before = len(extra)
        endpoint.call_later(0, note, f"{workers}:call_later")
        endpoint.call_soon_threadsafe(note, f"{workers}:call_soon_threadsafe")
        endpoint.call_at(endpoint.time(), note, f"{workers}:call_at")
        if endpoint is client:
            endpoint.call_soon_threadsafe(note, f"{workers}:bound", session=session)
        job = endpoint.run_in_worker(lambda: threading.current_thread().name)
        extra.append((f"{workers}:job", job.result(WAIT)))
        expected = 5 if endpoint is client else 4
        wait_until(lambda b=before, n=expected: len(extra) >= b + n, what="the timers")
    session.close()
    assert server_names.closed.wait(WAIT) and client_names.closed.wait(WAIT)

    me = threading.current_thread().name
    for names, workers in ((server_names.names, 3), (client_names.names, 2)):
        kinds = {what for what, _ in names}
        assert {"on_connect", "on_recv", "on_close"} <= kinds
        for what, name in names:
            assert name != "hamanet-reactor" and name != me, (what, name)
            assert is_worker(name, workers), (what, name)
    for what, name in extra:
        workers = int(what.split(":")[0])
        assert is_worker(name, workers), (what, name)
    assert {what.split(":")[1] for what, _ in extra} == {
        "call_later",
        "call_soon_threadsafe",
        "call_at",
        "bound",
        "job",
    }


# == 9. a blocking connect() from a worker callback ============================================
class Upstream(hamanet.Handler):
    def __init__(self) -> None:
        self.data = bytearray()
        self.threads: list[str] = []

    def on_connect(self, session):
        self.threads.append(threading.current_thread().name)

    def on_recv(self, session, data):
        self.data.extend(data)


class ConnectsFromCallback(hamanet.Handler):
    """In on_recv, connects (blocking) to ``target`` and writes b"via worker" there."""

    def __init__(self, upstream: Upstream) -> None:
        self.client: hamanet.Client | None = None
        self.target = 0
        self.upstream = upstream
        self.outcome: list[Any] = []

    def on_recv(self, session, data):
        try:
            other = self.client.connect(
                "127.0.0.1", self.target, timeout=WAIT, handler=self.upstream
            )
            other.write(b"via worker")
            self.outcome.append((other, threading.current_thread().name))
        except BaseException as exc:  # checked by the test
            self.outcome.append(exc)


@pytest.mark.timeout(30)
def test_blocking_connect_from_a_worker_callback_works(serve, client_factory):
    """Promise: with workers>0, a blocking client.connect() from a callback (on a worker)
    is allowed: it returns a connected Session whose traffic flows."""
    first = serve(Echo())
    second = serve(Echo())
    upstream = Upstream()
    handler = ConnectsFromCallback(upstream)
    client = client_factory(handler, workers=2)
    handler.client = client
    handler.target = second.port
    session = client.connect("127.0.0.1", first.port, timeout=WAIT)
    session.write(b"go")
    wait_until(lambda: handler.outcome, what="the connect from on_recv")
    (outcome,) = handler.outcome
    assert not isinstance(outcome, BaseException), f"connect() from a worker raised {outcome!r}"
    other, thread = outcome
    assert isinstance(other, hamanet.Session)
    assert is_worker(thread, 2)
    wait_until(lambda: bytes(upstream.data) == b"via worker", what="the echo via the new session")
    assert upstream.threads and all(is_worker(name, 2) for name in upstream.threads)
    assert other.peer_addr == ("127.0.0.1", second.port)


# == 10. join() from a worker ==================================================================
class Joins(hamanet.Handler):
    def __init__(self) -> None:
        self.endpoint: hamanet.Server | hamanet.Client | None = None
        self.outcomes: list[tuple[str, Any]] = []

    def attempt(self, where: str) -> None:
        try:
            result = self.endpoint.join(timeout=0.05)
        except BaseException as exc:  # checked by the test
            result = exc
        self.outcomes.append((where, result))

    def on_recv(self, session, data):
        self.attempt("on_recv")
        session.write(data)


@pytest.mark.timeout(30)
def test_join_from_a_worker_raises_lifecycle_error(serve, client_factory):
    """Promise: join() from handler code on a worker (a callback, a timer, a job; of a
    Server or a Client) raises LifecycleError ("cannot be called from a handler
    callback"), as on the reactor thread, instead of waiting for itself."""
    server_handler = Joins()
    server = serve(server_handler, workers=2)
    server_handler.endpoint = server
    client_handler = Joins()
    client = client_factory(client_handler, workers=2)
    client_handler.endpoint = client

    session = client.connect("127.0.0.1", server.port, timeout=WAIT)
    session.write(b"x")
    wait_until(lambda: client_handler.outcomes, what="the client's on_recv")
    for endpoint, handler in ((server, server_handler), (client, client_handler)):
        done = threading.Event()
        endpoint.call_soon_threadsafe(lambda h=handler, d=done: (h.attempt("timer"), d.set()))
        assert done.wait(WAIT)
        endpoint.run_in_worker(handler.attempt, "job").result(WAIT)
        if endpoint is client:
            endpoint.call_soon_threadsafe(handler.attempt, "bound", session=session)
        expected = 4 if endpoint is client else 3
        wait_until(lambda h=handler, n=expected: len(h.outcomes) >= n, what="every attempt")
    for handler in (server_handler, client_handler):
        for where, outcome in handler.outcomes:
            assert isinstance(outcome, hamanet.LifecycleError), (where, outcome)
            assert "cannot be called from a handler callback" in str(outcome), (where, outcome)
    assert server.running  # the refused join() changed nothing
    echo = connect(server.port)
    try:
        echo.sendall(b"still")
        assert recv_exactly(echo, 5) == b"still"
    finally:
        echo.close()


class StopsThenJoins(hamanet.Handler):
    """on_recv calls stop() (which only requests it from handler code), then join()."""

    def __init__(self) -> None:
        self.server: hamanet.Server | None = None
        self.outcomes: list[Any] = []
        self.closes: list[BaseException | None] = []

    def on_recv(self, session, data):
        for step in (lambda: self.server.stop(timeout=2), lambda: self.server.join(0.05)):
            try:
                self.outcomes.append(step())
            except BaseException as exc:  # checked by the test
                self.outcomes.append(exc)

    def on_close(self, session, exc):
        self.closes.append(exc)


@pytest.mark.timeout(30)
def test_stop_then_join_from_a_worker(serve):
    """Promise: stop() from a callback on a worker only requests the stop (it returns at
    once, not waiting for the pool that runs it), and the join() after it raises
    LifecycleError; the server then finishes, with on_close for its session."""
    handler = StopsThenJoins()
    server = serve(handler, workers=2)
    handler.server = server
    sock = connect(server.port)
    try:
        sock.sendall(b"stop")
        assert call_bounded(lambda: server.join(WAIT)) is True, "the server did not finish"
        assert len(handler.outcomes) == 2, handler.outcomes
        stopped, joined = handler.outcomes
        assert stopped is None
        assert isinstance(joined, hamanet.LifecycleError), joined
        assert "cannot be called from a handler callback" in str(joined)
        assert len(handler.closes) == 1
        assert not server.running
        assert read_until_end(sock) == (b"", "eof")
    finally:
        sock.close()


# == 11. cross-session isolation under load ====================================================
@pytest.mark.timeout(60)
def test_32_connections_each_get_back_exactly_their_own_bytes(serve):
    """Promise: lanes keep sessions apart: 32 concurrent connections to an echo server on
    workers=4, each sending its own 256 KiB pattern in random-sized chunks while reading
    the echo, each get back exactly their own bytes, in order."""
    server = serve(Echo(), workers=4)
    size = 256 * KiB
    streams = [pattern(seed, size) for seed in range(32)]

    def client(index: int) -> None:
        rng = random.Random(1000 + index)
        data = streams[index]
        sock = connect(server.port)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        got = bytearray()
        try:
            sent = 0
            while sent < size:
                n = min(size - sent, rng.randint(1, 32 * KiB))
                sock.sendall(data[sent : sent + n])
                sent += n
                for _ in range(64):  # drain what has come back, without waiting
                    if not poller.poll(0):
                        break
                    chunk = sock.recv(1 << 20)
                    assert chunk, "EOF while echoing"
                    got.extend(chunk)
            got.extend(recv_exactly(sock, size - len(got)))
        finally:
            sock.close()
        assert len(got) == size
        assert bytes(got) == data, f"connection {index} got bytes that are not its own"

    run_threads([lambda i=i: client(i) for i in range(32)], timeout=50)
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="every session closed")
    assert server.stats()["bytes_in"] == 32 * size


# == 12. stats =================================================================================
class Gated(hamanet.Handler):
    """on_recv of b"hold" waits for ``release``; everything else is echoed."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = threading.Semaphore(0)

    def on_recv(self, session, data):
        if data == b"hold":
            self.held.release()
            self.release.wait(WAIT)
        session.write(data)


@pytest.mark.timeout(30)
def test_stats_of_the_pool(serve):
    """Promise: stats() has workers (N), worker_queued, workers_busy (0..N) and
    worker_wait_max_us; with both workers held, work for a third session is counted
    queued and waits, at least as long as they were held; once it drains, nothing is
    queued or busy."""
    handler = Gated()
    server = serve(handler, workers=2)
    stats = server.stats()
    assert stats["workers"] == 2
    assert stats["worker_queued"] == 0 and stats["worker_wait_max_us"] >= 0
    assert 0 <= stats["workers_busy"] <= 2

    holders = [connect(server.port) for _ in range(2)]
    third = connect(server.port)
    try:
        for sock in holders:
            sock.sendall(b"hold")
        for _ in holders:
            assert handler.held.acquire(timeout=WAIT), "a holding on_recv did not start"
        wait_until(lambda: server.stats()["workers_busy"] == 2, what="both workers busy")
        third.sendall(b"third")
        wait_until(lambda: server.stats()["worker_queued"] >= 1, what="queued work")
        held_since = time.monotonic()
        for _ in range(20):  # bounded sampling while held
            stats = server.stats()
            assert stats["workers"] == 2
            assert stats["workers_busy"] == 2
            assert stats["worker_queued"] >= 1
            time.sleep(0.005)
        held_for = time.monotonic() - held_since
        handler.release.set()
        for sock in holders:
            assert recv_exactly(sock, 4) == b"hold"
        assert recv_exactly(third, 5) == b"third"
        wait_until(
            lambda: server.stats()["worker_queued"] == 0 and server.stats()["workers_busy"] == 0,
            what="the pool drained",
        )
        stats = server.stats()
        assert stats["workers"] == 2
        # The third session's work was queued before held_since and could only start after
        # the release: it waited at least held_for (a causal bound, not a speed check).
        assert stats["worker_wait_max_us"] >= held_for * 1e6 - 1000, stats
    finally:
        handler.release.set()
        for sock in [*holders, third]:
            sock.close()
    plain = serve(Echo(), workers=0).stats()
    assert (plain["workers"], plain["worker_queued"], plain["workers_busy"]) == (0, 0, 0)


# == 13. pause_reading() on a worker ===========================================================
class PausesFirst(hamanet.Handler):
    """The first on_recv waits for ``go``, then pauses reading; a session-bound timer
    checks that the input read meanwhile was held, then resumes reading."""

    def __init__(self) -> None:
        self.server: hamanet.Server | None = None
        self.entered = threading.Event()
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.data = bytearray()
        self.recvs = 0
        self.at_timer: tuple[int, bool] | None = None
        self.session: hamanet.Session | None = None

    def on_recv(self, session, data):
        self.session = session
        with self.lock:
            self.recvs += 1
            self.data.extend(data)
            first = self.recvs == 1
        if first:
            self.entered.set()
            self.go.wait(WAIT)
            session.pause_reading()

    def check_then_resume(self, session):
        with self.lock:
            self.at_timer = (self.recvs, session.reading_paused)
        session.resume_reading()


@pytest.mark.timeout(30)
def test_pause_reading_on_a_worker_holds_input_already_read(serve):
    """Promise: pause_reading() from a callback on a worker holds input the reactor had
    already read until resume_reading(), while other work of the session (a session-bound
    timer) still runs; after the resume the held input comes, in order."""
    handler = PausesFirst()
    server = serve(handler, workers=2)
    handler.server = server
    sock = connect(server.port)
    try:
        first, second = pattern(1, 1000), pattern(2, 3000)
        sock.sendall(first)
        assert handler.entered.wait(WAIT)
        sock.sendall(second)
        wait_until(
            lambda: server.stats()["bytes_in"] == len(first) + len(second),
            what="the second chunk read by the reactor",
        )
        handler.go.set()
        session = handler.session
        # The timer bound to the session runs in its lane: it would come after the held
        # input if that input were (wrongly) delivered in spite of the pause.
        server.call_soon_threadsafe(handler.check_then_resume, session, session=session)
        wait_until(lambda: handler.at_timer is not None, what="the session-bound timer")
        assert handler.at_timer == (1, True), "input read before pause_reading() was delivered"
        wait_until(lambda: len(handler.data) == len(first) + len(second), what="held input")
        assert bytes(handler.data) == first + second
    finally:
        sock.close()
