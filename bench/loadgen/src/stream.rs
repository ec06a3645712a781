//! One client connection and its byte accounting: what was issued, written, and echoed
//! back verified. Every mode drives its connections through this type, so every mode
//! checks every byte the same way and fails the same loud way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use crate::pattern::{Pattern, SPAN};
use crate::sys::{self, Connect, Dial, Epoll};

pub struct Stream {
    fd: OwnedFd,
    /// Names the connection in failures and seeds its byte pattern.
    pub id: u64,
    start: u64,
    pub connected: bool,
    /// Bytes the mode asked to send so far.
    pub issued: u64,
    /// Bytes handed to the kernel so far.
    pub sent: u64,
    /// Bytes echoed back and checked so far.
    pub verified: u64,
    /// We sent FIN: the server's FIN is now expected, once everything has come back.
    pub shut: bool,
    pub eof: bool,
}

/// What one `recv` produced.
pub enum Read {
    /// `n` new bytes, all verified, received at `at`.
    Data { n: usize, at: Instant },
    /// Nothing more to read until the next edge.
    Drained,
    /// The server's FIN, after everything was echoed and we had sent ours.
    Eof,
}

impl Stream {
    /// Starts a non-blocking connect to 127.0.0.1:`port` and registers it under `token`.
    pub fn open(ep: &Epoll, port: u16, id: u64, token: u64, dial: Dial) -> Result<Stream, String> {
        let (fd, connected) = match sys::connect_loopback(port, dial) {
            Ok(Connect::Done(fd)) => (fd, true),
            Ok(Connect::InProgress(fd)) => (fd, false),
            Err(e) => {
                let hint = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    " (out of ephemeral ports: too many connections in TIME_WAIT)"
                } else {
                    ""
                };
                return Err(format!(
                    "conn {id}: connect to 127.0.0.1:{port} failed: {e}{hint}"
                ));
            }
        };
        ep.add(fd.as_raw_fd(), sys::INTEREST, token)
            .map_err(|e| format!("conn {id}: epoll_ctl: {e}"))?;
        let start = Pattern::start(id);
        Ok(Stream {
            fd,
            id,
            start,
            connected,
            issued: 0,
            sent: 0,
            verified: 0,
            shut: false,
            eof: false,
        })
    }

    /// For a connection still connecting: true once an event shows the connect finished.
    pub fn finish_connect(&mut self, flags: u32) -> Result<bool, String> {
        let failed = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if flags & failed != 0 {
            // A failed non-blocking connect always raises EPOLLERR: only then is SO_ERROR
            // worth a syscall (the accept scenario's load generator is syscall-bound).
            let why = match sys::take_error(&self.fd) {
                Err(e) => e.to_string(),
                Ok(()) => "hang-up before the connection was established".to_string(),
            };
            return Err(format!(
                "conn {}: connect to 127.0.0.1 failed: {why}",
                self.id
            ));
        }
        if flags & libc::EPOLLOUT as u32 == 0 {
            return Ok(false);
        }
        self.connected = true;
        Ok(true)
    }

    /// Bytes sent but not yet echoed back.
    pub fn outstanding(&self) -> u64 {
        self.issued - self.verified
    }

    /// Writes issued bytes until they are all in the kernel or the socket is full
    /// (the EPOLLOUT edge brings us back).
    pub fn flush(&mut self, pattern: &Pattern) -> Result<(), String> {
        while self.connected && self.sent < self.issued {
            let len = ((self.issued - self.sent) as usize).min(SPAN);
            match sys::send(&self.fd, pattern.slice(self.start, self.sent, len)) {
                Ok(n) => self.sent += n as u64,
                Err(e) if sys::would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("conn {}: send failed: {e}", self.id)),
            }
        }
        Ok(())
    }

    /// Reads once into `buf` and verifies what came.
    pub fn read(&mut self, pattern: &Pattern, buf: &mut [u8]) -> Result<Read, String> {
        if self.eof {
            // Edges keep coming after FIN (EPOLLOUT); the EOF is reported only once.
            return Ok(Read::Drained);
        }
        loop {
            match sys::recv(&self.fd, buf) {
                Ok(0) => return self.on_eof(),
                Ok(n) => return self.on_data(pattern, &buf[..n]),
                Err(e) if sys::would_block(&e) => return Ok(Read::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(format!(
                        "conn {}: recv failed after {} of {} echoed bytes: {e}",
                        self.id, self.verified, self.sent
                    ))
                }
            }
        }
    }

    fn on_data(&mut self, pattern: &Pattern, data: &[u8]) -> Result<Read, String> {
        let at = Instant::now();
        if self.verified + data.len() as u64 > self.sent {
            return Err(format!(
                "conn {}: the server sent {} bytes but only {} were sent to it",
                self.id,
                self.verified + data.len() as u64,
                self.sent
            ));
        }
        if let Err(m) = pattern.verify(self.start, self.verified, data) {
            return Err(format!(
                "conn {}: echoed byte at stream offset {} is {:#04x}, expected {:#04x} \
                 (bytes from another session, reordered or lost)",
                self.id, m.offset, m.got, m.expected
            ));
        }
        self.verified += data.len() as u64;
        Ok(Read::Data { n: data.len(), at })
    }

    fn on_eof(&mut self) -> Result<Read, String> {
        if !self.shut || self.verified < self.sent {
            return Err(format!(
                "conn {}: the server closed the connection with {} of {} bytes echoed \
                 (short read; we had {}sent FIN)",
                self.id,
                self.verified,
                self.sent,
                if self.shut { "" } else { "not " }
            ));
        }
        self.eof = true;
        Ok(Read::Eof)
    }

    /// Sends FIN: the server must echo what is left, then close.
    pub fn shutdown_write(&mut self) -> Result<(), String> {
        self.shut = true;
        sys::shutdown_write(&self.fd).map_err(|e| format!("conn {}: shutdown failed: {e}", self.id))
    }
}
