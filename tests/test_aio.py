"""hamanet.aio (issue 13, part 1): a hamanet reactor driven by the running asyncio loop.

Every test runs on asyncio's own loop and on uvloop. Covered: serve + echo with asyncio's
streams as the client, the asyncio.Server-like surface (async with, serve_forever, close,
wait_closed, is_serving, port, addresses, stats); callbacks on the loop's thread using
asyncio; async def callbacks in per-session order with reading paused meanwhile, their
exceptions, async on_eof / on_connect; the sharp edges of an epoll inside an epoll (readiness
that arrives while the loop is busy, work cut short by the read budget, the reactor's own
deadlines when nothing wakes the loop, writes and closes from other threads); the client
(aio.connect, aio.Client, TLS); and the mistakes refused by name.

hamanet.aio runs one reactor and no pool whatever HAMANET_TEST_WORKERS / _REACTORS say: its
endpoints make their native Loop themselves, not through hamanet._endpoint.Loop, so these
tests pin that by construction (and test_aio_ignores_the_suite_wide_defaults checks it)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import random
import socket
import struct
import threading
from collections.abc import Awaitable
from typing import Any, Callable

import hamanet
import hamanet.aio as aio
import pytest
from _tls_support import Pki, make_pki, silent_server
from conftest import (
    WAIT,
    Echo,
    Recorder,
    connect,
    free_port,
    full_backlog_port,
    open_fds,
    pattern,
    read_until_end,
    recv_exactly,
)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is one of the test tools
    uvloop = None

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20
READ_BUDGET: int = getattr(hamanet, "READ_BUDGET", None) or hamanet._hamanet.READ_BUDGET

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed"),
    ),
]


@pytest.fixture(params=LOOPS)
def run(request) -> Callable[..., Any]:
    """``run(main)`` runs the coroutine function ``main`` on a fresh event loop of the
    parametrized kind (asyncio's own or uvloop's), bounded by a timeout."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(main: Callable[[], Awaitable[Any]], timeout: float = 4 * WAIT) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(main(), timeout)

        with asyncio.Runner(loop_factory=factory) as runner_:
            return runner_.run(bounded())

    runner.kind = request.param  # type: ignore[attr-defined]
    return runner


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("aio-pki"))


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Polls ``predicate`` on the loop (yielding to it) until truthy; fails after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def read_all(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Reads an asyncio stream to its end: (bytes, "eof" | "reset")."""
    chunks = bytearray()
    while True:
        try:
            chunk = await reader.read(1 << 20)
        except ConnectionResetError:
            return bytes(chunks), "reset"
        if not chunk:
            return bytes(chunks), "eof"
        chunks.extend(chunk)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def in_thread(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Runs blocking peer code in a plain thread of its own (not the default executor,
    which is bounded) and awaits its result; the loop idles meanwhile."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def body() -> None:
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the awaiting test
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=body, daemon=True).start()
    return future


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# == 1. the server surface =====================================================================
def test_serve_and_echo_with_asyncio_streams_as_the_client(run):
    async def main() -> None:
        server = await aio.serve(Echo(), "127.0.0.1", 0)
        assert isinstance(server, aio.Server)
        async with server:
            assert server.is_serving()
            assert server.port > 0
            assert server.addresses == [("127.0.0.1", server.port)]
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            total = 0
            for i in range(30):
                message = f"message {i};".encode() * (i + 1)
                writer.write(message)
                await writer.drain()
                assert await reader.readexactly(len(message)) == message
                total += len(message)
            big = pattern(1, 3 * MIB)
            writer.write(big)  # the echo comes back while the rest is still going out
            assert await reader.readexactly(len(big)) == big
            total += len(big)
            writer.write_eof()
            assert await read_all(reader) == (b"", "eof")  # Echo's on_eof: close
            await close_writer(writer)
            stats = await eventually(
                lambda: server.stats()["sessions_open"] == 0 and server.stats(), "the close"
            )
            assert stats["accepted"] == 1 and stats["sessions_total"] == 1
            assert stats["bytes_in"] == total and stats["bytes_out"] == total
            assert stats["workers"] == 0 and len(stats["reactors"]) == 1
            assert stats["handler_errors"] == 0
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)

    run(main)


def test_a_server_opened_then_started_by_hand_and_several_addresses(run):
    async def main() -> None:
        server = aio.Server(Echo())
        first = server.open(0)
        second = server.open(0, "127.0.0.1")
        assert server.addresses == [first, second]
        assert server.port == first[1]
        assert not server.is_serving()  # not started yet
        await server.start_serving()
        assert server.is_serving()
        async with server:
            for _, port in server.addresses:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"ping %d" % port)
                assert await reader.readexactly(len(b"ping %d" % port)) == b"ping %d" % port
                await close_writer(writer)
        assert not server.is_serving()

    run(main)


def test_a_server_with_no_address_has_no_port(run):
    async def main() -> None:
        server = aio.Server(Echo())
        with pytest.raises(hamanet.LifecycleError, match="open"):
            server.port  # noqa: B018
        await server.wait_closed()  # never started: nothing to wait for

    run(main)


def test_serve_forever_cancelled_closes_the_server(run):
    async def main() -> None:
        recorder = Recorder(echo=True)
        server = await aio.serve(recorder)
        forever = asyncio.create_task(server.serve_forever())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert not forever.done()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        assert await read_all(reader) == (b"", "eof")  # the session was closed, cleanly
        await close_writer(writer)
        assert list(recorder.closes.values()) == [[None]]
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
        await server.wait_closed()

    run(main)


def test_the_loop_stops_watching_the_reactor_fd_once_closed(run):
    run_kind = run.kind
    """After wait_closed the outer loop no longer watches the reactor's epoll fd (whose
    number may be reused by the next socket opened)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await aio.serve(Echo())
        assert server._driver is not None
        fd = server._driver._fd
        server.close()
        await server.wait_closed()
        if run_kind == "asyncio":  # uvloop's remove_reader returns None either way
            assert loop.remove_reader(fd) is False, "the loop still watched the reactor's fd"
        # A fresh server (which may get the same fd number) works on the same loop.
        async with await aio.serve(Echo()) as again:
            reader, writer = await asyncio.open_connection("127.0.0.1", again.port)
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
            await close_writer(writer)

    run(main)


def test_close_then_wait_closed_flushes_every_session(run):
    size = 8 * MIB

    class Talker(Recorder):
        def on_connect(self, session):
            super().on_connect(session)
            session.write(pattern(3, size))

    async def main() -> None:
        recorder = Talker()
        server = await aio.serve(recorder)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await eventually(lambda: recorder.sessions, "on_connect")
        server.close()  # with 8 MiB still to go out
        assert not server.is_serving()
        got, end = await read_all(reader)
        assert (len(got), end) == (size, "eof")
        assert got == pattern(3, size)
        await server.wait_closed()
        await close_writer(writer)
        assert list(recorder.closes.values()) == [[None]]
        assert server.stats()["bytes_out"] == size

    run(main)


def test_close_from_inside_a_callback_ends_serve_forever(run):
    class Stopper(hamanet.Handler):
        server: aio.Server

        def on_recv(self, session, data):
            session.write(b"bye")
            self.server.close()

    async def main() -> None:
        handler = Stopper()
        handler.server = server = await aio.serve(handler)
        forever = asyncio.create_task(server.serve_forever())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"stop")
        assert await read_all(reader) == (b"bye", "eof")
        await forever  # returns (not raises) once closed
        assert not server.is_serving()
        await server.wait_closed()
        await close_writer(writer)

    run(main)


# == 2. callbacks on the loop's thread =========================================================
def test_callbacks_run_on_the_loop_thread_and_may_use_asyncio(run):
    class LoopUser(hamanet.Handler):
        def __init__(self) -> None:
            self.threads: set[int] = set()
            self.loops: set[asyncio.AbstractEventLoop] = set()
            self.tasks: set[asyncio.Task] = set()
            self.closed: asyncio.Future | None = None

        def _note(self) -> asyncio.AbstractEventLoop:
            loop = asyncio.get_running_loop()  # raises RuntimeError off the loop
            self.threads.add(threading.get_ident())
            self.loops.add(loop)
            return loop

        def on_connect(self, session):
            self._note()

        def on_send(self, session):
            self._note()

        def on_recv(self, session, data):
            loop = self._note()
            if data == b"task":

                async def later() -> None:
                    await asyncio.sleep(0.01)
                    session.write(b"from a task;")

                task = loop.create_task(later())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif data == b"future":
                future = loop.create_future()
                loop.call_later(0.01, future.set_result, b"from a future;")
                future.add_done_callback(lambda done: session.write(done.result()))
            elif data == b"call_later":
                loop.call_later(0.01, session.write, b"from call_later;")
            elif data == b"call_soon":
                loop.call_soon(session.write, b"from call_soon;")

        def on_close(self, session, exc):
            self._note()
            assert self.closed is not None
            self.closed.set_result(exc)

    async def main() -> None:
        handler = LoopUser()
        handler.closed = asyncio.get_running_loop().create_future()
        async with await aio.serve(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for ask, answer in [
                (b"task", b"from a task;"),
                (b"future", b"from a future;"),
                (b"call_later", b"from call_later;"),
                (b"call_soon", b"from call_soon;"),
            ]:
                writer.write(ask)
                assert await reader.readexactly(len(answer)) == answer
            writer.write_eof()
            assert await read_all(reader) == (b"", "eof")
            assert await handler.closed is None
            await close_writer(writer)
        assert handler.threads == {threading.get_ident()}
        assert handler.loops == {asyncio.get_running_loop()}

    run(main)


# == 3. async def callbacks ====================================================================
def test_async_on_recv_keeps_per_session_order_and_later_sync_callbacks_wait(run):
    sessions_n, messages_n = 4, 60
    rng = random.Random(13)

    class SlowEcho(hamanet.Handler):
        def __init__(self) -> None:
            self.log: dict[int, list[tuple[str, Any]]] = {}
            self.running: dict[int, bool] = {}

        async def on_recv(self, session, data):
            assert not self.running.get(session.id), "two callbacks of one session at once"
            self.running[session.id] = True
            self.log.setdefault(session.id, []).append(("recv-start", len(data)))
            await asyncio.sleep(rng.random() * 0.01)
            session.write(data)
            self.log[session.id].append(("recv-end", len(data)))
            self.running[session.id] = False

        def on_eof(self, session):
            self.log.setdefault(session.id, []).append(("eof", self.running.get(session.id)))
            return None  # close once the replies are out

        def on_close(self, session, exc):
            self.log.setdefault(session.id, []).append(("close", exc))

    async def peer(port: int, index: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = bytearray()
        for i in range(messages_n):
            message = f"<{index}:{i}>".encode()
            writer.write(message)
            sent.extend(message)
            await writer.drain()
            await asyncio.sleep(0)  # many small batches, some coalesced
        writer.write_eof()
        got, end = await read_all(reader)
        await close_writer(writer)
        assert end == "eof"
        assert got == bytes(sent), f"session {index}: replies reordered or lost"
        return got

    async def main() -> None:
        handler = SlowEcho()
        async with await aio.serve(handler) as server:
            await asyncio.gather(*(peer(server.port, i) for i in range(sessions_n)))
            await eventually(
                lambda: sum(log[-1][0] == "close" for log in handler.log.values()) == sessions_n,
                "every on_close",
            )
        assert len(handler.log) == sessions_n
        for log in handler.log.values():
            kinds = [kind for kind, _ in log]
            assert kinds[-2:] == ["eof", "close"]
            assert log[-2] == ("eof", False)  # on_eof ran after the last on_recv had finished
            assert log[-1] == ("close", None)
            recvs = kinds[:-2]
            assert recvs == ["recv-start", "recv-end"] * (len(recvs) // 2)
            assert len(recvs) >= 2

    run(main)


def test_reading_is_paused_while_an_async_callback_waits(run):
    total = 32 * MIB

    class Gate(hamanet.Handler):
        def __init__(self) -> None:
            self.entered = asyncio.Event()
            self.release = asyncio.Event()
            self.calls = 0
            self.received = 0
            self.digest = hashlib.sha256()

        async def on_recv(self, session, data):
            self.calls += 1
            self.digest.update(data)
            self.received += len(data)
            if self.calls == 1:
                self.entered.set()
                await self.release.wait()
            if self.received == total:
                session.write(self.digest.digest())

    progress = {"sent": 0}

    def sender(port: int) -> bytes:
        with connect(port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            payload = memoryview(pattern(5, total))
            for offset in range(0, total, 1 << 16):
                sock.sendall(payload[offset : offset + (1 << 16)])
                progress["sent"] = offset + len(payload[offset : offset + (1 << 16)])
            return recv_exactly(sock, 32)

    async def main() -> None:
        handler = Gate()
        async with await aio.serve(handler, recv_buffer=1 << 18) as server:
            reply = in_thread(sender, server.port)
            await asyncio.wait_for(handler.entered.wait(), WAIT)
            # The peer pushes until the kernel's buffers are full, then blocks: wait until it
            # makes no more progress (bounded), the loop idle meanwhile.
            last = -1
            for _ in range(50):
                if progress["sent"] == last:
                    break
                last = progress["sent"]
                await asyncio.sleep(0.1)
            read_meanwhile = server.stats()["bytes_in"]
            assert progress["sent"] < total, "the peer was never pushed back"
            assert read_meanwhile <= 4 * READ_BUDGET, (
                f"{read_meanwhile} bytes read while the async on_recv was pending"
            )
            assert handler.calls == 1
            handler.release.set()
            assert (
                await asyncio.wait_for(reply, 2 * WAIT)
                == hashlib.sha256(pattern(5, total)).digest()
            )
            assert handler.received == total
            assert server.stats()["bytes_in"] == total

    run(main)


@pytest.mark.handler_errors
def test_an_async_callback_that_raises_is_logged_and_aborts_only_its_session(run, hamanet_errors):
    class Fragile(hamanet.Handler):
        def __init__(self) -> None:
            self.closes: dict[int, BaseException | None] = {}
            self.closed = asyncio.Event()

        async def on_recv(self, session, data):
            await asyncio.sleep(0)
            if b"boom" in data:
                raise RuntimeError("boom in on_recv")
            session.write(data)

        def on_close(self, session, exc):
            self.closes[session.id] = exc
            self.closed.set()

    async def main() -> None:
        handler = Fragile()
        async with await aio.serve(handler) as server:
            good_r, good_w = await asyncio.open_connection("127.0.0.1", server.port)
            bad_r, bad_w = await asyncio.open_connection("127.0.0.1", server.port)
            for writer, reader in ((good_w, good_r), (bad_w, bad_r)):
                writer.write(b"hello")
                assert await reader.readexactly(5) == b"hello"
            bad_w.write(b"boom")
            got, end = await read_all(bad_r)  # aborted: its stream ends
            assert got == b"" and end in ("eof", "reset")
            await handler.closed.wait()
            ((bad_id, exc),) = handler.closes.items()
            assert isinstance(exc, RuntimeError) and str(exc) == "boom in on_recv"
            # The other session is untouched.
            for i in range(5):
                good_w.write(b"still %d" % i)
                assert await good_r.readexactly(7) == b"still %d" % i
            assert server.stats()["sessions_open"] == 1
            await close_writer(good_w)
            await close_writer(bad_w)
        records = [r for r in hamanet_errors if r.exc_info and r.exc_info[1] is exc]
        assert len(records) == 1, [r.getMessage() for r in hamanet_errors]
        assert records[0].name == "hamanet"
        assert "on_recv" in records[0].getMessage()
        assert str(bad_id) in records[0].getMessage()

    run(main)


@pytest.mark.handler_errors
def test_an_async_callback_error_is_counted_as_a_plain_one(run):
    """stats()["handler_errors"] counts an exception of a plain callback; an async one
    has the same policy (logged, session aborted, on_close given it) and should count."""

    class Fragile(hamanet.Handler):
        async def on_recv(self, session, data):
            raise RuntimeError("boom")

    async def main() -> None:
        async with await aio.serve(Fragile()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"x")
            assert (await read_all(reader))[0] == b""
            await close_writer(writer)
            await eventually(lambda: server.stats()["sessions_open"] == 0, "the abort")
            assert server.stats()["handler_errors"] == 1

    run(main)


@pytest.mark.parametrize("keep", [True, None, False, 0])
def test_async_on_eof_keeps_the_session_open_only_if_it_returns_true(run, keep):
    class Closer(hamanet.Handler):
        def __init__(self) -> None:
            self.eof_done: asyncio.Future | None = None
            self.closes: list[BaseException | None] = []

        async def on_eof(self, session):
            await asyncio.sleep(0.01)
            session.write(b"bye;")
            assert self.eof_done is not None
            self.eof_done.set_result(session)
            return keep

        def on_close(self, session, exc):
            self.closes.append(exc)

    async def main() -> None:
        handler = Closer()
        handler.eof_done = asyncio.get_running_loop().create_future()
        async with await aio.serve(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write_eof()
            session = await handler.eof_done
            for _ in range(20):  # the task's completion is handled a few iterations on
                await asyncio.sleep(0)
            if keep:
                assert not session.closing
                session.write(b"after eof;")  # still open for writing
                session.close()
                expected = b"bye;after eof;"
            else:
                expected = b"bye;"
            assert await read_all(reader) == (expected, "eof")
            await eventually(lambda: handler.closes, "on_close")
            assert handler.closes == [None]
            await close_writer(writer)

    run(main)


def test_async_on_connect_runs_before_the_sessions_first_on_recv(run):
    class Greeter(hamanet.Handler):
        def __init__(self) -> None:
            self.log: list[str] = []

        async def on_connect(self, session):
            self.log.append("connect-start")
            await asyncio.sleep(0.05)
            session.write(b"hello;")
            self.log.append("connect-end")

        def on_recv(self, session, data):
            self.log.append("recv")
            session.write(data)

    async def main() -> None:
        handler = Greeter()
        async with await aio.serve(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"early;")  # sent before the greeting could have been
            assert await reader.readexactly(12) == b"hello;early;"
            await close_writer(writer)
        assert handler.log[:3] == ["connect-start", "connect-end", "recv"]

    run(main)


def test_a_pause_reading_made_by_an_async_callback_is_kept(run):
    """An async on_recv that calls session.pause_reading() itself (flow control of its
    own) has paused the session: finishing must not resume it behind its back."""

    class Pauser(Recorder):
        async def on_recv(self, session, data):
            super().on_recv(session, data)
            await asyncio.sleep(0)
            if data.endswith(b"pause"):
                session.pause_reading()

    async def main() -> None:
        handler = Pauser()
        async with await aio.serve(handler) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"pause")
            await eventually(lambda: handler.sessions, "on_connect")
            (session,) = handler.sessions.values()
            await eventually(lambda: handler.received(session.id) == b"pause", "on_recv")
            writer.write(b"more")
            await writer.drain()
            for _ in range(20):  # the loop turns; the session stays paused
                await asyncio.sleep(0.01)
            assert handler.received(session.id) == b"pause", "reading resumed by itself"
            session.resume_reading()
            await eventually(lambda: handler.received(session.id) == b"pausemore", "more")
            await close_writer(writer)

    run(main)


def test_an_async_on_close_is_awaited_by_wait_closed(run):
    class SlowClose(hamanet.Handler):
        def __init__(self) -> None:
            self.log: list[Any] = []

        async def on_close(self, session, exc):
            self.log.append(("close-start", exc))
            await asyncio.sleep(0.05)
            self.log.append("close-end")

    async def main() -> None:
        handler = SlowClose()
        async with await aio.serve(handler) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"x")
            await eventually(lambda: server.stats()["bytes_in"] == 1, "the byte")
        assert handler.log == [("close-start", None), "close-end"]
        await close_writer(writer)

    run(main)


def test_an_async_callback_may_await_an_aio_client_of_another_aio_server(run):
    """A proxy on one loop: the front server's async on_recv connects to the back server
    with aio.connect and awaits its answer; two driven reactors and a client share the
    loop."""

    class Upper(hamanet.Handler):
        def on_recv(self, session, data):
            session.write(data.upper())

    class Answer(hamanet.Handler):
        def __init__(self) -> None:
            self.answers: asyncio.Queue[bytes] = asyncio.Queue()

        def on_recv(self, session, data):
            self.answers.put_nowait(data)

    class Front(hamanet.Handler):
        back_port = 0

        async def on_recv(self, session, data):
            answer = Answer()
            back = await aio.connect(answer, "127.0.0.1", self.back_port)
            back.write(data)
            got = b""
            while len(got) < len(data):
                got += await answer.answers.get()
            back.close()
            session.write(got)

    async def main() -> None:
        front = Front()
        async with await aio.serve(Upper()) as back_server:
            front.back_port = back_server.port
            async with await aio.serve(front) as front_server:
                reader, writer = await asyncio.open_connection("127.0.0.1", front_server.port)
                for word in (b"alpha", b"beta", b"gamma"):
                    writer.write(word)
                    assert await reader.readexactly(len(word)) == word.upper()
                await close_writer(writer)

    run(main)


def test_close_while_an_async_callback_is_pending_waits_for_it(run):
    class Pending(hamanet.Handler):
        def __init__(self) -> None:
            self.log: list[Any] = []
            self.entered = asyncio.Event()

        async def on_recv(self, session, data):
            self.log.append("recv-start")
            self.entered.set()
            await asyncio.sleep(0.2)
            self.log.append("recv-end")

        def on_close(self, session, exc):
            self.log.append(("close", exc))

    async def main() -> None:
        handler = Pending()
        server = await aio.serve(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"x")
        await handler.entered.wait()
        server.close()
        await server.wait_closed()
        assert handler.log[:2] == ["recv-start", "recv-end"]
        assert len(handler.log) == 3 and handler.log[2][0] == "close"
        assert (await read_all(reader))[0] == b""
        await close_writer(writer)

    run(main)


# == 4. epoll inside epoll: the sharp edges ====================================================
@pytest.mark.parametrize("busy_in", ["hamanet callback", "asyncio callback"])
def test_readiness_that_arrives_while_the_loop_is_busy_is_still_served(run, busy_in):
    """While the loop's thread is held (in another session's callback, or in an unrelated
    asyncio callback), peers send and connect; once it is free, all of it is served,
    although no new edge will come."""
    entered, release = threading.Event(), threading.Event()

    class Holder(hamanet.Handler):
        def on_recv(self, session, data):
            if data == b"hold":
                entered.set()
                release.wait(WAIT)
                session.write(b"held")
            else:
                session.write(data)

    def hold_loop() -> None:
        entered.set()
        release.wait(WAIT)

    def peers(port: int, holder: socket.socket | None) -> None:
        with connect(port) as old:
            old.sendall(b"warm")
            assert recv_exactly(old, 4) == b"warm"
            if holder is not None:
                holder.sendall(b"hold")
            assert entered.wait(WAIT), "the loop was never held"
            try:
                old.sendall(b"while busy")  # an existing session's data
                new = connect(port)  # a connection accepted by the kernel meanwhile
                new.sendall(b"new one")
            finally:
                release.set()
            with new:
                assert recv_exactly(old, 10) == b"while busy"
                assert recv_exactly(new, 7) == b"new one"
            if holder is not None:
                assert recv_exactly(holder, 4) == b"held"

    async def main() -> None:
        async with await aio.serve(Holder()) as server:
            if busy_in == "hamanet callback":
                with connect(server.port) as holder:
                    await in_thread(peers, server.port, holder)
            else:
                loop = asyncio.get_running_loop()
                done = in_thread(peers, server.port, None)
                await asyncio.sleep(0.05)  # let the peer connect and warm up first
                loop.call_soon(hold_loop)
                await done

    run(main)


def test_many_sessions_beyond_the_read_budget_all_complete(run):
    """Each peer's whole message sits in the kernel before the loop gets to it (the loop
    is held meanwhile), several times the per-session read budget: the reactor reads a
    budget per turn and must come back for the rest without any new edge."""
    sessions_n = 16
    size = 8 * READ_BUDGET
    header = struct.Struct("!Q")

    class Digest(hamanet.Handler):
        def __init__(self) -> None:
            self.state: dict[int, list[Any]] = {}

        def on_recv(self, session, data):
            state = self.state.setdefault(session.id, [None, hashlib.sha256(), 0, b""])
            if state[0] is None:
                state[3] += data
                if len(state[3]) < header.size:
                    return
                (state[0],), data = header.unpack(state[3][: header.size]), state[3][8:]
            state[1].update(data)
            state[2] += len(data)
            if state[2] == state[0]:
                session.write(state[1].digest())

    sent = [threading.Event() for _ in range(sessions_n)]
    held = threading.Event()

    def peer(port: int, index: int, ready: threading.Event) -> bytes:
        body = pattern(index, size)
        with connect(port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
            ready.set()
            assert held.wait(WAIT), "the loop was never held"
            sock.sendall(header.pack(size) + body)
            sent[index].set()
            return recv_exactly(sock, 32)

    async def main() -> None:
        handler = Digest()
        async with await aio.serve(handler, recv_buffer=4 * MIB) as server:
            readies = [threading.Event() for _ in range(sessions_n)]
            loop = asyncio.get_running_loop()

            def hold() -> None:
                # Everything sent (or as much as the kernel takes) before the loop goes on.
                held.set()
                for event in sent:
                    event.wait(2.0)

            replies = [in_thread(peer, server.port, i, readies[i]) for i in range(sessions_n)]
            await eventually(lambda: all(r.is_set() for r in readies), "every peer connected")
            await eventually(lambda: server.stats()["sessions_open"] == sessions_n, "every session")
            loop.call_soon(hold)
            got = await asyncio.gather(*replies)
            for index, digest in enumerate(got):
                assert digest == hashlib.sha256(pattern(index, size)).digest(), index
            assert server.stats()["bytes_in"] == sessions_n * (size + header.size)

    run(main)


def test_idle_timeout_closes_an_idle_session_while_nothing_else_happens(run):
    async def main() -> None:
        recorder = Recorder()
        async with await aio.serve(recorder, idle_timeout=0.2) as server:

            def silent_peer() -> tuple[bytes, str]:
                with connect(server.port) as sock:
                    return read_until_end(sock)

            # The loop has nothing else to do: only the reactor's own deadline can end it.
            got, end = await in_thread(silent_peer)
            assert got == b"" and end in ("eof", "reset")
            ((exc,),) = recorder.closes.values()
            assert isinstance(exc, TimeoutError), repr(exc)
            assert server.stats()["idle_timeouts"] == 1

    run(main)


def test_connect_timeout_without_anything_else_on_the_loop(run):
    async def main() -> None:
        with full_backlog_port() as port:
            with pytest.raises(TimeoutError):
                await aio.connect(Recorder(), "127.0.0.1", port, timeout=0.3)
            async with aio.Client(Recorder()) as client:
                with pytest.raises(TimeoutError):
                    await client.connect("127.0.0.1", port, timeout=0.3)

    run(main)


def test_tls_handshake_timeout_on_an_aio_server(run, pki):
    async def main() -> None:
        recorder = Recorder()
        context = hamanet.TLSServerContext(pki.cert, pki.key, handshake_timeout=0.3)
        async with await aio.serve(recorder, tls=context) as server:

            def silent_peer() -> tuple[bytes, str]:
                with connect(server.port) as sock:
                    return read_until_end(sock)

            got, end = await in_thread(silent_peer)
            assert got == b"" and end in ("eof", "reset")
            ((exc,),) = recorder.closes.values()
            assert isinstance(exc, TimeoutError), repr(exc)
            assert "handshake" in str(exc)
            assert recorder.sessions == {}  # never handshook: no on_connect
            assert server.stats()["tls_failures"] == 1

    run(main)


def test_tls_handshake_timeout_of_an_aio_client(run, pki):
    async def main() -> None:
        context = hamanet.TLSClientContext(pki.ca, handshake_timeout=0.3)
        with silent_server() as (port, received):
            with pytest.raises(TimeoutError, match="handshake"):
                await aio.connect(
                    Recorder(), "127.0.0.1", port, tls=context, server_hostname="localhost"
                )
            assert received and received[0][:1] == b"\x16"

    run(main)


@pytest.mark.parametrize("idle_in", ["asyncio.sleep", "an Event"])
def test_a_write_and_a_close_from_another_thread_reach_the_peer(run, idle_in):
    async def main() -> None:
        recorder = Recorder()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        outcome: dict[str, Any] = {}
        async with await aio.serve(recorder) as server:

            def peer() -> None:
                try:
                    with connect(server.port) as sock:
                        sock.sendall(b"hi")
                        for _ in range(2000):
                            sessions = list(recorder.sessions.values())
                            if sessions and recorder.received(sessions[0].id) == b"hi":
                                break
                            threading.Event().wait(0.005)
                        (session,) = recorder.sessions.values()
                        # The loop idles now; these come from this plain thread.
                        session.write(b"from a thread")
                        outcome["data"] = recv_exactly(sock, 13)
                        session.write(b" and goodbye")
                        session.close()
                        outcome["end"] = read_until_end(sock)
                except BaseException as exc:
                    outcome["error"] = exc
                finally:
                    loop.call_soon_threadsafe(done.set)

            threading.Thread(target=peer, daemon=True).start()
            if idle_in == "an Event":
                await asyncio.wait_for(done.wait(), 3 * WAIT)
            else:
                for _ in range(int(3 * WAIT / 0.5)):
                    if done.is_set():
                        break
                    await asyncio.sleep(0.5)
            assert "error" not in outcome, outcome.get("error")
            assert outcome["data"] == b"from a thread"
            assert outcome["end"] == (b" and goodbye", "eof")
            await eventually(lambda: recorder.closes, "on_close")
            assert list(recorder.closes.values()) == [[None]]

    run(main)


# == 5. the client =============================================================================
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connect_returns_the_session_after_on_connect(run, kind):
    class Client(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.connected_done = False

    if kind == "sync":

        class Handler(Client):
            def on_connect(self, session):
                super().on_connect(session)
                self.connected_done = True

    else:

        class Handler(Client):  # type: ignore[no-redef]
            async def on_connect(self, session):
                super().on_connect(session)
                await asyncio.sleep(0.05)
                self.connected_done = True

    async def main() -> None:
        async with await aio.serve(Echo()) as server:
            handler = Handler()
            session = await aio.connect(handler, "127.0.0.1", server.port)
            done_at_return = handler.connected_done
            assert isinstance(session, hamanet.Session)
            assert list(handler.sessions) == [session.id]
            session.write(b"round trip")
            await eventually(lambda: handler.received(session.id) == b"round trip", "echo")
            session.close()
            await eventually(lambda: handler.closes, "on_close")
            assert handler.closes == {session.id: [None]}
            assert done_at_return, "connect() returned before on_connect had finished"

    run(main)


def test_the_client_behind_connect_closes_with_its_session(run):
    async def one_session(port: int) -> None:
        handler = Recorder()
        session = await aio.connect(handler, "127.0.0.1", port)
        session.write(b"x")
        await eventually(lambda: handler.received(session.id) == b"x", "echo")
        session.close()
        await eventually(lambda: handler.closes, "on_close")

    async def main() -> None:
        async with await aio.serve(Echo()) as server:
            # One connect first, so that lazily made things (thread pools...) exist already.
            warm = await aio.connect(Recorder(), "127.0.0.1", server.port)
            warm.close()
            del warm
            await eventually(lambda: server.stats()["sessions_open"] == 0, "the warm-up close")
            before = open_fds()
            for _ in range(3):
                await one_session(server.port)
            await eventually(lambda: server.stats()["sessions_open"] == 0, "server closes")

            def back() -> bool:
                gc.collect()
                return open_fds() <= before

            # Every client's epoll fd and waker gone: each ended with its session.
            await eventually(back, f"the fd count back to {before}")
            clients = [o for o in gc.get_objects() if isinstance(o, aio.Client)]
            for client in clients:
                assert client._driver is None or client._driver.finished.done()

    run(main)


def test_a_refused_connect_raises_connection_refused(run):
    async def main() -> None:
        port = free_port()
        handler = Recorder()
        with pytest.raises(ConnectionRefusedError):
            await aio.connect(handler, "127.0.0.1", port)
        assert handler.sessions == {} and handler.closes == {}
        async with aio.Client(Recorder()) as client:
            with pytest.raises(ConnectionRefusedError):
                await client.connect("127.0.0.1", port)
            # The client is still usable afterwards.
            async with await aio.serve(Echo()) as server:
                session = await client.connect("127.0.0.1", server.port)
                session.write(b"after a refusal")
                await eventually(
                    lambda: client.handler.received(session.id) == b"after a refusal", "echo"
                )
                session.close()

    run(main)


@pytest.mark.parametrize("via", ["aio.connect", "Client.connect"])
def test_connect_tries_the_next_address_after_a_refused_one(run, via):
    """A name with two addresses, the first refused (as "localhost" is where it resolves
    to ::1 then 127.0.0.1 and the server listens on 127.0.0.1 only): connect goes on to
    the second, as asyncio.open_connection does."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with await aio.serve(Echo(), "127.0.0.1") as server:
            refused = ("127.0.0.2", server.port)  # nothing listens there
            try:
                with socket.create_connection(refused, timeout=WAIT):
                    pytest.skip("127.0.0.2 reaches the listener here")
            except ConnectionRefusedError:
                pass
            infos = [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", refused),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
            ]

            async def getaddrinfo(host, port, **kwargs):
                assert host == "two.addresses.test"
                return infos

            try:
                loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
            except AttributeError:
                pytest.skip("this loop's getaddrinfo cannot be replaced")
            try:
                handler = Recorder()
                if via == "aio.connect":
                    session = await aio.connect(handler, "two.addresses.test", server.port)
                    await exchange(handler, session)
                else:
                    async with aio.Client(handler) as client:
                        session = await client.connect("two.addresses.test", server.port)
                        await exchange(handler, session)
            finally:
                del loop.getaddrinfo

    async def exchange(handler: Recorder, session: hamanet.Session) -> None:
        assert session.peer_addr[0] == "127.0.0.1"
        session.write(b"second address")
        await eventually(lambda: handler.received(session.id) == b"second address", "echo")
        session.close()
        await eventually(lambda: handler.closes, "on_close")

    run(main)


def test_a_tls_client_against_a_tls_aio_server(run, pki):
    async def main() -> None:
        server_context = hamanet.TLSServerContext(pki.cert, pki.key)
        client_context = hamanet.TLSClientContext(pki.ca)
        body = pattern(7, 2 * MIB)
        async with await aio.serve(Echo(), tls=server_context) as server:
            recorder = Recorder()
            async with aio.Client(recorder) as client:
                session = await client.connect(
                    "127.0.0.1", server.port, tls=client_context, server_hostname="localhost"
                )
                assert session.tls is not None
                assert session.tls.version.startswith("TLS")
                session.write(body)
                await eventually(lambda: len(recorder.received(session.id)) >= len(body), "echo")
                assert recorder.received(session.id) == body
                session.close()
                await eventually(lambda: recorder.closes, "on_close")
            # aio.connect too, the server name taken from the host.
            handler = Recorder()
            session = await aio.connect(handler, "localhost", server.port, tls=client_context)
            assert session.tls is not None
            session.write(b"over tls")
            await eventually(lambda: handler.received(session.id) == b"over tls", "echo")
            session.close()
            await eventually(lambda: handler.closes, "on_close")
            assert server.stats()["tls_handshakes"] == 2

    run(main)


# == 6. mistakes ===============================================================================
@pytest.mark.parametrize("option", ["workers", "reactors"])
@pytest.mark.parametrize("value", [2, 4])
def test_a_pool_or_more_reactors_is_refused_by_name(run, option, value):
    async def main() -> None:
        with pytest.raises(ValueError, match=option):
            await aio.serve(Echo(), **{option: value})
        with pytest.raises(ValueError, match=option):
            aio.Server(Echo(), **{option: value})
        with pytest.raises(ValueError, match=option):
            aio.Client(Echo(), **{option: value})
        with pytest.raises(ValueError, match=option):
            await aio.connect(Echo(), "127.0.0.1", free_port(), **{option: value})

    run(main)


def test_workers_1_is_refused_or_runs_without_a_pool(run):
    """workers=1 passes the check (0 or 1 are let through): it must either be refused by
    name or serve on the loop's thread; not fail at start with another error."""

    async def main() -> None:
        try:
            server = await aio.serve(Echo(), workers=1)
        except ValueError as exc:
            assert "workers" in str(exc)
            return
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"one")
            assert await reader.readexactly(3) == b"one"
            await close_writer(writer)

    run(main)


def test_an_async_generator_callback_is_refused(run):
    class Generator(hamanet.Handler):
        async def on_recv(self, session, data):
            yield data

    async def main() -> None:
        with pytest.raises(TypeError, match="async generator"):
            await aio.serve(Generator())
        with pytest.raises(TypeError, match="async generator"):
            aio.Client(Generator())
        with pytest.raises(TypeError, match="async generator"):
            await aio.connect(Generator(), "127.0.0.1", free_port())

    run(main)


def test_aio_ignores_the_suite_wide_defaults(run):
    """Under HAMANET_TEST_WORKERS / HAMANET_TEST_REACTORS (make test-threads) the wrapper
    of hamanet._endpoint.Loop adds workers/reactors; hamanet.aio makes its own Loop, so it
    still runs one reactor and no pool."""

    async def main() -> None:
        async with await aio.serve(Echo()) as server:
            stats = server.stats()
            assert stats["workers"] == 0 and len(stats["reactors"]) == 1
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"pinned")
            assert await reader.readexactly(6) == b"pinned"
            await close_writer(writer)

    run(main)


# -- streams: what only hamanet.aio promises ----------------------------------------------------
def test_a_readline_the_buffer_already_satisfies_does_not_suspend(run):
    # Both lines come in one write, so one wakeup buffers them: once the first readline
    # has returned, the second is in the (Rust) buffer and must complete on its first
    # step, without a trip through the loop.
    async def main() -> None:
        steps: list[bytes] = []
        done = asyncio.Event()

        async def handle(reader: Any, writer: Any) -> None:
            steps.append(await reader.readline())
            second = reader.readline()
            try:
                second.send(None)
            except StopIteration as finished:
                steps.append(finished.value)
            else:  # it suspended: finish it anyway, and let the assertion say so
                second.close()
                steps.append(b"<suspended>")
            done.set()
            writer.close()

        server = await aio.start_server(handle, "127.0.0.1", 0)
        async with server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"first\nsecond\n")
            await writer.drain()
            await asyncio.wait_for(done.wait(), WAIT)
            assert steps == [b"first\n", b"second\n"]
            await close_writer(writer)

    run(main)


def test_the_loop_thread_counts_as_the_reactors_only_during_a_turn(run):
    # Between turns the asyncio thread runs other code: a threaded hamanet Client made
    # there later (perhaps at this loop's reused address) must not take it for a
    # callback of this one and refuse its blocking connect().
    async def main() -> None:
        inside: list[bool] = []

        class Record(hamanet.Handler):
            def on_recv(self, session: Any, data: bytes) -> None:
                inside.append(server._loop.on_handler_thread())
                session.write(data)

        server = await aio.serve(Record(), "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"x"
            assert inside == [True]
            assert not server._loop.on_handler_thread()
            await close_writer(writer)
        with hamanet.Client(hamanet.Handler()) as client:
            listener = socket.create_server(("127.0.0.1", 0))
            with listener:
                session = client.connect("127.0.0.1", listener.getsockname()[1])
                session.close()

    run(main)
