"""The Redis-protocol example: RESP parsing and the commands (examples/protocols/resp.py),
the hamanet server around them (examples/redis_server.py) over plain sockets, what one
request may cost the server (its memory, seen as RSS), and the real clients from Debian's
redis-tools (redis-cli, redis-benchmark) when they are installed (in CI, with CI set, a
missing one fails its test instead of skipping it)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import threading
import tracemalloc

import pytest
from conftest import (
    EXAMPLES,
    WAIT,
    connect,
    free_port,
    read_until_end,
    real_client,
    recv_exactly,
    recv_until_eof,
    rss_bytes,
    run_example,
    wait_until,
)
from protocols.resp import ARG_OVERHEAD, MAX_INLINE, MAX_MULTIBULK, RedisLogic, RespConnection
from redis_server import RedisHandler, parse_args

MIB = 1 << 20


def cmd(*args: bytes | str | int) -> bytes:
    """One request as redis-cli sends it: an array of bulk strings."""
    raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(raw) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in raw)


def bulk(value: bytes | str) -> bytes:
    value = value if isinstance(value, bytes) else value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


NULL = b"$-1\r\n"
OK = b"+OK\r\n"


class Clock:
    """A clock the test moves by hand, so expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_conn(clock: Clock | None = None, **kw) -> RespConnection:
    return RespConnection(RedisLogic(clock) if clock else RedisLogic(), **kw)


def run(conn: RespConnection, *args: bytes | str | int) -> bytes:
    return conn.feed(cmd(*args))


# -- commands -------------------------------------------------------------------------
def test_ping_and_echo():
    c = new_conn()
    assert run(c, "PING") == b"+PONG\r\n"
    assert run(c, "ping", "hello there") == bulk("hello there")
    assert run(c, "PING", "a", "b") == b"-ERR wrong number of arguments for 'ping' command\r\n"
    assert run(c, "ECHO", b"bin\r\n\x00") == bulk(b"bin\r\n\x00")
    assert run(c, "ECHO") == b"-ERR wrong number of arguments for 'echo' command\r\n"
    assert run(c, "echo", "a", "b") == b"-ERR wrong number of arguments for 'echo' command\r\n"


def test_set_get_and_arity():
    c = new_conn()
    assert run(c, "GET", "k") == NULL
    assert run(c, "SET", "k", "v") == OK
    assert run(c, "GET", "k") == bulk("v")
    assert run(c, "SET", "k", b"") == OK
    assert run(c, "GET", "k") == b"$0\r\n\r\n"
    assert run(c, "SET", "k") == b"-ERR wrong number of arguments for 'set' command\r\n"
    assert run(c, "GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert run(c, "GET", "a", "b") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert run(c, "set", "Key", "x") == OK  # command names in any case; keys are exact
    assert run(c, "GeT", "Key") == bulk("x")
    assert run(c, "GET", "key") == NULL


def test_set_ex_px_expire_lazily():
    clock = Clock()
    c = new_conn(clock)
    assert run(c, "SET", "s", "1", "EX", 10) == OK
    assert run(c, "SET", "p", "2", "px", 1500) == OK
    clock.now += 1.499
    assert run(c, "MGET", "s", "p") == b"*2\r\n" + bulk("1") + bulk("2")
    clock.now += 0.001
    assert run(c, "GET", "p") == NULL
    assert run(c, "EXISTS", "s", "p") == b":1\r\n"
    clock.now += 8.499
    assert run(c, "GET", "s") == bulk("1")
    clock.now += 0.001
    assert run(c, "GET", "s") == NULL
    assert c.logic.data == {}
    assert c.logic.expires == {}


def test_set_options():
    clock = Clock()
    c = new_conn(clock)
    assert run(c, "SET", "k", "a", "NX") == OK
    assert run(c, "SET", "k", "b", "NX") == NULL
    assert run(c, "GET", "k") == bulk("a")
    assert run(c, "SET", "k", "c", "XX") == OK
    assert run(c, "SET", "other", "c", "XX") == NULL
    assert run(c, "GET", "other") == NULL
    assert run(c, "SET", "k", "d", "GET") == bulk("c")
    assert run(c, "SET", "new", "d", "GET") == NULL
    assert run(c, "GET", "new") == bulk("d")
    # A plain SET drops the time to live; KEEPTTL keeps it.
    assert run(c, "SET", "t", "1", "EX", 5) == OK
    assert run(c, "SET", "t", "2") == OK
    clock.now += 10
    assert run(c, "GET", "t") == bulk("2")
    assert run(c, "SET", "t", "3", "PX", 100) == OK
    assert run(c, "SET", "t", "4", "KEEPTTL") == OK
    clock.now += 0.1
    assert run(c, "GET", "t") == NULL
    # An expired key counts as absent for NX and XX.
    assert run(c, "SET", "e", "1", "EX", 1) == OK
    clock.now += 1
    assert run(c, "SET", "e", "2", "XX") == NULL
    assert run(c, "SET", "e", "3", "NX") == OK


@pytest.mark.parametrize(
    "args, reply",
    [
        (("EX", "x"), b"-ERR value is not an integer or out of range\r\n"),
        (("EX", " 5"), b"-ERR value is not an integer or out of range\r\n"),
        (("PX", "1.5"), b"-ERR value is not an integer or out of range\r\n"),
        (("EX", "0"), b"-ERR invalid expire time in 'set' command\r\n"),
        (("PX", "-5"), b"-ERR invalid expire time in 'set' command\r\n"),
        (("EX", "9223372036854775807"), b"-ERR invalid expire time in 'set' command\r\n"),
        (("EX",), b"-ERR syntax error\r\n"),
        (("EX", "1", "PX", "1"), b"-ERR syntax error\r\n"),
        (("NX", "XX"), b"-ERR syntax error\r\n"),
        (("EX", "1", "KEEPTTL"), b"-ERR syntax error\r\n"),
        (("BOGUS",), b"-ERR syntax error\r\n"),
    ],
)
def test_set_bad_options(args, reply):
    c = new_conn()
    assert run(c, "SET", "k", "v", *args) == reply
    assert run(c, "GET", "k") == NULL  # nothing was stored


def test_del_and_exists():
    c = new_conn()
    assert run(c, "MSET", "a", "1", "b", "2", "c", "3") == OK
    assert run(c, "EXISTS", "a", "a", "b", "zz") == b":3\r\n"  # repeats count, as in Redis
    assert run(c, "DEL", "a", "a", "zz") == b":1\r\n"
    assert run(c, "DEL", "b", "c") == b":2\r\n"
    assert run(c, "EXISTS", "a", "b", "c") == b":0\r\n"
    assert run(c, "DEL") == b"-ERR wrong number of arguments for 'del' command\r\n"
    assert run(c, "EXISTS") == b"-ERR wrong number of arguments for 'exists' command\r\n"


def test_incr():
    clock = Clock()
    c = new_conn(clock)
    assert run(c, "INCR", "n") == b":1\r\n"
    assert run(c, "INCR", "n") == b":2\r\n"
    assert run(c, "GET", "n") == bulk("2")
    assert run(c, "SET", "neg", "-10") == OK
    assert run(c, "INCR", "neg") == b":-9\r\n"
    for bad in ("abc", "1.5", " 1", "+1", "01", "", "99999999999999999999"):
        assert run(c, "SET", "s", bad) == OK
        assert run(c, "INCR", "s") == b"-ERR value is not an integer or out of range\r\n", bad
        assert run(c, "GET", "s") == bulk(bad)
    assert run(c, "SET", "max", str(2**63 - 1)) == OK
    assert run(c, "INCR", "max") == b"-ERR increment or decrement would overflow\r\n"
    assert run(c, "INCR") == b"-ERR wrong number of arguments for 'incr' command\r\n"
    # INCR keeps a time to live, as Redis does.
    assert run(c, "SET", "t", "5", "EX", 2) == OK
    assert run(c, "INCR", "t") == b":6\r\n"
    clock.now += 2
    assert run(c, "INCR", "t") == b":1\r\n"


def test_mget_mset():
    c = new_conn()
    assert run(c, "MSET", "a", "1", "b", b"\r\n") == OK
    assert run(c, "MGET", "a", "nope", "b") == b"*3\r\n" + bulk("1") + NULL + bulk(b"\r\n")
    assert run(c, "MSET", "a") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert run(c, "MSET", "a", "1", "b") == (
        b"-ERR wrong number of arguments for 'mset' command\r\n"
    )
    assert run(c, "MGET") == b"-ERR wrong number of arguments for 'mget' command\r\n"


def test_flushall_dbsize_select():
    c = new_conn()
    run(c, "MSET", "a", "1", "b", "2")
    assert run(c, "DBSIZE") == b":2\r\n"
    assert run(c, "FLUSHALL") == OK
    assert run(c, "DBSIZE") == b":0\r\n"
    run(c, "SET", "a", "1")
    assert run(c, "FLUSHALL", "ASYNC") == OK
    assert run(c, "GET", "a") == NULL
    assert run(c, "FLUSHALL", "later") == b"-ERR syntax error\r\n"
    assert run(c, "SELECT", "0") == OK
    assert run(c, "SELECT", "1") == b"-ERR DB index is out of range\r\n"


def test_command_and_config_for_clients():
    c = new_conn()
    assert run(c, "COMMAND") == b"*0\r\n"
    assert run(c, "COMMAND", "DOCS") == b"*0\r\n"
    count = run(c, "COMMAND", "COUNT")
    assert re.fullmatch(rb":(\d+)\r\n", count) and int(count[1:-2]) >= 12
    assert run(c, "COMMAND", "INFO", "get", "set") == b"*2\r\n*-1\r\n*-1\r\n"
    assert run(c, "COMMAND", "NOPE").startswith(b"-ERR unknown subcommand 'NOPE'")
    # What redis-benchmark asks before it starts.
    assert run(c, "CONFIG", "GET", "save") == b"*2\r\n" + bulk("save") + bulk("")
    assert run(c, "CONFIG", "GET", "appendonly") == b"*2\r\n" + bulk("appendonly") + bulk("no")
    assert run(c, "CONFIG", "GET", "nothing-like-this") == b"*0\r\n"
    everything = run(c, "CONFIG", "GET", "*")
    assert everything.startswith(b"*6\r\n") and bulk("appendonly") in everything
    assert run(c, "CONFIG") == b"-ERR wrong number of arguments for 'config' command\r\n"
    assert run(c, "CONFIG", "GET") == (
        b"-ERR wrong number of arguments for 'config|get' command\r\n"
    )
    assert run(c, "CONFIG", "REWRITE").startswith(b"-ERR unknown subcommand")
    assert not c.closing


def test_unknown_command():
    c = new_conn()
    assert run(c, "FOO") == b"-ERR unknown command 'FOO', with args beginning with: \r\n"
    assert run(c, "hget", "h", "f") == (
        b"-ERR unknown command 'hget', with args beginning with: 'h' 'f' \r\n"
    )
    # Client text in an error line can never end the line early.
    reply = run(c, b"x\r\ny", b"a\nb")
    assert reply == b"-ERR unknown command 'x  y', with args beginning with: 'a b' \r\n"
    assert reply.count(b"\r\n") == 1
    assert run(c, "PING") == b"+PONG\r\n"  # an unknown command does not close anything
    assert not c.closing


def test_quit_closes_after_its_reply():
    c = new_conn()
    assert c.feed(cmd("SET", "a", "1") + cmd("QUIT") + cmd("SET", "b", "2")) == OK + OK
    assert c.closing
    assert c.logic.data == {b"a": b"1"}  # nothing after QUIT ran
    assert c.feed(cmd("PING")) == b""


# -- framing: inline commands, pipelining, splits ---------------------------------------
def test_inline_commands():
    c = new_conn()
    assert c.feed(b"PING\r\n") == b"+PONG\r\n"
    assert c.feed(b"set  k   v\r\nget k\n\r\n\r\nEXISTS k\r\n") == OK + bulk("v") + b":1\r\n"
    assert c.feed(b"ping") == b""  # no line end yet
    assert c.feed(b"\r") == b""
    assert c.feed(b"\n") == b"+PONG\r\n"
    assert c.feed(b"   \r\n") == b""  # a blank line is nothing
    assert c.buffered == 0


def test_pipelining_replies_in_order():
    c = new_conn()
    stream, expected = [], []
    for i in range(500):
        stream.append(cmd("SET", f"k{i}", f"v{i}"))
        expected.append(OK)
        stream.append(cmd("INCR", "counter"))
        expected.append(b":%d\r\n" % (i + 1))
        stream.append(cmd("GET", f"k{i}") if i % 2 else b"GET k%d\r\n" % i)
        expected.append(bulk(f"v{i}"))
    assert c.feed(b"".join(stream)) == b"".join(expected)
    assert c.buffered == 0


STREAM = (
    cmd("SET", "key", b"va\r\nl\x00ue")
    + b"PING\r\n"
    + cmd("GET", "key")
    + cmd("MSET", "a", "1", "b", b"$2\r\n")
    + cmd("MGET", "a", "b", "c")
    + b"ECHO inline\n"
    + cmd("INCR", "a")
    + cmd("DEL", "a", "key")
    + cmd("PING", "x" * 300)
)
STREAM_REPLY = (
    OK
    + b"+PONG\r\n"
    + bulk(b"va\r\nl\x00ue")
    + OK
    + b"*3\r\n"
    + bulk("1")
    + bulk(b"$2\r\n")
    + NULL
    + bulk("inline")
    + b":2\r\n"
    + b":2\r\n"
    + bulk("x" * 300)
)


def test_whole_stream_reply():
    assert new_conn().feed(STREAM) == STREAM_REPLY


def test_every_split_point_gives_the_same_replies():
    for cut in range(len(STREAM) + 1):
        c = new_conn()
        got = c.feed(STREAM[:cut]) + c.feed(STREAM[cut:])
        assert got == STREAM_REPLY, f"split at {cut}"
        assert c.buffered == 0


def test_one_byte_at_a_time():
    c = new_conn()
    got = b"".join(c.feed(STREAM[i : i + 1]) for i in range(len(STREAM)))
    assert got == STREAM_REPLY
    assert c.buffered == 0


def test_random_reads_of_a_long_pipeline():
    rng = random.Random(5)
    parts, expected = [], []
    for i in range(400):
        value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 7, 300, 5000))))
        parts.append(cmd("SET", f"k{i % 17}", value))
        expected.append(OK)
        parts.append(cmd("GET", f"k{i % 17}"))
        expected.append(bulk(value))
    stream, reply = b"".join(parts), b"".join(expected)
    for _ in range(20):
        c = new_conn()
        got, pos = [], 0
        while pos < len(stream):
            step = rng.choice((1, 2, 3, 50, 700, 4096, 65536))
            got.append(c.feed(stream[pos : pos + step]))
            pos += step
        assert b"".join(got) == reply
        assert c.buffered == 0


def test_large_value_arriving_in_chunks():
    value = bytes(range(256)) * 8192  # 2 MiB
    stream = cmd("SET", "big", value) + cmd("GET", "big")
    c = new_conn()
    out = [c.feed(stream[i : i + 4096]) for i in range(0, len(stream), 4096)]
    assert b"".join(out) == OK + bulk(value)
    assert all(o == b"" for o in out[:-2])  # nothing answered before the request was whole


def test_many_arguments_arriving_in_chunks():
    pairs = [(f"key{i}", f"value{i}") for i in range(50_000)]
    stream = cmd("MSET", *[x for p in pairs for x in p]) + cmd("MGET", "key0", "key49999")
    c = new_conn()
    got = b"".join(c.feed(stream[i : i + 1000]) for i in range(0, len(stream), 1000))
    assert got == OK + b"*2\r\n" + bulk("value0") + bulk("value49999")
    assert len(c.logic.data) == 50_000
    assert c.buffered == 0


def test_memoryview_and_bytearray_input():
    c = new_conn()
    assert c.feed(memoryview(cmd("SET", "a", "b"))) == OK
    assert c.feed(bytearray(cmd("GET", "a"))) == bulk("b")


def test_empty_and_null_arrays_are_ignored():
    c = new_conn()
    assert c.feed(b"*0\r\n*-1\r\n" + cmd("PING")) == b"+PONG\r\n"
    assert not c.closing


# -- malformed and oversized input -----------------------------------------------------
@pytest.mark.parametrize(
    "raw, message",
    [
        (b"*x\r\n", b"invalid multibulk length"),
        (b"*1x\r\n", b"invalid multibulk length"),
        (b"* 1\r\n", b"invalid multibulk length"),
        (b"*99999999999\r\n", b"invalid multibulk length"),
        (b"*" + b"9" * 5000 + b"\r\n", b"invalid multibulk length"),
        (b"*1\r\n$x\r\n", b"invalid bulk length"),
        (b"*1\r\n$-1\r\n", b"invalid bulk length"),
        (b"*1\r\n$ 4\r\nPING\r\n", b"invalid bulk length"),
        (b"*1\r\n$" + b"9" * 5000 + b"\r\n", b"invalid bulk length"),
        (b"*1\r\n+PING\r\n", b"expected '$', got '+'"),
        (b"*2\r\n$4\r\nECHO\r\n:1\r\n", b"expected '$', got ':'"),
        (b"*1\r\n$4\r\nPINGxx", b"expected CRLF after a bulk string"),
        (b"*1\r\n$2\r\nPING\r\n", b"expected CRLF after a bulk string"),
    ],
)
def test_malformed_input_gets_a_protocol_error_and_closes(raw, message):
    c = new_conn()
    reply = c.feed(cmd("SET", "before", "1") + raw + cmd("SET", "after", "1"))
    assert reply == OK + b"-ERR Protocol error: " + message + b"\r\n"
    assert c.closing
    assert c.logic.data == {b"before": b"1"}
    assert c.feed(cmd("PING")) == b""
    assert c.buffered == 0


def test_malformed_input_found_across_reads():
    c = new_conn()
    assert c.feed(b"*2\r\n$4\r\nECHO\r\n") == b""
    assert c.feed(b"!") == b"-ERR Protocol error: expected '$', got '!'\r\n"
    assert c.closing


def test_bulk_longer_than_the_buffer_is_refused_before_it_arrives():
    c = new_conn(max_buffer=1024)
    # Under the limit, counting ARG_OVERHEAD per argument (3 + 1 + 800 + 3 * 64): fine.
    assert c.feed(cmd("SET", "a", "x" * 800)) == OK
    assert c.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1025\r\n") == (
        b"-ERR Protocol error: invalid bulk length\r\n"
    )
    assert c.closing


def test_request_growing_past_the_buffer_is_refused():
    c = new_conn(max_buffer=1024)
    # Each argument is small, but together they pass the limit: the parser refuses as
    # soon as it knows, and holds no more than the limit meanwhile.
    out = b""
    for i in range(200):
        out += c.feed((b"*1000\r\n" if i == 0 else b"") + b"$8\r\n%08d\r\n" % i)
        assert c.buffered <= 1024
        if c.closing:
            break
    assert out == b"-ERR Protocol error: request larger than the 1024-byte limit\r\n"
    assert c.closing


def test_default_buffer_limit_is_64_mib():
    c = new_conn()
    assert c.max_buffer == 64 * 1024 * 1024
    assert c.feed(b"*2\r\n$3\r\nGET\r\n$%d\r\n" % (64 * 1024 * 1024 + 1)) == (
        b"-ERR Protocol error: invalid bulk length\r\n"
    )


def test_many_tiny_arguments_count_their_objects_against_the_limit():
    """An array of two-byte arguments, never finished: each argument is a Python object
    worth far more than its two bytes, so the limit counts ARG_OVERHEAD for each, and the
    request is refused once what it really holds reaches the limit, not 30 times later."""
    limit = MIB
    c = new_conn(max_buffer=limit)
    chunk = b"$2\r\nxy\r\n" * 8192  # 64 KiB of arguments
    out = c.feed(b"*%d\r\n" % MAX_MULTIBULK)
    tracemalloc.start()
    try:
        for _ in range(32):  # 2 MiB of input at most: 262,144 arguments
            out += c.feed(chunk)
            assert c.buffered <= limit
            if c.closing:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == b"-ERR Protocol error: request larger than the 1048576-byte limit\r\n"
    assert c.closing and c.buffered == 0
    assert peak < 2 * limit, f"{peak / MIB:.1f} MiB held for a {limit / MIB:.0f} MiB limit"


def test_whole_requests_over_the_limit_are_refused_too():
    """One read holding a complete request that costs more than the limit is refused like an
    incomplete one: the limit is on what a request holds, however it arrives."""
    c = new_conn(max_buffer=4096)
    fits = cmd("DEL", *[b"k"] * ((4096 - 3 - ARG_OVERHEAD) // (1 + ARG_OVERHEAD)))
    assert c.feed(fits) == b":0\r\n"
    too_many = cmd("DEL", *[b"k"] * (4096 // (1 + ARG_OVERHEAD)))
    assert c.feed(cmd("PING") + too_many) == (
        b"+PONG\r\n-ERR Protocol error: request larger than the 4096-byte limit\r\n"
    )
    assert c.closing


def test_array_header_over_max_multibulk_is_refused_at_once():
    c = new_conn()
    assert c.max_multibulk == MAX_MULTIBULK == 1024 * 1024
    assert c.feed(b"*%d\r\n" % MAX_MULTIBULK) == b""  # at the limit: waits for elements
    assert not c.closing
    c = new_conn()
    assert c.feed(b"*%d\r\n" % (MAX_MULTIBULK + 1)) == (
        b"-ERR Protocol error: invalid multibulk length\r\n"
    )
    assert c.closing and c.buffered == 0


@pytest.mark.parametrize("split", [False, True])
def test_max_multibulk_is_configurable(split):
    """Whole requests (the fast path's) and requests cut across reads (the general
    parser's) meet the same limit."""
    c = new_conn(max_multibulk=3)

    def feed(raw: bytes) -> bytes:
        if not split:
            return c.feed(raw)
        return b"".join(c.feed(raw[i : i + 5]) for i in range(0, len(raw), 5))

    assert feed(cmd("MSET", "a", "1")) == OK  # three elements: at the limit
    assert feed(cmd("MSET", "a", "1", "b", "2")) == (
        b"-ERR Protocol error: invalid multibulk length\r\n"
    )
    assert c.closing
    assert c.logic.data == {b"a": b"1"}
    with pytest.raises(ValueError, match="max_multibulk"):
        new_conn(max_multibulk=0)


@pytest.mark.parametrize("chunk", [1 << 20, 4096])
def test_inline_request_over_the_limit_is_refused_even_with_its_line_end(chunk):
    """An inline request is one line split on whitespace: a line past MAX_INLINE would be
    tens of thousands of arguments, so it is refused whether or not its end has come."""
    at_limit = b"ECHO " + b"y" * (MAX_INLINE - 7) + b"\r\n"  # MAX_INLINE bytes up to "\n"
    c = new_conn()
    assert c.feed(at_limit) == bulk(b"y" * (MAX_INLINE - 7))
    over = b"DEL" + b" k" * (MAX_INLINE // 2) + b"\r\n"
    c = new_conn()
    out = b"".join(c.feed(over[i : i + chunk]) for i in range(0, len(over), chunk))
    assert out == b"-ERR Protocol error: too big inline request\r\n"
    assert c.closing


@pytest.mark.parametrize(
    "head, line_start, message",
    [
        (b"", 0, b"too big inline request"),
        (b"*", 0, b"too big mbulk count string"),
        (b"*1\r\n$", 4, b"too big bulk count string"),
    ],
)
def test_lines_without_an_end_are_bounded(head, line_start, message):
    c = new_conn()
    # A line of exactly MAX_INLINE bytes so far may still end: it waits, in 4 KiB reads.
    fill = b"1" * (MAX_INLINE - (len(head) - line_start))
    assert c.feed(head) == b""
    for i in range(0, len(fill), 4096):
        assert c.feed(fill[i : i + 4096]) == b""
    assert c.buffered == MAX_INLINE  # the line so far (a consumed "*1" header is not held)
    assert c.feed(b"1") == b"-ERR Protocol error: " + message + b"\r\n"
    assert c.closing
    assert c.buffered == 0


# -- end to end: the hamanet example server over plain sockets ------------------------
def exchange(sock: socket.socket, request: bytes, expected: bytes) -> None:
    sock.sendall(request)
    assert recv_exactly(sock, len(expected)) == expected


@pytest.fixture
def redis_server(serve):
    return serve(RedisHandler())


def test_server_commands_over_a_socket(redis_server):
    with connect(redis_server.port) as s:
        exchange(s, cmd("PING"), b"+PONG\r\n")
        exchange(s, b"PING\r\n", b"+PONG\r\n")
        exchange(s, cmd("SET", "k", "v"), OK)
        exchange(s, cmd("GET", "k"), bulk("v"))
        exchange(s, cmd("INCR", "n") + cmd("INCR", "n"), b":1\r\n:2\r\n")
        exchange(s, cmd("MGET", "k", "n", "x"), b"*3\r\n" + bulk("v") + bulk("2") + NULL)
        exchange(s, cmd("NOPE"), b"-ERR unknown command 'NOPE', with args beginning with: \r\n")


def test_server_store_is_shared_between_sessions(redis_server):
    with connect(redis_server.port) as a, connect(redis_server.port) as b:
        exchange(a, cmd("SET", "shared", "from a"), OK)
        exchange(b, cmd("GET", "shared"), bulk("from a"))
        exchange(b, cmd("DEL", "shared"), b":1\r\n")
        exchange(a, cmd("EXISTS", "shared"), b":0\r\n")


def test_server_pipeline_and_byte_by_byte(redis_server):
    with connect(redis_server.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange(s, STREAM * 20, STREAM_REPLY * 20)
        for i in range(len(STREAM)):
            s.sendall(STREAM[i : i + 1])
        assert recv_exactly(s, len(STREAM_REPLY)) == STREAM_REPLY


def test_server_large_value(redis_server):
    value = bytes(range(256)) * 40_000  # about 10 MB
    with connect(redis_server.port) as s:
        exchange(s, cmd("SET", "big", value) + cmd("GET", "big"), OK + bulk(value))


def test_server_protocol_error_replies_then_closes(redis_server):
    with connect(redis_server.port) as s:
        s.sendall(cmd("PING") + b"*1\r\n$x\r\n" + cmd("PING"))
        assert recv_until_eof(s) == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    with connect(redis_server.port) as s:  # the server goes on serving others
        exchange(s, cmd("PING"), b"+PONG\r\n")


def test_server_quit(redis_server):
    with connect(redis_server.port) as s:
        s.sendall(cmd("SET", "q", "1") + b"QUIT\r\n")
        assert recv_until_eof(s) == OK + OK


def test_server_oversized_request_closes_without_buffering_it(redis_server):
    with connect(redis_server.port) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000000\r\n")
        assert recv_until_eof(s) == b"-ERR Protocol error: invalid bulk length\r\n"


def test_server_inline_line_without_end_is_bounded(redis_server):
    with connect(redis_server.port) as s:
        # One byte past the limit, so the server has read everything when it closes.
        s.sendall(b"x" * (MAX_INLINE + 1))
        assert recv_until_eof(s) == b"-ERR Protocol error: too big inline request\r\n"


# -- the example as a program: what one client's requests may cost it -----------------
class PeakRss:
    """Samples a process's RSS every few milliseconds on a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = rss_bytes(pid)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def growth(self) -> int:
        self.done.set()
        self.thread.join(WAIT)
        self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak - self.baseline


class Flood:
    """One connection that sends an array header, then up to ``count`` copies of ``item``
    (never the last element the header announced), from a thread, until the server ends
    the connection; ``result()`` is what the server sent back and how the stream ended."""

    def __init__(self, port: int, header: bytes, item: bytes, count: int) -> None:
        self.sock = connect(port)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.header, self.item, self.count = header, item, count
        self.sent = 0
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        per_chunk = max(1, 65536 // len(self.item))
        try:
            self.sock.sendall(self.header)
            while self.sent < self.count:  # exactly `count` items: the array never ends
                items = min(per_chunk, self.count - self.sent)
                self.sock.sendall(self.item * items)
                self.sent += items
        except OSError:
            pass  # the server refused the request and closed: the point of the test

    def result(self) -> tuple[bytes, str]:
        try:
            return read_until_end(self.sock)
        except socket.timeout:
            raise AssertionError(f"no reply within {WAIT}s after {self.sent} elements") from None
        finally:
            self.thread.join(WAIT)
            self.sock.close()


@pytest.mark.timeout(90)
def test_server_refuses_a_million_tiny_arguments_at_the_default_limit(procs):
    """Issue 9: `*1048576` then a million `$1 x` elements, never finished. Each element is
    counted with ARG_OVERHEAD, so the request passes the 64 MiB limit before its end and
    is refused; the server's memory stays within that limit, and others are served."""
    proc, port, _ = run_example(procs, "redis_server.py", "redis: listening")
    rss = PeakRss(proc.popen.pid)
    flood = Flood(port, b"*%d\r\n" % MAX_MULTIBULK, b"$1\r\nx\r\n", MAX_MULTIBULK - 1)
    data, _ = flood.result()
    growth = rss.growth()
    assert data == b"-ERR Protocol error: request larger than the 67108864-byte limit\r\n"
    assert flood.sent * (1 + ARG_OVERHEAD) >= 64 * MIB - 65536 * (1 + ARG_OVERHEAD)
    assert growth < 64 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
    with connect(port) as s:
        exchange(s, cmd("PING"), b"+PONG\r\n")


@pytest.mark.timeout(90)
def test_server_limits_are_options_and_bound_each_request(procs):
    """--max-request and --max-multibulk, from the command line: an array header over the
    element limit is refused at once, and six clients that each send an array too costly
    for the byte limit (20,000 arguments of 64 bytes: 2.5 MiB counted with ARG_OVERHEAD)
    are each refused at it, the server's memory growing by a few of those limits."""
    port = free_port()
    proc = procs(
        str(EXAMPLES / "redis_server.py"),
        str(port),
        "--max-request",
        str(2 * MIB),
        "--max-multibulk",
        "20000",
    )
    proc.wait_line("redis: listening")
    with connect(port) as s:
        s.sendall(b"*20001\r\n")
        assert recv_until_eof(s) == b"-ERR Protocol error: invalid multibulk length\r\n"
    with connect(port) as s:  # at the element limit, and under the byte limit: served
        exchange(s, cmd("DEL", *[b"k"] * 19_999), b":0\r\n")
    rss = PeakRss(proc.popen.pid)
    item = b"$64\r\n" + b"v" * 64 + b"\r\n"
    floods = [Flood(port, b"*20000\r\n", item, 19_999) for _ in range(6)]
    for flood in floods:
        data, _ = flood.result()
        assert data == b"-ERR Protocol error: request larger than the 2097152-byte limit\r\n"
    growth = rss.growth()
    assert growth < 24 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
    with connect(port) as s:
        exchange(s, cmd("PING"), b"+PONG\r\n")


def test_program_options():
    args = parse_args([])
    assert (args.port, args.max_request, args.max_multibulk) == (6379, 64 * MIB, MAX_MULTIBULK)
    args = parse_args(["7000", "--max-request", "4096", "--max-multibulk", "8"])
    assert (args.port, args.max_request, args.max_multibulk) == (7000, 4096, 8)
    with pytest.raises(SystemExit):
        parse_args(["--max-multibulk", "0"])
    handler = RedisHandler(4096, 8)
    assert (handler.max_request, handler.max_multibulk) == (4096, 8)


@pytest.mark.timeout(60)
def test_server_pushes_back_on_a_client_that_does_not_read(serve):
    sessions = []

    class Recording(RedisHandler):
        def on_connect(self, session):
            super().on_connect(session)
            sessions.append(session)

    server = serve(Recording())
    value = b"v" * 16384
    count = 2000  # about 32 MiB of replies to a few tens of KiB of requests
    with connect(server.port) as s:
        exchange(s, cmd("SET", "v", value), OK)
        s.sendall(cmd("GET", "v") * count)
        session = wait_until(lambda: sessions and sessions[0])
        wait_until(lambda: session.reading_paused, what="reading paused on a full buffer")
        expected = bulk(value)
        for i in range(count):
            assert recv_exactly(s, len(expected)) == expected, f"reply {i}"
        wait_until(lambda: not session.reading_paused, what="reading resumed")
        exchange(s, cmd("PING"), b"+PONG\r\n")


# -- the real clients: redis-cli and redis-benchmark from Debian's redis-tools ---------
def tool(name: str) -> str:
    return real_client(name, "redis-tools")


def redis_cli(port: int, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [tool("redis-cli"), "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_redis_cli_ping(redis_server):
    assert redis_cli(redis_server.port, "ping") == "PONG\n"


def test_redis_cli_round_trips(redis_server):
    port = redis_server.port
    assert redis_cli(port, "set", "greeting", "hello world") == "OK\n"
    assert redis_cli(port, "get", "greeting") == "hello world\n"
    assert redis_cli(port, "incr", "visits") == "1\n"
    assert redis_cli(port, "incr", "visits") == "2\n"
    # redis-cli prints an error reply, then an empty line.
    assert redis_cli(port, "incr", "greeting") == "ERR value is not an integer or out of range\n\n"
    assert redis_cli(port, "mset", "a", "1", "b", "2") == "OK\n"
    assert redis_cli(port, "mget", "a", "b", "nope") == "1\n2\n\n"
    assert redis_cli(port, "exists", "a", "b", "nope") == "2\n"
    assert redis_cli(port, "del", "a", "b", "nope") == "2\n"
    assert redis_cli(port, "get", "a") == "\n"
    assert redis_cli(port, "set", "t", "x", "ex", "100") == "OK\n"
    assert redis_cli(port, "echo", "same connection") == "same connection\n"
    assert redis_cli(port, "nosuchcommand").startswith("ERR unknown command 'nosuchcommand'")
    # Several commands on one connection, read from stdin.
    assert redis_cli(port, stdin="set x 10\nincr x\nget x\nflushall\nget x\n") == (
        "OK\n11\n11\nOK\n\n"
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pipeline", [None, 16])
def test_redis_benchmark(redis_server, pipeline):
    args = [tool("redis-benchmark"), "-p", str(redis_server.port)]
    args += ["-t", "ping,set,get", "-n", "2000", "-c", "10", "-q"]
    if pipeline:
        args += ["-P", str(pipeline)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    found = dict(re.findall(r"(PING_INLINE|PING_MBULK|SET|GET): ([\d.]+) requests per second", out))
    assert set(found) == {"PING_INLINE", "PING_MBULK", "SET", "GET"}, out
    assert all(float(v) > 0 for v in found.values()), out
    assert "rror" not in out and "Could not fetch" not in out, out
    # The SETs were stored: redis-benchmark's key (no -r) with its 3-byte random value.
    with connect(redis_server.port) as s:
        s.sendall(cmd("GET", "key:__rand_int__"))
        reply = recv_exactly(s, 9)
        assert reply[:4] == b"$3\r\n" and reply[7:] == b"\r\n", reply
    assert redis_server.stats()["handler_errors"] == 0
