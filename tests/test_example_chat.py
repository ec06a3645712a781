"""The chat example (examples/chat_server.py): each line reaches every other client exactly
once and in order, never its sender, whatever the others do: disconnect abruptly, send a
line that is too long, or send a line in pieces."""

from __future__ import annotations

import logging
import signal
import socket
import struct
import threading

import chat_server
import hamanet
import pytest
from conftest import WAIT, run_example, wait_until

MAX_LINE = chat_server.MAX_LINE


class ChatClient:
    """A plain blocking socket that reads whole lines; knows its id from the greeting."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.settimeout(WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = bytearray()
        greeting = self.read_line()
        assert greeting.startswith(b"* welcome [") and greeting.endswith(b"]"), greeting
        self.id = int(greeting[len(b"* welcome [") : -1])
        self.prefix = b"[%d] " % self.id

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        """The next line without its newline; fails on EOF or after WAIT seconds."""
        for _ in range(100_000):
            end = self.pending.find(b"\n")
            if end >= 0:
                line = bytes(self.pending[:end])
                del self.pending[: end + 1]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"EOF; partial line {bytes(self.pending)!r}")
            self.pending += chunk
        raise AssertionError("no newline in 100000 reads")

    def read_lines(self, count: int) -> list[bytes]:
        return [self.read_line() for _ in range(count)]

    def read_until_end(self) -> tuple[bytes, str]:
        """Everything until EOF or reset: (bytes, "eof" | "reset")."""
        data = bytearray(self.pending)
        self.pending.clear()
        for _ in range(100_000):
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(data), "reset"
            if not chunk:
                return bytes(data), "eof"
            data += chunk
        raise AssertionError("no end of stream")

    def reset(self) -> None:
        """Closes abruptly: SO_LINGER (1, 0) makes close() send RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class RecordingChat(chat_server.Chat):
    """The example's handler, also recording how each session ended."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.closes: dict[int, BaseException | None] = {}

    def on_close(self, session, exc):
        super().on_close(session, exc)
        with self.lock:
            self.closes[session.id] = exc

    def open_ids(self) -> set[int]:
        with self.lock:
            return set(self.sessions)


@pytest.fixture
def chat(serve):
    handler = RecordingChat()
    server = serve(handler)
    clients: list[ChatClient] = []

    def join() -> ChatClient:
        client = ChatClient(server.port)
        clients.append(client)
        return client

    yield handler, server, join
    for client in clients:
        client.close()


def sync(sender: ChatClient, receivers: list[ChatClient], tag: bytes) -> None:
    """A marker line from ``sender`` must be the very next line every receiver reads:
    proof that nothing unexpected was queued for them before it."""
    sender.send(tag + b"\n")
    for receiver in receivers:
        assert receiver.read_line() == sender.prefix + tag


def test_a_line_reaches_every_other_client_once_in_order_never_the_sender(chat):
    handler, server, join = chat
    clients = [join() for _ in range(5)]
    assert len({c.id for c in clients}) == 5
    wait_until(lambda: len(handler.open_ids()) == 5, what="5 chat sessions")
    per_sender = 30
    for i in range(per_sender):  # interleaved senders
        for client in clients:
            client.send(b"line %d from %d\n" % (i, client.id))
    for client in clients:
        lines = client.read_lines(per_sender * (len(clients) - 1))
        by_sender: dict[bytes, list[bytes]] = {}
        for line in lines:
            prefix, _, text = line.partition(b"] ")
            by_sender.setdefault(prefix + b"] ", []).append(text)
        others = {c.prefix: c for c in clients if c is not client}
        assert set(by_sender) == set(others), (client.id, set(by_sender))
        for prefix, texts in by_sender.items():
            sender_id = others[prefix].id
            assert texts == [b"line %d from %d" % (i, sender_id) for i in range(per_sender)]
    # Nothing extra is waiting for anyone (and the sender got nothing of its own).
    sync(clients[0], clients[1:], b"end0")
    sync(clients[1], [clients[0], *clients[2:]], b"end1")
    assert server.stats()["handler_errors"] == 0


def test_many_lines_in_one_write_and_crlf_lines(chat):
    _, _, join = chat
    alice, bob = join(), join()
    alice.send(b"".join(b"burst %d\n" % i for i in range(500)) + b"telnet style\r\n\n")
    assert bob.read_lines(502) == [alice.prefix + b"burst %d" % i for i in range(500)] + [
        alice.prefix + b"telnet style",
        alice.prefix,
    ]
    sync(bob, [alice], b"nothing echoed back to alice")


def test_partial_lines_wait_for_their_newline(chat):
    _, server, join = chat
    alice, bob, carol = join(), join(), join()
    before = server.stats()["bytes_in"]  # nothing was sent to the server yet
    alice.send(b"hel")
    wait_until(
        lambda: server.stats()["bytes_in"] >= before + 3, what="the server to read the 3 bytes"
    )
    # The partial line from alice was read but not delivered: carol's line comes first.
    sync(carol, [bob], b"between")
    alice.send(b"lo")
    sync(carol, [bob], b"still between")
    alice.send(b"\n")
    assert bob.read_line() == alice.prefix + b"hello"
    assert carol.read_line() == alice.prefix + b"hello"
    # One byte per write.
    for byte in b"dribbled\n":
        alice.send(bytes([byte]))
    assert bob.read_line() == alice.prefix + b"dribbled"
    assert carol.read_line() == alice.prefix + b"dribbled"


def test_abrupt_disconnects_do_not_stop_the_others(chat, caplog):
    handler, server, join = chat
    caplog.set_level(logging.ERROR, logger="hamanet")
    alice, bob, carol = join(), join(), join()
    for round_ in range(20):
        # A few clients that never read, each reset while lines are being broadcast to them.
        leavers = [join() for _ in range(4)]
        for i in range(20):
            alice.send(b"r%d before %d\n" % (round_, i))
        leavers[0].send(b"half a line")
        for i, leaver in enumerate(leavers):
            leaver.reset()
            alice.send(b"r%d during %d\n" % (round_, i))
        for i in range(20):
            alice.send(b"r%d after %d\n" % (round_, i))
            carol.send(b"r%d carol %d\n" % (round_, i))
        expected_alice = (
            [b"r%d before %d" % (round_, i) for i in range(20)]
            + [b"r%d during %d" % (round_, i) for i in range(len(leavers))]
            + [b"r%d after %d" % (round_, i) for i in range(20)]
        )
        got = bob.read_lines(len(expected_alice) + 20)
        assert [line for line in got if line.startswith(alice.prefix)] == [
            alice.prefix + text for text in expected_alice
        ]
        assert [line for line in got if line.startswith(carol.prefix)] == [
            carol.prefix + b"r%d carol %d" % (round_, i) for i in range(20)
        ]
        assert carol.read_lines(len(expected_alice)) == [
            alice.prefix + text for text in expected_alice
        ]
        assert alice.read_lines(20) == [
            carol.prefix + b"r%d carol %d" % (round_, i) for i in range(20)
        ]
        gone = {leaver.id for leaver in leavers}
        wait_until(lambda gone=gone: not gone & handler.open_ids(), what="leavers removed")
    sync(bob, [alice, carol], b"still chatting")
    sync(alice, [bob, carol], b"me too")
    assert handler.open_ids() == {alice.id, bob.id, carol.id}
    with handler.lock:
        assert all(
            exc is None or isinstance(exc, ConnectionError) for exc in handler.closes.values()
        ), handler.closes
    assert server.stats()["handler_errors"] == 0
    assert not [r for r in caplog.records if r.name == "hamanet"], caplog.text


def test_an_overlong_line_closes_only_its_sender(chat):
    handler, server, join = chat
    alice, bob, mallory = join(), join(), join()
    longest = b"m" * MAX_LINE
    mallory.send(longest + b"\n")  # exactly the limit: fine
    assert alice.read_line() == mallory.prefix + longest
    assert bob.read_line() == mallory.prefix + longest
    mallory.send(b"short\n" + b"x" * (MAX_LINE + 1) + b"\n")
    # The complete line before the long one is still delivered, then mallory is closed:
    # gracefully (hamanet closes a session whose framing breaks as close() does: FIN).
    # Everything mallory sent went in one write, so the server had read it all before it
    # closed: EOF, not a reset (input arriving after a close would get an RST).
    assert alice.read_line() == mallory.prefix + b"short"
    assert bob.read_line() == mallory.prefix + b"short"
    assert mallory.read_until_end() == (b"", "eof")
    wait_until(lambda: mallory.id not in handler.open_ids(), what="mallory removed")
    with handler.lock:
        assert isinstance(handler.closes[mallory.id], hamanet.FramingError)
    sync(alice, [bob], b"after mallory")
    sync(bob, [alice], b"me too")
    # Without a newline at all: closed once past the limit, not buffered on and on.
    eve = join()
    sync(alice, [bob, eve], b"eve is here")
    eve.send(b"y" * (MAX_LINE + 100))
    # Nothing for eve (she had read her greeting and the line before), then FIN.
    assert eve.read_until_end() == (b"", "eof")
    wait_until(lambda: eve.id not in handler.open_ids(), what="eve removed")
    with handler.lock:
        assert isinstance(handler.closes[eve.id], hamanet.FramingError)
    sync(bob, [alice], b"bye eve")
    assert server.stats()["handler_errors"] == 0


def test_hamanet_clients_can_chat(chat, client_factory):
    """The chat seen through hamanet's own client with the same line framing."""
    _, server, join = chat

    class Lines(hamanet.Handler):
        framing = hamanet.framing.Delimiter(b"\n")

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.lines: list[bytes] = []

        def on_messages(self, session, messages):
            with self.lock:
                self.lines.extend(messages)

        def seen(self) -> list[bytes]:
            with self.lock:
                return list(self.lines)

    lines = Lines()
    client = client_factory(lines)
    session = client.connect("127.0.0.1", server.port, timeout=WAIT)
    wait_until(lambda: lines.seen(), what="the greeting")
    greeting = lines.seen()[0]
    my_id = int(greeting[len(b"* welcome [") : -1])
    bob = join()
    for i in range(100):
        session.write_frame(b"via hamanet %d" % i)
    assert bob.read_lines(100) == [b"[%d] via hamanet %d" % (my_id, i) for i in range(100)]
    bob.send(b"hi hamanet\n")
    wait_until(lambda: len(lines.seen()) >= 2, what="bob's line")
    assert lines.seen() == [greeting, bob.prefix + b"hi hamanet"]


@pytest.mark.timeout(60)
def test_chat_server_program_serves_and_stops_on_sigterm(procs):
    proc, port, line = run_example(procs, "chat_server.py", "chat: listening")
    assert line.strip().endswith(f":{port}"), line
    clients = [ChatClient(port) for _ in range(3)]
    try:
        clients[0].send(b"hello from a process\n")
        for other in clients[1:]:
            assert other.read_line() == clients[0].prefix + b"hello from a process"
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, "".join(proc.stderr)
        # stop() flushes every session and closes it with FIN (README, Server.stop): each
        # client, having read everything meant for it, sees a clean EOF, never a reset.
        for client in clients:
            assert client.read_until_end() == (b"", "eof")
    finally:
        for client in clients:
            client.close()
