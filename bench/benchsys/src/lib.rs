//! The libc calls both benchmark programs make (the load generator and the plain Rust
//! echo server): epoll, recv/send, loopback addresses and bind, socket options, the
//! open-file limit. Every call returns `io::Result`; each program decides what an error means.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A negative return is the errno of the last call.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `check` for calls that return a byte count.
pub fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Takes ownership of an fd the kernel just returned.
pub fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass only fds freshly returned by the kernel that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets an integer socket option.
pub fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 and the length passed is its size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The IPv4 address 127.0.0.`last_octet`:`port`.
pub fn loopback(last_octet: u8, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, last_octet]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Binds `fd` to `addr`.
pub fn bind(fd: RawFd, addr: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_in and the length passed is its size.
    check(unsafe {
        libc::bind(
            fd,
            addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A close-on-exec epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = owned(check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?);
        Ok(Epoll { fd })
    }

    /// Registers `fd` for `events`, reported with `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event that outlives the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits for events (`timeout_ms` -1: forever); an interrupted wait reports zero.
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

/// Receives into `buf`; `Ok(0)` is EOF.
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

/// Sends from `buf`. MSG_NOSIGNAL: a vanished peer is an error, not a SIGPIPE.
pub fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    check_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Linux's limit on buffers per `sendmsg` (IOV_MAX, which the libc crate does not name).
const IOV_MAX: usize = 1024;

/// Sends `bufs` in order with one `sendmsg` (MSG_NOSIGNAL, like `send`): TLS hands over
/// its queued records as several buffers, and one syscall for all of them keeps the TLS
/// runs from paying a syscall per 16 KiB record.
pub fn sendv(fd: &OwnedFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (a documented guarantee); the kernel
    // only reads through these pointers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
    // SAFETY: `msg` points at `bufs`, which outlives the call; the kernel reads at most
    // the lengths each slice states.
    check_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
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

/// A socket as rustls writes its records to it: all queued records in one `sendmsg`.
pub struct RecordWriter<'a>(pub &'a OwnedFd);

impl io::Write for RecordWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sendv(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
