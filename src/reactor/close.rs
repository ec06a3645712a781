//! Releasing a session: its slot freed, its socket closed the way it was asked to
//! close (FIN, RST, or already dead), and the event that tells the handler layer.

use super::*;

impl Reactor {
    /// Frees the session's slot, closes its socket and reports [`Event::Closed`].
    pub(super) fn release(&mut self, token: Token, kind: CloseKind, error: Option<io::Error>) {
        if !matches!(self.slots.get(token.slot()), Some(Slot::Session(_))) {
            return;
        }
        let slot = self.vacate(token);
        let Slot::Session(mut session) = slot else {
            return;
        };
        session.core.set_fd(None);
        session.core.state().mark_closed();
        if let (Some(tls), CloseKind::Graceful, Phase::Open) =
            (session.tls.as_deref_mut(), kind, session.phase)
        {
            // Closed by the reactor (idle timeout, stop) without the flush's close_notify:
            // sent now if the socket takes it, so the peer reads a clean end.
            tls.close_notify();
            let _ = tls.send(session.fd.as_fd(), None, &mut self.stats.bytes_out);
        }
        match kind {
            CloseKind::Abortive => {
                // If this fails the close below is graceful instead; nothing is lost.
                let _ = net::set_linger_zero(session.fd.as_fd());
                drop(session.fd);
            }
            CloseKind::Graceful if !session.eof => {
                // Input unread at close() makes the kernel send RST, which destroys data
                // still in flight to the peer, and the peer may still be sending (a TLS
                // peer's tickets, or its reply to our close_notify). So the socket sends
                // FIN and lingers, its input read away, until the peer's EOF (bounded in
                // time, bytes and number, as a refused connection's).
                // Registered anew under the lingering slot's token.
                let _ = self.poller.delete(session.fd.as_fd());
                self.refuse(session.fd);
            }
            CloseKind::Graceful | CloseKind::Dead => drop(session.fd),
        }
        debug_assert!(self.sessions > 0, "more sessions released than registered");
        self.sessions = self.sessions.saturating_sub(1);
        forget_open_session(&self.config.open_sessions);
        if session.phase != Phase::Open {
            // Never opened (a connect or a TLS handshake that did not finish): the handler
            // layer knows it only by its core.
            let core = session.core;
            self.batch.push(Event::ConnectFailed {
                session: core,
                error,
            });
            return;
        }
        // The status count drops when the consumer has delivered this event (see
        // `LoopShared::session_closed`), so `join()` cannot return before `on_close` ran.
        self.batch.push(Event::Closed { token, error });
    }
}

/// How a close treats the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseKind {
    /// FIN after every queued byte (the socket's own buffer is already flushed to it).
    Graceful,
    /// RST, dropping whatever the kernel still holds.
    Abortive,
    /// The connection is already dead (reset, or an error); just release it.
    Dead,
}

/// Reads and drops up to `limit` bytes of what has arrived on `fd`, so that closing it
/// does not send RST for unread input.
pub(super) fn discard_input(fd: std::os::fd::BorrowedFd<'_>, scratch: &mut [u8], limit: usize) {
    let mut discarded = 0;
    while discarded < limit {
        match net::recv(fd, scratch) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}
