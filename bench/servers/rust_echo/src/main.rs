//! A plain echo server with no Python: one thread, one edge-triggered epoll loop, every byte
//! written back to the connection it came from, closed on EOF. It is the floor hamanet's
//! benchmark measures the Python servers against, so it does only what echo requires.
//!
//! ```text
//! rust_echo PORT     # prints "rust_echo: listening on 127.0.0.1:PORT", runs until killed
//! rust_echo --tls CERT KEY PORT   # the same over TLS 1.3 (rustls; see tls.rs)
//! ```

mod sys;
mod tls;

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};

/// As large as uvloop's read buffer, so a 100 KiB message takes one read.
const READ_CHUNK: usize = 256 * 1024;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

struct Conn {
    fd: OwnedFd,
    /// Echo bytes the kernel had no room for; reading pauses until they are out.
    pending: Vec<u8>,
    eof: bool,
}

enum Next {
    Keep,
    Close,
}

/// One connection's echo: plain (`Conn`) or TLS (`tls::TlsConn`). The loop is generic over
/// it, so the plain echo compiles to exactly what it was before TLS existed.
trait Session {
    /// Handles one readiness edge.
    fn serve(&mut self, flags: u32, buf: &mut [u8]) -> io::Result<Next>;
}

impl Session for Conn {
    fn serve(&mut self, flags: u32, buf: &mut [u8]) -> io::Result<Next> {
        Conn::serve(self, flags, buf)
    }
}

impl Conn {
    /// Sends `pending`; true once it is empty.
    fn flush(&mut self) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match sys::send(&self.fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Echoes `data`, keeping what the kernel refuses; true if all of it went out.
    fn echo(&mut self, data: &[u8]) -> io::Result<bool> {
        let mut sent = 0;
        while sent < data.len() {
            match sys::send(&self.fd, &data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.extend_from_slice(&data[sent..]);
        Ok(self.pending.is_empty())
    }

    /// Handles one readiness edge.
    fn serve(&mut self, flags: u32, buf: &mut [u8]) -> io::Result<Next> {
        // Backpressure: while the peer is not reading its echo, leave its bytes in our
        // receive buffer. The EPOLLOUT edge that frees room brings us back here.
        if !self.flush()? {
            return Ok(Next::Keep);
        }
        if self.eof {
            return Ok(Next::Close);
        }
        let peer_closed = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        loop {
            let n = match sys::recv(&self.fd, buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(if self.pending.is_empty() {
                        Next::Close
                    } else {
                        Next::Keep
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Keep),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if !self.echo(&buf[..n])? {
                return Ok(Next::Keep);
            }
            // NOTE: a short read means the socket is drained; data arriving later raises a
            // new edge, so the extra EAGAIN read is skipped. Not when the peer has closed:
            // its FIN may already be queued behind the data and would raise no new edge.
            if n < buf.len() && !peer_closed {
                return Ok(Next::Keep);
            }
        }
    }
}

fn accept_all<S>(
    listener: &OwnedFd,
    ep: &sys::Epoll,
    conns: &mut Vec<Option<S>>,
    new: &impl Fn(OwnedFd) -> io::Result<S>,
) {
    loop {
        let fd = match sys::accept(listener) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer gave up before we accepted it: on to the next.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                // Out of fds or memory: the listener is level-triggered, so the backlog is
                // retried on the next turn rather than lost.
                eprintln!("rust_echo: accept: {e}");
                return;
            }
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = ep.add(raw, CONN_EVENTS, raw as u64) {
            eprintln!("rust_echo: epoll_ctl: {e}");
            continue;
        }
        let slot = raw as usize;
        if slot >= conns.len() {
            conns.resize_with(slot + 1, || None);
        }
        match new(fd) {
            Ok(session) => conns[slot] = Some(session),
            Err(e) => eprintln!("rust_echo: new session: {e}"),
        }
    }
}

fn plain(fd: OwnedFd) -> io::Result<Conn> {
    Ok(Conn {
        fd,
        pending: Vec::new(),
        eof: false,
    })
}

fn run<S: Session>(port: u16, new: impl Fn(OwnedFd) -> io::Result<S>) -> io::Result<()> {
    if let Err(e) = sys::raise_nofile_limit(u64::MAX) {
        eprintln!("rust_echo: cannot raise the open-file limit: {e}");
    }
    let listener = sys::listen_loopback(port)?;
    let ep = sys::Epoll::new()?;
    // Every token is the fd number; no connection can share the listener's while it is open.
    ep.add(
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        listener.as_raw_fd() as u64,
    )?;
    let listener_token = listener.as_raw_fd() as u64;
    println!("rust_echo: listening on 127.0.0.1:{port}");
    io::stdout().flush()?;

    // Indexed by fd number. An event left in this batch for a connection closed earlier in
    // it may reach a new connection that reused the fd: harmless, it finds EAGAIN.
    let mut conns: Vec<Option<S>> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let n = ep.wait(&mut events, -1)?;
        for e in &events[..n] {
            let (flags, token) = (e.events, e.u64);
            if token == listener_token {
                accept_all(&listener, &ep, &mut conns, &new);
                continue;
            }
            let Some(slot) = conns.get_mut(token as usize) else {
                continue;
            };
            let Some(conn) = slot.as_mut() else { continue };
            match conn.serve(flags, &mut buf) {
                Ok(Next::Keep) => {}
                // Dropping the Conn closes its fd, which also removes it from epoll.
                Ok(Next::Close) | Err(_) => *slot = None,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tls_files, port) = match args.as_slice() {
        [port] => (None, port),
        [flag, cert, key, port] if flag == "--tls" => (Some((cert, key)), port),
        _ => usage(),
    };
    let Ok(port) = port.parse::<u16>() else {
        usage()
    };
    let result = match tls_files {
        None => run(port, plain),
        Some((cert, key)) => match tls::config(cert, key) {
            Ok(config) => run(port, move |fd| tls::TlsConn::new(fd, &config)),
            Err(e) => {
                eprintln!("rust_echo: {e}");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("rust_echo: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: rust_echo [--tls CERT KEY] PORT");
    std::process::exit(2);
}
