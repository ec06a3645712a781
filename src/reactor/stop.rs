//! Stopping: listeners closed, sessions and datagram endpoints flushed and closed, what is
//! left aborted at the deadline; and the ends that skip all that (never started, a fatal error).

use super::*;

impl Reactor {
    /// Releases a reactor that never ran: queued listeners are closed (Unix socket files
    /// removed) without accepting anything, and every later command is refused.
    pub fn shutdown_unstarted(&mut self) {
        self.stop_deadline = Some(Instant::now());
        self.finish();
    }

    /// Closes every session at once with RST and finishes (for a fatal error). Events
    /// this turn already produced stay in the batch, so each session gets its `Closed`.
    pub fn abort_all(&mut self, error: &io::Error) {
        self.close_listeners(false);
        self.close_refusals();
        self.close_proxy_headers();
        for token in self.session_tokens() {
            let error = io::Error::new(error.kind(), error.to_string());
            self.release(token, CloseKind::Abortive, Some(error));
        }
        for token in self.endpoint_tokens() {
            let error = io::Error::new(error.kind(), error.to_string());
            self.release_endpoint(token, Some(error));
        }
        self.finish();
    }

    pub(super) fn begin_stop(&mut self, deadline: Instant) {
        if let Some(current) = self.stop_deadline {
            // Stopping already: a later stop can only make the wait shorter.
            self.stop_deadline = Some(current.min(deadline));
            return;
        }
        self.stop_deadline = Some(deadline);
        self.close_listeners(false);
        self.close_refusals();
        self.close_proxy_headers();
        for token in self.session_tokens() {
            self.close_for_stop(token);
        }
        for token in self.endpoint_tokens() {
            self.close_endpoint_for_stop(token);
        }
    }

    /// Closes a session because the reactor stops: itself, or by telling the handler
    /// layer to (see [`StopCloses`]).
    pub(super) fn close_for_stop(&mut self, token: Token) {
        let opening = self
            .session(token)
            .is_some_and(|session| session.phase != Phase::Open);
        if opening {
            // Not open yet, so unknown to the handler layer: cancelled here.
            self.request_close(token);
            return;
        }
        match self.config.stop_closes {
            StopCloses::Reactor => self.request_close(token),
            StopCloses::Handler => self.batch.push(Event::Stopping { token }),
        }
    }

    /// Whether the session of `token` has nothing buffered to send.
    fn nothing_to_send(&mut self, token: Token) -> bool {
        self.session(token)
            .is_some_and(|session| session.core.state().buffer.is_empty())
    }

    /// Aborts what is left at the stop deadline and finishes once nothing is left.
    /// Returns whether the reactor has finished.
    pub(super) fn check_stop(&mut self) -> bool {
        let Some(deadline) = self.stop_deadline else {
            return false;
        };
        let open = self.sessions + self.endpoints;
        if open > 0 && Instant::now() >= deadline {
            self.close_endpoints_at_deadline();
            for token in self.session_tokens() {
                if self.config.stop_closes == StopCloses::Handler && self.nothing_to_send(token) {
                    // Its handler has not closed it yet (a callback still runs, or input
                    // waits for one), but nothing would be lost: a clean close, now.
                    self.request_close(token);
                    if self.session(token).is_none() {
                        continue;
                    }
                }
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "stop() timed out before the session's buffer was sent",
                );
                self.release(token, CloseKind::Abortive, Some(error));
            }
        }
        if self.sessions == 0 && self.endpoints == 0 && !self.finished {
            self.finish();
        }
        self.finished
    }

    pub(super) fn finish(&mut self) {
        self.finished = true;
        self.again.clear();
        for command in self.shared.close_queue() {
            match command {
                Command::Adopt(Adoption { core, arrival, .. }) => {
                    core.state().mark_closed();
                    self.shared.session_closed();
                    if arrival == Arrival::HandedOver {
                        forget_open_session(&self.config.open_sessions);
                    }
                }
                Command::Bind(binding) => {
                    binding.core.state().mark_closed();
                    self.shared.endpoint_closed();
                }
                Command::Listen(listener) => close_listener(listener),
                _ => {}
            }
        }
    }
}
