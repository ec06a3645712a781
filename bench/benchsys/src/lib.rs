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

/// A non-blocking UDP socket bound to 127.0.0.1:`port` (0: the kernel picks one) and, with
/// `peer`, connected to 127.0.0.1:`peer` (then only that peer's datagrams arrive, and an
/// ICMP port unreachable surfaces as ECONNREFUSED on the next call).
pub fn udp_loopback(port: u16, peer: Option<u16>) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = owned(check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?);
    bind(fd.as_raw_fd(), &loopback(1, port))?;
    if let Some(peer) = peer {
        let addr = loopback(1, peer);
        // SAFETY: `addr` is a valid sockaddr_in and the length passed is its size.
        check(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    Ok(fd)
}

/// Room for a batch of datagrams moved by one `recvmmsg` or `sendmmsg`: `count` slots of
/// `slot` bytes each, with each slot's length and peer address. The kernel's pointers are
/// built afresh for every call, so a `Datagrams` may move freely between calls.
pub struct Datagrams {
    bufs: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Datagrams {
    pub fn new(count: usize, slot: usize) -> Self {
        Datagrams {
            bufs: vec![0; count * slot],
            slot,
            lens: vec![0; count],
            addrs: vec![loopback(1, 0); count],
            iovs: Vec::with_capacity(count),
            // SAFETY: an all-zero mmsghdr is valid (no buffers, no name, no control data).
            hdrs: vec![unsafe { std::mem::zeroed() }; count],
        }
    }

    pub fn count(&self) -> usize {
        self.lens.len()
    }

    /// Datagram `i` as received (or as filled in for sending).
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + self.lens[i]]
    }

    /// The whole of slot `i`, to fill in a datagram of `len` bytes (`set_len`).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.slot..(i + 1) * self.slot]
    }

    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(self.slot);
    }

    /// Points the headers of slots `from..to` at their buffers (each `lens[i]` long, or the
    /// whole slot with `whole`) and, with `named`, at their addresses.
    fn prepare(&mut self, from: usize, to: usize, whole: bool, named: bool) {
        self.iovs.clear();
        for i in from..to {
            let len = if whole { self.slot } else { self.lens[i] };
            self.iovs.push(libc::iovec {
                // SAFETY: `i * slot` is within `bufs` (i < count, bufs is count * slot).
                iov_base: unsafe { self.bufs.as_mut_ptr().add(i * self.slot) } as *mut _,
                iov_len: len,
            });
        }
        for (k, i) in (from..to).enumerate() {
            let h = &mut self.hdrs[k];
            h.msg_len = 0;
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            if named {
                h.msg_hdr.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut _;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as _;
            } else {
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
            }
        }
    }

    /// One `recvmmsg` into every slot (with the senders' addresses when `named`): the
    /// number of datagrams received; a datagram longer than a slot is cut to it, its
    /// length then the slot's. WouldBlock when none is waiting.
    pub fn recv(&mut self, fd: &OwnedFd, named: bool) -> io::Result<usize> {
        let count = self.count();
        self.prepare(0, count, true, named);
        // SAFETY: every header points at a live iovec of a live slot of `bufs` and, when
        // named, at a live sockaddr_in of its size; none of them moves during the call.
        let n = check(unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })? as usize;
        for i in 0..n {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.slot);
        }
        Ok(n)
    }

    /// One `sendmmsg` of slots `from..to` (to their addresses when `named`, as `recv` left
    /// them; else on a connected socket): the number the kernel took, from `from` on.
    pub fn send(&mut self, fd: &OwnedFd, from: usize, to: usize, named: bool) -> io::Result<usize> {
        if from >= to {
            return Ok(0);
        }
        self.prepare(from, to, false, named);
        // SAFETY: as in `recv`; the kernel only reads the buffers and addresses.
        let n = check(unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                (to - from) as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        })?;
        Ok(n as usize)
    }
}
