//! Socket syscalls and options: listening, accepting, connecting, sending and receiving
//! on non-blocking, close-on-exec TCP and Unix stream sockets.
//!
//! Every socket this crate creates is `SOCK_NONBLOCK | SOCK_CLOEXEC` from birth (no window
//! in which a forked child could inherit it), and every send passes `MSG_NOSIGNAL` so a peer
//! that has gone away yields `EPIPE` instead of killing the process with `SIGPIPE`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType, SockaddrLike,
    SockaddrStorage, UnixAddr,
};

use super::address::{to_address, Address};

/// Socket options applied to listeners and to every session socket.
#[derive(Clone, Debug)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: send small writes at once instead of waiting (Nagle). On by default
    /// because the reactor already coalesces each session's writes into one send per turn.
    pub nodelay: bool,
    /// `SO_KEEPALIVE`: let the kernel probe idle connections.
    pub keepalive: bool,
    /// `SO_RCVBUF` in bytes, or the kernel's default.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes, or the kernel's default.
    pub send_buffer: Option<usize>,
    /// `SO_REUSEPORT`: let several listeners (processes) share one port.
    pub reuse_port: bool,
}

impl Default for SocketOptions {
    fn default() -> SocketOptions {
        SocketOptions {
            nodelay: true,
            keepalive: false,
            recv_buffer: None,
            send_buffer: None,
            reuse_port: false,
        }
    }
}

pub(super) fn family_of(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn new_stream_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    Ok(socket::socket(family, SockType::Stream, flags, None)?)
}

pub(super) fn buffer_size(bytes: usize) -> io::Result<usize> {
    // The kernel doubles the value and caps it at net.core.{r,w}mem_max; reject only what
    // cannot be passed as a C int at all.
    if bytes == 0 || bytes > i32::MAX as usize / 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "buffer size out of range",
        ));
    }
    Ok(bytes)
}

/// Applies the options that matter before `listen`/`connect`: buffer sizes must be set
/// before the handshake for the window scale to match them.
fn apply_buffer_sizes(fd: BorrowedFd<'_>, options: &SocketOptions) -> io::Result<()> {
    if let Some(bytes) = options.recv_buffer {
        socket::setsockopt(&fd, sockopt::RcvBuf, &buffer_size(bytes)?)?;
    }
    if let Some(bytes) = options.send_buffer {
        socket::setsockopt(&fd, sockopt::SndBuf, &buffer_size(bytes)?)?;
    }
    Ok(())
}

/// Applies per-connection options to a freshly accepted or connected socket.
pub fn configure_stream(fd: BorrowedFd<'_>, options: &SocketOptions) -> io::Result<()> {
    if options.nodelay {
        socket::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    }
    if options.keepalive {
        socket::setsockopt(&fd, sockopt::KeepAlive, &true)?;
    }
    Ok(())
}

/// Binds and listens. `SO_REUSEADDR` is always set so a restarted server can bind while
/// old connections sit in TIME_WAIT; it does not let two live listeners share a port
/// (that needs `reuse_port`), so a busy port still fails with `EADDRINUSE`.
/// With `dual_stack`, an IPv6 listener also accepts IPv4 (as mapped addresses); without
/// it an IPv6 listener is IPv6 only, whatever the system default says.
pub fn listen(
    addr: SocketAddr,
    backlog: i32,
    dual_stack: bool,
    options: &SocketOptions,
) -> io::Result<OwnedFd> {
    let fd = new_stream_socket(family_of(&addr))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if options.reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if let SocketAddr::V6(_) = addr {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!dual_stack)?;
    }
    apply_buffer_sizes(fd.as_fd(), options)?;
    // Linux copies TCP_NODELAY and SO_KEEPALIVE from the listener to each accepted
    // socket, which saves two setsockopt calls per accept.
    configure_stream(fd.as_fd(), options)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, backlog_of(backlog)?)?;
    Ok(fd)
}

/// Makes `copy`, our own descriptor of a listening stream socket someone else bound (a
/// supervisor that holds it across its children's lives, say), ready to serve:
/// non-blocking, with `options`' per-connection settings applied (the kernel copies them
/// to each accepted socket). `O_NONBLOCK` belongs to the open file, so the owner's copy
/// turns non-blocking too. Anything but a listening TCP or Unix stream socket is refused
/// with `InvalidInput`, naming what it is instead.
pub fn adopt_listener(copy: OwnedFd, options: &SocketOptions) -> io::Result<OwnedFd> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    match socket::getsockopt(&copy, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) => return Err(invalid("the socket is not a stream (SOCK_STREAM) socket")),
        Err(Errno::ENOTSOCK) => return Err(invalid("the file descriptor is not a socket")),
        Err(other) => return Err(other.into()),
    }
    if !socket::getsockopt(&copy, sockopt::AcceptConn)? {
        return Err(invalid(
            "the socket is not listening: call listen() on it first",
        ));
    }
    let flags = nix::fcntl::fcntl(&copy, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&copy, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    match socket::getsockname::<SockaddrStorage>(copy.as_raw_fd())?.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            apply_buffer_sizes(copy.as_fd(), options)?;
            configure_stream(copy.as_fd(), options)?;
        }
        Some(AddressFamily::Unix) => {}
        _ => return Err(invalid("the socket is neither TCP nor a Unix socket")),
    }
    Ok(copy)
}

fn unix_addr(path: &Path) -> io::Result<UnixAddr> {
    UnixAddr::new(path).map_err(|errno| match errno {
        Errno::ENAMETOOLONG => io::Error::new(
            io::ErrorKind::InvalidInput,
            "Unix socket path is too long (at most 107 bytes)",
        ),
        other => other.into(),
    })
}

/// Binds and listens on a Unix domain stream socket. A socket file left behind by a
/// process that is gone (connecting to it is refused) is replaced; one that a live
/// listener owns fails with `EADDRINUSE`.
pub fn listen_unix(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let addr = unix_addr(path)?;
    let fd = new_stream_socket(AddressFamily::Unix)?;
    match socket::bind(fd.as_raw_fd(), &addr) {
        Err(Errno::EADDRINUSE) if !is_socket_file(path)? => {
            // A regular file, a directory or a symlink: never ours to replace.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; open_unix() replaces only a socket file \
                     left by a dead server: choose another path or remove it yourself",
                    path.display()
                ),
            ));
        }
        Err(Errno::EADDRINUSE) if is_stale_unix_socket(&addr) => {
            std::fs::remove_file(path)?;
            socket::bind(fd.as_raw_fd(), &addr)?;
        }
        other => other?,
    }
    socket::listen(&fd, backlog_of(backlog)?)?;
    Ok(fd)
}

/// The kernel caps a backlog at net.core.somaxconn anyway; nix refuses a larger one, so
/// cap it here rather than fail after binding.
fn backlog_of(backlog: i32) -> io::Result<Backlog> {
    Backlog::new(backlog.clamp(1, libc::SOMAXCONN)).map_err(io::Error::from)
}

/// Whether `path` itself (not what a symlink points to) is a socket file. Connecting to
/// anything else fails with `ECONNREFUSED` too, so the stale-socket probe alone cannot tell
/// a dead server's socket from a user's file.
fn is_socket_file(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    Ok(std::fs::symlink_metadata(path)?.file_type().is_socket())
}

/// Whether nothing listens on the socket file any more. The probe does not block: a live
/// listener with a full backlog answers EAGAIN at once, and counts as live.
fn is_stale_unix_socket(addr: &UnixAddr) -> bool {
    let Ok(probe) = new_stream_socket(AddressFamily::Unix) else {
        return false;
    };
    matches!(
        socket::connect(probe.as_raw_fd(), addr),
        Err(Errno::ECONNREFUSED)
    )
}

/// Accepts one connection with its peer's address, or `None` when the queue is empty.
///
/// The address comes from `accept4` itself, which saves the `getpeername` call per
/// connection; it is `None` only if the kernel gave none that could be read.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, Option<Address>)>> {
    loop {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` is writable for `len` bytes, and `len` is a valid in/out length.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        let result = if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        } else {
            Err(Errno::last())
        };
        match result {
            Ok(fd) => {
                // SAFETY: the kernel filled `len` bytes of `storage` with a socket address.
                let peer = unsafe {
                    SockaddrStorage::from_raw(
                        (&storage as *const libc::sockaddr_storage).cast(),
                        Some(len),
                    )
                };
                return Ok(Some((fd, peer.and_then(|peer| to_address(peer).ok()))));
            }
            Err(Errno::EAGAIN) => return Ok(None),
            // Errors of that one connection (reset while queued, or a network error
            // accept4(2) passes on): the listener is fine, try the next connection.
            Err(
                Errno::ECONNABORTED
                | Errno::EINTR
                | Errno::EPROTO
                | Errno::ENETDOWN
                | Errno::ENOPROTOOPT
                | Errno::EHOSTDOWN
                | Errno::ENONET
                | Errno::EHOSTUNREACH
                | Errno::EOPNOTSUPP
                | Errno::ENETUNREACH
                | Errno::EPERM,
            ) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// How many connections wait in a TCP listener's accept queue, from `TCP_INFO` (which
/// reports it for listeners in `tcpi_unacked`); `None` for a Unix listener or on error.
///
/// Knowing the count lets the reactor accept exactly that many. The alternative, accepting
/// until `EAGAIN`, costs a whole failed `accept4` per wakeup, and the kernel allocates an
/// inode and a file for it before it finds the queue empty: more than this call.
pub fn queued_connections(listener: BorrowedFd<'_>) -> Option<usize> {
    // SAFETY: all-zero bytes are a valid `tcp_info`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    /// `TCP_LISTEN` in the kernel's `include/net/tcp_states.h` (not in the libc crate).
    const TCP_LISTEN: u8 = 10;
    let filled = std::mem::offset_of!(libc::tcp_info, tcpi_unacked) + 4;
    (rc == 0 && len as usize >= filled && info.tcpi_state == TCP_LISTEN)
        .then_some(info.tcpi_unacked as usize)
}

/// Starts a non-blocking connect. Returns the socket, which is connected once it reports
/// writable and [`take_error`] returns `None`.
pub fn connect_start(addr: &Address, options: &SocketOptions) -> io::Result<OwnedFd> {
    let (fd, result) = match addr {
        Address::Inet(inet) => {
            let fd = new_stream_socket(family_of(inet))?;
            apply_buffer_sizes(fd.as_fd(), options)?;
            configure_stream(fd.as_fd(), options)?;
            let result = socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*inet));
            (fd, result)
        }
        Address::Unix(path) => {
            let unix = unix_addr(path)?;
            let fd = new_stream_socket(AddressFamily::Unix)?;
            let result = socket::connect(fd.as_raw_fd(), &unix);
            (fd, result)
        }
    };
    match result {
        // A Unix socket whose listener's backlog is full says EAGAIN at once instead of
        // queueing; the caller retries until its deadline.
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(err) => Err(err.into()),
    }
}

/// Waits up to `timeout` for a connect started by [`connect_start`] to finish.
/// `Ok(true)`: finished (check [`take_error`]); `Ok(false)`: still in progress.
pub fn connect_wait(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    wait_ready(fd, true, timeout)
}

/// Waits up to `timeout` for `fd` to be writable (`writable`) or readable. `Ok(true)`:
/// ready (or failed: the next call says how); `Ok(false)`: not yet.
pub fn wait_ready(fd: BorrowedFd<'_>, writable: bool, timeout: Duration) -> io::Result<bool> {
    let wanted = if writable {
        PollFlags::POLLOUT
    } else {
        PollFlags::POLLIN
    };
    let mut fds = [PollFd::new(fd, wanted)];
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    match nix::poll::poll(
        &mut fds,
        PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(0) | Err(Errno::EINTR) => Ok(false),
        Ok(_) => Ok(true),
        Err(err) => Err(err.into()),
    }
}

/// The socket's pending error (`SO_ERROR`), which also clears it.
pub fn take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let code = socket::getsockopt(&fd, sockopt::SocketError)?;
    Ok((code != 0).then(|| io::Error::from_raw_os_error(code)))
}

/// The result of a `syscall(2)` that returns a byte count or -1 with `errno`.
fn byte_count(ret: libc::c_long) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

// NOTE: recv and send go through syscall(2) rather than glibc's recv/send: those are
// thread cancellation points whose wrappers switch the cancellation state on and off
// around every call, about 1% of the server's time at a million calls a second, and
// nothing in this crate uses pthread cancellation.

/// Receives into `buf`; `Ok(0)` is EOF. `EAGAIN` comes back as `WouldBlock`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its length; null address arguments are allowed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
                0,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
        match byte_count(ret) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Copies what has arrived into `buf` without taking it off the socket (`MSG_PEEK`);
/// `Ok(0)` is EOF with nothing before it. `EAGAIN` comes back as `WouldBlock`.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket::recv(fd.as_raw_fd(), buf, MsgFlags::MSG_PEEK) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Sends from `buf` without ever raising `SIGPIPE`. `EAGAIN` comes back as `WouldBlock`.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: a `BorrowedFd` is open for its lifetime, which spans the call.
    unsafe { send_raw(fd.as_raw_fd(), buf) }
}

/// Sends the slices in order, as one `sendmsg`, without ever raising `SIGPIPE`.
/// `EAGAIN` comes back as `WouldBlock`.
pub fn send_vectored(fd: BorrowedFd<'_>, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match nix::sys::socket::sendmsg::<()>(
            fd.as_raw_fd(),
            slices,
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// [`send`] on a raw fd number, for `SessionCore::write_all`, which holds no `OwnedFd`.
///
/// # Safety
/// `fd` must be an open socket owned by the caller's session for the whole call: a closed
/// number may meanwhile name another file, whose reader would get these bytes.
pub unsafe fn send_raw(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the caller vouches for `fd`; `buf` is readable for its length; a null
        // address means "the connected peer".
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                buf.as_ptr(),
                buf.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::socklen_t,
            )
        };
        match byte_count(ret) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Half-closes: sends FIN after everything queued in the kernel.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    match socket::shutdown(fd.as_raw_fd(), Shutdown::Write) {
        // The peer is already gone; there is nothing left to half-close.
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Bytes received and not yet read (`FIONREAD`).
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one `c_int` through the pointer, which is valid for it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut count) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(count.max(0) as usize)
    }
}

/// Makes the coming `close` send RST and drop unsent data (abortive close).
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    Ok(socket::setsockopt(&fd, sockopt::Linger, &linger)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::address::{local_addr, peer_addr};

    fn nodelay(fd: BorrowedFd<'_>) -> io::Result<bool> {
        Ok(socket::getsockopt(&fd, sockopt::TcpNoDelay)?)
    }

    /// The next connection `listener` accepts, waiting a moment for its handshake.
    fn accept_soon(listener: BorrowedFd<'_>) -> (OwnedFd, Option<Address>) {
        for _ in 0..500 {
            if let Some(accepted) = accept(listener).expect("accept") {
                return accepted;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no connection to accept within a second");
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    fn inet(addr: Address) -> SocketAddr {
        match addr {
            Address::Inet(addr) => addr,
            Address::Unix(path) => panic!("expected an inet address, got {path:?}"),
        }
    }

    #[test]
    fn listen_accept_connect_send_recv() {
        let options = SocketOptions::default();
        let listener = listen(loopback(), 16, false, &options).expect("listen");
        let addr = local_addr(listener.as_fd()).expect("addr");
        assert!(
            accept(listener.as_fd()).expect("accept").is_none(),
            "empty queue"
        );

        let client = connect_start(&addr, &options).expect("connect");
        assert!(connect_wait(client.as_fd(), Duration::from_secs(5)).expect("wait"));
        assert!(take_error(client.as_fd()).expect("so_error").is_none());

        let (server, peer) = accept_soon(listener.as_fd());
        assert!(
            nodelay(server.as_fd()).expect("getsockopt"),
            "nodelay is inherited"
        );
        let client_addr = local_addr(client.as_fd()).expect("local");
        assert_eq!(peer, Some(client_addr.clone()), "accept4 gives the peer");
        assert_eq!(peer_addr(server.as_fd()).expect("peer"), client_addr);

        assert_eq!(send(client.as_fd(), b"ping").expect("send"), 4);
        let mut buf = [0u8; 16];
        let mut got = 0;
        for _ in 0..500 {
            match recv(server.as_fd(), &mut buf) {
                Ok(n) => {
                    got = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert_eq!(&buf[..got], b"ping");
    }

    #[test]
    fn queued_connections_counts_the_accept_queue() {
        let options = SocketOptions::default();
        let listener = listen(loopback(), 16, false, &options).expect("listen");
        let addr = local_addr(listener.as_fd()).expect("addr");
        assert_eq!(queued_connections(listener.as_fd()), Some(0));
        let clients: Vec<OwnedFd> = (0..3)
            .map(|_| connect_start(&addr, &options).expect("connect"))
            .collect();
        for client in &clients {
            assert!(connect_wait(client.as_fd(), Duration::from_secs(5)).expect("wait"));
        }
        // A loopback handshake completes within the client's connect; allow a moment.
        let mut queued = None;
        for _ in 0..500 {
            queued = queued_connections(listener.as_fd());
            if queued == Some(3) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(queued, Some(3));
        assert!(accept(listener.as_fd()).expect("accept").is_some());
        assert_eq!(queued_connections(listener.as_fd()), Some(2));

        let dir = std::env::temp_dir().join(format!("hamanet-queued-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let unix = listen_unix(&dir.join("s"), 16).expect("listen_unix");
        assert_eq!(
            queued_connections(unix.as_fd()),
            None,
            "Unix listeners cannot tell"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn keepalive_set_on_the_listener_reaches_accepted_sockets() {
        let options = SocketOptions {
            keepalive: true,
            ..SocketOptions::default()
        };
        let listener = listen(loopback(), 16, false, &options).expect("listen");
        let addr = local_addr(listener.as_fd()).expect("addr");
        let client = connect_start(&addr, &SocketOptions::default()).expect("connect");
        assert!(connect_wait(client.as_fd(), Duration::from_secs(5)).expect("wait"));
        let (accepted, _) = accept_soon(listener.as_fd());
        assert!(socket::getsockopt(&accepted, sockopt::KeepAlive).expect("getsockopt"));
    }

    #[test]
    fn busy_port_is_addr_in_use() {
        let options = SocketOptions::default();
        let first = listen(loopback(), 16, false, &options).expect("listen");
        let addr = inet(local_addr(first.as_fd()).expect("addr"));
        let err = listen(addr, 16, false, &options).expect_err("second listener");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    }

    #[test]
    fn refused_connect_reports_econnrefused() {
        let options = SocketOptions::default();
        // Bind a port, then close it: nothing listens there any more.
        let addr = {
            let listener = listen(loopback(), 1, false, &options).expect("listen");
            local_addr(listener.as_fd()).expect("addr")
        };
        let fd = connect_start(&addr, &options).expect("connect start");
        assert!(connect_wait(fd.as_fd(), Duration::from_secs(5)).expect("wait"));
        let err = take_error(fd.as_fd()).expect("so_error").expect("an error");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }

    #[test]
    fn unix_listener_replaces_a_stale_file_but_not_a_live_one() {
        let dir = std::env::temp_dir().join(format!("hamanet-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        let live = listen_unix(&path, 8).expect("listen");
        let err = listen_unix(&path, 8).expect_err("a live listener owns the path");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        drop(live); // the file stays behind, stale
        let again = listen_unix(&path, 8).expect("a stale socket file is replaced");
        assert_eq!(
            local_addr(again.as_fd()).expect("addr"),
            Address::Unix(path.clone())
        );
        let long = dir.join("x".repeat(200));
        let err = listen_unix(&long, 8).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
