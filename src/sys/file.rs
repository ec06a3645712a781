//! Regular files for `sendfile()`: taking the caller's descriptor, checking what it is,
//! and the two ways its bytes reach a socket (the kernel's `sendfile(2)`, or `pread` for a
//! TLS session, whose bytes must be encrypted on the way).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// A descriptor of our own for the file `fd` names (close-on-exec), so that the caller
/// may close theirs while the file is still queued. Any number is safe to pass: one that
/// names nothing is `EBADF`.
pub fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; a bad `fd` is EBADF.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just created by the call above and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The size of `fd` if it is a regular file open for reading, else what it is instead.
pub fn readable_size(fd: BorrowedFd<'_>) -> io::Result<Result<u64, &'static str>> {
    let stat = nix::sys::stat::fstat(fd)?;
    let kind = match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a pipe"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Ok(Err(kind));
    }
    // SAFETY: F_GETFL only reads the descriptor's flags; `fd` is open (borrowed).
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Ok(Err("open for writing only"));
    }
    Ok(Ok(stat.st_size as u64))
}

/// Sends up to `count` bytes of `file` from `offset` to the socket `out`, without the
/// bytes passing through user space. `EAGAIN` comes back as `WouldBlock`; 0 means the
/// file ends at `offset`.
///
/// (No `MSG_NOSIGNAL` exists for it: a peer gone raises `SIGPIPE`, which CPython and the
/// Rust runtime both ignore, so it comes back as `EPIPE` like a send's.)
pub fn sendfile(
    out: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let mut offset = offset as libc::off64_t;
    loop {
        match nix::sys::sendfile::sendfile64(out, file, Some(&mut offset), count) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Reads from `file` at `offset` (its own position untouched) into `buf`.
pub fn read_at(file: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match nix::sys::uio::pread(file, buf, offset as libc::off_t) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The error for a file that ended `missing` bytes before what was queued of it was sent.
pub fn truncated(missing: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "sendfile(): the file ended {missing} bytes short of what was queued: it was \
             truncated while being sent; the session is closed, since its peer was promised \
             those bytes"
        ),
    )
}
