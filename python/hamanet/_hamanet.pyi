"""Type stubs for the native module ``hamanet._hamanet`` (built from src/)."""

from collections.abc import Iterable
from os import PathLike
from typing import Any, Callable, Protocol, final

from typing_extensions import Buffer, disjoint_base

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_BytesLike = Buffer
_FileLike = int | _HasFileno
_Address = tuple[str, int] | tuple[str, int, int, int]
_Callback = Callable[..., Any] | None

__all__ = [
    "CALLBACK_NAMES",
    "DATAGRAM_BUDGET",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_MESSAGE",
    "MAX_MESSAGE",
    "OPTIONS",
    "READ_BUDGET",
    "UDP_OPTIONS",
    "DatagramEndpoint",
    "DatagramQueueFullError",
    "DatagramTruncatedError",
    "Delimiter",
    "EndpointClosedError",
    "FixedSize",
    "Framing",
    "FramingError",
    "LengthPrefixed",
    "LifecycleError",
    "Loop",
    "Session",
    "SessionClosedError",
    "StreamBuffer",
    "TLSClientContext",
    "TLSError",
    "TLSInfo",
    "TLSServerContext",
    "TimerHandle",
    "WriteBufferFullError",
    "__version__",
    "check_framing",
]
__version__: str
READ_BUDGET: int
DATAGRAM_BUDGET: int
CALLBACK_NAMES: tuple[str, ...]
#: ``(name, default)`` of every Server/Client option.
OPTIONS: tuple[tuple[str, Any], ...]
#: ``(name, default)`` of every open_udp/connect_udp option.
UDP_OPTIONS: tuple[tuple[str, Any], ...]
MAX_MESSAGE: int
DEFAULT_MAX_LINE: int
DEFAULT_MAX_MESSAGE: int

class SessionClosedError(ConnectionError):
    """The session is closed (or its write side is shut down) and cannot take this call."""

class LifecycleError(RuntimeError):
    """A Server or Client method was called in a state that does not allow it."""

class FramingError(ValueError):
    """A stream broke its framing, or a payload cannot be sent as one message."""

class WriteBufferFullError(BufferError):
    """A write would take the session's buffer past max_write_buffer; nothing was written."""

class DatagramQueueFullError(BufferError):
    """A datagram endpoint's send queue is full; the datagram was not queued."""

class DatagramTruncatedError(OSError):
    """A received datagram was longer than max_datagram_size and was truncated."""

    addr: _Address | None
    size: int
    data: bytes
    max_datagram_size: int

class EndpointClosedError(ConnectionError):
    """The datagram endpoint is closed and cannot send."""

class TLSError(OSError):
    """A TLS handshake or session failed, or a context could not be made from its files."""

    reason: str

_Version = str | Any  # "TLSv1.2" / "TLSv1.3", or ssl.TLSVersion.TLSv1_2 / TLSv1_3
_Path = str | PathLike[str]

@final
class TLSServerContext:
    """A server's TLS settings, for ``Server.open(port, tls=...)``."""

    def __new__(
        cls,
        certfile: _Path,
        keyfile: _Path,
        *,
        alpn_protocols: Iterable[str | bytes] | None = None,
        client_cafile: _Path | None = None,
        client_cert_required: bool = True,
        minimum_version: _Version | None = None,
        handshake_timeout: float | None = None,
        session_tickets: int | None = None,
    ) -> TLSServerContext: ...

@final
class TLSClientContext:
    """A client's TLS settings, for ``Client.connect(host, port, tls=...)``."""

    def __new__(
        cls,
        cafile: _Path | None = None,
        *,
        alpn_protocols: Iterable[str | bytes] | None = None,
        certfile: _Path | None = None,
        keyfile: _Path | None = None,
        minimum_version: _Version | None = None,
        handshake_timeout: float | None = None,
        insecure_skip_verify: bool = False,
    ) -> TLSClientContext: ...

@final
class StreamBuffer:
    """The receive buffer of hamanet.aio's streams; the separator search in Rust."""

    def __new__(cls) -> StreamBuffer: ...
    def feed(self, data: _BytesLike) -> None: ...
    def __len__(self) -> int: ...
    def read(self, n: int) -> bytes: ...
    def find(self, separator: bytes, start: int = 0) -> int: ...

@final
class TLSInfo:
    """What a session's TLS handshake settled (``session.tls``)."""

    @property
    def version(self) -> str: ...
    @property
    def cipher(self) -> str: ...
    @property
    def alpn_protocol(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...
    @property
    def peer_certificate(self) -> bytes | None: ...
    @property
    def peer_certificates(self) -> list[bytes]: ...

@disjoint_base
class Framing:
    """Base of the framers; use one of the subclasses."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> Framing: ...

@final
class Delimiter(Framing):
    """Messages end with a delimiter."""

    def __new__(
        cls, delimiter: _BytesLike = ..., *, max_length: int = ..., keep_delimiter: bool = ...
    ) -> Delimiter: ...
    @property
    def delimiter(self) -> bytes: ...
    @property
    def max_length(self) -> int: ...
    @property
    def keep_delimiter(self) -> bool: ...

@final
class LengthPrefixed(Framing):
    """Each message starts with its length."""

    def __new__(
        cls,
        header_size: int = ...,
        *,
        byteorder: str = ...,
        includes_header: bool = ...,
        max_length: int | None = None,
    ) -> LengthPrefixed: ...
    @property
    def header_size(self) -> int: ...
    @property
    def byteorder(self) -> str: ...
    @property
    def includes_header(self) -> bool: ...
    @property
    def max_length(self) -> int: ...

@final
class FixedSize(Framing):
    """Every message is exactly ``size`` bytes."""

    def __new__(cls, size: int) -> FixedSize: ...
    @property
    def size(self) -> int: ...

def check_framing(framing: object, name: str = "framing") -> Framing | None: ...

@final
class TimerHandle:
    """A scheduled callback."""

    def cancel(self) -> None: ...
    def pending(self) -> bool: ...
    def when(self) -> float: ...

@final
class Session:
    """One TCP connection; handlers receive it, users never construct it."""

    def write(self, data: _BytesLike) -> None: ...
    def writelines(self, chunks: Iterable[_BytesLike]) -> None: ...
    def write_frame(self, payload: _BytesLike) -> None: ...
    def sendfile(self, file: _FileLike, offset: int = 0, count: int | None = None) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def shutdown_write(self) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def peer_addr(self) -> _Address: ...
    @property
    def local_addr(self) -> _Address: ...
    @property
    def write_buffer_size(self) -> int: ...
    @property
    def proxy_addr(self) -> _Address | None: ...
    @property
    def proxy_tlvs(self) -> dict[int, bytes] | None: ...
    @property
    def tls(self) -> TLSInfo | None: ...
    @property
    def closing(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def _hold_reading(self) -> None: ...
    def _release_reading(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    @property
    def reading_paused(self) -> bool: ...
    @property
    def writing_paused(self) -> bool: ...
    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None, max: int | None = None
    ) -> None: ...
    def get_write_buffer_limits(self) -> tuple[int, int, int]: ...
    def set_idle_timeout(self, seconds: float | None) -> None: ...
    def __getattr__(self, name: str) -> Any: ...
    def __setattr__(self, name: str, value: Any) -> None: ...

@final
class DatagramEndpoint:
    """One UDP socket; open_udp/connect_udp return it, datagram callbacks receive it."""

    def sendto(self, data: _BytesLike, addr: _Address | None) -> None: ...
    def send(self, data: _BytesLike) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    @property
    def reading_paused(self) -> bool: ...
    @property
    def id(self) -> int: ...
    @property
    def local_addr(self) -> _Address: ...
    @property
    def peer_addr(self) -> _Address | None: ...
    @property
    def max_datagram_size(self) -> int: ...
    @property
    def send_queue_limits(self) -> tuple[int, int]: ...
    @property
    def send_queue_size(self) -> int: ...
    @property
    def send_queue_bytes(self) -> int: ...
    @property
    def closing(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def __getattr__(self, name: str) -> Any: ...
    def __setattr__(self, name: str, value: Any) -> None: ...

@final
class Loop:
    """A reactor thread and its handler's callbacks (used by Server and Client)."""

    def __new__(cls, owner: str = "Loop", **options: Any) -> Loop: ...
    def set_callbacks(self, callbacks: tuple[_Callback, ...]) -> None: ...
    def listen(
        self,
        host: str,
        port: int,
        backlog: int,
        reuse_port: bool,
        dual_stack: bool,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> _Address: ...
    def listen_unix(
        self,
        path: str | PathLike[str],
        backlog: int,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> str: ...
    def stop_accepting(self) -> None: ...
    def listen_socket(
        self,
        sock: int | _HasFileno,
        tls: TLSServerContext | None = None,
        proxy_protocol: bool = False,
        proxy_timeout: float | None = None,
    ) -> _Address | str: ...
    def open_udp(
        self,
        host: str,
        port: int,
        callbacks: tuple[_Callback, ...] | None = None,
        options: dict[str, Any] | None = None,
    ) -> DatagramEndpoint: ...
    def connect_udp(
        self,
        host: str,
        port: int,
        local_addr: tuple[str, int] | None = None,
        callbacks: tuple[_Callback, ...] | None = None,
        options: dict[str, Any] | None = None,
    ) -> DatagramEndpoint: ...
    def connect_unix(
        self,
        path: str | PathLike[str],
        timeout: float,
        callbacks: tuple[_Callback, ...] | None = None,
    ) -> Session: ...
    def connect_nowait(
        self,
        host: str,
        port: int,
        timeout: float,
        callbacks: tuple[_Callback, ...] | None = None,
        tls: TLSClientContext | None = None,
        server_hostname: str | None = None,
    ) -> Session: ...
    def call_at(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        now: float,
        session: Session | None = None,
    ) -> TimerHandle: ...
    def call_later(
        self,
        delay: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        now: float,
        session: Session | None = None,
    ) -> TimerHandle: ...
    def call_soon(
        self,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        now: float,
        session: Session | None = None,
    ) -> TimerHandle: ...
    def run_in_worker(
        self, function: Callable[..., Any], args: tuple[Any, ...], future: Any
    ) -> None: ...
    def busy_callback(self) -> tuple[str, int, float] | None: ...
    def forget_after_fork(self) -> None: ...
    @property
    def timers_pending(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def start(self) -> None: ...
    def start_driven(self) -> int: ...
    def drive(self) -> float | None: ...
    def finish_driven(self) -> None: ...
    def report_handler_error(
        self, callback: str, session: int | None, exc: BaseException
    ) -> None: ...
    def stop(self, timeout: float) -> float: ...
    def wait(self, timeout: float) -> bool: ...
    def wait_idle(self, timeout: float) -> bool: ...
    def connect(
        self,
        host: str,
        port: int,
        timeout: float,
        callbacks: tuple[_Callback, ...] | None = None,
        tls: TLSClientContext | None = None,
        server_hostname: str | None = None,
    ) -> Session: ...
    def on_handler_thread(self) -> bool: ...
    @property
    def session_count(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def finished(self) -> bool: ...
