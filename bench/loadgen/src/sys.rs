//! The only place the load generator calls libc: non-blocking TCP sockets to 127.0.0.1,
//! plus what it shares with the echo server (`benchsys`: epoll, recv/send, the open-file
//! limit). Everything returns `io::Result` so a failing call becomes a loud benchmark
//! failure, never a panic.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use benchsys::{bind, check, loopback, owned, set_int_opt};
pub use benchsys::{raise_nofile_limit, recv, send, Epoll};

/// Edge-triggered interest used for every connection: registered once, never modified.
pub const INTEREST: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Outcome of starting a non-blocking connect.
pub enum Connect {
    /// Connected at once (possible on loopback).
    Done(OwnedFd),
    /// EINPROGRESS: completion is reported by EPOLLOUT, then `take_error`.
    InProgress(OwnedFd),
}

/// How a client socket is set up before it connects.
#[derive(Clone, Copy)]
pub struct Dial {
    /// TCP_NODELAY, as every server under test sets it; it matters only where small
    /// writes are pipelined.
    pub nodelay: bool,
    /// Connect from 127.0.0.N instead of 127.0.0.1. Each source address has its own
    /// ephemeral port space towards the server, so a connection storm does not make every
    /// `connect` search ports still in TIME_WAIT (the accept scenario's load generator was
    /// spending a third of its time in that search).
    pub source: Option<u8>,
}

/// Opens a non-blocking TCP socket set up as `dial` says and starts connecting it to
/// 127.0.0.1:`port`, the only destination this program ever connects to.
pub fn connect_loopback(port: u16, dial: Dial) -> io::Result<Connect> {
    // SAFETY: socket takes no pointers; a non-negative return is a new fd we own.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let fd = owned(raw);
    if dial.nodelay {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if let Some(host) = dial.source {
        // Port 0 plus IP_BIND_ADDRESS_NO_PORT: the port is still chosen by `connect`,
        // unique per 4-tuple, instead of being reserved for this address alone by `bind`.
        set_int_opt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            1,
        )?;
        bind(fd.as_raw_fd(), &loopback(host, 0))?;
    }
    let addr = loopback(1, port);
    // SAFETY: `addr` is a valid sockaddr_in and the length passed is its size.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    match check(ret) {
        Ok(_) => Ok(Connect::Done(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(Connect::InProgress(fd)),
        Err(e) => Err(e),
    }
}

/// The pending socket error (SO_ERROR), e.g. the result of a non-blocking connect.
pub fn take_error(fd: &OwnedFd) -> io::Result<()> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and `len` holds the size of `value`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    })?;
    if value == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(value))
    }
}

pub fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    Ok(())
}

/// True for the errors that mean "try again when epoll says so".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
