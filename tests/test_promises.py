"""README promises that had no test of their own (issue 16).

Each test states the promise it checks and is built so that a build breaking that promise
fails it: the scenario provably reaches the situation the promise is about (asserted, not
assumed), then the promise is checked with exact values. Loopback only; every wait is
bounded (``wait_until``); nothing asserts on elapsed time or on rates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import defaultdict
from typing import Any

import hamanet
import pytest
from conftest import (
    WAIT,
    Echo,
    Recorder,
    connect,
    pattern,
    reactor_held,
    read_until_end,
    recv_exactly,
    reset_close,
    unacked_bytes,
    wait_until,
)
from hamanet import _hamanet
from hamanet.framing import Delimiter

KiB = 1 << 10
MiB = 1 << 20
READ_BUDGET = _hamanet.READ_BUDGET  # README: a wakeup reads at most 256 KiB per session
ARENA_LIMIT = 4 * MiB  # README: ... and 4 MiB in all
O_CLOEXEC = 0o2000000  # the close-on-exec bit of /proc/self/fdinfo's "flags:" (octal)


# -- helpers --------------------------------------------------------------------------------


def settled_stats(endpoint: Any) -> dict[str, int]:
    """``stats()`` as a callback sees it, in the wakeup after this call: the counters are
    published at the end of a wakeup, so a send made at the start of the wakeup in which
    the reactor still waits shows only once something wakes it."""
    seen: list[dict[str, int]] = []
    endpoint.call_soon_threadsafe(lambda: seen.append(endpoint.stats()))
    wait_until(lambda: seen, what="a call_soon_threadsafe callback")
    return seen[0]


def delta(after: dict[str, int], before: dict[str, int], *keys: str) -> dict[str, int]:
    return {key: after[key] - before[key] for key in keys}


def server_fd_of(peer: socket.socket) -> int | None:
    """The number of the fd in this process that is the server's end of ``peer``'s TCP
    connection (found through /proc/self/net/tcp and /proc/self/fd), or None."""
    client_port = peer.getsockname()[1]
    server_port = peer.getpeername()[1]
    inode = None
    with open("/proc/self/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inode = fields[9]
    if inode is None:
        return None
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == f"socket:[{inode}]":
                return int(name)
    return None


def fd_links() -> dict[int, str]:
    """This process's fds and what each is (``socket:[inode]``, ``anon_inode:[eventfd]``)."""
    links = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return links


def fd_flags(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except OSError:
        return None
    return None


class Boom(Exception):
    """What the faulty handlers raise (so nothing else is mistaken for it)."""


def hamanet_records(caplog: pytest.LogCaptureFixture, exc: BaseException) -> list:
    return [
        record
        for record in caplog.records
        if record.name == "hamanet" and record.exc_info and record.exc_info[1] is exc
    ]


# -- 1. stop() from inside a callback -------------------------------------------------------


def test_stop_from_a_callback_stops_join_returns_and_each_session_closes_once(serve):
    """README: stop() "from a callback only requests the stop": join() then returns, every
    session's buffered bytes are sent, then FIN, and each session gets one on_close."""

    class Stopper(hamanet.Handler):
        def __init__(self) -> None:
            self.server: hamanet.Server | None = None
            self.sessions: list[hamanet.Session] = []
            self.closes: dict[int, list[BaseException | None]] = defaultdict(list)
            self.stop_returned = threading.Event()

        def on_connect(self, session):
            self.sessions.append(session)

        def on_recv(self, session, data):
            if data == b"stop":
                for each in self.sessions:
                    each.write(b"bye %d" % each.id)  # buffered: must go out before the FIN
                self.server.stop()
                self.stop_returned.set()

        def on_close(self, session, exc):
            self.closes[session.id].append(exc)

    handler = Stopper()
    server = serve(handler)
    handler.server = server
    peers = [connect(server.port) for _ in range(3)]
    try:
        wait_until(lambda: len(handler.sessions) == 3, what="3 sessions")
        by_port = {session.peer_addr[1]: session for session in handler.sessions}
        peers[1].sendall(b"stop")
        assert server.join(timeout=WAIT), "join() did not return after stop() from a callback"
        assert handler.stop_returned.is_set(), "stop() called from a callback did not return"
        assert not server.running
        assert dict(handler.closes) == {s.id: [None] for s in handler.sessions}
        for peer in peers:
            session = by_port[peer.getsockname()[1]]
            assert read_until_end(peer) == (b"bye %d" % session.id, "eof")
    finally:
        for peer in peers:
            peer.close()


# -- 2. stats(): sessions_open, writes, sends, writes_coalesced ------------------------------


def test_stats_count_sessions_writes_sends_and_coalesced_writes_exactly(serve):
    """README: stats() counts `writes`, `sends` and `writes_coalesced` (writes that rode
    along in another's send): 100 small writes in one callback are one send."""

    class Burst(hamanet.Handler):
        def on_recv(self, session, data):
            if data == b"burst":
                for i in range(100):
                    session.write(b"%09d\n" % i)
            elif data == b"one":
                session.write(b"single\n")

    # reactors=1: settled_stats goes round the first reactor, whose turn publishes stats;
    # workers=0: on a pool each write from a worker may meet a reactor turn in between.
    server = serve(Burst(), reactors=1, workers=0)
    keys = ("writes", "sends", "writes_coalesced", "bytes_out", "bytes_in", "sessions_total")
    assert server.stats()["sessions_open"] == 0
    with connect(server.port) as peer:
        wait_until(lambda: server.stats()["sessions_open"] == 1, what="sessions_open == 1")
        before = settled_stats(server)
        assert before["writes"] == before["sends"] == before["writes_coalesced"] == 0

        peer.sendall(b"burst")
        assert recv_exactly(peer, 1000) == b"".join(b"%09d\n" % i for i in range(100))
        after = settled_stats(server)
        assert delta(after, before, *keys) == {
            "writes": 100,
            "sends": 1,
            "writes_coalesced": 99,
            "bytes_out": 1000,
            "bytes_in": 5,
            "sessions_total": 0,
        }
        assert after["sessions_open"] == 1

        peer.sendall(b"one")
        assert recv_exactly(peer, 7) == b"single\n"
        last = settled_stats(server)
        assert delta(last, after, "writes", "sends", "writes_coalesced") == {
            "writes": 1,
            "sends": 1,
            "writes_coalesced": 0,
        }
        assert last["sessions_open"] == 1
    wait_until(lambda: server.stats()["sessions_open"] == 0, what="sessions_open back to 0")
    assert server.stats()["sessions_total"] == 1


# -- 3. the per-wakeup read caps ------------------------------------------------------------


def test_a_wakeup_reads_at_most_256_kib_per_session_and_4_mib_in_all(serve):
    """README "Bounded": a wakeup reads at most 256 KiB per session and 4 MiB in all.

    A wakeup is seen from Python through stats(): it is published at the end of each
    wakeup, before that wakeup's callbacks run, so every on_recv of one wakeup sees the
    same `bytes_in`, and a later wakeup that read anything sees a larger one. 24 sessions
    each queue more than the per-session budget while the reactor is held, so the first
    wakeup after the hold has 24 x 300+ KiB ready: without the caps it would read ~7 MiB.
    """
    assert 256 * KiB == READ_BUDGET
    sessions = 24
    size = 512 * KiB
    want_queued = READ_BUDGET + 32 * KiB

    class Sizes(hamanet.Handler):
        def __init__(self) -> None:
            self.server: hamanet.Server | None = None
            self.connected = 0
            self.reads: list[tuple[int, int]] = []  # (bytes_in of the wakeup, size)

        def on_connect(self, session):
            self.connected += 1

        def on_recv(self, session, data):
            self.reads.append((self.server.stats()["bytes_in"], len(data)))

    handler = Sizes()
    # workers=0: on a pool, one lane may coalesce the reads of several wakeups.
    server = serve(handler, recv_buffer=2 * MiB, workers=0, reactors=1)
    handler.server = server
    peers = [connect(server.port) for _ in range(sessions)]
    try:
        wait_until(lambda: handler.connected == sessions, what=f"{sessions} sessions")
        payloads = [pattern(seed, size) for seed in range(sessions)]
        sent = [0] * sessions
        for peer in peers:
            peer.setblocking(False)

        def pump() -> None:
            for i, peer in enumerate(peers):
                while sent[i] < size:
                    try:
                        sent[i] += peer.send(payloads[i][sent[i] : sent[i] + 64 * KiB])
                    except BlockingIOError:
                        break

        def queued_enough() -> bool:
            pump()
            return all(sent[i] - unacked_bytes(p) >= want_queued for i, p in enumerate(peers))

        before = server.stats()["bytes_in"]
        with reactor_held(server):
            wait_until(queued_enough, what="every session to queue more than its read budget")

        def all_read() -> bool:
            pump()
            return sum(size for _, size in handler.reads) == sessions * size

        wait_until(all_read, what="every byte read")
    finally:
        for peer in peers:
            peer.close()

    wakeups: dict[int, int] = defaultdict(int)
    for bytes_in, size_read in handler.reads:
        assert size_read <= READ_BUDGET, f"one on_recv delivered {size_read} bytes"
        wakeups[bytes_in] += size_read
    previous = before
    for bytes_in in sorted(wakeups):
        # Each group is exactly one wakeup's reads: bytes_in grew by just what it delivered.
        assert bytes_in - previous == wakeups[bytes_in]
        previous = bytes_in
        assert wakeups[bytes_in] <= ARENA_LIMIT + READ_BUDGET, (
            f"one wakeup read {wakeups[bytes_in]} bytes, more than 4 MiB + one session's budget"
        )
    # The scenario really hit both caps (not a vacuous pass).
    assert max(wakeups.values()) >= ARENA_LIMIT, sorted(wakeups.values())
    assert any(size_read == READ_BUDGET for _, size_read in handler.reads)


# -- 4. MSG_NOSIGNAL ------------------------------------------------------------------------

SIGPIPE_CHILD = textwrap.dedent(
    """
    import signal
    import hamanet

    # Python ignores SIGPIPE; a program embedding hamanet may not. Restore the default
    # (terminate the process), so a send without MSG_NOSIGNAL would kill this child.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    class Pusher(hamanet.Handler):
        def on_connect(self, session):
            self.push(session)

        def push(self, session):
            # Keeps writing small chunks (always buffered, never sent from the caller)
            # for as long as the session lives, pausing while the buffer is high.
            try:
                if not session.writing_paused:
                    for _ in range(16):
                        session.write(b"x" * 4096)
            except hamanet.SessionClosedError:
                return
            server.call_later(0.005, self.push, session)

        def on_eof(self, session):
            print("eof", flush=True)
            return True  # keep the session open for writing after the peer's FIN

        def on_pause_writing(self, session):
            print("paused", session.write_buffer_size > 0, flush=True)

        def on_close(self, session, exc):
            print("closed", type(exc).__name__, flush=True)
            server.stop()

    server = hamanet.Server(Pusher())
    print("port", server.open(0)[1], flush=True)
    server.start()
    server.join()
    print("done", flush=True)
    """
)


def test_writing_to_a_reset_peer_never_raises_sigpipe(procs):
    """README: every send uses MSG_NOSIGNAL. The peer half-closes (the server's socket goes
    to CLOSE_WAIT and, per on_eof's True, keeps writing), lets the server's buffer back up,
    then resets: Linux answers the server's next send with EPIPE, which raises SIGPIPE
    unless the send passed MSG_NOSIGNAL. With SIGPIPE at its default disposition the child
    would die of it (exit -SIGPIPE); it must survive and exit 0."""
    proc = procs("-c", SIGPIPE_CHILD)
    port = int(proc.wait_line("port ").split()[1])
    peer = connect(port)
    try:
        peer.shutdown(socket.SHUT_WR)
        proc.wait_line("eof")
        # The peer never reads: the server's buffer stays non-empty, so the reset meets
        # a session with bytes to send.
        assert proc.wait_line("paused").split() == ["paused", "True"]
    finally:
        reset_close(peer)
    code = proc.wait()
    assert code != -signal.SIGPIPE, "the server process was killed by SIGPIPE"
    assert code == 0, f"exit {code}; stderr={''.join(proc.stderr)}"
    # The reset met a send (EPIPE: the very send that would have raised SIGPIPE).
    assert "closed BrokenPipeError\n" in proc.stdout, proc.stdout
    assert proc.stdout[-1] == "done\n"


# -- 5. close-on-exec on every fd -----------------------------------------------------------

LIST_FDS = (
    "import json, os\n"
    "links = {}\n"
    "for name in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        links[name] = os.readlink('/proc/self/fd/' + name)\n"
    "    except OSError:\n"
    "        pass\n"
    "print(json.dumps(links))\n"
)


def test_every_fd_hamanet_holds_is_close_on_exec(client_factory):
    """README: every fd is created close-on-exec. Covers both reactors' epoll fds and
    eventfds, TCP and Unix listeners, accepted sessions, and connect / connect_unix /
    connect_nowait sessions: each new fd has O_CLOEXEC, and a child exec'd with
    close_fds=False inherits none of them."""
    base = tempfile.mkdtemp(prefix="hn", dir="/tmp")
    path = os.path.join(base, "s.sock")
    before = set(fd_links())
    recorder = Recorder(echo=True)
    server = hamanet.Server(recorder)
    try:
        server.open(0)
        server.open_unix(path)
        server.start()
        client_recorder = Recorder()
        client = client_factory(client_recorder)
        client.connect("127.0.0.1", server.port)
        client.connect_unix(path)
        client.connect_nowait("127.0.0.1", server.port)
        recorder.wait_sessions(3)
        client_recorder.wait_sessions(3)

        new = {fd: link for fd, link in fd_links().items() if fd not in before}
        kinds = defaultdict(int)
        for link in new.values():
            kinds[link.split(":", 1)[0] if link.startswith("socket:") else link] += 1
        # What this scenario must have made: 2 epolls, 2 eventfds, 2 listeners,
        # 3 accepted and 3 connected sockets.
        assert kinds["anon_inode:[eventpoll]"] >= 2, new
        assert kinds["anon_inode:[eventfd]"] >= 2, new
        assert kinds["socket"] >= 8, new
        not_cloexec = {
            fd: link
            for fd, link in new.items()
            if (flags := fd_flags(fd)) is not None and not flags & O_CLOEXEC
        }
        assert not not_cloexec, f"fds without close-on-exec: {not_cloexec}"

        child = subprocess.run(
            [sys.executable, "-c", LIST_FDS],
            close_fds=False,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        )
        inherited = set(json.loads(child.stdout).values())
        leaked = {link for link in new.values() if link in inherited}
        leaked |= {link for link in inherited if link.startswith("anon_inode:[event")}
        assert not leaked, f"an exec'd child inherited {leaked}"
    finally:
        server.stop(timeout=2.0)
        shutil.rmtree(base, ignore_errors=True)


# -- 6. a graceful close reads away unread input --------------------------------------------


def test_a_graceful_close_reads_away_unread_input_so_the_reply_and_eof_arrive(serve):
    """README "One limit to know": a graceful close reads away (up to 256 KiB of) input
    the peer sent and nobody read, then closes. Closing a socket with unread input makes
    the kernel send RST instead of FIN, which would cost the peer the tail of the reply."""

    class Replier(hamanet.Handler):
        session: hamanet.Session | None = None

        def on_connect(self, session):
            session.pause_reading()  # nothing the peer sends is ever read
            self.session = session

    handler = Replier()
    server = serve(handler)
    reply = pattern(7, 2 * MiB)
    with connect(server.port) as peer:
        wait_until(lambda: handler.session is not None, what="the session")
        peer.sendall(pattern(3, 100 * KiB))
        wait_until(lambda: unacked_bytes(peer) == 0, what="the input in the server's kernel")

        def answer(session: hamanet.Session) -> None:
            session.write(reply)
            session.close()

        server.call_soon_threadsafe(answer, handler.session)
        data, end = read_until_end(peer)
    assert end == "eof", f"the peer got a reset after {len(data)} of {len(reply)} bytes"
    assert len(data) == len(reply)
    assert data == reply


# -- 7. per-session write buffer limits -----------------------------------------------------


def test_per_session_write_buffer_limits_pause_and_resume_at_the_sessions_values(serve):
    """README: watermarks are per session with session.set_write_buffer_limits(). The
    server's are 1 MiB / 512 KiB, the session's 100,000 / 20,000 bytes. Writing 8 KiB per
    wakeup to a peer that does not read, on_pause_writing must come just above 100,000
    buffered bytes (not above 1 MiB). The handler then writes one byte more, whose flush
    re-checks the marks with ~100 KB buffered: with the server's low mark that would
    resume at once; with the session's it must wait until the peer has read enough for
    20,000 or fewer to be left."""
    high, low, chunk = 100_000, 20_000, 8 * KiB
    stream = pattern(1, 8 * MiB)

    class Limited(hamanet.Handler):
        def __init__(self) -> None:
            self.server: hamanet.Server | None = None
            self.limits: tuple[int, int, int] | None = None
            self.written = 0
            self.stopped = threading.Event()
            self.paused_at: list[int] = []
            self.resumed_at: list[int] = []

        def on_connect(self, session):
            session.set_write_buffer_limits(high=high, low=low)
            self.limits = session.get_write_buffer_limits()
            self.pump(session)

        def pump(self, session):
            # One 8 KiB write per wakeup (under the 16 KiB of a direct send) until more than
            # the high mark is buffered: the pause is due from then on. (With a worker pool
            # on_pause_writing runs on a worker while this pump runs on, so the pump stops at
            # the mark rather than at the callback, or the size it records races the pump.)
            if session.write_buffer_size > high or self.written >= len(stream):
                self.stopped.set()
                return
            session.write(stream[self.written : self.written + chunk])
            self.written += chunk
            self.server.call_soon_threadsafe(self.pump, session)

        def on_pause_writing(self, session):
            self.paused_at.append(session.write_buffer_size)
            session.write(b"!")  # its flush, next wakeup, checks the low mark again

        def on_resume_writing(self, session):
            self.resumed_at.append(session.write_buffer_size)

    handler = Limited()
    server = hamanet.Server(handler, write_high=1 * MiB, write_low=512 * KiB, send_buffer=16 * KiB)
    handler.server = server
    server.open(0)
    server.start()
    peer = socket.socket()
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        peer.settimeout(WAIT)
        peer.connect(("127.0.0.1", server.port))
        wait_until(handler.stopped.is_set, what="the writer to stop")
        wait_until(lambda: handler.paused_at, what="on_pause_writing")
        settled_stats(server)  # the flush of b"!" is done, and any callback it caused
        assert handler.limits == (low, high, 128 * MiB)
        assert handler.paused_at, f"no on_pause_writing after {handler.written} bytes"
        assert len(handler.paused_at) == 1
        assert high < handler.paused_at[0] <= high + chunk, handler.paused_at
        # (The kernel may still take bytes meanwhile, so a resume here is not wrong in
        # itself; at the session's low mark or below it must be.)
        assert all(size <= low for size in handler.resumed_at), handler.resumed_at

        data = recv_exactly(peer, handler.written + 1)
        assert data == stream[: handler.written] + b"!"
        wait_until(lambda: handler.resumed_at, what="on_resume_writing")
        assert handler.resumed_at == [handler.resumed_at[0]] and handler.resumed_at[0] <= low
    finally:
        peer.close()
        server.stop(timeout=2.0)


# -- 8. handler errors in the other callbacks -----------------------------------------------


class Faulty(hamanet.Handler):
    """Raises Boom from the callback named ``where`` for the victim session; records every
    session by its peer's port and every on_close."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.raised: Boom | None = None
        self.closes: dict[int, list[BaseException | None]] = defaultdict(list)
        self.sessions: dict[int, hamanet.Session] = {}
        self.paused = threading.Event()
        self.messages: dict[int, list[bytes]] = defaultdict(list)

    def boom(self, session: hamanet.Session) -> None:
        self.raised = Boom(f"{self.where} of session {session.id}")
        raise self.raised

    def on_connect(self, session):
        self.sessions[session.peer_addr[1]] = session

    def on_close(self, session, exc):
        self.closes[session.id].append(exc)


class FaultyWriter(Faulty):
    """Echoes; to a peer that sent b"big" it writes 4 MiB, and that session (the victim)
    raises from on_pause_writing or on_resume_writing."""

    def on_recv(self, session, data):
        if data == b"big":
            session.victim = True
            session.write(pattern(5, 4 * MiB))
        else:
            session.write(data)

    def on_pause_writing(self, session):
        self.paused.set()
        if self.where == "on_pause_writing" and getattr(session, "victim", False):
            self.boom(session)

    def on_resume_writing(self, session):
        if self.where == "on_resume_writing" and getattr(session, "victim", False):
            self.boom(session)


class FaultyMessage(Faulty):
    """Echoes each line; the message b"boom" raises."""

    def on_message(self, session, message):
        self.messages[session.id].append(message)
        if message == b"boom":
            self.boom(session)
        session.write_frame(message)


class FaultyMessages(Faulty):
    """Echoes each line; a batch holding b"boom" raises."""

    def on_messages(self, session, messages):
        self.messages[session.id].extend(messages)
        if b"boom" in messages:
            self.boom(session)
        for message in messages:
            session.write_frame(message)


def check_isolated(caplog, endpoint, closes, victim_id, raised, where, errors_before):
    """The README's promise for a raising callback: logged on the hamanet logger with its
    traceback, that session aborted, its on_close gets the exception, counted once."""
    wait_until(lambda: victim_id in closes, what="the victim's on_close")
    assert len(closes[victim_id]) == 1
    assert closes[victim_id][0] is raised, closes[victim_id]
    records = hamanet_records(caplog, raised)
    assert len(records) == 1, caplog.text
    assert records[0].levelno == logging.ERROR
    assert where in records[0].getMessage() and str(victim_id) in records[0].getMessage()
    assert records[0].exc_info[2] is not None  # with the traceback
    assert endpoint.stats()["handler_errors"] == errors_before + 1


@pytest.mark.handler_errors
@pytest.mark.parametrize(
    "where", ["on_pause_writing", "on_resume_writing", "on_message", "on_messages"]
)
def test_a_raising_callback_is_logged_aborts_only_its_session(serve, caplog, where):
    """README "Handler errors are isolated", for the callbacks test_faults does not cover:
    on_pause_writing, on_resume_writing, and on_message / on_messages with framing."""
    caplog.set_level(logging.ERROR, logger="hamanet")
    framed = where in ("on_message", "on_messages")
    handler_class = {"on_message": FaultyMessage, "on_messages": FaultyMessages}
    handler = handler_class.get(where, FaultyWriter)(where)
    options: dict[str, Any] = {"write_high": 16 * KiB, "write_low": 4 * KiB}
    if framed:
        options["framing"] = Delimiter(b"\n")
    server = serve(handler, **options)
    victim, other = connect(server.port), connect(server.port)
    try:
        wait_until(lambda: len(handler.sessions) == 2, what="2 sessions")
        victim_session = handler.sessions[victim.getsockname()[1]]
        other_session = handler.sessions[other.getsockname()[1]]
        errors_before = server.stats()["handler_errors"]

        if framed:
            victim.sendall(b"one\nboom\nthree\n")
        else:
            victim.sendall(b"big")
        if where == "on_resume_writing":
            wait_until(handler.paused.is_set, what="on_pause_writing")
            assert victim_session.id not in handler.closes
        elif where == "on_pause_writing":
            wait_until(handler.paused.is_set, what="on_pause_writing")
        data, end = read_until_end(victim)  # reading lets the buffer drain (for resume)
        assert end == "reset", f"{where} raised but the peer got {end} after {len(data)} B"
        if not framed:
            assert data == pattern(5, len(data))

        check_isolated(
            caplog, server, handler.closes, victim_session.id, handler.raised, where, errors_before
        )
        if where == "on_message":
            # No message after the one that raised is delivered.
            assert handler.messages[victim_session.id] == [b"one", b"boom"]

        # The other session is untouched and still served.
        other.sendall(b"ping\n")
        assert recv_exactly(other, 5) == b"ping\n"
        assert other_session.id not in handler.closes
        assert server.stats()["handler_errors"] == errors_before + 1
    finally:
        victim.close()
        other.close()


@pytest.mark.handler_errors
@pytest.mark.parametrize("where", ["on_connect", "on_recv"])
def test_a_raising_client_callback_is_logged_aborts_only_its_session(
    serve, client_factory, caplog, where
):
    """README "Handler errors are isolated", for a hamanet.Client's handler."""
    caplog.set_level(logging.ERROR, logger="hamanet")

    class FaultyClient(hamanet.Handler):
        def __init__(self) -> None:
            self.raise_on_connect = False
            self.raised: Boom | None = None
            self.received: dict[int, bytearray] = defaultdict(bytearray)
            self.closes: dict[int, list[BaseException | None]] = defaultdict(list)

        def boom(self, session):
            self.raised = Boom(f"{where} of client session {session.id}")
            raise self.raised

        def on_connect(self, session):
            if self.raise_on_connect:
                self.boom(session)

        def on_recv(self, session, data):
            self.received[session.id].extend(data)
            if data.startswith(b"boom"):
                self.boom(session)

        def on_close(self, session, exc):
            self.closes[session.id].append(exc)

    recorder = Recorder(echo=True)
    server = serve(recorder)
    handler = FaultyClient()
    client = client_factory(handler)
    errors_before = 0

    handler.raise_on_connect = where == "on_connect"
    victim = client.connect("127.0.0.1", server.port)
    if where == "on_recv":
        victim.write(b"boom")
    wait_until(lambda: victim.id in handler.closes, what="the victim's on_close")
    handler.raise_on_connect = False
    check_isolated(caplog, client, handler.closes, victim.id, handler.raised, where, errors_before)
    # The server saw the client's abort as a reset.
    server_side = next(
        s for s in recorder.wait_sessions(1) if s.peer_addr[1] == victim.local_addr[1]
    )
    assert isinstance(recorder.wait_closed(server_side.id)[0], ConnectionResetError)

    other = client.connect("127.0.0.1", server.port)
    other.write(b"ping")
    wait_until(lambda: handler.received[other.id] == b"ping", what="the other's echo")
    assert other.id not in handler.closes
    assert client.stats()["handler_errors"] == errors_before + 1


# -- 9. set_handler from a callback ---------------------------------------------------------


def test_set_handler_from_a_callback_takes_effect_at_the_next_wakeup(serve):
    """README: set_handler "takes effect from the next wakeup". Two sessions' data and one
    FIN arrive in one wakeup; the first on_recv swaps the handler: the rest of that batch
    still goes to the old handler (which has no on_eof, so the FIN closes), the next wakeups
    go to the new one, whose own overrides (on_eof, on_send) are picked up."""

    class Old(hamanet.Handler):
        def __init__(self) -> None:
            self.server: hamanet.Server | None = None
            self.new: hamanet.Handler | None = None
            self.recvs: list[tuple[int, bytes, int]] = []

        def on_recv(self, session, data):
            self.recvs.append((session.peer_addr[1], data, self.server.stats()["bytes_in"]))
            if self.server.handler is self:
                self.server.set_handler(self.new)
            session.write(b"old:" + data)

    class New(hamanet.Handler):
        def __init__(self) -> None:
            self.recvs: list[tuple[int, bytes]] = []
            self.eofs: list[int] = []
            self.sends: list[int] = []
            self.closes: list[int] = []

        def on_recv(self, session, data):
            self.recvs.append((session.peer_addr[1], data))
            session.write(b"new:" + data)

        def on_eof(self, session):
            self.eofs.append(session.peer_addr[1])
            session.write(b"new:eof")
            return True  # keep it open for writing

        def on_send(self, session):
            self.sends.append(session.peer_addr[1])

        def on_close(self, session, exc):
            self.closes.append(session.peer_addr[1])

    old, new = Old(), New()
    old.new = new
    server = serve(old, workers=0, reactors=1)  # wakeups are the reactor thread's batches
    old.server = server
    p1, p2, p3 = (connect(server.port) for _ in range(3))
    port1, port2, port3 = (p.getsockname()[1] for p in (p1, p2, p3))
    try:
        wait_until(lambda: server.session_count == 3, what="3 sessions")
        with reactor_held(server):
            p1.sendall(b"first")
            p2.sendall(b"second")
            p2.shutdown(socket.SHUT_WR)
            wait_until(
                lambda: unacked_bytes(p1) == 0 and unacked_bytes(p2) == 0,
                what="both sessions' bytes and the FIN in the server's kernel",
            )
        wait_until(lambda: len(old.recvs) == 2, what="the held wakeup's two on_recv")
        assert {(port, data) for port, data, _ in old.recvs} == {
            (port1, b"first"),
            (port2, b"second"),
        }
        assert old.recvs[0][2] == old.recvs[1][2], "the two reads were not one wakeup"
        assert server.handler is new
        # The FIN came in the swapping wakeup: the old handler's rules (no on_eof: close).
        assert read_until_end(p2) == (b"old:second", "eof")
        assert port2 not in new.eofs
        wait_until(lambda: port2 in new.closes, what="the new handler's on_close")

        p1.sendall(b"after")
        assert recv_exactly(p1, len(b"old:firstnew:after")) == b"old:firstnew:after"
        wait_until(lambda: port1 in new.sends, what="the new handler's on_send")
        p3.shutdown(socket.SHUT_WR)
        assert recv_exactly(p3, 7) == b"new:eof"
        assert new.eofs == [port3]
        assert old.recvs[2:] == [], "the old handler got events after the swap's wakeup"
        assert new.recvs == [(port1, b"after")]
    finally:
        for peer in (p1, p2, p3):
            peer.close()


# -- 10. call_at with a past `when` ---------------------------------------------------------


def test_call_at_with_a_past_when_runs_promptly_and_when_returns_it(serve):
    """README: call_at(when, ...) on the time.monotonic() clock: a `when` already past runs
    at once (not never, not after some unrelated later timer), and when() is `when`."""
    server = serve(Recorder())
    ran: list[str] = []
    later = server.call_later(3600, ran.append, "an hour from now")
    when = server.time() - 1000.25
    handle = server.call_at(when, ran.append, "past")
    assert handle.when() == when
    wait_until(lambda: "past" in ran, what="the past call_at to run")
    assert not handle.pending()
    assert handle.when() == when

    # From a callback on the reactor thread, and with an int `when` (the clock's origin).
    inner: list[hamanet.TimerHandle] = []

    def schedule() -> None:
        inner.append(server.call_at(0, ran.append, "zero"))

    server.call_soon_threadsafe(schedule)
    wait_until(lambda: "zero" in ran, what="call_at(0) from a callback to run")
    assert inner[0].when() == 0
    assert ran == ["past", "zero"]
    assert later.pending()
    later.cancel()


# -- 11. the Unix socket path limit ---------------------------------------------------------


def test_unix_socket_path_of_107_bytes_works_and_108_raises_naming_the_limit(client_factory):
    """README: a Unix path over 107 bytes raises ValueError; 107 is the most that works."""
    base = tempfile.mkdtemp(prefix="hn", dir="/tmp")
    path107 = base + "/" + "p" * (107 - len(base) - 1)
    path108 = path107 + "q"
    assert len(path107.encode()) == 107 and len(path108.encode()) == 108
    server = hamanet.Server(Echo())
    try:
        assert server.open_unix(path107) == path107
        server.start()
        recorder = Recorder()
        client = client_factory(recorder)
        session = client.connect_unix(path107)
        session.write(b"at the limit")
        wait_until(lambda: recorder.received(session.id) == b"at the limit", what="echo")

        other = hamanet.Server(Echo())
        with pytest.raises(ValueError, match="107"):
            other.open_unix(path108)
        with pytest.raises(ValueError, match="107"):
            client.connect_unix(path108)
        assert not os.path.exists(path108)
    finally:
        server.stop(timeout=2.0)
        shutil.rmtree(base, ignore_errors=True)


# -- 12. the idle timeout is reset by traffic in one direction ------------------------------


def test_idle_timeout_is_reset_by_traffic_in_either_direction_alone(serve):
    """README: idle_timeout closes after "seconds without a byte read or sent". A peer that
    only sends (the server never writes to it) and a peer that only reads (the server
    writes to it, it sends nothing) stay open while three silent sessions, opened one after
    another, are each closed by the timeout: at least three whole timeouts."""
    timeout = 1.0
    interval = 0.2  # traffic 5 times per timeout: slack for a loaded or debug-allocator run

    class Quiet(hamanet.Handler):  # never writes unless told to
        def __init__(self) -> None:
            self.sessions: dict[int, hamanet.Session] = {}
            self.received: dict[int, int] = defaultdict(int)
            self.closes: dict[int, list[BaseException | None]] = defaultdict(list)

        def on_connect(self, session):
            self.sessions[session.peer_addr[1]] = session

        def on_recv(self, session, data):
            self.received[session.peer_addr[1]] += len(data)

        def on_close(self, session, exc):
            self.closes[session.peer_addr[1]].append(exc)

    handler = Quiet()
    server = serve(handler, idle_timeout=timeout)
    sender, reader = connect(server.port), connect(server.port)
    sender_port, reader_port = sender.getsockname()[1], reader.getsockname()[1]
    controls: list[socket.socket] = []
    try:
        wait_until(lambda: len(handler.sessions) == 2, what="2 sessions")

        def tick(session: hamanet.Session) -> None:
            with contextlib.suppress(hamanet.SessionClosedError):
                session.write(b"t")
                server.call_later(interval, tick, session)

        server.call_soon_threadsafe(tick, handler.sessions[reader_port])
        reader.setblocking(False)
        read = sent = 0
        controls.append(connect(server.port))
        timed_out = 0
        for _ in range(int(20 * timeout / interval)):  # bounded: 3 timeouts take ~4 s
            sender.sendall(b"s")
            sent += 1
            with contextlib.suppress(BlockingIOError):
                while chunk := reader.recv(4096):
                    read += len(chunk)
            control_port = controls[-1].getsockname()[1]
            if control_port in handler.closes:
                assert isinstance(handler.closes[control_port][0], TimeoutError)
                timed_out += 1
                if timed_out == 3:
                    break
                controls.append(connect(server.port))
            assert sender_port not in handler.closes, handler.closes[sender_port]
            assert reader_port not in handler.closes, handler.closes[reader_port]
            time.sleep(interval)
        else:
            pytest.fail(f"only {timed_out} of 3 silent sessions timed out")
        assert sender_port not in handler.closes and reader_port not in handler.closes
        assert not handler.sessions[sender_port].closed
        assert not handler.sessions[reader_port].closed
        wait_until(lambda: handler.received[sender_port] == sent, what="every byte sent")
        assert handler.received[reader_port] == 0
        assert read > 0
        assert server.stats()["idle_timeouts"] == 3
    finally:
        for sock in (sender, reader, *controls):
            sock.close()


# -- 13. a reused fd number never reaches the new session -----------------------------------


class Churn(hamanet.Handler):
    """Echoes every session but the victim's, and records every callback by session id.
    In "abort" mode the victim's first on_recv aborts it and connects the newcomer."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.events: dict[int, list[str]] = defaultdict(list)
        self.sessions: dict[int, hamanet.Session] = {}
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.closes: dict[int, list[BaseException | None]] = defaultdict(list)
        self.victim_port: int | None = None
        self.newcomer: socket.socket | None = None
        self.newcomer_connected = threading.Event()

    def on_connect(self, session):
        self.events[session.id].append("connect")
        self.sessions[session.peer_addr[1]] = session

    def on_recv(self, session, data):
        self.events[session.id].append("recv")
        self.data[session.id].extend(data)
        if session.peer_addr[1] != self.victim_port:
            session.write(data)
        elif self.mode == "abort":
            session.abort()
            # The newcomer's handshake completes in the kernel now; the reactor accepts
            # it in its next wakeup, right after closing the victim's fd.
            self.newcomer.connect(("127.0.0.1", self.port))
            self.newcomer_connected.set()

    def on_eof(self, session):
        self.events[session.id].append("eof")

    def on_close(self, session, exc):
        self.events[session.id].append("close")
        self.closes[session.id].append(exc)


def check_newcomer(handler: Churn, sock: socket.socket, own: bytes) -> None:
    """The newcomer on ``sock`` gets exactly its own bytes back, and its session saw
    nothing but its own events."""
    new = handler.sessions[sock.getsockname()[1]]
    sock.sendall(own)
    sock.shutdown(socket.SHUT_WR)
    assert read_until_end(sock) == (own, "eof")
    wait_until(lambda: "close" in handler.events[new.id], what="the newcomer's close")
    assert bytes(handler.data[new.id]) == own
    assert handler.closes[new.id] == [None]
    events = handler.events[new.id]
    assert events[0] == "connect" and events[-2:] == ["eof", "close"], events


def check_old_session_is_dead(server: hamanet.Server, old: hamanet.Session) -> None:
    """The old Session object must not write to, or close, whoever has its fd now."""
    assert old.closed
    with pytest.raises(hamanet.SessionClosedError):
        old.write(b"LEAK" * 8 * KiB)
    stale: list[BaseException] = []

    def write_stale() -> None:
        try:
            old.write(b"LEAK" * 8 * KiB)  # 32 KiB from a callback: the direct-send path
        except hamanet.SessionClosedError as exc:
            stale.append(exc)
        old.abort()
        old.close()

    server.call_soon_threadsafe(write_stale)
    wait_until(lambda: stale, what="the stale write's SessionClosedError")


@pytest.mark.parametrize("ending", ["abort", "reset"])
def test_a_reused_fd_number_never_carries_the_old_sessions_bytes_or_callbacks(serve, ending):
    """README: an event for a session whose fd number was reused is never delivered to the
    new occupant. The old session X has 512 KiB queued, so its first read stops at the
    read budget and X is re-queued for the next wakeup (an event in flight). Then X ends:

    - "abort": in that on_recv the handler aborts X and a newcomer connects; the reactor
      closes X's fd at the start of the next wakeup and accepts the newcomer into it.
    - "reset": the peer reset X right after sending, and a newcomer connected behind it,
      all while the reactor was held: one wakeup reads X, sees the reset, closes X's fd
      and accepts the newcomer, whose slot and fd number X's re-queued read still names.
      A second newcomer connects after X's on_close, so one of them surely gets the fd.

    That the fd number was reused is asserted (via /proc). Every newcomer must get exactly
    its own bytes, X no callback after its on_close, and X's Session object must not
    reach a newcomer's socket."""
    handler = Churn(ending)
    # workers=0: reactor_held holds the reactor thread only when it runs the callbacks.
    server = serve(handler, recv_buffer=2 * MiB, workers=0)
    handler.port = server.port

    def attempt(seed: int) -> bool:
        """One old session replaced; returns whether a newcomer got its fd number."""
        # The newcomers' own fds are taken first, so that when the victim's fd is closed
        # it is the lowest free number, which the next accept takes.
        newcomers = [socket.socket() for _ in range(2)]
        placeholder = None
        for sock in newcomers:
            sock.settimeout(WAIT)
        handler.newcomer = newcomers[0]
        handler.newcomer_connected.clear()
        victim = connect(server.port)
        try:
            victim_port = victim.getsockname()[1]
            wait_until(lambda: victim_port in handler.sessions, what="the victim session")
            old = handler.sessions[victim_port]
            old_fd = wait_until(lambda: server_fd_of(victim), what="the victim's server fd")
            old_bytes = pattern(seed, 512 * KiB)
            with reactor_held(server):
                handler.victim_port = victim_port
                victim.sendall(old_bytes)
                wait_until(lambda: unacked_bytes(victim) == 0, what="512 KiB queued")
                if ending == "reset":
                    reset_close(victim)
                    # Keep the peer's freed fd number taken: only the server's may be free.
                    placeholder = os.open(os.devnull, os.O_RDONLY)
                    newcomers[0].connect(("127.0.0.1", server.port))
                    handler.newcomer_connected.set()
            # No fd may be opened here: it would take the victim's number first.
            wait_until(handler.newcomer_connected.is_set, what="the newcomer to connect")
            wait_until(lambda: old.id in handler.closes, what="the old session's on_close")
            if ending == "reset":
                newcomers[1].connect(("127.0.0.1", server.port))
            else:
                newcomers.pop().close()  # only the one connected from the callback
            ports = [sock.getsockname()[1] for sock in newcomers]
            wait_until(
                lambda: all(port in handler.sessions for port in ports), what="the newcomers"
            )
            new_fds = [server_fd_of(sock) for sock in newcomers]

            check_old_session_is_dead(server, old)
            for i, sock in enumerate(newcomers):
                check_newcomer(handler, sock, pattern(seed + 1 + i, 300 * KiB))

            # The old session: its read(s), then its one close, nothing after it.
            events = handler.events[old.id]
            assert events[0] == "connect" and events.count("close") == 1, events
            assert events[-1] == "close" and set(events[1:-1]) == {"recv"}, events
            exc = handler.closes[old.id][0]
            if ending == "reset":
                assert isinstance(exc, ConnectionResetError), exc
            else:
                assert exc is None and events == ["connect", "recv", "close"], (exc, events)
            got = bytes(handler.data[old.id])
            assert len(got) >= READ_BUDGET and got == old_bytes[: len(got)]
            return old_fd in new_fds
        finally:
            handler.victim_port = None
            victim.close()
            for sock in newcomers:
                sock.close()
            if placeholder is not None:
                os.close(placeholder)

    for seed in range(5):
        if attempt(10 * seed):
            break
    else:
        pytest.fail("no newcomer ever got the old session's fd number (test set-up)")


# -- (found on the way) data before an RST, more than one read budget of it -----------------


def test_every_byte_that_arrived_before_a_reset_is_delivered_even_past_the_read_budget(serve):
    """README "EOF before close": data that arrives before an RST is delivered to on_recv
    before on_close. test_faults checks it for 50 KB; here 1 MiB (four read budgets) and
    the RST are queued while the reactor is held, so one wakeup sees both."""
    recorder = Recorder()
    server = serve(recorder, recv_buffer=4 * MiB, workers=0)
    payload = pattern(41, 1 * MiB)
    sock = connect(server.port)
    (session,) = recorder.wait_sessions(1)
    with reactor_held(server):
        sock.sendall(payload)
        wait_until(lambda: unacked_bytes(sock) == 0, what="the server's kernel to take all")
        reset_close(sock)
    closes = recorder.wait_closed(session.id)
    assert len(closes) == 1 and isinstance(closes[0], ConnectionResetError), closes
    got = recorder.received(session.id)
    delivered, sent = len(got), len(payload)
    assert delivered == sent, f"only {delivered} of {sent} bytes reached on_recv before on_close"
    assert got == payload
