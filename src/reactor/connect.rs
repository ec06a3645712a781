//! Client connects the reactor finishes (`connect_nowait`): completion, and the deadlines
//! of connects and TLS handshakes.

use super::*;

impl Reactor {
    /// A non-blocking connect ended: open the session (and serve what is already there),
    /// or release it with the connect's error.
    pub(super) fn finish_connect(&mut self, token: Token, readiness: Readiness) {
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        match net::take_error(session.fd.as_fd()) {
            Ok(None) => {
                let core = Arc::clone(&session.core);
                if let Some(tls) = &session.tls {
                    // Connected: now the TLS handshake, which opens it.
                    session.phase = Phase::Handshaking;
                    let deadline = self.now + tls.handshake_timeout;
                    self.opening.push(deadline, (token.0, Phase::Handshaking));
                } else {
                    session.phase = Phase::Open;
                    self.open(token, core);
                }
                // Writes made while connecting (or the ClientHello), and a reply that came
                // with the connect.
                self.flush(token);
                if readiness.readable || readiness.read_closed {
                    self.read(token, readiness.read_closed);
                }
            }
            Ok(Some(err)) | Err(err) => self.release(token, CloseKind::Dead, Some(err)),
        }
    }

    /// Ends the connects and TLS handshakes whose deadline has passed, with `TimedOut`.
    pub(super) fn expire_openings(&mut self) {
        while let Some((token, phase)) = self.opening.pop_due(self.now) {
            let token = Token(token);
            let session = match session_slot(&mut self.slots, token) {
                Some(session) if session.phase == phase => session,
                _ => continue, // it connected, or handshook, or closed in time
            };
            let error = match (&session.tls, session.phase) {
                (Some(tls), Phase::Handshaking) => {
                    self.stats.tls_failures += 1;
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the TLS handshake did not finish within {:.1}s",
                            tls.handshake_timeout.as_secs_f64()
                        ),
                    )
                }
                _ => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            };
            self.release(token, CloseKind::Dead, Some(error));
        }
    }
}
