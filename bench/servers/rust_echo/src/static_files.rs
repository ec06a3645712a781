//! The native floor of the benchmark's `static10m` scenario (`native-best` in its table):
//! the files of one directory over HTTP/1.1 keep-alive, no Python, one thread, one
//! edge-triggered epoll loop, every body sent with `sendfile(2)` straight from the page
//! cache. The least a server can spend per byte here: one `sendfile` per socket-full.
//!
//! Per connection: read request heads into a small buffer; for the first whole head, send
//! the response head (`send`), then the file with `sendfile` until done or EAGAIN (the
//! EPOLLOUT edge that frees room brings it back); only then the next head, so pipelined
//! requests are answered in order, and nothing more is read while a response is unsent
//! (the same push-back as every other server). `GET /NAME` of a regular file directly in
//! the directory is a 200 with `Content-Type: application/octet-stream` and its
//! `Content-Length` (the heads the Python servers send for a `.bin` file); anything else
//! the request line names is a 404; a malformed head, a head over 8 KiB or
//! `Connection: close` closes after the response (or at once). The peer's FIN closes the
//! connection once its responses are out.
//!
//! ```text
//! native_static --root DIR PORT   # prints "native_static: listening on 127.0.0.1:PORT"
//! ```

mod sys;

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const MAX_HEAD: usize = 8192;
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nNot Found\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
    Content-Length: 12\r\nConnection: close\r\n\r\nBad Request\n";

struct Conn {
    fd: OwnedFd,
    /// Request bytes read and not yet answered (at most one head's worth plus a read).
    input: Vec<u8>,
    /// The response head (or whole small response) not yet sent: `head[sent..]`.
    head: Vec<u8>,
    sent: usize,
    /// The body in progress: the file, the offset reached and the end.
    body: Option<(File, i64, i64)>,
    /// Close once the response in progress is out (the peer's FIN, or `Connection: close`).
    close_after: bool,
}

enum Next {
    Keep,
    Close,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// `sendfile(2)` from `file` at `*offset` to the socket, at most `count` bytes.
fn sendfile(sock: &OwnedFd, file: &File, offset: &mut i64, count: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the call; `offset` is a live off_t the kernel updates.
    let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), offset, count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Conn {
    /// Handles one readiness edge (or a new connection): sends what is pending, then
    /// answers the heads that are whole, reading more only once everything is out.
    fn serve(&mut self, root: &Path, buf: &mut [u8]) -> io::Result<Next> {
        loop {
            if !self.flush()? {
                return Ok(Next::Keep); // the socket is full: EPOLLOUT brings us back
            }
            if self.close_after {
                return Ok(Next::Close);
            }
            if let Some(end) = find(&self.input, b"\r\n\r\n") {
                let head: Vec<u8> = self.input.drain(..end + 4).collect();
                self.respond(root, &head[..end]);
                continue;
            }
            if self.input.len() > MAX_HEAD {
                return Ok(Next::Close);
            }
            // Everything answered: read (until EAGAIN, as the edge requires).
            match sys::recv(&self.fd, buf) {
                Ok(0) => return Ok(Next::Close),
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => return Ok(Next::Keep),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the pending head, then the body; true once both are out.
    fn flush(&mut self) -> io::Result<bool> {
        while self.sent < self.head.len() {
            match sys::send(&self.fd, &self.head[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some((file, offset, end)) = self.body.as_mut() {
            while *offset < *end {
                let count = (*end - *offset).min(1 << 30) as usize;
                match sendfile(&self.fd, file, offset, count) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file is shorter than it was",
                        ))
                    }
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.body = None;
        }
        Ok(true)
    }

    /// Queues the response to one request head.
    fn respond(&mut self, root: &Path, head: &[u8]) {
        self.head.clear();
        self.sent = 0;
        let Some((target, close)) = parse(head) else {
            self.head.extend_from_slice(BAD_REQUEST);
            self.close_after = true;
            return;
        };
        self.close_after = close;
        match open(root, target) {
            Some((file, size)) => {
                let _ = write!(
                    self.head,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {size}\r\n{}\r\n",
                    if close { "Connection: close\r\n" } else { "" }
                );
                self.body = Some((file, 0, size as i64));
            }
            None => self.head.extend_from_slice(NOT_FOUND),
        }
    }
}

/// The target of a `GET TARGET HTTP/1.1` head and whether it asks to close; None for
/// anything else.
fn parse(head: &[u8]) -> Option<(&[u8], bool)> {
    let mut lines = head.split(|&b| b == b'\n');
    let request = lines.next()?.strip_suffix(b"\r")?;
    let mut parts = request.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if method != b"GET" || version != b"HTTP/1.1" || parts.next().is_some() {
        return None;
    }
    let close = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with(b"connection:") && find(&line, b"close").is_some()
    });
    Some((target, close))
}

/// The regular file `/NAME` names directly in `root`, open, and its size.
fn open(root: &Path, target: &[u8]) -> Option<(File, u64)> {
    let name = std::str::from_utf8(target.strip_prefix(b"/")?).ok()?;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let file = File::open(root.join(name)).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta.len()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn accept_all(
    listener: &OwnedFd,
    ep: &sys::Epoll,
    conns: &mut Vec<Option<Conn>>,
    root: &Path,
    buf: &mut [u8],
) {
    loop {
        let fd = match sys::accept(listener) {
            Ok(fd) => fd,
            Err(e) if would_block(&e) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                eprintln!("native_static: accept: {e}");
                return;
            }
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = ep.add(raw, CONN_EVENTS, raw as u64) {
            eprintln!("native_static: epoll_ctl: {e}");
            continue;
        }
        let mut conn = Conn {
            fd,
            input: Vec::new(),
            head: Vec::new(),
            sent: 0,
            body: None,
            close_after: false,
        };
        // A request may have come with the connection: its edge may be gone already.
        if let Ok(Next::Close) | Err(_) = conn.serve(root, buf) {
            continue;
        }
        let slot = raw as usize;
        if slot >= conns.len() {
            conns.resize_with(slot + 1, || None);
        }
        conns[slot] = Some(conn);
    }
}

fn run(root: &Path, port: u16) -> io::Result<()> {
    if let Err(e) = sys::raise_nofile_limit(u64::MAX) {
        eprintln!("native_static: cannot raise the open-file limit: {e}");
    }
    let listener = sys::listen_loopback(port)?;
    let ep = sys::Epoll::new()?;
    let listener_token = listener.as_raw_fd() as u64;
    ep.add(listener.as_raw_fd(), libc::EPOLLIN as u32, listener_token)?;
    println!("native_static: listening on 127.0.0.1:{port}");
    io::stdout().flush()?;

    // Indexed by fd number, as in the echo servers.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let n = ep.wait(&mut events, -1)?;
        for e in &events[..n] {
            let token = e.u64;
            if token == listener_token {
                accept_all(&listener, &ep, &mut conns, root, &mut buf);
                continue;
            }
            let Some(slot) = conns.get_mut(token as usize) else {
                continue;
            };
            let Some(conn) = slot.as_mut() else { continue };
            match conn.serve(root, &mut buf) {
                Ok(Next::Keep) => {}
                // Dropping the Conn closes its fd (and its file), which leaves epoll.
                Ok(Next::Close) | Err(_) => *slot = None,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, root, port] = args.as_slice() else {
        usage()
    };
    let Ok(port) = port.parse::<u16>() else {
        usage()
    };
    if flag != "--root" {
        usage();
    }
    let root = PathBuf::from(root);
    if !root.is_dir() {
        eprintln!("native_static: {} is not a directory", root.display());
        std::process::exit(2);
    }
    if let Err(e) = run(&root, port) {
        eprintln!("native_static: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: native_static --root DIR PORT");
    std::process::exit(2);
}
