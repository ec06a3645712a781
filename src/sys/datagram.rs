//! Datagram (UDP) sockets: binding and connecting them, and moving many datagrams per
//! syscall with `recvmmsg(2)` and `sendmmsg(2)`.
//!
//! As with stream sockets, every socket is `SOCK_NONBLOCK | SOCK_CLOEXEC` from birth. The
//! batch calls build their headers on the stack (at most [`BATCH`] a call), pointing into
//! buffers the caller owns, so nothing is allocated per call; and, as `net::recv` does,
//! they go through `syscall(2)` rather than glibc's cancellation-point wrappers.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, SockFlag, SockType, SockaddrLike, SockaddrStorage};

use super::address::{to_address, Address};
use super::net::{buffer_size, family_of};

/// The largest UDP payload over IPv4: 65,535 bytes less the IP and UDP headers.
pub const MAX_PAYLOAD_V4: usize = 65_507;
/// The largest UDP payload over IPv6 without jumbograms: 65,535 less the UDP header.
pub const MAX_PAYLOAD_V6: usize = 65_527;
/// Most datagrams one `recvmmsg` or `sendmmsg` call moves (its headers live on the stack).
pub const BATCH: usize = 64;

/// How a datagram socket is made.
#[derive(Clone, Debug, Default)]
pub struct DatagramOptions {
    /// `SO_RCVBUF` in bytes, or the kernel's default. Datagrams that arrive while it is
    /// full are dropped by the kernel: it bounds what a burst may bring.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes, or the kernel's default.
    pub send_buffer: Option<usize>,
    /// `SO_REUSEPORT`: several sockets (processes) share the port, the kernel spreads
    /// the datagrams over them by address.
    pub reuse_port: bool,
    /// For an IPv6 socket: take IPv4 datagrams too (as mapped addresses).
    pub dual_stack: bool,
    /// `SO_BROADCAST`: may send to broadcast addresses.
    pub broadcast: bool,
}

/// The largest payload a datagram to (or from) `addr`'s family can carry.
pub fn max_payload(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => MAX_PAYLOAD_V4,
        SocketAddr::V6(_) => MAX_PAYLOAD_V6,
    }
}

/// A UDP socket bound to `addr`.
///
/// Unlike a listener it does not set `SO_REUSEADDR`: on a UDP socket that would let a
/// second socket bind the same port and take its datagrams, so a port in use fails with
/// `EADDRINUSE` unless both sockets ask for `reuse_port`. An IPv6 socket is IPv6 only
/// unless `dual_stack`, whatever the system default says.
pub fn bind(addr: SocketAddr, options: &DatagramOptions) -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family_of(&addr), SockType::Datagram, flags, None)?;
    if options.reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if let SocketAddr::V6(_) = addr {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!options.dual_stack)?;
    }
    if options.broadcast {
        socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    }
    if let Some(bytes) = options.recv_buffer {
        socket::setsockopt(&fd, sockopt::RcvBuf, &buffer_size(bytes)?)?;
    }
    if let Some(bytes) = options.send_buffer {
        socket::setsockopt(&fd, sockopt::SndBuf, &buffer_size(bytes)?)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

/// Fixes the peer of a UDP socket. Nothing is sent (it returns at once); from then on only
/// the peer's datagrams are received, and an ICMP error about what was sent to it comes
/// back as the error of a later call (`ECONNREFUSED` for a port nobody listens on).
pub fn connect(fd: BorrowedFd<'_>, peer: SocketAddr) -> io::Result<()> {
    Ok(socket::connect(
        fd.as_raw_fd(),
        &SockaddrStorage::from(peer),
    )?)
}

/// The IP address and port of a socket address, if it is one.
fn inet(addr: Address) -> Option<SocketAddr> {
    match addr {
        Address::Inet(inet) => Some(inet),
        Address::Unix(_) => None,
    }
}

/// One datagram [`recv_batch`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its bytes in its slot: all of it, or the slot's size if it was truncated.
    pub len: usize,
    /// Its size as sent (more than `len` when it was truncated).
    pub size: usize,
    /// The kernel cut it to the slot's size (`MSG_TRUNC`); the rest is lost.
    pub truncated: bool,
    /// Who sent it.
    pub from: Option<SocketAddr>,
}

/// The result of a `syscall(2)` that returns a count or -1 with `errno`.
fn count(ret: libc::c_long) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// Receives up to `buf.len() / slot` datagrams (at most [`BATCH`]) in one `recvmmsg`, the
/// i-th into `buf[i * slot..][..slot]`, and appends what each is to `out`. Returns how
/// many arrived; `EAGAIN` comes back as `WouldBlock`. A datagram longer than `slot` is
/// truncated by the kernel, which says so, and says how long it was (`MSG_TRUNC`).
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    slot: usize,
    out: &mut Vec<Received>,
) -> io::Result<usize> {
    let wanted = buf.len().checked_div(slot).unwrap_or(0).min(BATCH);
    if wanted == 0 {
        return Ok(0);
    }
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    for (iovec, chunk) in iovecs.iter_mut().zip(buf.chunks_exact_mut(slot)) {
        iovec.iov_base = chunk.as_mut_ptr().cast();
        iovec.iov_len = slot;
    }
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
    // SAFETY: all-zero bytes are a valid `mmsghdr` (null pointers, zero lengths).
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let (iovec_base, name_base) = (iovecs.as_mut_ptr(), names.as_mut_ptr());
    for (i, header) in headers.iter_mut().enumerate().take(wanted) {
        // SAFETY: `i < BATCH`: both pointers stay inside their arrays.
        let (iovec, name) = unsafe { (iovec_base.add(i), name_base.add(i)) };
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = name.cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    }
    let received = loop {
        // SAFETY: the first `wanted` headers point at iovecs (each at `slot` writable
        // bytes of `buf`) and at address storage, all of which outlive the call; a null
        // timeout is allowed. MSG_TRUNC makes `msg_len` the datagram's real size.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_recvmmsg,
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                wanted as libc::c_uint,
                libc::MSG_TRUNC,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        match count(ret) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    for (header, name) in headers.iter().zip(&names).take(received) {
        let size = header.msg_len as usize;
        let from = {
            let ptr: *const libc::sockaddr = name.as_ptr().cast();
            // SAFETY: the kernel wrote `msg_namelen` bytes of the sender's address into
            // this storage; `from_raw` reads no more than that (and checks the length).
            let raw = unsafe { SockaddrStorage::from_raw(ptr, Some(header.msg_hdr.msg_namelen)) };
            raw.and_then(|raw| to_address(raw).ok()).and_then(inet)
        };
        out.push(Received {
            len: size.min(slot),
            size,
            truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from,
        });
    }
    Ok(received)
}

/// Sends the first [`BATCH`] (at most) of `datagrams`, each its bytes and its destination
/// (`None`: the connected peer), in one `sendmmsg`. Returns how many the kernel took, at
/// least one; an error is the first datagram's (the kernel stops at a failing datagram and
/// reports what went before). `EAGAIN` comes back as `WouldBlock`. Never raises `SIGPIPE`.
pub fn send_batch<'a>(
    fd: BorrowedFd<'_>,
    datagrams: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>)>,
) -> io::Result<usize> {
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    let mut names: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut wanted = 0;
    for ((bytes, to), (iovec, name)) in datagrams
        .into_iter()
        .zip(iovecs.iter_mut().zip(names.iter_mut()))
    {
        // The kernel only reads through it; iovec's pointer is mutable for recvmsg's sake.
        iovec.iov_base = bytes.as_ptr().cast_mut().cast();
        iovec.iov_len = bytes.len();
        *name = to.map(SockaddrStorage::from);
        wanted += 1;
    }
    if wanted == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero bytes are a valid `mmsghdr` (null pointers, zero lengths).
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let iovec_base = iovecs.as_mut_ptr();
    for (i, (header, name)) in headers.iter_mut().zip(&names).enumerate().take(wanted) {
        // SAFETY: `i < BATCH`: the pointer stays inside the array.
        header.msg_hdr.msg_iov = unsafe { iovec_base.add(i) };
        header.msg_hdr.msg_iovlen = 1;
        if let Some(name) = name {
            header.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = name.len();
        }
    }
    loop {
        // SAFETY: the first `wanted` headers point at iovecs over the callers' bytes and at
        // addresses, all of which outlive the call; the kernel only reads them.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sendmmsg,
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                wanted as libc::c_uint,
                libc::MSG_NOSIGNAL,
            )
        };
        match count(ret) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::address::local_addr;
    use crate::sys::net::wait_ready;
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    fn bound() -> (OwnedFd, SocketAddr) {
        let fd = bind(loopback(), &DatagramOptions::default()).expect("bind");
        let addr = inet(local_addr(fd.as_fd()).expect("local")).expect("inet");
        (fd, addr)
    }

    /// Receives into `buf` until `want` datagrams came, waiting for each batch.
    fn receive(fd: &OwnedFd, buf: &mut [u8], slot: usize, want: usize) -> Vec<Received> {
        let mut out = Vec::new();
        while out.len() < want {
            assert!(wait_ready(fd.as_fd(), false, Duration::from_secs(5)).expect("poll"));
            let mut batch = Vec::new();
            recv_batch(fd.as_fd(), buf, slot, &mut batch).expect("recv");
            out.extend(batch);
        }
        out
    }

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_in_in_one() {
        let (sender, _) = bound();
        let (receiver, to) = bound();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let sent = send_batch(
            sender.as_fd(),
            payloads.iter().map(|p| (p.as_slice(), Some(to))),
        )
        .expect("send");
        assert_eq!(sent, 10, "one sendmmsg took the whole batch");
        let slot = 512;
        let mut buf = vec![0u8; slot * BATCH];
        // Loopback delivers at once: one recvmmsg finds all ten.
        assert!(wait_ready(receiver.as_fd(), false, Duration::from_secs(5)).expect("poll"));
        let mut got = Vec::new();
        let n = recv_batch(receiver.as_fd(), &mut buf, slot, &mut got).expect("recv");
        assert_eq!(n, 10);
        let from = inet(local_addr(sender.as_fd()).expect("local")).expect("inet");
        for (i, received) in got.iter().enumerate() {
            assert_eq!(received.len, payloads[i].len());
            assert!(!received.truncated);
            assert_eq!(received.from, Some(from));
            assert_eq!(&buf[i * slot..][..received.len], payloads[i].as_slice());
        }
        let err = recv_batch(receiver.as_fd(), &mut buf, slot, &mut got).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_longer_than_its_slot_is_reported_truncated_with_its_size() {
        let (sender, _) = bound();
        let (receiver, to) = bound();
        let long = vec![7u8; 3000];
        send_batch(sender.as_fd(), [(long.as_slice(), Some(to))]).expect("send");
        send_batch(sender.as_fd(), [(&b"short"[..], Some(to))]).expect("send");
        let mut buf = vec![0u8; 1024 * 4];
        let got = receive(&receiver, &mut buf, 1024, 2);
        assert_eq!(got[0].len, 1024);
        assert_eq!(got[0].size, 3000);
        assert!(got[0].truncated);
        assert_eq!((got[1].len, got[1].truncated), (5, false));
        assert_eq!(&buf[1024..1029], b"short");
    }

    #[test]
    fn a_port_in_use_is_refused_unless_both_reuse_it() {
        let (_first, addr) = bound();
        let err = bind(addr, &DatagramOptions::default()).expect_err("busy");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        let shared = DatagramOptions {
            reuse_port: true,
            ..DatagramOptions::default()
        };
        let one = bind(loopback(), &shared).expect("bind");
        let port = inet(local_addr(one.as_fd()).expect("local")).expect("inet");
        bind(port, &shared).expect("a second SO_REUSEPORT socket on the port");
    }

    #[test]
    fn a_connected_socket_hears_of_a_closed_port_as_econnrefused() {
        let (closed, gone) = bound();
        drop(closed);
        let (fd, _) = bound();
        connect(fd.as_fd(), gone).expect("connect");
        send_batch(fd.as_fd(), [(&b"anyone?"[..], None)]).expect("send");
        // The ICMP port unreachable comes back as the error of the next receive.
        assert!(wait_ready(fd.as_fd(), false, Duration::from_secs(5)).expect("poll"));
        let mut buf = vec![0u8; 1024];
        let err = recv_batch(fd.as_fd(), &mut buf, 1024, &mut Vec::new()).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
