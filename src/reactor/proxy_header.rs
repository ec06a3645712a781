//! Connections to a `proxy_protocol` listener before they are sessions: their PROXY
//! header awaited within a deadline (peeked at on each edge, so nothing after it is taken
//! off the socket), then the session opened with the header's addresses, or the
//! connection turned away (FIN, and logged) without the handler ever seeing it.

use super::accept::{Accepted, Ends};
use super::deadlines::LazyDeadlines;
use super::*;
use crate::proxy::{self, Addresses, Header, ProxyInfo, MAX_HEADER};

/// Refused headers are reported (logged) at most this often per reactor; the ones in
/// between are counted in the next report, so a flood of bad connections cannot become
/// a flood of log lines (each of which takes the GIL).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A connection awaiting its header.
pub(super) struct AwaitingHeader {
    pub(super) generation: u32,
    fd: OwnedFd,
    /// Its real ends: the proxy's address and ours.
    ends: Ends,
    from: Accepted,
    timeout: Duration,
}

/// The reactor's connections awaiting a header, and how refusals are being reported.
#[derive(Default)]
pub(super) struct ProxyHeaders {
    /// Their deadlines, by token: an entry outlives a connection that sent its header or
    /// was turned away, and is skipped when due.
    pub(super) deadlines: LazyDeadlines<u64>,
    last_report: Option<Instant>,
    unreported: u64,
}

impl Reactor {
    /// Waits for the PROXY header of an accepted connection before anything else. It
    /// counts against `max_connections` from now on, as a TLS handshake in progress does.
    pub(super) fn await_proxy_header(
        &mut self,
        stream: OwnedFd,
        ends: Ends,
        from: Accepted,
        timeout: Duration,
    ) {
        // Registering reports what has arrived already: the first wait sees the header.
        let Some((index, token)) =
            self.allocate_registered(stream.as_fd(), Poller::add_header_reader)
        else {
            return;
        };
        self.config.open_sessions.fetch_add(1, Ordering::Relaxed);
        self.slots[index] = Slot::AwaitingHeader(Box::new(AwaitingHeader {
            generation: token.generation(),
            fd: stream,
            ends,
            from,
            timeout,
        }));
        let deadline = self.now + timeout;
        self.proxy.deadlines.push(deadline, token.0);
    }

    /// Looks at what has arrived: a complete header opens the session, a bad one (or the
    /// end of the connection before a complete one, `finished`) turns it away, and a
    /// partial one waits for the next edge.
    pub(super) fn read_proxy_header(&mut self, token: Token, finished: bool) {
        let waiting = match self.slots.get(token.slot()) {
            Some(Slot::AwaitingHeader(w)) if w.generation == token.generation() => w,
            _ => return,
        };
        let fd = waiting.fd.as_fd();
        // Peeked, not read: only the header's own bytes are taken off the socket, so what
        // the client sent after it (in the same segment, perhaps) stays for the session.
        let window = &mut self.scratch[..MAX_HEADER];
        let outcome = match net::peek(fd, window) {
            Ok(0) => Err(eof()),
            Ok(n) => match proxy::parse(&window[..n]) {
                Ok(None) if finished => Err(eof()),
                Ok(None) => return,
                Ok(Some((header, len))) => match net::recv(fd, &mut window[..len]) {
                    Ok(taken) if taken == len => {
                        self.stats.bytes_in += len as u64;
                        Ok(header)
                    }
                    Ok(_) => Err(io::Error::other("the PROXY header could not be taken")),
                    Err(err) => Err(err),
                },
                Err(err) => Err(io::Error::new(io::ErrorKind::InvalidData, err)),
            },
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(header) => self.open_behind_proxy(token, header),
            Err(err) => self.turn_away(token, err),
        }
    }

    /// The header is in: the session opens (here or on the reactor whose turn it is) with
    /// the client's addresses as its own, the proxy's kept beside them.
    fn open_behind_proxy(&mut self, token: Token, header: Header) {
        let Some(waiting) = self.take_awaiting(token) else {
            return;
        };
        let AwaitingHeader { fd, ends, from, .. } = *waiting;
        // The session registers the socket anew, under its own token.
        let _ = self.poller.delete(fd.as_fd());
        // And counts itself as open again.
        forget_open_session(&self.config.open_sessions);
        let info = ProxyInfo {
            proxy: ends.peer.clone(),
            version: header.version,
            tlvs: header.tlvs,
        };
        let ends = match header.addresses {
            Some(Addresses::Inet {
                source,
                destination,
            }) => Ends {
                peer: Address::Inet(source),
                local: Address::Inet(destination),
            },
            Some(Addresses::Unix {
                source,
                destination,
            }) => Ends {
                peer: Address::Unix(unix_path(source)),
                local: Address::Unix(unix_path(destination)),
            },
            // LOCAL (a health check), UNKNOWN, UNSPEC: the connection's own ends.
            None => ends,
        };
        self.start_session(fd, ends, from, Some(info));
    }

    /// Closes a connection whose header is missing, bad or late: FIN, its input read away
    /// while it lingers (so the peer sees EOF rather than RST), counted and reported.
    fn turn_away(&mut self, token: Token, error: io::Error) {
        let Some(waiting) = self.take_awaiting(token) else {
            return;
        };
        let AwaitingHeader { fd, ends, .. } = *waiting;
        forget_open_session(&self.config.open_sessions);
        self.stats.proxy_refused += 1;
        let _ = self.poller.delete(fd.as_fd());
        self.refuse(fd);
        let due = self
            .proxy
            .last_report
            .is_none_or(|at| self.now >= at + REPORT_INTERVAL);
        if !due {
            self.proxy.unreported += 1;
            return;
        }
        self.proxy.last_report = Some(self.now);
        let unreported = std::mem::take(&mut self.proxy.unreported);
        self.batch.push(Event::ProxyRefused {
            peer: ends.peer,
            error,
            unreported,
        });
    }

    /// Turns away the connections whose header did not come in time.
    pub(super) fn expire_proxy_headers(&mut self) {
        while let Some(token) = self.proxy.deadlines.pop_due(self.now) {
            let token = Token(token);
            let waiting = match self.slots.get(token.slot()) {
                Some(Slot::AwaitingHeader(w)) if w.generation == token.generation() => w,
                _ => continue, // it sent its header, or was turned away, in time
            };
            let error = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete PROXY protocol header within {:.1}s",
                    waiting.timeout.as_secs_f64()
                ),
            );
            self.turn_away(token, error);
        }
    }

    /// Closes every connection still awaiting its header (at stop, or a fatal error):
    /// nobody has seen them, so nobody is told.
    pub(super) fn close_proxy_headers(&mut self) {
        for token in self.proxy.deadlines.take_all() {
            if self.take_awaiting(Token(token)).is_some() {
                forget_open_session(&self.config.open_sessions);
            }
        }
    }

    /// Frees `token`'s slot if it still holds a connection awaiting its header.
    fn take_awaiting(&mut self, token: Token) -> Option<Box<AwaitingHeader>> {
        let index = token.slot();
        if !matches!(self.slots.get(index), Some(Slot::AwaitingHeader(w)) if w.generation == token.generation())
        {
            return None;
        }
        match self.vacate(token) {
            Slot::AwaitingHeader(waiting) => Some(waiting),
            _ => None,
        }
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection ended before its PROXY protocol header",
    )
}

fn unix_path(bytes: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}
