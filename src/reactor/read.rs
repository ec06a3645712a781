//! Reading: each ready session into the shared arena within its budget, and what a
//! failed connection still owes its handler (the input that arrived before the failure).

use super::*;

impl Reactor {
    pub(super) fn read(&mut self, token: Token, read_closed: bool) {
        let turn = self.turn;
        let arena_full = self.arena.len() >= ARENA_LIMIT;
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        session.fin_reported |= read_closed;
        if session.eof || session.phase == Phase::Connecting {
            return;
        }
        if session.read_turn == turn {
            // Read already this turn (it was re-queued from the last), and now an edge
            // reports what arrived since, a FIN perhaps: that edge will not come again,
            // so read next turn.
            requeue(&mut self.again, &mut session.requeued, token);
            return;
        }
        {
            let state = session.core.state();
            // A handshake goes on whatever the user asked: it brings no input yet.
            let held = state.reading_held() && session.phase == Phase::Open;
            if held || state.is_closing() {
                return;
            }
        }
        if arena_full {
            requeue(&mut self.again, &mut session.requeued, token);
            return;
        }
        session.read_turn = turn;
        let read_closed = session.fin_reported;
        let start = self.arena.len();
        let mut taken = 0;
        let mut eof = false;
        let mut error = None;
        let mut budget_spent = false;
        loop {
            let fd = session.fd.as_fd();
            let (want, filled) = match session.tls.as_deref_mut() {
                None => {
                    let want = READ_BUDGET - taken;
                    (want, self.arena.fill_with(want, |buf| net::recv(fd, buf)))
                }
                Some(tls) => {
                    // The ciphertext goes through the scratch buffer, its plaintext on
                    // into the arena.
                    let want = (READ_BUDGET - taken).min(self.scratch.len());
                    let ciphertext = &mut self.scratch[..want];
                    (want, receive_tls(tls, fd, ciphertext, &mut self.arena))
                }
            };
            match filled {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    if taken >= READ_BUDGET {
                        // Budget spent with data possibly left: serve again next turn.
                        requeue(&mut self.again, &mut session.requeued, token);
                        budget_spent = true;
                        break;
                    }
                    // NOTE: a short read proves the receive queue empty at that moment, and
                    // any later arrival raises a new edge, so the extra EAGAIN read is
                    // skipped; unless FIN was reported, which raises no further edge and
                    // must be read.
                    if n < want && !read_closed {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        if session.tls.is_some() {
            self.after_tls_read(token, &mut eof, &mut error);
        }
        let Some(session) = session_slot(&mut self.slots, token) else {
            return;
        };
        if eof {
            session.eof = true;
        }
        if taken > 0 {
            // What came off the socket: for a TLS session, its records, handshake too.
            session.last_active = self.now;
            self.stats.bytes_in += taken as u64;
        }
        let end = self.arena.len();
        if end > start {
            self.batch.push(Event::Received {
                token,
                range: start..end,
            });
        }
        let both_finished = eof && session.core.state().fin_sent;
        if session.broken.is_some() && !budget_spent {
            // What arrived before the failure is in this batch; now report the failure.
            let err = session.broken.take();
            self.release(token, CloseKind::Dead, err);
        } else if let Some(err) = error {
            self.release(token, CloseKind::Dead, Some(err));
        } else if eof {
            self.batch.push(Event::Eof { token });
            if both_finished {
                // Our FIN went out earlier: with the peer's, nothing is left to happen.
                self.release(token, CloseKind::Graceful, None);
            }
        } else if session.tls.as_ref().is_some_and(|tls| tls.wants_write()) {
            // A handshake reply, a ticket or a key update to send: no edge will ask.
            self.flush(token);
        }
    }

    /// Ends a session whose socket reports an error that neither a read nor a send has
    /// surfaced: after the peer's EOF nothing reads any more, and with an empty buffer
    /// nothing sends, yet a later RST must still end the session.
    pub(super) fn check_error(&mut self, token: Token) {
        let Some(session) = self.session(token) else {
            return;
        };
        if let Ok(Some(err)) = net::take_error(session.fd.as_fd()) {
            self.fail(token, err);
        }
    }

    /// The connection failed (a send or the socket reported `err`). If input the peer
    /// sent before the failure is still unread (past a read budget, or under
    /// `pause_reading()`), the session is kept to deliver it, next turn or after the
    /// resume, then closes with `err`; otherwise it closes now.
    pub(super) fn fail(&mut self, token: Token, err: io::Error) {
        if let Some(session) = session_slot(&mut self.slots, token) {
            let mut state = session.core.state();
            let unread = || net::unread_bytes(session.fd.as_fd()).is_ok_and(|n| n > 0);
            if !state.is_closing() && !session.eof && unread() {
                // Nothing can be sent any more: later writes are refused.
                state.connection_lost = true;
                state.buffer.clear();
                let paused = state.reading_held();
                drop(state);
                session.broken.get_or_insert(err);
                if !paused {
                    requeue(&mut self.again, &mut session.requeued, token);
                }
                return;
            }
        }
        self.release(token, CloseKind::Dead, Some(err));
    }
}
