//! Lingering closes: connections refused by `max_connections` (FIN at once) and
//! sessions closed gracefully before their peer's EOF (FIN after the buffer), their input
//! read away while they linger (bounded in number, time and bytes), so the peer sees EOF
//! and not RST.

use super::*;

impl Reactor {
    /// Turns away a connection over `max_connections`: FIN at once keeps the backlog
    /// moving and tells the peer plainly, but closing a socket with unread input sends RST,
    /// which can destroy that FIN before the peer reads it. So the refused socket lingers
    /// (bounded in number, time and bytes) while its input is read away.
    pub(super) fn refuse(&mut self, stream: OwnedFd) {
        if net::shutdown_write(stream.as_fd()).is_err() {
            return;
        }
        if self.refusals.len() >= REFUSALS_LINGERING_MAX {
            discard_input(stream.as_fd(), &mut self.scratch, DISCARD_LIMIT);
            return;
        }
        let Some((index, token)) = self.allocate_reader(stream.as_fd()) else {
            return;
        };
        // Input already queued is reported by the first wait: registering checks it.
        self.slots[index] = Slot::Refused {
            generation: token.generation(),
            fd: stream,
            discarded: 0,
        };
        self.refusals.push_back((self.now + REFUSAL_LINGER, token));
    }

    /// Reads away a refused connection's input; closes it at the peer's EOF, on an error,
    /// or once it has sent more than a graceful close would read away.
    pub(super) fn discard_refused(&mut self, token: Token) {
        let Some(Slot::Refused { fd, discarded, .. }) = self.slots.get_mut(token.slot()) else {
            return;
        };
        let done = loop {
            match net::recv(fd.as_fd(), &mut self.scratch) {
                Ok(0) => break true,
                Ok(n) => {
                    *discarded += n;
                    if *discarded >= DISCARD_LIMIT {
                        break true;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if done {
            self.free_refused(token);
        }
    }

    /// Closes the refusals whose linger time is over.
    pub(super) fn expire_refusals(&mut self) {
        while let Some(&(deadline, token)) = self.refusals.front() {
            if deadline > self.now {
                break;
            }
            self.refusals.pop_front();
            self.free_refused(token);
        }
    }

    /// Closes a refused connection (if `token` still names one) and frees its slot.
    pub(super) fn free_refused(&mut self, token: Token) {
        if !matches!(self.slots.get(token.slot()), Some(Slot::Refused { generation, .. }) if *generation == token.generation())
        {
            return;
        }
        drop(self.vacate(token));
        self.refusals.retain(|(_, pending)| *pending != token);
    }

    /// Closes every lingering refused connection (at stop).
    pub(super) fn close_refusals(&mut self) {
        while let Some((_, token)) = self.refusals.pop_front() {
            self.free_refused(token);
        }
    }
}
