//! The best native echo we know how to write, the lowest floor of the benchmark's TCP echo
//! scenarios (`native-best` in the report, beside `rust-epoll`, the plain `rust_echo`).
//! No Python, one thread, one edge-triggered epoll loop, and per readiness edge:
//!
//! - read until the socket is drained into ONE 256 KiB buffer shared by every connection
//!   (each `recv` appends after the bytes already read, so a wakeup's input is gathered
//!   in one place, however many segments it arrived in);
//! - send it straight from that buffer, in one `send` per buffer-full (no copy, no
//!   per-connection buffer on the way);
//! - keep per connection only what the kernel would not take (the unsent remainder), and
//!   read nothing more from that connection until it is out (the EPOLLOUT edge that frees
//!   room brings it back): the same backpressure as every other server.
//!
//! "Drained" is EAGAIN, or a read shorter than the room it was given: on a TCP stream
//! socket a short read means the receive queue was empty at that instant, and anything
//! arriving after it raises a new edge, so the extra `recv` that would only return EAGAIN
//! is skipped (one syscall fewer per wakeup; `--strict-eagain` makes it anyway, for
//! comparison). Not while the peer has closed: its FIN may already be queued behind the
//! data and would raise no new edge, so then it reads until EOF or EAGAIN.
//!
//! ```text
//! native_best [--strict-eagain] PORT   # prints "native_best: listening on 127.0.0.1:PORT"
//! ```

mod sys;

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};

/// The one buffer every read goes into and every echo is sent from.
const BUF: usize = 256 * 1024;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

struct Conn {
    fd: OwnedFd,
    /// What the kernel had no room for; nothing more is read until it is sent.
    unsent: Vec<u8>,
    /// The peer's FIN has been read: close once `unsent` is out.
    eof: bool,
}

enum Next {
    Keep,
    Close,
}

/// Sends as much of `data` as the kernel takes; returns how much that was.
fn send_some(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        match sys::send(fd, &data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

impl Conn {
    /// Handles one readiness edge.
    fn serve(&mut self, flags: u32, buf: &mut [u8], strict_eagain: bool) -> io::Result<Next> {
        if !self.unsent.is_empty() {
            let n = send_some(&self.fd, &self.unsent)?;
            self.unsent.drain(..n);
            if !self.unsent.is_empty() {
                return Ok(Next::Keep);
            }
        }
        if self.eof {
            return Ok(Next::Close);
        }
        let peer_closed = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        let shortcut = !strict_eagain && !peer_closed;
        loop {
            // Gather: read until drained, EOF or a full buffer.
            let mut filled = 0;
            let mut drained = false;
            while filled < buf.len() {
                match sys::recv(&self.fd, &mut buf[filled..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        let short = n < buf.len() - filled;
                        filled += n;
                        if short && shortcut {
                            drained = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // Echo straight from the buffer; keep only the remainder.
            let sent = send_some(&self.fd, &buf[..filled])?;
            if sent < filled {
                self.unsent.extend_from_slice(&buf[sent..filled]);
                return Ok(Next::Keep);
            }
            if self.eof {
                return Ok(Next::Close);
            }
            if drained {
                return Ok(Next::Keep);
            }
            // The buffer was full: more may be waiting.
        }
    }
}

fn accept_all(listener: &OwnedFd, ep: &sys::Epoll, conns: &mut Vec<Option<Conn>>) {
    loop {
        let fd = match sys::accept(listener) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                // Out of fds or memory: the listener is level-triggered, so the backlog is
                // retried on the next turn rather than lost.
                eprintln!("native_best: accept: {e}");
                return;
            }
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = ep.add(raw, CONN_EVENTS, raw as u64) {
            eprintln!("native_best: epoll_ctl: {e}");
            continue;
        }
        let slot = raw as usize;
        if slot >= conns.len() {
            conns.resize_with(slot + 1, || None);
        }
        conns[slot] = Some(Conn {
            fd,
            unsent: Vec::new(),
            eof: false,
        });
    }
}

fn run(port: u16, strict_eagain: bool) -> io::Result<()> {
    if let Err(e) = sys::raise_nofile_limit(u64::MAX) {
        eprintln!("native_best: cannot raise the open-file limit: {e}");
    }
    let listener = sys::listen_loopback(port)?;
    let ep = sys::Epoll::new()?;
    let listener_token = listener.as_raw_fd() as u64;
    ep.add(listener.as_raw_fd(), libc::EPOLLIN as u32, listener_token)?;
    let mode = if strict_eagain {
        " (strict EAGAIN)"
    } else {
        ""
    };
    println!("native_best: listening on 127.0.0.1:{port}{mode}");
    io::stdout().flush()?;

    // Indexed by fd number, as in rust_echo: an event left in this batch for a connection
    // closed earlier in it may reach a new one that reused the fd: harmless, it finds
    // EAGAIN.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let n = ep.wait(&mut events, -1)?;
        for e in &events[..n] {
            let (flags, token) = (e.events, e.u64);
            if token == listener_token {
                accept_all(&listener, &ep, &mut conns);
                continue;
            }
            let Some(slot) = conns.get_mut(token as usize) else {
                continue;
            };
            let Some(conn) = slot.as_mut() else { continue };
            match conn.serve(flags, &mut buf, strict_eagain) {
                Ok(Next::Keep) => {}
                // Dropping the Conn closes its fd, which also removes it from epoll.
                Ok(Next::Close) | Err(_) => *slot = None,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (strict_eagain, port) = match args.as_slice() {
        [port] => (false, port),
        [flag, port] if flag == "--strict-eagain" => (true, port),
        _ => usage(),
    };
    let Ok(port) = port.parse::<u16>() else {
        usage()
    };
    if let Err(e) = run(port, strict_eagain) {
        eprintln!("native_best: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: native_best [--strict-eagain] PORT");
    std::process::exit(2);
}
