//! One client connection and its byte accounting: what was issued, written, and echoed
//! back verified. Every mode drives its connections through this type, so every mode
//! checks every byte the same way and fails the same loud way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use crate::pattern::{Pattern, SPAN};
use crate::sys::{self, Connect, Dial, Epoll};
use crate::tls;

pub struct Stream {
    fd: OwnedFd,
    /// `--tls`: the connection's TLS session; `issued`, `sent` and `verified` then count
    /// plaintext (`sent`: taken by the session for encryption). None: plain TCP.
    tls: Option<Box<tls::Session>>,
    /// TLS: our FIN waits until our close_notify is on the wire.
    fin_pending: bool,
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
    /// Starts a non-blocking connect to 127.0.0.1:`port` and registers it under `token`;
    /// with `tls`, the connection is a TLS client session (the handshake starts with the
    /// first flush once connected). Its bytes are `pattern`'s stream for `id`.
    pub fn open(
        ep: &Epoll,
        pattern: &Pattern,
        port: u16,
        id: u64,
        token: u64,
        dial: Dial,
        tls: Option<&tls::Client>,
    ) -> Result<Stream, String> {
        let tls = match tls {
            Some(client) => Some(Box::new(
                client.session().map_err(|e| format!("conn {id}: {e}"))?,
            )),
            None => None,
        };
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
        let start = pattern.start(id);
        Ok(Stream {
            fd,
            tls,
            fin_pending: false,
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
        if self.tls.is_some() {
            return self.flush_tls(pattern);
        }
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
        if self.tls.is_some() {
            return self.read_tls(pattern, buf);
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
        self.verify(pattern, data)?;
        Ok(Read::Data { n: data.len(), at })
    }

    /// Checks echoed bytes against what was sent and counts them as verified.
    fn verify(&mut self, pattern: &Pattern, data: &[u8]) -> Result<(), String> {
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
        Ok(())
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
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            self.fin_pending = true;
            return self.flush_records();
        }
        sys::shutdown_write(&self.fd).map_err(|e| format!("conn {}: shutdown failed: {e}", self.id))
    }
}

/// `--tls`: the same operations through the connection's TLS session. Plaintext is
/// checked exactly as the plain path checks its bytes (`verify`).
impl Stream {
    /// Ends a connection that has finished (accept mode): with TLS, close_notify goes out
    /// before the FIN, so the server sees a clean close, not a truncation.
    pub fn close(mut self) -> Result<(), String> {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            // An idle connection's socket always has room for one alert.
            tls.write_records(&self.fd)
                .map_err(|e| format!("conn {}: sending close_notify failed: {e}", self.id))?;
        }
        Ok(()) // dropping the fd closes it
    }

    /// `flush` with TLS: queued records out first (the handshake, then data), then more
    /// plaintext in, until everything issued is taken or the socket is full.
    fn flush_tls(&mut self, pattern: &Pattern) -> Result<(), String> {
        if !self.connected {
            return Ok(());
        }
        loop {
            if !self.write_records()? {
                return Ok(()); // the socket is full: its EPOLLOUT edge brings us back
            }
            if self.sent == self.issued {
                break;
            }
            let len = ((self.issued - self.sent) as usize).min(SPAN);
            let Some(tls) = self.tls.as_mut() else { break };
            let took = tls.write_plain(pattern.slice(self.start, self.sent, len))?;
            if took == 0 {
                break; // held back until the handshake has finished
            }
            self.sent += took as u64;
        }
        if self.fin_pending {
            self.fin_pending = false;
            sys::shutdown_write(&self.fd)
                .map_err(|e| format!("conn {}: shutdown failed: {e}", self.id))?;
        }
        Ok(())
    }

    /// Queued records to the socket; sends the FIN that waits for them, if any.
    fn flush_records(&mut self) -> Result<(), String> {
        if self.write_records()? && self.fin_pending {
            self.fin_pending = false;
            sys::shutdown_write(&self.fd)
                .map_err(|e| format!("conn {}: shutdown failed: {e}", self.id))?;
        }
        Ok(())
    }

    fn write_records(&mut self) -> Result<bool, String> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(true);
        };
        tls.write_records(&self.fd).map_err(|e| {
            format!(
                "conn {}: send failed after {} of {} echoed bytes: {e}",
                self.id, self.verified, self.sent
            )
        })
    }

    /// `read` with TLS: receives until some plaintext has come (all of it checked),
    /// the socket is drained, or the server's FIN.
    fn read_tls(&mut self, pattern: &Pattern, buf: &mut [u8]) -> Result<Read, String> {
        let Some(mut tls) = self.tls.take() else {
            return Ok(Read::Drained);
        };
        // The session is out of `self` while `verify` needs `self`; it goes back whatever
        // happens (an error ends the run anyway, but the stream stays whole).
        let result = self.read_through(&mut tls, pattern, buf);
        self.tls = Some(tls);
        let read = result?;
        // Handshake replies, and the plaintext that waited for the handshake to finish.
        self.flush_tls(pattern)?;
        Ok(read)
    }

    fn read_through(
        &mut self,
        tls: &mut tls::Session,
        pattern: &Pattern,
        buf: &mut [u8],
    ) -> Result<Read, String> {
        loop {
            let n = match sys::recv(&self.fd, buf) {
                Ok(n) => n,
                Err(e) if sys::would_block(&e) => return Ok(Read::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(format!(
                        "conn {}: recv failed after {} of {} echoed bytes: {e}",
                        self.id, self.verified, self.sent
                    ))
                }
            };
            let at = Instant::now();
            let before = self.verified;
            let mut ciphertext = &buf[..n];
            // One record (about) at a time: its plaintext is checked before the next.
            loop {
                tls.feed(&mut ciphertext)
                    .map_err(|e| format!("conn {}: {e}", self.id))?;
                loop {
                    let plain = tls.plaintext();
                    if plain.is_empty() {
                        break;
                    }
                    let len = plain.len();
                    self.verify(pattern, plain)?;
                    tls.consume(len);
                }
                if ciphertext.is_empty() {
                    break;
                }
            }
            if n == 0 {
                return self.on_tls_eof(tls);
            }
            let got = (self.verified - before) as usize;
            if got > 0 {
                return Ok(Read::Data { n: got, at });
            }
            // Only handshake records or tickets so far: read on.
        }
    }

    /// The server's FIN: as in plain `on_eof`, only after our own close and every byte
    /// back; and with TLS, only after the server's close_notify (else the stream could
    /// have been cut short by anyone on the path: a truncation).
    fn on_tls_eof(&mut self, tls: &tls::Session) -> Result<Read, String> {
        if self.shut && self.verified == self.sent && !tls.peer_closed {
            return Err(format!(
                "conn {}: the server closed TCP without a TLS close_notify (all {} bytes \
                 were echoed, but a TLS peer must not end the stream this way)",
                self.id, self.verified
            ));
        }
        self.on_eof()
    }
}
