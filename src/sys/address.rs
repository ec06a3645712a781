//! Socket addresses: TCP over IPv4/IPv6 or a Unix path, name resolution, and the
//! addresses of a socket's two ends.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
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

/// Resolves `host` (an IP literal or a name) and `port` to socket addresses.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "host resolved to no address",
        ));
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
