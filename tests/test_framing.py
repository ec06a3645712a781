"""Native framing: any split of a valid stream gives the same messages; bad streams close
the session with FramingError; write_frame adds what the framing needs."""

from __future__ import annotations

import socket
import struct
import threading

import hamanet
import pytest
from conftest import (
    connect,
    reactor_held,
    recv_exactly,
    recv_until_eof,
    round_trip,
    unacked_bytes,
    wait_until,
)
from hamanet.framing import Delimiter, FixedSize, LengthPrefixed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# What the server may read of a stream it refuses: its first read budget (256 KiB), and
# what a graceful close reads away (up to 256 KiB more), with room to spare.
MAX_READ = 1 << 20


class Collector(hamanet.Handler):
    """Records messages per session, as lists (on_messages) or one by one (on_message)."""

    def __init__(self, framing=None, batched=True):
        self.framing = framing
        self.lock = threading.Lock()
        self.messages: dict[int, list[bytes]] = {}
        self.calls = 0
        self.closes: dict[int, list[BaseException | None]] = {}
        self.batched = batched

    def on_connect(self, session):
        with self.lock:
            self.messages[session.id] = []

    def on_messages(self, session, messages):
        if not self.batched:
            raise AssertionError("on_messages must not be called when batched=False")
        assert isinstance(messages, list)
        with self.lock:
            self.calls += 1
            self.messages[session.id].extend(messages)

    def on_close(self, session, exc):
        with self.lock:
            self.closes.setdefault(session.id, []).append(exc)


class OneByOne(Collector):
    on_messages = hamanet.Handler.on_messages  # not overridden: on_message is used

    def on_message(self, session, message):
        assert isinstance(message, bytes)
        with self.lock:
            self.calls += 1
            self.messages[session.id].append(message)


def encode(framing, messages: list[bytes]) -> bytes:
    if isinstance(framing, Delimiter):
        return b"".join(m + framing.delimiter for m in messages)
    if isinstance(framing, FixedSize):
        return b"".join(messages)
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[framing.header_size]
    order = ">" if framing.byteorder == "big" else "<"
    extra = framing.header_size if framing.includes_header else 0
    return b"".join(struct.pack(order + fmt, len(m) + extra) + m for m in messages)


FRAMINGS = [
    Delimiter(b"\r\n", max_length=1000),
    Delimiter(b"\n", max_length=1000),
    LengthPrefixed(1),
    LengthPrefixed(2, byteorder="little"),
    LengthPrefixed(4, includes_header=True),
    LengthPrefixed(8, byteorder="little", includes_header=True),
    FixedSize(5),
]


def messages_for(framing):
    if isinstance(framing, FixedSize):
        return st.lists(st.binary(min_size=framing.size, max_size=framing.size), max_size=30)
    if isinstance(framing, Delimiter):
        alphabet = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
        return st.lists(alphabet, max_size=30)
    return st.lists(st.binary(max_size=200), max_size=30)


@pytest.fixture(scope="module")
def servers():
    """One server per framing, shared by the property tests (hypothesis runs many cases)."""
    started = []
    for framing in FRAMINGS:
        collector = Collector(framing)
        server = hamanet.Server(collector)
        server.open(0)
        server.start()
        started.append((framing, collector, server))
    yield started
    for _, _, server in started:
        server.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(FRAMINGS)))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_split_of_a_valid_stream_yields_the_same_messages(servers, index, data):
    framing, collector, server = servers[index]
    messages = data.draw(messages_for(framing))
    stream = encode(framing, messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    # The previous example's session has closed: nothing else is read by this server now.
    base = server.stats()["bytes_in"]
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        last = 0
        for cut in [*cuts, len(stream)]:
            sock.sendall(stream[last:cut])
            last = cut
            # Loopback would merge the pieces: let the server read each one on its own.
            wait_until(
                lambda c=cut: server.stats()["bytes_in"] >= base + c,
                what=f"the server to read up to the cut at {cut}",
            )
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""

    def closed():
        with collector.lock:
            return collector.messages and all(sid in collector.closes for sid in collector.messages)

    wait_until(closed, what="the session to close")
    with collector.lock:
        sessions = dict(collector.messages)
        closes = dict(collector.closes)
        collector.messages.clear()
        collector.closes.clear()
    ((sid, got),) = sessions.items()
    assert closes == {sid: [None]}, "a valid stream ends with one clean on_close"
    assert got == messages


def test_on_messages_gets_a_whole_batch_in_one_call(serve):
    collector = Collector(Delimiter(b"\n"))
    server = serve(collector, workers=0)
    lines = [f"line {i}".encode() for i in range(1000)]
    with connect(server.port) as sock:
        wait_until(lambda: collector.messages, what="on_connect")
        # Every line is in the server's kernel buffer before the reactor reads any of them.
        with reactor_held(server):
            sock.sendall(b"\n".join(lines) + b"\n")
            wait_until(lambda: unacked_bytes(sock) == 0, what="the server's kernel to ack")
        wait_until(lambda: sum(map(len, collector.messages.values())) == 1000, what="1000 lines")
    assert next(iter(collector.messages.values())) == lines
    assert collector.calls == 1, "the lines of one read arrive in one on_messages call"


def test_on_message_one_by_one_and_class_attribute_framing(serve):
    class Lines(OneByOne):
        framing = Delimiter(b";")

    handler = Lines(framing=None, batched=False)
    del handler.framing  # fall back to the class attribute
    server = serve(handler)
    with connect(server.port) as sock:
        sock.sendall(b"a;bb;;ccc;partial")
        wait_until(lambda: sum(map(len, handler.messages.values())) == 4, what="4 messages")
    assert next(iter(handler.messages.values())) == [b"a", b"bb", b"", b"ccc"]


@pytest.mark.parametrize(
    ("framing", "bad"),
    [
        (Delimiter(b"\n", max_length=10), b"ok\n" + b"x" * 11),
        (LengthPrefixed(4, max_length=100), struct.pack(">I", 101) + b"x"),
        (LengthPrefixed(2, includes_header=True), b"\x00\x01"),
    ],
)
def test_bad_streams_close_the_session_with_framing_error(serve, framing, bad):
    collector = Collector(framing)
    server = serve(collector)
    with connect(server.port) as sock:
        sock.sendall(bad)
        assert recv_until_eof(sock) == b"", "the server closes the session"
    wait_until(lambda: collector.closes, what="on_close")
    (closes,) = collector.closes.values()
    assert len(closes) == 1 and isinstance(closes[0], hamanet.FramingError), closes
    assert "max_length" in str(closes[0]) or "header" in str(closes[0])
    if bad.startswith(b"ok\n"):
        assert next(iter(collector.messages.values())) == [b"ok"], "messages before the error"


def test_oversize_stream_is_never_buffered_whole(serve):
    collector = Collector(Delimiter(b"\n", max_length=1024))
    server = serve(collector)
    chunk, chunks = b"x" * 65536, 1024  # up to 64 MiB without a newline
    sent = 0
    with connect(server.port) as sock, pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(chunks):
            sock.sendall(chunk)
            sent += len(chunk)
    assert sent < chunks * len(chunk), "the sender was never cut off"
    wait_until(lambda: collector.closes, what="on_close")
    (closes,) = collector.closes.values()
    assert len(closes) == 1 and isinstance(closes[0], hamanet.FramingError), closes
    # The server stopped reading at the oversize line: a read budget or two, not the stream.
    round_trip(server)
    bytes_in = server.stats()["bytes_in"]
    print(f"sent {sent} bytes, the server read {bytes_in}")
    assert bytes_in <= MAX_READ, f"the server read {bytes_in} bytes of an oversize stream"


@pytest.mark.parametrize(
    "framing",
    [
        LengthPrefixed(2),
        LengthPrefixed(4, byteorder="little", includes_header=True),
        Delimiter(b"|"),
    ],
)
def test_write_frame_round_trips_through_the_same_framing(serve, client_factory, framing):
    class Echo(hamanet.Handler):
        def on_messages(self, session, messages):
            for message in messages:
                session.write_frame(message.upper())

    server = serve(Echo(), framing=framing)
    collector = Collector()
    client = client_factory(collector, framing=framing)
    session = client.connect("127.0.0.1", server.port)
    payloads = [b"", b"hello", b"x" * 1000, b"bye"]
    for payload in payloads:
        session.write_frame(payload)
    wait_until(lambda: len(collector.messages.get(session.id, [])) == 4, what="4 echoed frames")
    assert collector.messages[session.id] == [p.upper() for p in payloads]


def test_write_frame_errors(serve):
    errors = []

    class Writer(hamanet.Handler):
        def on_connect(self, session):
            for payload in (b"x" * 70000, "text"):
                try:
                    session.write_frame(payload)
                except (hamanet.FramingError, TypeError) as exc:
                    errors.append(exc)
            session.write_frame(b"ok")
            session.close()

    server = serve(Writer(), framing=LengthPrefixed(2))
    with connect(server.port) as sock:
        assert recv_exactly(sock, 4) == b"\x00\x02ok"
    assert isinstance(errors[0], hamanet.FramingError) and "2-byte" in str(errors[0])
    assert isinstance(errors[1], TypeError)

    plain_errors = []

    class Plain(hamanet.Handler):
        def on_connect(self, session):
            try:
                session.write_frame(b"x")
            except hamanet.FramingError as exc:
                plain_errors.append(exc)
            session.close()

    server = serve(Plain())
    with connect(server.port) as sock:
        assert sock.recv(10) == b""
    wait_until(lambda: plain_errors, what="the error")
    assert "framing" in str(plain_errors[0])


def test_bad_framing_arguments():
    with pytest.raises(ValueError, match="delimiter"):
        Delimiter(b"")
    with pytest.raises(ValueError, match="header_size"):
        LengthPrefixed(3)
    with pytest.raises(ValueError, match="byteorder"):
        LengthPrefixed(4, byteorder="middle")
    with pytest.raises(ValueError, match="size"):
        FixedSize(0)
    with pytest.raises(ValueError, match="max_length"):
        Delimiter(max_length=0)
    with pytest.raises(TypeError, match="framing"):
        hamanet.Server(hamanet.Handler(), framing=b"\n")


def test_write_frame_refuses_a_payload_that_would_end_its_message_early(serve):
    outcome = []

    class Writer(hamanet.Handler):
        def on_connect(self, session):
            try:
                session.write_frame(b"Host: x\r\n")  # + b"\r\n\r\n" would end at b"Host: x"
            except hamanet.FramingError as exc:
                outcome.append(exc)
            session.write_frame(b"Host: x")
            session.close()

    server = serve(Writer(), framing=Delimiter(b"\r\n\r\n"))
    with connect(server.port) as sock:
        assert recv_until_eof(sock) == b"Host: x\r\n\r\n"
    assert outcome and "delimiter" in str(outcome[0])
