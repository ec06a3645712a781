//! The slot table: which slot holds which listener, session or refused connection, and
//! the generation that tells a stale epoll event from a live one.

use super::*;

impl Reactor {
    pub(super) fn is_session(&self, token: Token, core: &Arc<SessionCore>) -> bool {
        matches!(
            self.slots.get(token.slot()),
            Some(Slot::Session(s)) if s.generation == token.generation() && Arc::ptr_eq(&s.core, core)
        )
    }

    pub(super) fn session(&mut self, token: Token) -> Option<&mut SessionSlot> {
        session_slot(&mut self.slots, token)
    }

    pub(super) fn allocate(&mut self) -> (usize, u32) {
        if let Some(index) = self.vacant.pop() {
            let index = index as usize;
            // Wrapping is harmless: a token would have to survive 2^32 reuses of its slot.
            (index, self.slots[index].generation().wrapping_add(1))
        } else {
            self.slots.push(Slot::Vacant { generation: 0 });
            (self.slots.len() - 1, 1)
        }
    }

    /// Frees `token`'s slot for reuse and returns what it held. The slot keeps the
    /// token's generation; its next occupant gets the one after, so events still in
    /// flight for `token` are recognised as stale.
    pub(super) fn vacate(&mut self, token: Token) -> Slot {
        let index = token.slot();
        self.vacant.push(index as u32);
        let generation = token.generation();
        std::mem::replace(&mut self.slots[index], Slot::Vacant { generation })
    }

    /// A slot (still vacant) for `fd`, registered for read readiness; `None`, the slot
    /// given back, when epoll refuses (only possible when the kernel is out of memory).
    pub(super) fn allocate_reader(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Option<(usize, Token)> {
        self.allocate_registered(fd, Poller::add_reader)
    }

    /// A slot for `fd`, registered with the epoll by `register`; None if that failed.
    pub(super) fn allocate_registered(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        register: impl FnOnce(&Poller, std::os::fd::BorrowedFd<'_>, Token) -> io::Result<()>,
    ) -> Option<(usize, Token)> {
        let (index, generation) = self.allocate();
        let token = Token::new(index as u32, generation);
        if register(&self.poller, fd, token).is_err() {
            self.vacate(token);
            return None;
        }
        Some((index, token))
    }

    /// Registers a session socket: accepted here, or adopted from a connect call
    /// (counted as open when it was queued), still connecting until a deadline or not,
    /// with its TLS connection if it has one. It opens once connected and handshaken.
    pub(super) fn register(
        &mut self,
        fd: OwnedFd,
        core: Arc<SessionCore>,
        origin: Origin,
        connect_deadline: Option<Instant>,
        tls: Option<Box<TlsStream>>,
    ) -> Option<Token> {
        let (index, generation) = self.allocate();
        let token = Token::new(index as u32, generation);
        core.set_token(token);
        if self.poller.add_stream(fd.as_fd(), token).is_err() {
            // Only possible when the kernel is out of memory: the socket is dropped.
            self.vacate(token);
            let mut state = core.state();
            state.mark_closed();
            match origin {
                Origin::Accepted => {}
                Origin::Adopted => self.shared.session_closed(),
                Origin::HandedOver => {
                    self.shared.session_closed();
                    forget_open_session(&self.config.open_sessions);
                }
            }
            return None;
        }
        if tls.is_none() {
            // A TLS session's writes must be encrypted first: no direct sends for it.
            core.set_fd(Some(fd.as_raw_fd()));
        }
        let phase = match (&connect_deadline, &tls) {
            (Some(_), _) => Phase::Connecting,
            (None, Some(tls)) if tls.is_handshaking() => Phase::Handshaking,
            (None, _) => Phase::Open,
        };
        let tls_open = tls.is_some() && phase == Phase::Open;
        if tls_open {
            // Handshaken already, on the connecting thread.
            self.stats.tls_handshakes += 1;
        }
        let handshake_deadline = tls.as_ref().map(|tls| self.now + tls.handshake_timeout);
        self.slots[index] = Slot::Session(SessionSlot {
            generation,
            fd,
            core: Arc::clone(&core),
            fin_reported: false,
            eof: false,
            read_turn: 0,
            last_active: self.now,
            requeued: false,
            phase,
            broken: None,
            tls,
            drain_owed: false,
        });
        self.sessions += 1;
        if origin != Origin::HandedOver {
            self.config.open_sessions.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.sessions_total += 1;
        if origin == Origin::Accepted {
            self.shared.update_status(|status| status.sessions += 1);
        }
        match (phase, connect_deadline, handshake_deadline) {
            (Phase::Connecting, Some(deadline), _) | (Phase::Handshaking, _, Some(deadline)) => {
                self.opening.push(deadline, (token.0, phase));
            }
            _ => self.open(token, core),
        }
        if tls_open {
            // Handshaken on a caller's thread: what came after its handshake waits inside
            // rustls, and no edge will say so.
            if let Some(Slot::Session(session)) = self.slots.get_mut(index) {
                requeue(&mut self.again, &mut session.requeued, token);
            }
        }
        Some(token)
    }

    /// The session is connected (and handshaken): tell the handler layer.
    pub(super) fn open(&mut self, token: Token, core: Arc<SessionCore>) {
        self.batch.push(Event::Opened {
            token,
            session: core,
        });
    }

    pub(super) fn listener_tokens(&self) -> Vec<Token> {
        self.tokens(|slot| matches!(slot, Slot::Listener { .. }))
    }

    pub(super) fn session_tokens(&self) -> Vec<Token> {
        self.tokens(|slot| matches!(slot, Slot::Session(_)))
    }

    pub(super) fn tokens(&self, keep: impl Fn(&Slot) -> bool) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| keep(slot))
            .map(|(index, slot)| Token::new(index as u32, slot.generation()))
            .collect()
    }
}

pub(super) struct SessionSlot {
    pub(super) generation: u32,
    pub(super) fd: OwnedFd,
    pub(super) core: Arc<SessionCore>,
    /// epoll has reported the peer's FIN (`EPOLLRDHUP`). Sticky, because that edge is
    /// reported once: until EOF is read, a short read no longer proves the socket drained.
    pub(super) fin_reported: bool,
    /// The peer's FIN has been read; there is nothing more to read.
    pub(super) eof: bool,
    /// The turn in which this session last read, so a session that is both re-queued and
    /// reported ready reads once.
    pub(super) read_turn: u64,
    /// When bytes last moved in either direction (for the idle timeout).
    pub(super) last_active: Instant,
    /// The session is on the `again` list already.
    pub(super) requeued: bool,
    /// Whether it is open yet, or still connecting or handshaking.
    pub(super) phase: Phase,
    /// The connection failed while reading was paused, with input still unread: that
    /// input is delivered after `resume_reading()`, then the session closes with this.
    pub(super) broken: Option<io::Error>,
    /// The TLS connection of a TLS session: its plaintext is what the handler sees.
    pub(super) tls: Option<Box<TlsStream>>,
    /// Bytes were written since the last [`Event::Drained`]: one is owed once they have
    /// all reached the kernel.
    pub(super) drain_owed: bool,
}

/// How far a session has come: only an open one is known to the handler layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// A non-blocking connect is in progress: nothing is read or sent yet.
    Connecting,
    /// Connected, the TLS handshake in progress: only handshake records move.
    Handshaking,
    /// Open: `Event::Opened` has been reported.
    Open,
}

pub(super) enum Slot {
    Vacant {
        generation: u32,
    },
    Listener {
        generation: u32,
        listener: Listener,
    },
    /// A connection refused by `max_connections`: FIN sent, its input read away until the
    /// peer's EOF (or a deadline), so the peer sees a clean EOF rather than RST.
    Refused {
        generation: u32,
        fd: OwnedFd,
        discarded: usize,
    },
    Session(SessionSlot),
    /// A connection to a `proxy_protocol` listener awaiting its PROXY header: not yet a
    /// session.
    AwaitingHeader(Box<AwaitingHeader>),
    /// A datagram (UDP) endpoint.
    Datagram(DatagramSlot),
}

/// Where a session socket came from, which decides when it counts as open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Accepted by a listener: it counts as open from its registration.
    Accepted,
    /// Handed over by a connect call, which counted it as open already (so that
    /// `join()` cannot miss it while it waits in the command queue).
    Adopted,
    /// Accepted by another reactor of the loop and handed over, counted as open (in this
    /// reactor's status and in the loop's `open_sessions`) when it was queued.
    HandedOver,
}

impl Slot {
    pub(super) fn generation(&self) -> u32 {
        match self {
            Slot::Vacant { generation }
            | Slot::Listener { generation, .. }
            | Slot::Refused { generation, .. } => *generation,
            Slot::Session(session) => session.generation,
            Slot::AwaitingHeader(waiting) => waiting.generation,
            Slot::Datagram(endpoint) => endpoint.generation,
        }
    }
}

/// One session fewer in the loop's count of open sessions (never below zero).
pub(super) fn forget_open_session(open_sessions: &AtomicUsize) {
    let _ = open_sessions.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
        open.checked_sub(1)
    });
}
