//! Accepting: listeners, exactly the queued connections per wakeup, and the sessions
//! they open (or refuse, past `max_connections`).

use super::*;

impl Reactor {
    pub(super) fn add_listener(&mut self, listener: Listener) {
        if self.stop_deadline.is_some() {
            // Opened as the server stopped: close it at once, as stop closes the others.
            close_listener(listener);
            return;
        }
        let Some((index, token)) =
            self.allocate_registered(listener.fd.as_fd(), Poller::add_listener)
        else {
            return;
        };
        self.slots[index] = Slot::Listener {
            generation: token.generation(),
            listener,
        };
        // Connections may already be queued: an edge for them will not come. Accepted
        // after this turn's wait (which `again` makes a poll), so what accepting them
        // changes is published at the end of the turn, not after a wait that may be long
        // (a connection awaiting its PROXY header adds no event that would cut it short).
        self.again.push(token);
    }

    pub(super) fn accept_ready(&mut self, token: Token) {
        if self.accept_paused_until.is_some() || self.stop_deadline.is_some() {
            return;
        }
        let Some(Slot::Listener { listener, .. }) = self.slots.get(token.slot()) else {
            return;
        };
        let fd = &listener.fd;
        // A TCP listener tells how many connections are queued: exactly those are
        // accepted, and any arriving meanwhile raise a new edge. A Unix listener cannot
        // tell, so it is accepted from until EAGAIN.
        let queued = net::queued_connections(fd.as_fd());
        for _ in 0..queued.map_or(ACCEPT_BUDGET, |n| n.min(ACCEPT_BUDGET)) {
            let Some(Slot::Listener { listener, .. }) = self.slots.get(token.slot()) else {
                return;
            };
            match net::accept(listener.fd.as_fd()) {
                Ok(Some((stream, peer))) => {
                    self.accept_pause_reported = false;
                    let from = Accepted {
                        addr: listener.addr.clone(),
                        placement: listener.placement,
                        tls: listener.tls.clone(),
                        proxy_header: listener.proxy_header,
                    };
                    self.open_accepted(stream, peer, from);
                }
                Ok(None) => return,
                Err(err) => {
                    // The connection stays queued in the kernel; retry after a pause
                    // instead of spinning on an accept that cannot succeed (out of fds
                    // or memory) or giving up on the backlog until a new edge (anything
                    // else `net::accept` did not already retry).
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.stats.accept_pauses += 1;
                    if !self.accept_pause_reported {
                        self.accept_pause_reported = true;
                        self.batch.push(Event::AcceptPaused { error: err });
                    }
                    return;
                }
            }
        }
        if queued.is_none_or(|n| n > ACCEPT_BUDGET) {
            // The budget ran out with connections possibly left, which raise no new edge.
            self.again.push(token);
        }
    }

    pub(super) fn open_accepted(&mut self, stream: OwnedFd, peer: Option<Address>, from: Accepted) {
        self.stats.accepted += 1;
        if self
            .config
            .max_connections
            .is_some_and(|max| self.config.open_sessions.load(Ordering::Relaxed) >= max)
        {
            self.stats.refused_by_limit += 1;
            self.refuse(stream);
            return;
        }
        let (peer, local) = match &from.addr {
            // A Unix peer is unnamed; the local address is the listener's path.
            Address::Unix(_) => (Address::Unix(Default::default()), from.addr.clone()),
            Address::Inet(inet) => {
                // A peer that reset before we got here may have no address: drop it.
                let Some(peer) = peer.or_else(|| address::peer_addr(stream.as_fd()).ok()) else {
                    return;
                };
                let local = if inet.ip().is_unspecified() {
                    match address::local_addr(stream.as_fd()) {
                        Ok(local) => local,
                        Err(_) => return,
                    }
                } else {
                    from.addr.clone()
                };
                (peer, local)
            }
        };
        let ends = Ends { peer, local };
        match from.proxy_header {
            Some(timeout) => self.await_proxy_header(stream, ends, from, timeout),
            None => self.start_session(stream, ends, from, None),
        }
    }

    /// Makes the session of an accepted connection (whose PROXY header, if its listener
    /// asked for one, has been read: `proxy`) and registers it here or hands it to the
    /// reactor whose turn it is.
    pub(super) fn start_session(
        &mut self,
        stream: OwnedFd,
        Ends { peer, local }: Ends,
        from: Accepted,
        proxy: Option<crate::proxy::ProxyInfo>,
    ) {
        let tls = match from
            .tls
            .map(|context| TlsStream::server(&context))
            .transpose()
        {
            Ok(tls) => tls.map(Box::new),
            // Only when out of memory (rustls's own allocations): drop the connection.
            Err(_) => return,
        };
        let limits = self.config.limits;
        let owner = match from.placement {
            Placement::Spread => self.config.siblings.next_owner(&self.shared).cloned(),
            Placement::Here => None,
        };
        let core = SessionCore::new(
            Arc::clone(owner.as_ref().unwrap_or(&self.shared)),
            peer,
            local,
            limits,
        );
        if let Some(proxy) = proxy {
            core.set_proxy(proxy);
        }
        if let Some(owner) = owner {
            // Another reactor's turn: it registers the session as its own. If it has
            // stopped, the connection is dropped, as a stopping reactor drops its own.
            // Counted here, at once: the next accept (on any reactor) must see it.
            self.config.open_sessions.fetch_add(1, Ordering::Relaxed);
            let adoption = Adoption {
                core,
                fd: stream,
                arrival: Arrival::HandedOver,
                tls,
            };
            if !owner.adopt(adoption) {
                forget_open_session(&self.config.open_sessions);
            }
            return;
        }
        self.register(stream, core, Origin::Accepted, None, tls);
    }

    /// Closes every listener; with `accept_queued`, first accepts what is queued (a drain
    /// serves it; a stop would only close it).
    pub(super) fn close_listeners(&mut self, accept_queued: bool) {
        for token in self.listener_tokens() {
            if let Some(Slot::Listener { listener, .. }) = self.slots.get(token.slot()) {
                // An adopted socket stays open in other processes, and closing our copy
                // would not take it out of this epoll, which would go on taking its
                // EPOLLEXCLUSIVE wakeups from the process that serves it next.
                let _ = self.poller.delete(listener.fd.as_fd());
            }
            if accept_queued {
                // A wakeup for these may have come here already, and none will go to
                // the next process.
                self.accept_ready(token);
            }
            if let Slot::Listener { listener, .. } = self.vacate(token) {
                close_listener(listener);
            }
        }
    }
}

/// The listener a connection was accepted from, as far as its session cares.
pub(super) struct Accepted {
    addr: Address,
    placement: Placement,
    tls: Option<Arc<crate::tls::ServerContext>>,
    proxy_header: Option<Duration>,
}

/// A connection's two ends, as its session will report them.
pub(super) struct Ends {
    pub(super) peer: Address,
    pub(super) local: Address,
}

/// Closes a listener; for a Unix socket this loop bound also removes its file, which
/// would otherwise outlive the server and need removing by hand. An adopted socket's
/// file is left to whoever bound it, who may still be serving it.
pub(super) fn close_listener(listener: Listener) {
    drop(listener.fd);
    if let (Address::Unix(path), SocketFile::Ours) = (listener.addr, listener.socket_file) {
        let _ = std::fs::remove_file(path);
    }
}
