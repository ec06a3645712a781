"""asyncio-compatible streams over hamanet.aio: ``start_server`` and ``open_connection``
with asyncio's signatures and semantics, their receive buffer and separator search in
Rust (``StreamBuffer``).

A read that the buffered bytes already satisfy returns without suspending (``await`` of
a coroutine that never awaits costs no loop round trip). What differs from asyncio is
listed in the README's asyncio section.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Callable

from ._hamanet import Session, StreamBuffer, TLSClientContext, TLSServerContext
from ._handler import Handler

_DEFAULT_LIMIT = 2**16  # 64 KiB, as asyncio's


class StreamReader:
    """asyncio.StreamReader's reading side, fed by a hamanet session."""

    def __init__(self, limit: int = _DEFAULT_LIMIT) -> None:
        if limit <= 0:
            raise ValueError("Limit cannot be <= 0")
        self._limit = limit
        self._buffer = StreamBuffer()
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._session: Session | None = None
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        info = ["StreamReader", f"{len(self._buffer)} bytes"]
        if self._eof:
            info.append("eof")
        if self._limit != _DEFAULT_LIMIT:
            info.append(f"limit={self._limit}")
        if self._exception is not None:
            info.append(f"exception={self._exception!r}")
        return "<{}>".format(" ".join(info))

    # -- fed by the session ----------------------------------------------------------------
    def exception(self) -> BaseException | None:
        return self._exception

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._wake(exc)

    def feed_data(self, data: bytes) -> None:
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        self._buffer.feed(data)
        self._wake(None)
        # As asyncio: past twice the limit, the peer is pushed back until reads drain it.
        if self._session is not None and not self._paused and len(self._buffer) > 2 * self._limit:
            self._session.pause_reading()
            self._paused = True

    def feed_eof(self) -> None:
        self._eof = True
        self._wake(None)

    def at_eof(self) -> bool:
        """True if the buffer is empty and the peer's EOF was received."""
        return self._eof and not len(self._buffer)

    def _wake(self, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def _maybe_resume(self) -> None:
        if self._paused and len(self._buffer) <= self._limit and self._session is not None:
            self._paused = False
            self._session.resume_reading()

    async def _wait_for_data(self, func_name: str) -> None:
        if self._waiter is not None:
            raise RuntimeError(
                f"{func_name}() called while another coroutine is already waiting for incoming data"
            )
        assert not self._eof, "_wait_for_data after EOF"
        if self._paused and self._session is not None:
            self._paused = False
            self._session.resume_reading()
        if self._loop is None:
            # Kept: on CPython 3.11 each get_running_loop() costs a getpid() syscall.
            self._loop = asyncio.get_running_loop()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the reading API -------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        if n < 0:
            blocks = []
            while True:
                block = await self.read(self._limit)
                if not block:
                    break
                blocks.append(block)
            return b"".join(blocks)
        if not len(self._buffer) and not self._eof:
            await self._wait_for_data("read")
        data = self._buffer.read(n)
        self._maybe_resume()
        return data

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial
        except asyncio.LimitOverrunError as e:
            if self._buffer.find(b"\n", e.consumed) == e.consumed:
                self._buffer.read(e.consumed + 1)
            else:
                self._buffer.read(-1)
            self._maybe_resume()
            raise ValueError(e.args[0]) from None

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        seplen = len(separator)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        if self._exception is not None:
            raise self._exception
        offset = 0
        while True:
            buflen = len(self._buffer)
            if buflen - offset >= seplen:
                found = self._buffer.find(separator, offset)
                if found != -1:
                    if found > self._limit:
                        raise asyncio.LimitOverrunError(
                            "Separator is found, but chunk is longer than limit", found
                        )
                    break
                offset = buflen + 1 - seplen
                if offset > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is not found, and chunk exceed the limit", offset
                    )
            if self._eof:
                chunk = self._buffer.read(-1)
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait_for_data("readuntil")
        chunk = self._buffer.read(found + seplen)
        self._maybe_resume()
        return chunk

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        while len(self._buffer) < n:
            if self._eof:
                incomplete = self._buffer.read(-1)
                raise asyncio.IncompleteReadError(incomplete, n)
            await self._wait_for_data("readexactly")
        data = self._buffer.read(n)
        self._maybe_resume()
        return data

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if line == b"":
            raise StopAsyncIteration
        return line


class _Transport:
    """What ``StreamWriter.transport`` offers: the session seen as an asyncio transport."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        session = self._session
        if name == "peername":
            return session.peer_addr
        if name == "sockname":
            return session.local_addr
        if name == "hamanet_tls":
            return session.tls
        return default

    def is_closing(self) -> bool:
        return self._session.closing

    def close(self) -> None:
        self._session.close()

    def abort(self) -> None:
        self._session.abort()

    def write(self, data: Any) -> None:
        self._session.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._session.shutdown_write()

    def get_write_buffer_size(self) -> int:
        return self._session.write_buffer_size

    def pause_reading(self) -> None:
        self._session.pause_reading()

    def resume_reading(self) -> None:
        self._session.resume_reading()


class StreamWriter:
    """asyncio.StreamWriter's writing side over a hamanet session."""

    def __init__(self, session: Session, reader: StreamReader) -> None:
        self._session = session
        self._reader = reader
        self._transport = _Transport(session)
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._eof_written = False

    def __repr__(self) -> str:
        return f"<StreamWriter session={self._session!r} reader={self._reader!r}>"

    @property
    def transport(self) -> _Transport:
        return self._transport

    def write(self, data: Any) -> None:
        if self._check_writable():
            self._session.write(data)

    def writelines(self, data: Any) -> None:
        if self._check_writable():
            self._session.writelines(list(data))

    def _check_writable(self) -> bool:
        """As asyncio's transport: a write after write_eof() is a mistake, one after
        close() is dropped (the connection is going)."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        return not self._session.closing

    def write_eof(self) -> None:
        self._eof_written = True
        self._session.shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._session.close()

    def is_closing(self) -> bool:
        return self._session.closing

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def drain(self) -> None:
        """Waits while the write buffer is above its high watermark, until it falls to the
        low one (real backpressure from the Rust write buffer); raises what ended the
        connection, as asyncio does."""
        exc = self._reader.exception()
        if exc is not None:
            raise exc
        session = self._session
        if session.closing:
            # As asyncio: let a close in progress run, then report the lost connection.
            await asyncio.sleep(0)
            if self._closed.done():
                raise ConnectionResetError("Connection lost")
        _low, high, _max = session.get_write_buffer_limits()
        # The reactor says it paused writing only at its next turn: until then the buffer
        # itself tells. Each pass lets the loop run that turn (bounded: once it has, the
        # buffer is either at most `high` or the pause has been reported).
        for _ in range(100):
            if self._writing_paused:
                waiter = self._drain_waiter
                if waiter is None or waiter.done():
                    waiter = self._loop.create_future()
                    self._drain_waiter = waiter
                await waiter
                return
            if session.write_buffer_size <= high or session.closing:
                return
            await asyncio.sleep(0)

    # -- told by the session ----------------------------------------------------------------
    def _pause(self) -> None:
        self._writing_paused = True

    def _resume(self) -> None:
        self._writing_paused = False
        self._release_drain(None)

    def _lost(self, exc: BaseException | None) -> None:
        self._writing_paused = False
        self._release_drain(exc or ConnectionResetError("Connection lost"))
        if self._closed.done():
            return
        if exc is None:
            self._closed.set_result(None)
        else:
            # As asyncio: wait_closed() raises what ended the connection; retrieved here
            # so that nobody waiting is not an "exception never retrieved".
            self._closed.set_exception(exc)
            self._closed.exception()

    def _release_drain(self, exc: BaseException | None) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


class _StreamHandler(Handler):
    """The session callbacks behind a pair of streams."""

    recv_views = True  # on_recv only copies the bytes on, into the reader's buffer

    def __init__(
        self,
        limit: int,
        connected: Callable[[StreamReader, StreamWriter], Awaitable[None] | None] | None,
    ) -> None:
        self._limit = limit
        self._connected = connected

    def on_connect(self, session: Session) -> None:
        reader = StreamReader(self._limit)
        reader._session = session
        writer = StreamWriter(session, reader)
        session._hamanet_streams = (reader, writer)
        if self._connected is not None:
            result = self._connected(reader, writer)
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                session._hamanet_task = task  # kept until the session goes
                task.add_done_callback(_log_failure)

    def on_recv(self, session: Session, data: bytes) -> None:
        # A lent view (recv_views): the bytes are copied once, into the reader's buffer.
        session._hamanet_streams[0].feed_data(data)

    def on_eof(self, session: Session) -> bool:
        session._hamanet_streams[0].feed_eof()
        return True  # as asyncio's StreamReaderProtocol: the writer may go on

    def on_pause_writing(self, session: Session) -> None:
        session._hamanet_streams[1]._pause()

    def on_resume_writing(self, session: Session) -> None:
        session._hamanet_streams[1]._resume()

    def on_close(self, session: Session, exc: BaseException | None) -> None:
        streams = session.__dict__.get("_hamanet_streams")
        if streams is None:
            return  # never connected (a failed connect or TLS handshake)
        reader, writer = streams
        if exc is None:
            reader.feed_eof()
        else:
            reader.set_exception(exc)
        writer._lost(exc)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        context = {"message": "Unhandled exception in client_connected_cb", "exception": exc}
        task.get_loop().call_exception_handler(context)


async def start_server(
    client_connected_cb: Callable[[StreamReader, StreamWriter], Awaitable[None] | None],
    host: str | None = None,
    port: int | None = None,
    *,
    limit: int = _DEFAULT_LIMIT,
    tls: TLSServerContext | None = None,
    backlog: int = 100,
    reuse_port: bool | None = None,
    reuse_address: bool | None = None,
    start_serving: bool = True,
    ssl: None = None,
    **options: Any,
) -> Any:
    """As ``asyncio.start_server``: calls ``client_connected_cb(reader, writer)`` for each
    client (a coroutine function is run as a task); returns the server, started unless
    ``start_serving=False`` (then ``serve_forever()`` or ``start_serving()`` starts it).
    ``reuse_address`` is accepted for asyncio's sake: hamanet's listeners always set
    SO_REUSEADDR."""
    from .aio import Server

    _refuse_ssl(ssl)
    del reuse_address
    server = Server(_StreamHandler(limit, client_connected_cb), **options)
    server.open(
        port or 0, host or "127.0.0.1", backlog=backlog, reuse_port=bool(reuse_port), tls=tls
    )
    if start_serving:
        await server.start_serving()
    return server


def _refuse_ssl(ssl: Any) -> None:
    if ssl is not None:
        raise TypeError(
            "ssl= takes no ssl.SSLContext here: hamanet does TLS in Rust; pass "
            "tls=hamanet.TLSServerContext(certfile, keyfile) (tls=hamanet.TLSClientContext(...) "
            "for open_connection) instead"
        )


async def open_connection(
    host: str,
    port: int,
    *,
    limit: int = _DEFAULT_LIMIT,
    tls: TLSClientContext | None = None,
    server_hostname: str | None = None,
    ssl: None = None,
    **options: Any,
) -> tuple[StreamReader, StreamWriter]:
    """As ``asyncio.open_connection``: returns ``(reader, writer)`` once connected."""
    from .aio import connect

    _refuse_ssl(ssl)
    session = await connect(
        _StreamHandler(limit, None), host, port, tls=tls, server_hostname=server_hostname, **options
    )
    reader, writer = session._hamanet_streams
    return reader, writer
