"""hamanet.aio's streams against asyncio's own (issue 13, part 2: proof of compatibility).

Every test body below runs four times: with the stdlib's ``asyncio.start_server`` /
``asyncio.open_connection`` and with ``hamanet.aio``'s, each on asyncio's default event
loop and on uvloop. The bodies only use what asyncio's streams documentation promises, and
the stdlib passes them by definition: where ``hamanet.aio`` fails one, hamanet.aio differs
from asyncio (the way uvloop runs asyncio's test-suite against itself).

Every wait is bounded (``within``), every test has a pytest timeout, everything listens on
loopback, and nothing asserts on how long something took: "stays pending" is checked as
"not done after a bounded wait", which a correct implementation always passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import hamanet.aio
import pytest
from conftest import EXAMPLES, WAIT, connect, free_port, recv_until_eof

uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


# -- the two implementations and the two loops -------------------------------------------------
@dataclass(frozen=True)
class Streams:
    """What a test takes from a streams implementation."""

    name: str
    start_server: Callable[..., Awaitable[Any]]
    open_connection: Callable[..., Awaitable[tuple[Any, Any]]]
    IncompleteReadError: type[BaseException]
    LimitOverrunError: type[BaseException]
    # hamanet.aio's two documented differences (README, "asyncio"): Server.close() closes
    # the sessions too, and a session whose directions have both ended closes itself.
    server_close_closes_sessions: bool = False
    both_ends_close: bool = False


IMPLEMENTATIONS = {
    "asyncio": Streams(
        "asyncio",
        asyncio.start_server,
        asyncio.open_connection,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ),
    "hamanet.aio": Streams(
        "hamanet.aio",
        hamanet.aio.start_server,
        hamanet.aio.open_connection,
        hamanet.aio.IncompleteReadError,
        hamanet.aio.LimitOverrunError,
        server_close_closes_sessions=True,
        both_ends_close=True,
    ),
}

LOOPS = {"default-loop": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def streams(request) -> Streams:
    """The streams implementation under test: asyncio's or hamanet.aio's."""
    return IMPLEMENTATIONS[request.param]


@pytest.fixture(params=list(LOOPS))
def run(request) -> Callable[[Awaitable[Any]], Any]:
    """``run(coro)``: runs the test body on a fresh loop of the kind under test, bounded,
    and fails the test on anything the loop's exception handler was told (an exception
    in a task nobody awaited, a callback that raised)."""

    def run_body(body: Awaitable[Any]) -> Any:
        reports: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.get_loop().set_exception_handler(lambda _loop, context: reports.append(context))
            result = runner.run(asyncio.wait_for(body, 3 * WAIT))
        assert not reports, f"the event loop reported errors: {reports}"
        return result

    return run_body


async def within(awaitable: Awaitable[Any], timeout: float = WAIT) -> Any:
    """Awaits with a bound: a hang fails the test instead of stalling the suite."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {awaitable!r}")


class Peer:
    """A running server of the implementation under test, with its handlers tracked: on a
    clean exit every handler must have finished without raising; client writers opened
    through ``connect`` are closed."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.port = 0
        self.handlers: list[asyncio.Task[Any]] = []
        self.errors: list[BaseException] = []
        self.writers: list[Any] = []
        self.server: Any = None

    async def connect(self, **options: Any) -> tuple[Any, Any]:
        reader, writer = await within(self.streams.open_connection(HOST, self.port, **options))
        self.writers.append(writer)
        return reader, writer


@contextlib.asynccontextmanager
async def serving(
    streams: Streams, handler: Callable[[Any, Any], Awaitable[None]], **options: Any
) -> AsyncIterator[Peer]:
    peer = Peer(streams)

    async def connected(reader: Any, writer: Any) -> None:
        peer.handlers.append(asyncio.current_task())
        try:
            await handler(reader, writer)
        except BaseException as exc:
            peer.errors.append(exc)
            raise
        finally:
            if not writer.is_closing():
                writer.close()

    peer.server = await within(streams.start_server(connected, HOST, 0, **options))
    peer.port = peer.server.sockets[0].getsockname()[1]
    clean = False
    try:
        yield peer
        clean = True
    finally:
        if clean and peer.handlers:
            await within(asyncio.wait(peer.handlers))
        else:
            for task in peer.handlers:
                task.cancel()
        for writer in peer.writers:
            writer.close()
        for writer in peer.writers:
            with contextlib.suppress(ConnectionError):
                await within(writer.wait_closed())
        peer.server.close()
        await within(peer.server.wait_closed())
    if peer.errors:
        raise AssertionError(f"a server handler raised: {peer.errors!r}") from peer.errors[0]


def pattern(seed: int, size: int) -> bytes:
    block = bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range(65536))
    repeats, rest = divmod(size, len(block))
    return block * repeats + block[:rest]


# -- echo ----------------------------------------------------------------------------------------
def test_echo(run, streams):
    async def handler(reader, writer):
        for _ in range(1000):
            data = await reader.read(4096)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def body():
        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            for message in (b"hello", b"x" * 10_000, bytes(range(256))):
                writer.write(message)
                await within(writer.drain())
                assert await within(reader.readexactly(len(message))) == message
            writer.writelines([b"one ", b"two ", b"three"])
            await within(writer.drain())
            assert await within(reader.readexactly(13)) == b"one two three"
            writer.write_eof()
            assert await within(reader.read()) == b""
            assert reader.at_eof()

    run(body())


# -- a line protocol -------------------------------------------------------------------------------
def test_line_protocol(run, streams):
    seen: list[bytes] = []

    async def handler(reader, writer):
        count = 0
        async for line in reader:
            seen.append(line)
            count += 1
            writer.write(b"%d:" % count + line.rstrip(b"\n").upper() + b"\n")
        writer.write(b"bye %d\n" % count)
        await writer.drain()
        writer.close()

    async def body():
        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            writer.write(b"alpha\n")
            assert await within(reader.readline()) == b"1:ALPHA\n"
            # Several lines in one write, a line split over writes, an empty line.
            writer.write(b"beta\ngamma\n\nde")
            writer.write(b"l")
            await within(writer.drain())
            writer.write(b"ta\nunfinished")  # the last line has no "\n": EOF ends it
            writer.write_eof()
            lines = []
            async for line in reader:
                lines.append(line)
                assert len(lines) <= 10, lines
            assert lines == [
                b"2:BETA\n",
                b"3:GAMMA\n",
                b"4:\n",
                b"5:DELTA\n",
                b"6:UNFINISHED\n",
                b"bye 6\n",
            ]
            assert await within(reader.readline()) == b""
            assert reader.at_eof()
        # The server's `async for` got each line with its newline, the last one without.
        assert seen == [b"alpha\n", b"beta\n", b"gamma\n", b"\n", b"delta\n", b"unfinished"]

    run(body())


# -- length-prefixed framing with readexactly ------------------------------------------------------
def test_readexactly_framing(run, streams):
    sizes = [0, 1, 5, 4096, 65535, 65536, 65537, 300_000, 3]

    async def handler(reader, writer):
        for _ in range(len(sizes) + 1):
            try:
                header = await reader.readexactly(4)
            except streams.IncompleteReadError as exc:
                assert exc.partial == b"", exc.partial
                break
            (size,) = struct.unpack("!I", header)
            payload = await reader.readexactly(size)
            digest = hashlib.sha256(payload).digest()
            writer.write(struct.pack("!I", size) + digest)
            await writer.drain()
        writer.close()

    async def body():
        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            frames = [struct.pack("!I", size) + pattern(size, size) for size in sizes]
            wire = b"".join(frames)
            # All frames, cut at boundaries that fall inside headers and payloads.
            cuts = [0, 2, 7, 4100, 70_000, 200_001, len(wire)]
            for start, end in zip(cuts, cuts[1:]):
                writer.write(wire[start:end])
                await within(writer.drain())
            for size in sizes:
                (echoed,) = struct.unpack("!I", await within(reader.readexactly(4)))
                assert echoed == size
                digest = await within(reader.readexactly(32))
                assert digest == hashlib.sha256(pattern(size, size)).digest(), size
            writer.write_eof()
            assert await within(reader.read()) == b""

    run(body())


# -- EOF and IncompleteReadError ------------------------------------------------------------------
def test_eof_and_incomplete_read(run, streams):
    async def handler(reader, writer):
        command = await reader.readline()
        writer.write({b"exactly\n": b"abc", b"until\n": b"hello wor", b"read\n": b"x"}[command])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def body():
        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            writer.write(b"exactly\n")
            with pytest.raises(streams.IncompleteReadError) as caught:
                await within(reader.readexactly(10))
            assert isinstance(caught.value, EOFError)
            assert caught.value.partial == b"abc"
            assert caught.value.expected == 10
            assert reader.at_eof()
            assert await within(reader.read(100)) == b""
            assert await within(reader.read()) == b""
            assert await within(reader.readline()) == b""
            assert await within(reader.readexactly(0)) == b""
            with pytest.raises(streams.IncompleteReadError) as caught:
                await within(reader.readexactly(1))
            assert (caught.value.partial, caught.value.expected) == (b"", 1)

            reader, writer = await peer.connect()
            writer.write(b"until\n")
            with pytest.raises(streams.IncompleteReadError) as caught:
                await within(reader.readuntil(b"\r\n"))
            assert caught.value.partial == b"hello wor"
            assert caught.value.expected is None
            assert reader.at_eof()

            reader, writer = await peer.connect()
            writer.write(b"read\n")
            assert await within(reader.read(0)) == b""
            assert await within(reader.read(100)) == b"x"
            assert await within(reader.read(100)) == b""
            assert reader.at_eof()

    run(body())


# -- limits ---------------------------------------------------------------------------------------
SCRIPT = {
    # what the scripted server sends, in one write, for each command line
    b"found\n": b"A" * 20 + b"!" + b"rest",
    b"fits\n": b"B" * 16 + b"!",
    b"missing\n": b"C" * 40,
    b"missing2\n": b"D" * 40,
    b"line-found\n": b"E" * 40 + b"\nnext line\n",
    b"line-missing\n": b"F" * 40,
    b"line-tail\n": b"tail\nafter\n",
}


async def scripted(reader, writer):
    """Sends, in one write each, the chunk SCRIPT names for each command line received."""
    async for command in reader:
        writer.write(SCRIPT[command])
        await writer.drain()
    writer.close()


def test_readuntil_limit_overrun(run, streams):
    async def body():
        async with serving(streams, scripted) as peer:
            reader, writer = await peer.connect(limit=16)

            # The separator is found past the limit: consumed is its index; nothing is
            # taken from the buffer.
            writer.write(b"found\n")
            with pytest.raises(streams.LimitOverrunError) as caught:
                await within(reader.readuntil(b"!"))
            assert not isinstance(caught.value, ValueError)
            assert caught.value.consumed == 20
            assert caught.value.args[0] == "Separator is found, but chunk is longer than limit"
            assert await within(reader.readexactly(25)) == b"A" * 20 + b"!rest"

            # A separator at the limit is still within it.
            writer.write(b"fits\n")
            assert await within(reader.readuntil(b"!")) == b"B" * 16 + b"!"

            # No separator, and more than the limit buffered: consumed is what was
            # searched (buffered - len(separator) + 1); the data stays readable.
            writer.write(b"missing\n")
            with pytest.raises(streams.LimitOverrunError) as caught:
                await within(reader.readuntil(b"!"))
            assert caught.value.consumed == 40
            assert caught.value.args[0] == "Separator is not found, and chunk exceed the limit"
            assert await within(reader.readexactly(40)) == b"C" * 40

            writer.write(b"missing2\n")
            with pytest.raises(streams.LimitOverrunError) as caught:
                await within(reader.readuntil(b"\r\n"))
            assert caught.value.consumed == 39
            assert await within(reader.readexactly(40)) == b"D" * 40

            writer.write_eof()
            assert await within(reader.read()) == b""

    run(body())


def test_readline_past_the_limit(run, streams):
    async def body():
        async with serving(streams, scripted) as peer:
            reader, writer = await peer.connect(limit=16)

            # The newline is in the buffer, past the limit: the long line and its newline
            # are dropped, ValueError is raised, and the next line reads normally.
            writer.write(b"line-found\n")
            with pytest.raises(ValueError) as caught:
                await within(reader.readline())
            assert type(caught.value) is ValueError
            assert caught.value.args == ("Separator is found, but chunk is longer than limit",)
            assert await within(reader.readline()) == b"next line\n"

            # No newline buffered: the whole buffer is dropped; what comes afterwards is
            # read as from a fresh start.
            writer.write(b"line-missing\n")
            with pytest.raises(ValueError) as caught:
                await within(reader.readline())
            assert caught.value.args == ("Separator is not found, and chunk exceed the limit",)
            writer.write(b"line-tail\n")
            assert await within(reader.readline()) == b"tail\n"
            assert await within(reader.readline()) == b"after\n"

            writer.write_eof()
            assert await within(reader.read()) == b""
            assert reader.at_eof()

    run(body())


def test_server_side_limit(run, streams):
    """start_server(limit=...) applies to the readers it hands the callback."""
    outcomes: list[Any] = []

    async def handler(reader, writer):
        try:
            await reader.readuntil(b"!")
        except Exception as exc:  # the test compares the outcome
            outcomes.append((type(exc), getattr(exc, "consumed", None)))
        outcomes.append(await reader.readexactly(11))
        writer.write(b"done")
        writer.close()

    async def body():
        async with serving(streams, handler, limit=8) as peer:
            reader, writer = await peer.connect()
            writer.write(b"0123456789!")
            assert await within(reader.read()) == b"done"
        assert outcomes == [(streams.LimitOverrunError, 10), b"0123456789!"]

    run(body())


def test_default_limit_is_64_kib(run, streams):
    limit = 2**16
    received: list[Any] = []

    async def handler(reader, writer):
        received.append(len(await reader.readline()))
        try:
            await reader.readuntil(b"\n")
        except Exception as exc:  # the test compares the outcome
            received.append((type(exc), exc.consumed > limit))
        received.append(await reader.readexactly(limit + 1000) == b"y" * (limit + 1000))
        writer.write(b"%d\n" % len(received))
        await writer.drain()
        writer.close()

    async def body():
        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            # A line of exactly the limit (plus its newline) is accepted...
            writer.write(b"x" * limit + b"\n")
            # ...more than the limit without a separator is not.
            writer.write(b"y" * (limit + 1000))
            await within(writer.drain())
            assert await within(reader.readline()) == b"3\n"
        assert received == [limit + 1, (streams.LimitOverrunError, True), True]

        # The client side's default too.
        async def sender(reader, writer):
            writer.write(b"z" * limit + b"\n" + b"w" * (limit + 10))
            await writer.drain()
            await reader.read()  # until the client is done
            writer.close()

        async with serving(streams, sender) as peer:
            reader, writer = await peer.connect()
            line = await within(reader.readline())
            assert line == b"z" * limit + b"\n"
            with pytest.raises(streams.LimitOverrunError) as caught:
                await within(reader.readuntil(b"\n"))
            assert caught.value.consumed > limit
            assert await within(reader.readexactly(limit + 10)) == b"w" * (limit + 10)
            writer.write_eof()

    run(body())


# -- flow control ---------------------------------------------------------------------------------
def test_drain_blocks_while_the_peer_does_not_read(run, streams):
    chunk = pattern(7, 256 * 1024)
    chunks = 128  # 32 MiB: far more than the kernel's and both sides' buffers hold

    async def body():
        may_read = asyncio.Event()
        total = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            await may_read.wait()
            digest, count = hashlib.sha256(), 0
            for _ in range(chunks * 64):
                data = await reader.read(1 << 20)
                if not data:
                    break
                digest.update(data)
                count += len(data)
            total.set_result((count, digest.digest()))
            writer.close()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            written = [0]

            async def produce():
                for _ in range(chunks):
                    writer.write(chunk)
                    await writer.drain()
                    written[0] += 1

            producer = asyncio.create_task(produce())
            done, _ = await asyncio.wait({producer}, timeout=1.0)
            assert not done, "drain() never blocked although the peer reads nothing"
            assert written[0] < chunks
            assert writer.transport.get_write_buffer_size() > 0
            assert not total.done()

            may_read.set()
            await within(producer, 4 * WAIT)
            assert written[0] == chunks
            writer.write_eof()
            count, digest = await within(total, 4 * WAIT)
            assert count == chunks * len(chunk)
            assert digest == hashlib.sha256(chunk * chunks).digest()
            assert await within(reader.read()) == b""

    run(body())


# -- cancellation ---------------------------------------------------------------------------------
def test_cancel_a_pending_read(run, streams):
    async def body():
        steps: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(reader, writer):
            for _ in range(10):
                data = await steps.get()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            await reader.read()
            writer.close()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()

            # A read waiting for data, cancelled: CancelledError, and the reader is not
            # left "already waiting".
            pending = asyncio.create_task(reader.read(100))
            done, _ = await asyncio.wait({pending}, timeout=0.2)
            assert not done
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await within(pending)
            assert pending.cancelled()
            steps.put_nowait(b"payload")
            assert await within(reader.read(100)) == b"payload"

            # A readexactly cancelled with part of its bytes buffered: they stay buffered.
            pending = asyncio.create_task(reader.readexactly(6))
            steps.put_nowait(b"abc")
            done, _ = await asyncio.wait({pending}, timeout=0.5)
            assert not done
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await within(pending)
            steps.put_nowait(b"defgh")
            assert await within(reader.readexactly(8)) == b"abcdefgh"

            # A readline cancelled: likewise.
            pending = asyncio.create_task(reader.readline())
            steps.put_nowait(b"par")
            done, _ = await asyncio.wait({pending}, timeout=0.5)
            assert not done
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await within(pending)
            steps.put_nowait(b"tial\n")
            assert await within(reader.readline()) == b"partial\n"

            steps.put_nowait(b"")
            writer.write_eof()
            assert await within(reader.read()) == b""

    run(body())


# -- closing --------------------------------------------------------------------------------------
def test_server_closes(run, streams):
    async def body():
        server_closed = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            writer.write(b"bye")
            await writer.drain()
            writer.close()
            assert writer.is_closing()
            # Completes on its own: the client is not reading, nor closing, meanwhile.
            await writer.wait_closed()
            server_closed.set_result(None)

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            await within(server_closed)
            assert await within(reader.read(100)) == b"bye"
            assert await within(reader.read(100)) == b""
            assert reader.at_eof()
            assert await within(reader.readline()) == b""
            writer.close()
            await within(writer.wait_closed())

    run(body())


def test_client_closes(run, streams):
    async def body():
        client_closed = asyncio.Event()
        got = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            data = await reader.read()  # until EOF
            got.set_result((data, reader.at_eof()))
            await client_closed.wait()
            writer.close()
            await writer.wait_closed()

        async with serving(streams, handler) as peer:
            _reader, writer = await peer.connect()
            writer.write(b"last words")
            assert not writer.is_closing()
            writer.close()
            assert writer.is_closing()
            # Completes on its own: the server has not closed its side yet.
            await within(writer.wait_closed())
            await within(writer.wait_closed())  # a second time, too
            client_closed.set()
            assert await within(got) == (b"last words", True)
            with pytest.raises(ConnectionResetError):
                await within(writer.drain())

    run(body())


def test_write_eof_half_close(run, streams):
    async def body():
        async def handler(reader, writer):
            # The client half-closes; the server reads to EOF and still answers.
            request = await reader.read()
            assert reader.at_eof()
            writer.write(b"response to " + request)
            await writer.drain()
            # Then the server half-closes; the client answers after the EOF.
            assert writer.can_write_eof()
            writer.write_eof()
            await writer.drain()
            closing = await reader.read()
            assert closing == b"", closing
            writer.close()
            await writer.wait_closed()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            assert writer.can_write_eof()
            writer.write(b"request")
            writer.write_eof()
            assert await within(reader.read()) == b"response to request"
            assert reader.at_eof()
            writer.close()
            await within(writer.wait_closed())

        async def greeter(reader, writer):
            writer.write(b"hello, ")
            writer.write_eof()
            await writer.drain()
            reply = await reader.readexactly(5)
            assert reply == b"world", reply
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

        async with serving(streams, greeter) as peer:
            reader, writer = await peer.connect()
            assert await within(reader.read()) == b"hello, "
            assert reader.at_eof()
            assert not writer.is_closing()
            writer.write(b"world")
            await within(writer.drain())
            writer.write_eof()
            writer.close()
            await within(writer.wait_closed())

    run(body())


def test_extra_info(run, streams):
    async def body():
        seen = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            seen.set_result(
                (
                    writer.get_extra_info("peername"),
                    writer.get_extra_info("sockname"),
                    writer.transport.get_extra_info("peername"),
                )
            )
            await reader.read()
            writer.close()

        async with serving(streams, handler) as peer:
            _reader, writer = await peer.connect()
            server_peer, server_sock, transport_peer = await within(seen)
            client_peer = writer.get_extra_info("peername")
            client_sock = writer.get_extra_info("sockname")
            assert client_peer == (HOST, peer.port)
            assert server_sock == (HOST, peer.port)
            assert server_peer == client_sock
            assert transport_peer == server_peer
            assert type(client_sock) is tuple and client_sock[0] == HOST
            assert writer.transport.get_extra_info("sockname") == client_sock
            assert writer.get_extra_info("no such thing") is None
            assert writer.get_extra_info("no such thing", 42) == 42
            assert peer.server.sockets[0].getsockname() == (HOST, peer.port)
            writer.write_eof()

    run(body())


def test_is_closing(run, streams):
    async def body():
        async def handler(reader, writer):
            assert not writer.is_closing()
            await reader.read()
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()
            assert writer.is_closing()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            assert not writer.is_closing()
            assert not writer.transport.is_closing()
            writer.write_eof()
            assert not writer.is_closing()  # half-closed is not closing
            assert await within(reader.read()) == b""
            writer.close()
            assert writer.is_closing()
            assert writer.transport.is_closing()
            await within(writer.wait_closed())
            assert writer.is_closing()

    run(body())


def test_both_directions_finished_is_not_closing(run, streams):
    """write_eof() one way and EOF the other do not close the writer: only close() does
    (asyncio's StreamReaderProtocol keeps the transport open after EOF)."""

    async def body():
        both_done = asyncio.Event()

        async def handler(reader, writer):
            writer.write_eof()
            assert await reader.read() == b""
            await both_done.wait()
            writer.close()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            writer.write_eof()
            assert await within(reader.read()) == b""
            assert reader.at_eof()
            if streams.both_ends_close:
                # Nothing can happen on it any more: the session closes by itself.
                await within(writer.wait_closed())
                assert writer.is_closing()
                both_done.set()
                return
            assert not writer.is_closing()
            closed = asyncio.ensure_future(writer.wait_closed())
            done, _ = await asyncio.wait({closed}, timeout=0.5)
            assert not done, "wait_closed() completed although close() was never called"
            writer.close()
            assert writer.is_closing()
            await within(closed)
            both_done.set()

    run(body())


def test_write_after_write_eof_or_close(run, streams):
    """A write after write_eof() raises RuntimeError; a write after close() is dropped
    silently (asyncio's transports, on both loops)."""

    async def body():
        async def handler(reader, writer):
            await reader.read()
            writer.close()

        async with serving(streams, handler) as peer:
            _reader, writer = await peer.connect()
            writer.write(b"before")
            writer.write_eof()
            with pytest.raises(RuntimeError):
                writer.write(b"after write_eof")
            writer.close()

            _reader, writer = await peer.connect()
            writer.close()
            writer.write(b"after close")  # no exception
            writer.writelines([b"after ", b"close"])
            await within(writer.wait_closed())

    run(body())


def test_peer_reset(run, streams):
    """A peer's RST: the pending read raises ConnectionResetError, and so does
    wait_closed() (the connection ended with that error) and drain()."""

    async def body():
        listener = socket.socket()
        listener.bind((HOST, 0))
        listener.listen()
        try:
            port = listener.getsockname()[1]
            reader, writer = await within(streams.open_connection(HOST, port))
            accepted, _ = listener.accept()  # already in the backlog: does not block
            pending = asyncio.create_task(reader.read(100))
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()
            with pytest.raises(ConnectionResetError):
                await within(pending)
            with pytest.raises(ConnectionResetError):
                await within(reader.read(100))
            with pytest.raises(ConnectionResetError):
                await within(writer.wait_closed())
            with pytest.raises(ConnectionResetError):
                await within(writer.drain())
            writer.close()
        finally:
            listener.close()

    run(body())


def test_connection_refused(run, streams):
    async def body():
        with socket.socket() as unused:
            unused.bind((HOST, 0))
            port = unused.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(ConnectionRefusedError) as caught:
                await within(streams.open_connection(HOST, port))
        assert caught.value.errno == errno.ECONNREFUSED

    run(body())


def test_server_close_keeps_established_connections(run, streams):
    """asyncio.Server.close() stops listening; connections already accepted go on until
    they close themselves."""

    async def body():
        async def handler(reader, writer):
            for _ in range(100):
                line = await reader.readline()
                if not line:
                    break
                writer.write(b"echo " + line)
                await writer.drain()
            writer.close()

        async with serving(streams, handler) as peer:
            reader, writer = await peer.connect()
            writer.write(b"one\n")
            assert await within(reader.readline()) == b"echo one\n"
            peer.server.close()
            assert not peer.server.is_serving()
            if streams.server_close_closes_sessions:
                # Flushed and closed, as hamanet.Server.stop() closes its sessions.
                assert await within(reader.read()) == b""
                return
            writer.write(b"two\n")
            assert await within(reader.readline()) == b"echo two\n"
            writer.write_eof()
            assert await within(reader.read()) == b""

    run(body())


# -- the example ----------------------------------------------------------------------------------
EXAMPLE_WRAPPER = """\
import runpy, sys
import hamanet.aio
port = int(sys.argv[1])
if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.install()
real_start_server = hamanet.aio.start_server

async def start_server(client_connected_cb, host=None, _port=None, **options):
    # the example's own code, on the port the test chose instead of 8888
    return await real_start_server(client_connected_cb, host, port, **options)

hamanet.aio.start_server = start_server
runpy.run_path(sys.argv[3], run_name="__main__")
"""


@pytest.mark.parametrize("loop", list(LOOPS))
def test_streams_echo_example(procs, loop):
    port = free_port()
    script = str(EXAMPLES / "streams_echo.py")
    proc = procs("-u", "-c", EXAMPLE_WRAPPER, str(port), loop, script)
    banner = proc.wait_line("Serving on")
    assert banner.strip() == f"Serving on ('127.0.0.1', {port})"
    for message in (b"Hello World!", "ünïcode".encode()):
        with connect(port) as sock:
            sock.sendall(message)
            assert recv_until_eof(sock) == message  # echoed, then closed by the server
            address = sock.getsockname()
        text = message.decode()
        assert proc.wait_line("Received").strip() == f"Received {text!r} from {address!r}"
        assert proc.wait_line("Send").strip() == f"Send: {text!r}"
        assert proc.wait_line("Close").strip() == "Close the connection"
    assert proc.popen.poll() is None, "".join(proc.stderr)
    assert not proc.stderr, "".join(proc.stderr)
