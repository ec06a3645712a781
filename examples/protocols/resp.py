"""The Redis protocol (RESP2) and a small in-memory key-value store, with no transport.

    logic = RedisLogic()                 # one store, shared by every connection
    conn = RespConnection(logic)         # one per connection
    reply = conn.feed(data)              # every complete command in data, executed in order
    if conn.closing: ...                 # send reply, then close (QUIT, protocol error)

Commands: PING [msg], ECHO msg, SET key value [EX s|PX ms|KEEPTTL] [NX|XX] [GET], GET, DEL,
EXISTS, INCR, MGET, MSET, FLUSHALL, DBSIZE, SELECT 0, QUIT, and enough of COMMAND and
CONFIG GET for redis-cli and redis-benchmark to connect. Requests are RESP arrays of bulk
strings or inline commands (`PING\\r\\n`, split on whitespace, without quoting).

Bounded: what one request may cost in memory is limited, its number of arguments included,
the way Redis limits it (both limits are `RespConnection` arguments):

* `max_multibulk` (`MAX_MULTIBULK`, 1024 * 1024, Redis's own limit): an array header
  `*N` with more elements is refused as soon as it is read, with
  `-ERR Protocol error: invalid multibulk length`.
* `max_buffer` (`MAX_BUFFER`, 64 MiB): a request's arguments may cost at most this many
  bytes, each counted as its length plus `ARG_OVERHEAD` (64) bytes for the Python object
  that holds it and its slot in the argument list. So a million one-byte arguments cost
  as much as 64 MiB of data, and the request is refused with
  `-ERR Protocol error: request larger than the N-byte limit` once it passes the limit,
  whether it is complete or not, before its next argument is buffered; a single bulk
  string longer than the limit is refused from its `$N` header (`invalid bulk length`).
* An inline request over `MAX_INLINE` (64 KiB), with or without its line end, and a
  `*N` / `$N` line that long without its end (`too big inline request`, ...): so an
  inline request splits into a bounded number of arguments too.

Each refusal, like malformed input (a bad length, a type byte other than `$` inside an
array, a bulk not followed by CRLF), gets one `-ERR Protocol error: ...` reply and sets
`closing`: the transport sends what `feed` returned and closes, and the connection's
partial request is dropped. Keys with a time to live expire lazily, when a command
touches them (on `time.monotonic()`, or the clock given to RedisLogic).
"""

from __future__ import annotations

import fnmatch
import time
from typing import Callable

MAX_BUFFER = 64 * 1024 * 1024  # what one request's arguments may cost, overhead included
MAX_INLINE = 64 * 1024  # an inline request (ended or not), or a `*N` / `$N` line without its end
MAX_MULTIBULK = 1024 * 1024  # elements of one request array (Redis's own limit)
# What an argument costs beyond its bytes: a bytes object's header (33 bytes on 64-bit
# CPython) rounded up by the allocator, plus its pointer in the argument list. Counting it
# makes a request of many tiny arguments hit `max_buffer` as one big argument does.
ARG_OVERHEAD = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# The fast path (RespConnection._parse_split) reads requests of small arrays of short bulk
# strings by table lookup, not int(): `*N` and `$N` tokens up to these sizes.
FAST_ARRAY_MAX = 1024
FAST_BULK_MAX = 4096
FAST_BUFFER_MAX = 1024 * 1024  # larger reads go straight to the general parser
# The fast path checks no limit: a request it takes costs at most the read's length plus
# FAST_ARRAY_MAX * ARG_OVERHEAD, so it is only used while that is within max_buffer, and
# while max_multibulk admits every array it knows.
FAST_COST_MAX = FAST_ARRAY_MAX * ARG_OVERHEAD
_ARRAY_TOKENS = {b"*%d" % i: i for i in range(1, FAST_ARRAY_MAX + 1)}
_BULK_TOKENS = {b"$%d" % i: i for i in range(FAST_BULK_MAX + 1)}

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL = b"$-1\r\n"
EMPTY_ARRAY = b"*0\r\n"
ERR_NOT_INT = b"-ERR value is not an integer or out of range\r\n"
ERR_SYNTAX = b"-ERR syntax error\r\n"
ERR_OVERFLOW = b"-ERR increment or decrement would overflow\r\n"

# What CONFIG GET answers (redis-benchmark asks for `save` and `appendonly`).
CONFIG = {"save": "", "appendonly": "no", "databases": "1"}


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: list[bytes]) -> bytes:
    """An array of already encoded replies."""
    return b"*%d\r\n%s" % (len(items), b"".join(items))


def error(message: str) -> bytes:
    return b"-ERR " + _printable(message.encode()) + b"\r\n"


def arity_error(name: str) -> bytes:
    return error(f"wrong number of arguments for '{name}' command")


def _printable(raw: bytes, limit: int = 128) -> bytes:
    """Client text echoed in an error line: no CR/LF (they would end the line), truncated."""
    return raw[:limit].replace(b"\r", b" ").replace(b"\n", b" ")


def to_int(raw: bytes) -> int | None:
    """A signed 64-bit integer written the canonical way (no plus sign, space or leading zero
    that Redis would refuse), else None."""
    try:
        value = int(raw)
    except ValueError:
        return None
    if b"%d" % value != raw or not INT_MIN <= value <= INT_MAX:
        return None
    return value


class RedisLogic:
    """The store every connection shares, and the commands. Not thread-safe: call it from
    one thread (the reactor's, or the event loop's)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.data: dict[bytes, bytes] = {}
        self.expires: dict[bytes, float] = {}  # key -> deadline on `clock`
        self.clock = clock

    def execute(self, args: list[bytes]) -> bytes:
        """Runs one command (name and arguments as bytes) and returns its encoded reply.
        (QUIT belongs to the connection: RespConnection answers it and closes.)"""
        fn = COMMANDS.get(args[0]) or COMMANDS.get(args[0].upper())
        return fn(self, args) if fn is not None else unknown_command(args)

    # -- expiry -----------------------------------------------------------------------
    def _expire(self, key: bytes) -> None:
        """Drops `key` if its deadline has passed (the only way keys expire: lazily)."""
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.clock():
            del self.expires[key]
            self.data.pop(key, None)

    def _purge_expired(self) -> None:
        now = self.clock()
        for key in [k for k, d in self.expires.items() if d <= now]:
            del self.expires[key]
            self.data.pop(key, None)

    # -- commands: each takes the whole argument list, name included ----------------
    def ping(self, args: list[bytes]) -> bytes:
        n = len(args)
        if n == 1:
            return PONG
        return bulk(args[1]) if n == 2 else arity_error("ping")

    def echo(self, args: list[bytes]) -> bytes:
        return bulk(args[1]) if len(args) == 2 else arity_error("echo")

    def get(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return arity_error("get")
        key = args[1]
        if self.expires:
            self._expire(key)
        value = self.data.get(key)
        if value is None:
            return NULL
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def set(self, args: list[bytes]) -> bytes:
        if len(args) == 3:  # the hot path: plain SET key value
            key = args[1]
            self.data[key] = args[2]
            if self.expires:
                self.expires.pop(key, None)
            return OK
        if len(args) < 3:
            return arity_error("set")
        return self._set_with_options(args)

    def _set_with_options(self, args: list[bytes]) -> bytes:
        key, value = args[1], args[2]
        ttl_ms: int | None = None
        nx = xx = keepttl = want_old = False
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if opt in (b"EX", b"PX") and ttl_ms is None and not keepttl and i + 1 < len(args):
                amount = to_int(args[i + 1])
                if amount is None:
                    return ERR_NOT_INT
                ttl_ms = amount * 1000 if opt == b"EX" else amount
                if not 0 < ttl_ms < 2**62:
                    return error("invalid expire time in 'set' command")
                i += 2
                continue
            if opt == b"NX" and not xx:
                nx = True
            elif opt == b"XX" and not nx:
                xx = True
            elif opt == b"KEEPTTL" and ttl_ms is None:
                keepttl = True
            elif opt == b"GET":
                want_old = True
            else:
                return ERR_SYNTAX
            i += 1
        if self.expires:
            self._expire(key)
        old = self.data.get(key)
        if (nx and old is not None) or (xx and old is None):
            return NULL if not want_old or old is None else bulk(old)
        self.data[key] = value
        if ttl_ms is not None:
            self.expires[key] = self.clock() + ttl_ms / 1000.0
        elif not keepttl:
            self.expires.pop(key, None)
        if want_old:
            return NULL if old is None else bulk(old)
        return OK

    def delete(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return arity_error("del")
        data, expires = self.data, self.expires
        removed = 0
        for key in args[1:]:
            if expires:
                self._expire(key)
                expires.pop(key, None)
            if data.pop(key, None) is not None:
                removed += 1
        return b":%d\r\n" % removed

    def exists(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return arity_error("exists")
        if self.expires:
            for key in args[1:]:
                self._expire(key)
        data = self.data
        return b":%d\r\n" % sum(1 for key in args[1:] if key in data)

    def incr(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return arity_error("incr")
        key = args[1]
        if self.expires:
            self._expire(key)
        old = self.data.get(key)
        if old is None:
            value = 1
        else:
            value = to_int(old)
            if value is None:
                return ERR_NOT_INT
            if value == INT_MAX:
                return ERR_OVERFLOW
            value += 1
        self.data[key] = b"%d" % value  # the time to live, if any, is kept (as Redis does)
        return b":%d\r\n" % value

    def mget(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return arity_error("mget")
        if self.expires:
            for key in args[1:]:
                self._expire(key)
        get = self.data.get
        parts = [b"*%d\r\n" % (len(args) - 1)]
        for key in args[1:]:
            value = get(key)
            parts.append(NULL if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
        return b"".join(parts)

    def mset(self, args: list[bytes]) -> bytes:
        if len(args) < 3 or len(args) % 2 == 0:
            return arity_error("mset")
        data, expires = self.data, self.expires
        for i in range(1, len(args), 2):
            data[args[i]] = args[i + 1]
            if expires:
                expires.pop(args[i], None)
        return OK

    def flushall(self, args: list[bytes]) -> bytes:
        if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
            return ERR_SYNTAX
        self.data.clear()
        self.expires.clear()
        return OK

    def dbsize(self, args: list[bytes]) -> bytes:
        if len(args) != 1:
            return arity_error("dbsize")
        if self.expires:
            self._purge_expired()
        return b":%d\r\n" % len(self.data)

    def select(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return arity_error("select")
        db = to_int(args[1])
        if db is None:
            return ERR_NOT_INT
        return OK if db == 0 else error("DB index is out of range")

    def command(self, args: list[bytes]) -> bytes:
        """Enough for clients that introspect at connect time: redis-cli asks for
        COMMAND DOCS and copes with an empty answer."""
        if len(args) == 1:
            return EMPTY_ARRAY
        sub = args[1].upper()
        if sub == b"COUNT":
            return b":%d\r\n" % len(COMMAND_NAMES)
        if sub == b"LIST":
            return array([bulk(name) for name in COMMAND_NAMES])
        if sub == b"INFO":
            return array([b"*-1\r\n"] * (len(args) - 2))
        if sub == b"DOCS":
            return EMPTY_ARRAY
        return error(f"unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP.")

    def config(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return arity_error("config")
        sub = args[1].upper()
        if sub == b"GET":
            if len(args) < 3:
                return arity_error("config|get")
            items = []
            for name, value in CONFIG.items():
                if any(fnmatch.fnmatchcase(name, p.decode(errors="replace")) for p in args[2:]):
                    items += [bulk(name.encode()), bulk(value.encode())]
            return array(items)
        if sub == b"RESETSTAT":
            return OK
        return error(
            f"unknown subcommand or unsupported in this server: "
            f"'{args[1].decode(errors='replace')}'"
        )


# name -> RedisLogic method; both spellings of every name, so the usual request costs one
# lookup (QUIT is the connection's business: see RespConnection._execute).
_BY_NAME = {
    b"PING": RedisLogic.ping,
    b"ECHO": RedisLogic.echo,
    b"GET": RedisLogic.get,
    b"SET": RedisLogic.set,
    b"DEL": RedisLogic.delete,
    b"EXISTS": RedisLogic.exists,
    b"INCR": RedisLogic.incr,
    b"MGET": RedisLogic.mget,
    b"MSET": RedisLogic.mset,
    b"FLUSHALL": RedisLogic.flushall,
    b"DBSIZE": RedisLogic.dbsize,
    b"SELECT": RedisLogic.select,
    b"COMMAND": RedisLogic.command,
    b"CONFIG": RedisLogic.config,
}
COMMAND_NAMES = [name.lower() for name in (*_BY_NAME, b"QUIT")]
COMMANDS: dict[bytes, Callable[[RedisLogic, list[bytes]], bytes]] = {
    **_BY_NAME,
    **{name.lower(): fn for name, fn in _BY_NAME.items()},
}


def unknown_command(args: list[bytes]) -> bytes:
    shown = b"".join(b"'%s' " % _printable(a) for a in args[1:4])
    return b"-ERR unknown command '%s', with args beginning with: %s\r\n" % (
        _printable(args[0]),
        shown,
    )


class ProtocolError(Exception):
    """Input that is not RESP: answered with `-ERR Protocol error: ...`, then closed."""


class RespConnection:
    """One client's side of the protocol: buffers partial requests, executes complete ones.

    A request cut short by the end of a read is not parsed again from its start: the
    arguments already cut out are kept, so a huge request arriving in many reads costs
    the same as one arriving whole.
    """

    __slots__ = (
        "_argc",
        "_args",
        "_fast_max",
        "_held",
        "_need",
        "_pending",
        "closing",
        "logic",
        "max_buffer",
        "max_multibulk",
    )

    def __init__(
        self,
        logic: RedisLogic,
        max_buffer: int = MAX_BUFFER,
        max_multibulk: int = MAX_MULTIBULK,
    ) -> None:
        if max_buffer < 1 or max_multibulk < 1:
            raise ValueError(
                f"max_buffer and max_multibulk must be >= 1, got {max_buffer}, {max_multibulk}"
            )
        self.logic = logic
        self.max_buffer = max_buffer  # what one request's arguments may cost (see ARG_OVERHEAD)
        self.max_multibulk = max_multibulk  # elements one request array may announce
        # Reads up to this size may take the fast path (0: never, the limits are too tight).
        self._fast_max = (
            min(FAST_BUFFER_MAX, max_buffer - FAST_COST_MAX)
            if max_multibulk >= FAST_ARRAY_MAX
            else 0
        )
        self.closing = False  # set by QUIT or a protocol error: close after sending
        self._pending = bytearray()  # unparsed bytes of a request not yet complete
        # len(_pending) below which parsing again cannot make progress; -1: a line end
        self._need = 0
        self._args: list[bytes] = []  # arguments of that request parsed so far
        self._argc = 0  # arguments of it still to come (0: between requests)
        self._held = 0  # what _args costs: each argument's length plus ARG_OVERHEAD

    @property
    def buffered(self) -> int:
        """What an incomplete request holds until the rest arrives: its unparsed bytes,
        and its arguments counted as `max_buffer` counts them (length + ARG_OVERHEAD)."""
        return len(self._pending) + self._held

    def feed(self, data: bytes) -> bytes:
        """Executes every complete request in what has arrived so far; returns the replies."""
        if self.closing:
            return b""
        pending = self._pending
        if pending:
            pending += data
            need = self._need
            if need < 0:  # waiting for a line end: no "\n", nothing to parse again
                if b"\n" not in data and len(pending) <= MAX_INLINE:
                    return b""
            elif len(pending) < need:
                return b""
            buf = bytes(pending)
            self._pending = bytearray()
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        try:
            out: list[bytes] = []
            pos = 0
            if not self._argc and len(buf) <= self._fast_max:
                pos = self._parse_split(buf, out)
                if pos == len(buf) or self.closing:
                    return out[0] if len(out) == 1 else b"".join(out)
            return self._parse(buf, pos, out)
        except ProtocolError as e:
            self.closing = True
            self._pending = bytearray()
            self._args, self._argc, self._held = [], 0, 0
            return e.args[0] + b"-ERR Protocol error: " + e.args[1].encode() + b"\r\n"

    def _parse_split(self, buf: bytes, out: list[bytes]) -> int:
        """The fast path for what clients send most: whole requests made of short bulk
        strings, and inline commands. One C-level split on CRLF cuts the read into
        tokens; a request is taken only if every `$N` token is the exact length of the
        token after it (so no bulk string held a CRLF) and the request ends before the
        read does. Executes the requests up to the first one that does not fit and
        returns where it starts; the general parser takes it from there."""
        parts = buf.split(b"\r\n")
        last = len(parts) - 1  # parts[last] is what follows the last CRLF
        arrays = _ARRAY_TOKENS.get
        sizes = _BULK_TOKENS.get
        commands = COMMANDS.get
        logic = self.logic
        i = 0
        while i < last:
            tok = parts[i]
            argc = arrays(tok)
            if argc == 2:  # GET key, and the like
                j = i + 5
                if j > last:
                    break
                a0, a1 = parts[i + 2], parts[i + 4]
                if sizes(parts[i + 1]) != len(a0) or sizes(parts[i + 3]) != len(a1):
                    break
                args = [a0, a1]
            elif argc == 3:  # SET key value, and the like
                j = i + 7
                if j > last:
                    break
                a0, a1, a2 = parts[i + 2], parts[i + 4], parts[i + 6]
                if (
                    sizes(parts[i + 1]) != len(a0)
                    or sizes(parts[i + 3]) != len(a1)
                    or sizes(parts[i + 5]) != len(a2)
                ):
                    break
                args = [a0, a1, a2]
            elif argc is not None:
                j = i + 1 + 2 * argc
                if j > last:
                    break
                args = parts[i + 2 : j : 2]
                k = i + 1
                for arg in args:
                    if sizes(parts[k]) != len(arg):
                        break
                    k += 2
                if k != j:
                    break
            elif tok[:1] != b"*" and b"\n" not in tok and len(tok) < MAX_INLINE:  # inline
                j = i + 1
                args = tok.split()
                if not args:  # a blank line
                    i = j
                    continue
            else:
                break
            i = j
            fn = commands(args[0])
            out.append(fn(logic, args) if fn is not None else self._execute(args))
            if self.closing:
                break
        return sum(map(len, parts[:i])) + 2 * i

    def _parse(self, buf: bytes, pos: int, out: list[bytes]) -> bytes:
        """The general parser: RESP arrays cut with find() and slices, never byte by byte;
        resumes an array a previous read cut short; enforces every limit."""
        execute = self._execute
        find = buf.find
        n = len(buf)
        max_buffer = self.max_buffer
        max_multibulk = self.max_multibulk
        p = pos  # start of the next bulk string of the current array
        args = self._args
        argc = self._argc  # nonzero: resuming an array the previous read cut short
        held = self._held  # what args costs: each argument's length plus ARG_OVERHEAD
        # When the loop stops on an incomplete request: the bytes it needs from p, or -1
        # for the end of a line (feed() parses again only once a "\n" has come).
        need = 0
        # `pos` starts the first request not yet executed
        while True:
            if not argc:
                if pos >= n:
                    p = n
                    break
                if buf[pos] != 42:  # not b"*": an inline command, one line
                    end = find(b"\n", pos)
                    # Over the limit with or without its line end: it would split into
                    # too many arguments (Redis reads too little at a time to see one).
                    if (end if end >= 0 else n) - pos > MAX_INLINE:
                        raise ProtocolError(b"".join(out), "too big inline request")
                    if end < 0:
                        p, need = pos, -1
                        break
                    line = buf[pos:end].split()  # on whitespace, "\r" included
                    pos = end + 1
                    if line:
                        out.append(execute(line))
                        if self.closing:
                            return b"".join(out)
                    continue
                end = find(b"\r\n", pos)
                if end < 0:
                    if n - pos > MAX_INLINE:
                        raise ProtocolError(b"".join(out), "too big mbulk count string")
                    p, need = pos, -1
                    break
                count = buf[pos + 1 : end]
                if count.isdigit() and len(count) <= 9:
                    argc = int(count)
                elif count[:1] == b"-" and count[1:].isdigit():
                    argc = 0  # *-1 (a null array), as Redis takes it: nothing to do
                else:
                    argc = max_multibulk + 1
                if argc > max_multibulk:
                    raise ProtocolError(b"".join(out), "invalid multibulk length")
                p = end + 2
                if not argc:  # *0 and *-1: nothing to do, as Redis does
                    pos = p
                    continue
                args = []
                held = 0
            while argc:
                if p >= n:
                    need = 1
                    break
                if buf[p] != 36:  # b"$"
                    got = _printable(buf[p : p + 1]).decode("latin-1")
                    raise ProtocolError(b"".join(out), f"expected '$', got '{got}'")
                end = find(b"\r\n", p)
                if end < 0:
                    if n - p > MAX_INLINE:
                        raise ProtocolError(b"".join(out), "too big bulk count string")
                    need = -1
                    break
                digits = buf[p + 1 : end]
                size = int(digits) if digits.isdigit() and len(digits) <= 18 else -1
                if not 0 <= size <= max_buffer:
                    raise ProtocolError(b"".join(out), "invalid bulk length")
                # Refused before the argument is buffered, let alone made an object.
                cost = held + size + ARG_OVERHEAD
                if cost > max_buffer:
                    raise ProtocolError(
                        b"".join(out), f"request larger than the {max_buffer}-byte limit"
                    )
                start = end + 2
                end = start + size
                if end + 2 > n:
                    need = end + 2 - p
                    break
                if buf[end : end + 2] != b"\r\n":
                    raise ProtocolError(b"".join(out), "expected CRLF after a bulk string")
                args.append(buf[start:end])
                held = cost
                p = end + 2
                argc -= 1
            if argc:  # the array goes on past this read
                break
            pos = p
            out.append(execute(args))
            if self.closing:
                return b"".join(out)
        # Keep what an incomplete request still needs parsed, and the state to resume. (A
        # bulk string it waits for fits: its cost was checked against max_buffer above.)
        self._argc = argc
        if argc:
            self._held = held
            self._args = args
        else:
            self._held = 0
            self._args = []
        if p < n or argc:
            self._pending = bytearray(memoryview(buf)[p:])
            self._need = need
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _execute(self, args: list[bytes]) -> bytes:
        fn = COMMANDS.get(args[0])
        if fn is not None:
            return fn(self.logic, args)
        name = args[0].upper()
        fn = COMMANDS.get(name)
        if fn is not None:
            return fn(self.logic, args)
        if name == b"QUIT":
            self.closing = True
            return OK
        return unknown_command(args)
