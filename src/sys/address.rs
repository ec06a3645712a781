//! Socket addresses: TCP over IPv4/IPv6 or a Unix path, name resolution, and the
//! addresses of a socket's two ends.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, SockaddrLike, SockaddrStorage};

/// A socket address: TCP over IPv4/IPv6, or a Unix domain stream socket's path (empty for
/// an unnamed socket, such as a connecting client's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A filesystem path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(addr) => addr.fmt(f),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a name did not resolve.
#[derive(Debug)]
pub enum ResolveError {
    /// `getaddrinfo` failed: its `EAI_*` code (what Python's `socket.gaierror` carries)
    /// and `gai_strerror`'s text for it.
    Lookup {
        /// The `EAI_*` code.
        code: i32,
        /// What it means.
        message: String,
    },
    /// A system error (`EAI_SYSTEM`).
    Io(io::Error),
}

/// Resolves `host` (an IP literal, which is not looked up, or a name) and `port` to the
/// addresses of stream sockets, in `getaddrinfo`'s order.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let c_host = CString::new(host).map_err(|_| {
        ResolveError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "host contains a NUL character",
        ))
    })?;
    // SAFETY: all-zero is a valid `addrinfo` (null pointers, zero flags): what the
    // manual asks of the unused fields of hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `c_host` is NUL-terminated and outlives the call; a null service is
    // allowed; `hints` and `list` are valid for the call.
    let code = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if code == libc::EAI_SYSTEM {
        return Err(ResolveError::Io(io::Error::last_os_error()));
    }
    if code != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
        let message = unsafe { CStr::from_ptr(libc::gai_strerror(code)) };
        return Err(ResolveError::Lookup {
            code,
            message: message.to_string_lossy().into_owned(),
        });
    }
    let mut addrs = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getaddrinfo returned, not yet freed.
        let info = unsafe { &*entry };
        // SAFETY: `ai_addr` points to `ai_addrlen` bytes of a socket address of family
        // `ai_family`, which says which struct it is.
        let addr = unsafe {
            match info.ai_family {
                libc::AF_INET if !info.ai_addr.is_null() => {
                    let v4 = &*(info.ai_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                    Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
                }
                libc::AF_INET6 if !info.ai_addr.is_null() => {
                    let v6 = &*(info.ai_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                    Some(SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        port,
                        v6.sin6_flowinfo,
                        v6.sin6_scope_id,
                    )))
                }
                _ => None,
            }
        };
        addrs.extend(addr);
        entry = info.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    if addrs.is_empty() {
        return Err(ResolveError::Lookup {
            code: libc::EAI_NONAME,
            message: "host resolved to no IPv4 or IPv6 address".into(),
        });
    }
    Ok(addrs)
}

pub(super) fn to_address(addr: SockaddrStorage) -> io::Result<Address> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Ok(Address::Inet(SocketAddr::V4(SocketAddrV4::new(
            v4.ip(),
            v4.port(),
        ))));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Ok(Address::Inet(SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))));
    }
    if let Some(unix) = addr.as_unix_addr() {
        return Ok(Address::Unix(
            unix.path().map(Path::to_path_buf).unwrap_or_default(),
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("unexpected family {:?}", addr.family()),
    ))
}

/// The socket's own address.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<Address> {
    to_address(socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())?)
}

/// The connected peer's address.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<Address> {
    to_address(socket::getpeername::<SockaddrStorage>(fd.as_raw_fd())?)
}
