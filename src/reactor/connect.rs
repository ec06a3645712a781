//! Client connects the reactor finishes (`connect_nowait`): completion and deadlines.

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
                session.connecting = false;
                let core = Arc::clone(&session.core);
                self.connecting.retain(|(_, pending)| *pending != token);
                self.batch.push(Event::Opened {
                    token,
                    session: core,
                });
                // Writes made while connecting, and a reply that came with the handshake.
                self.flush(token);
                if readiness.readable || readiness.read_closed {
                    self.read(token, readiness.read_closed);
                }
            }
            Ok(Some(err)) | Err(err) => self.release(token, CloseKind::Dead, Some(err)),
        }
    }

    /// Ends the connects whose deadline has passed, with `TimedOut`.
    pub(super) fn expire_connects(&mut self) {
        let now = self.now;
        let expired: Vec<Token> = self
            .connecting
            .iter()
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, token)| *token)
            .collect();
        for token in expired {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            self.release(token, CloseKind::Dead, Some(error));
        }
    }
}
