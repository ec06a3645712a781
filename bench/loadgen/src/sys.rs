//! The only place the load generator calls libc: epoll, non-blocking TCP sockets to
//! 127.0.0.1, the open-file limit. Everything returns `io::Result` so a failing call
//! becomes a loud benchmark failure, never a panic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Edge-triggered interest used for every connection: registered once, never modified.
pub const INTEREST: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is a new fd we own.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: INTEREST,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event that outlives the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits for events; an interrupted wait reports zero events rather than an error.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: the kernel writes at most `max` entries into `events`, which has that room.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        match check(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

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

fn loopback(last_octet: u8, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, last_octet]).to_be(),
        },
        sin_zero: [0; 8],
    }
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
    // SAFETY: `raw` was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if dial.nodelay {
        set_int_opt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if let Some(host) = dial.source {
        // Port 0 plus IP_BIND_ADDRESS_NO_PORT: the port is still chosen by `connect`,
        // unique per 4-tuple, instead of being reserved for this address alone by `bind`.
        set_int_opt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let src = loopback(host, 0);
        // SAFETY: `src` is a valid sockaddr_in and the length passed is its size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &src as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
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

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 and the length passed is its size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
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

pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    check_size(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    })
}

pub fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    // MSG_NOSIGNAL: a peer that vanished must be an error we report, not a SIGPIPE.
    check_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

pub fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    Ok(())
}

/// Raises the soft open-file limit towards `want` (capped by the hard limit) and
/// returns the soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the kernel fills in.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let target = want.min(lim.rlim_max);
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// True for the errors that mean "try again when epoll says so".
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
