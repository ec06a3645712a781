//! A session's encrypted side: rustls fed from the reactor's own large `recv`, its
//! plaintext taken out into the turn's arena, the plaintext write buffer encrypted and
//! sent with one `sendmsg` per batch of records.
//!
//! NOTE: `read_tls` is never handed the socket (it reads at most one record buffer per
//! call); the reactor reads up to its budget at once and feeds the slice through. And the
//! plaintext is drained after every `process_new_packets`: left inside rustls it raises
//! no new edge, and past 16 KiB rustls refuses more ciphertext.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::{ClientContext, ServerContext, TlsFailure};
use crate::buffer::{ReadArena, WriteBuffer};
use crate::sys::{file, net};

/// How many of the peer's first bytes are kept, to name a peer that does not speak TLS.
const FIRST_BYTES: usize = 8;
/// A file queued on a TLS session is read this much at a time: one full TLS record.
const FILE_CHUNK: usize = 16 * 1024;

/// Where a handshake stands after a step of [`TlsStream::handshake_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Finished: the session is open.
    Done,
    /// Waiting for the peer's bytes.
    WantRead,
    /// Waiting for room in the socket's send buffer.
    WantWrite,
}

/// What the handshake settled, read once when it completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The cipher suite's IANA name (`TLS_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// The application protocol chosen by ALPN.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The server name: what the client sent as SNI (on a server), or asked for (on a
    /// client).
    pub server_name: Option<String>,
    /// The peer's certificate chain, DER, leaf first (empty when it sent none).
    pub peer_certificates: Vec<Vec<u8>>,
}

/// One session's TLS connection.
pub struct TlsStream {
    conn: Connection,
    /// The peer's first bytes, kept while handshaking.
    first_bytes: Vec<u8>,
    /// The name a client asked for.
    client_name: Option<String>,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    close_notify_sent: bool,
    peer_closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .field("close_notify_sent", &self.close_notify_sent)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// `name` as rustls wants it: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a valid server name (a DNS name or an IP address)"))
}

impl TlsStream {
    /// The server side of a new connection.
    pub fn server(context: &ServerContext) -> io::Result<Self> {
        let conn = ServerConnection::new(Arc::clone(&context.config)).map_err(io::Error::other)?;
        Ok(TlsStream::new(conn.into(), None, context.handshake_timeout))
    }

    /// The client side of a new connection to `name`.
    pub fn client(context: &ClientContext, name: ServerName<'static>) -> io::Result<Self> {
        let asked = name.to_str().into_owned();
        let conn =
            ClientConnection::new(Arc::clone(&context.config), name).map_err(io::Error::other)?;
        Ok(TlsStream::new(
            conn.into(),
            Some(asked),
            context.handshake_timeout,
        ))
    }

    fn new(conn: Connection, client_name: Option<String>, handshake_timeout: Duration) -> Self {
        TlsStream {
            conn,
            first_bytes: Vec::new(),
            client_name,
            handshake_timeout,
            close_notify_sent: false,
            peer_closed: false,
        }
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether records wait to be sent (handshake messages, alerts, encrypted data).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the peer's `close_notify` has arrived: its plaintext has ended.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether this side's `close_notify` has been queued.
    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// Feeds the ciphertext of one `recv`; the plaintext it yields goes into `arena`, or,
    /// without one, stays inside rustls (at most one record buffer's worth: only for a
    /// `ciphertext` of at most 16 KiB) until [`TlsStream::take_plaintext`].
    pub fn receive(
        &mut self,
        mut ciphertext: &[u8],
        mut arena: Option<&mut ReadArena>,
    ) -> Result<(), TlsFailure> {
        if self.conn.is_handshaking() && self.first_bytes.len() < FIRST_BYTES {
            let take = (FIRST_BYTES - self.first_bytes.len()).min(ciphertext.len());
            self.first_bytes.extend_from_slice(&ciphertext[..take]);
        }
        // NOTE: never with an empty slice: rustls takes a read of 0 for the peer's FIN.
        while !ciphertext.is_empty() && !self.peer_closed {
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                // The plaintext buffer is full: it is drained below, then the rest goes in.
                Err(err) if err.kind() == io::ErrorKind::Other => {}
                Err(err) => {
                    return Err(TlsFailure::from_rustls(
                        &rustls::Error::General(err.to_string()),
                        &self.first_bytes,
                    ))
                }
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|err| TlsFailure::from_rustls(&err, &self.first_bytes))?;
            self.peer_closed |= state.peer_has_closed();
            if let Some(arena) = arena.as_deref_mut() {
                self.take_plaintext(arena)?;
            }
        }
        Ok(())
    }

    /// Moves the plaintext rustls holds into `arena`.
    pub fn take_plaintext(&mut self, arena: &mut ReadArena) -> Result<(), TlsFailure> {
        loop {
            let mut reader = self.conn.reader();
            match arena.fill_with(16 * 1024, |buf| reader.read(buf)) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(TlsFailure::truncated())
                }
                Err(err) => {
                    return Err(TlsFailure::from_rustls(
                        &rustls::Error::General(err.to_string()),
                        &[],
                    ))
                }
            }
        }
    }

    /// The TCP stream ended (the peer's FIN was read): `Ok` if its `close_notify` came
    /// first, else what the truncation is called.
    pub fn end_of_stream(&mut self) -> Result<(), TlsFailure> {
        if self.peer_closed {
            return Ok(());
        }
        if self.conn.is_handshaking() {
            return Err(TlsFailure::eof_in_handshake());
        }
        Err(TlsFailure::truncated())
    }

    /// Encrypts from `plaintext` (once the handshake is done) and sends, until all of it
    /// and every queued record is sent, or the socket is full (`Ok(false)`). Returns the
    /// bytes that reached the kernel beside it.
    pub fn send(
        &mut self,
        fd: BorrowedFd<'_>,
        plaintext: Option<&mut WriteBuffer>,
        wire_bytes: &mut u64,
    ) -> io::Result<bool> {
        let mut plaintext = plaintext;
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut Socket(fd)) {
                    Ok(n) => *wire_bytes += n as u64,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(err) => return Err(err),
                }
            }
            let Some(buffer) = plaintext.as_deref_mut() else {
                return Ok(true);
            };
            if buffer.is_empty() || self.conn.is_handshaking() || self.close_notify_sent {
                return Ok(true);
            }
            // Takes up to rustls's buffer limit (64 KiB) at a time, encrypted at once.
            let taken = match buffer.next_file() {
                // A file's bytes must be encrypted too: read, not sent by the kernel.
                Some(file) => {
                    let mut chunk = [0u8; FILE_CHUNK];
                    let want =
                        usize::try_from(file.remaining).map_or(FILE_CHUNK, |r| r.min(FILE_CHUNK));
                    let read = file::read_at(file.file.as_fd(), &mut chunk[..want], file.offset)?;
                    if read == 0 {
                        return Err(file::truncated(file.remaining));
                    }
                    let taken = self.conn.writer().write(&chunk[..read])?;
                    buffer.consume_file(taken as u64);
                    taken
                }
                None => {
                    let taken = self.conn.writer().write(buffer.pending())?;
                    buffer.consume(taken);
                    taken
                }
            };
            if taken == 0 {
                // Nothing queued and nothing taken: rustls will take no more now.
                return Ok(true);
            }
        }
    }

    /// Queues this side's `close_notify` (once): the peer's read then ends cleanly.
    pub fn close_notify(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// Drives a client handshake on a blocking caller's thread: sends what is queued,
    /// reads what has arrived (in chunks small enough that what follows the handshake
    /// stays inside rustls, see [`TlsStream::receive`]), and says what to wait for.
    pub fn handshake_step(&mut self, fd: BorrowedFd<'_>) -> io::Result<Handshake> {
        let mut sent = 0;
        if !self.send(fd, None, &mut sent)? {
            return Ok(Handshake::WantWrite);
        }
        if !self.conn.is_handshaking() {
            return Ok(Handshake::Done);
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match net::recv(fd, &mut chunk) {
                Ok(0) => return Err(TlsFailure::eof_in_handshake().into()),
                Ok(n) => {
                    if let Err(failure) = self.receive(&chunk[..n], None) {
                        // The alert rustls queued tells the server why.
                        let _ = self.send(fd, None, &mut sent);
                        return Err(failure.into());
                    }
                    if !self.conn.is_handshaking() || self.conn.wants_write() {
                        // Finished, or a reply to send (the client's Finished).
                        return self.handshake_step(fd);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Handshake::WantRead)
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// What the handshake settled (call once it is done).
    pub fn info(&self) -> TlsInfo {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .map(|name| name.replacen("TLS13_", "TLS_", 1))
            .unwrap_or_default();
        let server_name = match &self.conn {
            Connection::Server(conn) => conn.server_name().map(str::to_string),
            Connection::Client(_) => self.client_name.clone(),
        };
        TlsInfo {
            version,
            cipher,
            alpn_protocol: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name,
            peer_certificates: self
                .conn
                .peer_certificates()
                .map(|chain| chain.iter().map(|cert| cert.to_vec()).collect())
                .unwrap_or_default(),
        }
    }
}

/// The socket as rustls writes records to it: many records, one `sendmsg`.
struct Socket<'a>(BorrowedFd<'a>);

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        net::send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        net::send_vectored(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
