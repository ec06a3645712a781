//! The only place the echo server calls libc: a listening socket on 127.0.0.1 and accept4,
//! plus what it shares with the load generator (`benchsys`: epoll, recv/send, the
//! open-file limit). Every call returns `io::Result`; the server decides what an error
//! means (a bad connection is closed, never a reason to exit).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use benchsys::{bind, check, loopback, owned, set_int_opt};
pub use benchsys::{raise_nofile_limit, recv, send, Epoll};

/// A non-blocking listening socket on 127.0.0.1:`port` (SO_REUSEADDR, backlog 1024, the
/// same backlog every server in the benchmark uses).
pub fn listen_loopback(port: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = owned(check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?);
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(fd.as_raw_fd(), &loopback(1, port))?;
    // SAFETY: listen takes no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(fd)
}

/// Accepts one connection, non-blocking and with TCP_NODELAY like the other servers.
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed: the peer address is not wanted.
    let fd = owned(check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?);
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    Ok(fd)
}
