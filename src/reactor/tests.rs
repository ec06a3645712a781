//! The reactor driven by plain-Rust handlers, on loopback.

use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::JoinHandle;

/// A reactor on its own thread whose plain-Rust "handler" echoes every byte and closes
/// a session at the peer's EOF. The thread returns a log of what happened.
fn echo_reactor() -> (SocketAddr, Arc<LoopShared>, JoinHandle<Vec<String>>) {
    echo_reactor_with(None)
}

/// [`echo_reactor`] whose listener is TLS with `tls`; the log names a TLS failure's
/// reason.
pub(super) fn echo_reactor_with(
    tls: Option<Arc<crate::tls::ServerContext>>,
) -> (SocketAddr, Arc<LoopShared>, JoinHandle<Vec<String>>) {
    let (mut reactor, addr) = listening_reactor_with(LoopConfig::default(), tls);
    let shared = Arc::clone(reactor.shared());
    let thread = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut sessions: Vec<Option<Arc<SessionCore>>> = Vec::new();
        while !reactor.is_finished() {
            reactor.turn().expect("turn");
            for event in reactor.batch() {
                match event {
                    Event::Opened { token, session } => {
                        if sessions.len() <= token.slot() {
                            sessions.resize(token.slot() + 1, None);
                        }
                        sessions[token.slot()] = Some(Arc::clone(session));
                        log.push("opened".to_owned());
                    }
                    Event::Received { token, range } => {
                        let session = sessions[token.slot()].as_ref().expect("session");
                        session
                            .write(reactor.received(range.clone()))
                            .expect("write");
                    }
                    Event::Eof { token } => {
                        sessions[token.slot()].as_ref().expect("session").close();
                        log.push("eof".to_owned());
                    }
                    Event::ConnectFailed { error, .. } => {
                        reactor.shared().session_closed();
                        log.push(format!("failed {}", describe(error.as_ref())));
                    }
                    Event::Drained { .. }
                    | Event::PauseWriting { .. }
                    | Event::ResumeWriting { .. }
                    | Event::Timer { .. }
                    | Event::AcceptPaused { .. }
                    | Event::ProxyRefused { .. }
                    | Event::ReadingResumed { .. }
                    | Event::Stopping { .. } => {}
                    Event::EndpointOpened { .. }
                    | Event::Datagrams { .. }
                    | Event::DatagramFailed { .. }
                    | Event::EndpointStopping { .. }
                    | Event::EndpointClosed { .. } => unreachable!("no endpoints here"),
                    Event::Closed { token, error } => {
                        sessions[token.slot()] = None;
                        reactor.shared().session_closed();

                        log.push(format!("closed {}", describe(error.as_ref())));
                    }
                }
            }
        }
        log
    });
    (addr, shared, thread)
}

/// An error as the log shows it: its kind, or a TLS failure's reason.
fn describe(error: Option<&io::Error>) -> String {
    let Some(error) = error else {
        return "None".to_owned();
    };
    match error.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>()) {
        Some(failure) => format!("TLS {}", failure.reason),
        None => format!("Some({:?})", error.kind()),
    }
}

pub(super) fn stop(shared: &LoopShared, thread: JoinHandle<Vec<String>>) -> Vec<String> {
    assert!(shared.submit(Command::Stop(Instant::now() + Duration::from_secs(5))));
    let log = thread.join().expect("reactor thread");
    assert!(shared.status().sessions == 0);
    log
}

#[test]
fn echoes_bytes_in_order_and_closes_after_peer_eof() {
    let (addr, shared, thread) = echo_reactor();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let payload = pattern(1, 3_000_000);
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        let payload = payload.clone();
        std::thread::spawn(move || {
            stream.write_all(&payload).expect("send");
            stream.shutdown(Shutdown::Write).expect("shutdown");
        })
    };
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).expect("read to EOF");
    writer.join().expect("writer");
    assert!(echoed == payload, "echo differs from what was sent");
    let log = stop(&shared, thread);
    assert_eq!(log, ["opened", "eof", "closed None"]);
}

#[test]
fn sessions_never_see_each_others_bytes() {
    let (addr, shared, thread) = echo_reactor();
    let clients: Vec<_> = (0..20u8)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let payload = pattern(u32::from(seed), 200_000);
                let mut sender = stream.try_clone().expect("clone");
                let expected = payload.clone();
                let writer = std::thread::spawn(move || {
                    sender.write_all(&payload).expect("send");
                    sender.shutdown(Shutdown::Write).expect("shutdown");
                });
                let mut echoed = Vec::new();
                stream.read_to_end(&mut echoed).expect("read");
                writer.join().expect("writer");
                echoed == expected
            })
        })
        .collect();
    for client in clients {
        assert!(
            client.join().expect("client"),
            "a session got bytes that were not its own"
        );
    }
    let log = stop(&shared, thread);
    assert_eq!(log.iter().filter(|line| *line == "closed None").count(), 20);
}

/// `len` bytes unique to `seed` that never repeat with a short period, so bytes
/// misplaced by any distance (or taken from another session) are seen.
pub(super) fn pattern(seed: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B1) >> 24) as u8)
        .collect()
}

/// Raises this process's open-file limit to at least `want` (machines default to 1024).
fn ensure_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    if limit.rlim_cur < want {
        assert!(
            limit.rlim_max >= want,
            "the hard open-file limit is below {want}"
        );
        limit.rlim_cur = want;
        // SAFETY: `limit` is a valid rlimit within the hard limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

/// A reactor listening on a free loopback port.
pub(super) fn listening_reactor(config: LoopConfig) -> (Reactor, SocketAddr) {
    listening_reactor_with(config, None)
}

/// A reactor listening on a free loopback port, with TLS if `tls` is given.
fn listening_reactor_with(
    config: LoopConfig,
    tls: Option<Arc<crate::tls::ServerContext>>,
) -> (Reactor, SocketAddr) {
    let reactor = Reactor::new(config).expect("reactor");
    let any_port = "127.0.0.1:0".parse().expect("addr");
    let listener = net::listen(any_port, 64, false, &reactor.config().options).expect("listen");
    let bound = address::local_addr(listener.as_fd()).expect("addr");
    let Address::Inet(addr) = bound else {
        panic!("not inet")
    };
    assert!(reactor.shared().submit(Command::Listen(Listener {
        fd: listener,
        addr: bound,
        placement: Placement::Here,
        tls,
        proxy_header: None,
        socket_file: SocketFile::Ours,
    })));
    (reactor, addr)
}

/// Turns the reactor until a session opens; returns it.
fn next_opened(reactor: &mut Reactor) -> Arc<SessionCore> {
    let mut session = None;
    turn_until(reactor, |event| match event {
        Event::Opened { session: core, .. } => {
            session = Some(Arc::clone(core));
            true
        }
        _ => false,
    });
    session.expect("session")
}

/// Turns the reactor on this thread until `done` has seen what it waits for. A tick
/// timer (id 0) keeps any one turn from blocking for long.
pub(super) fn turn_until(reactor: &mut Reactor, mut done: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let tick = Instant::now() + Duration::from_millis(5);
        reactor.shared().submit(Command::Timer(0, tick));
        reactor.turn().expect("turn");
        // Every event of the batch is shown to `done`, also those after the awaited one.
        let seen = reactor
            .batch()
            .iter()
            .fold(false, |seen, event| done(event) | seen);
        if seen {
            return;
        }
    }
    panic!("the awaited event never came");
}

#[test]
fn a_queue_longer_than_the_accept_budget_is_accepted_whole() {
    // More connections queued before the first turn than it accepts (the listener is
    // served when it is registered and again for its first edge): the ones left raise
    // no new edge, so the listener must come back by itself.
    let count = 2 * ACCEPT_BUDGET + 44;
    ensure_open_files(2 * count as u64 + 64);
    let mut reactor = Reactor::new(LoopConfig::default()).expect("reactor");
    let options = reactor.config().options.clone();
    let any_port = "127.0.0.1:0".parse().expect("addr");
    let listener = net::listen(any_port, 1024, false, &options).expect("listen");
    let bound = address::local_addr(listener.as_fd()).expect("addr");
    // Non-blocking connects: a kernel whose backlog cap (somaxconn) is too small
    // fails the test below with the reason instead of hanging a connect.
    let clients: Vec<OwnedFd> = (0..count)
        .map(|_| net::connect_start(&bound, &options).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queued = net::queued_connections(listener.as_fd());
    while queued != Some(count) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        queued = net::queued_connections(listener.as_fd());
    }
    assert_eq!(
        queued,
        Some(count),
        "the accept queue must hold {count} connections (is net.core.somaxconn lower?)"
    );
    assert!(reactor.shared().submit(Command::Listen(Listener {
        fd: listener,
        addr: bound,
        placement: Placement::Here,
        tls: None,
        proxy_header: None,
        socket_file: SocketFile::Ours,
    })));
    let mut opened = 0;
    turn_until(&mut reactor, |event| {
        opened += usize::from(matches!(event, Event::Opened { .. }));
        opened == count
    });
    assert_eq!(reactor.stats.accepted, count as u64);
    drop(clients);
}

#[test]
fn idle_sessions_are_closed_with_timed_out_and_timers_fire_in_order() {
    let config = LoopConfig {
        idle_timeout: Some(Duration::from_millis(50)),
        ..LoopConfig::default()
    };
    let (mut reactor, addr) = listening_reactor(config);
    let now = Instant::now();
    reactor
        .shared()
        .submit(Command::Timer(2, now + Duration::from_millis(20)));
    reactor
        .shared()
        .submit(Command::Timer(1, now + Duration::from_millis(10)));
    reactor
        .shared()
        .submit(Command::Timer(3, now + Duration::from_millis(30)));
    reactor.shared().submit(Command::CancelTimer(3));
    let _silent = TcpStream::connect(addr).expect("connect");

    let mut fired = Vec::new();
    turn_until(&mut reactor, |event| match event {
        Event::Timer { id } if *id > 0 => {
            fired.push(*id);
            false
        }
        Event::Closed { error, .. } => {
            let kind = error.as_ref().map(io::Error::kind);
            assert_eq!(kind, Some(io::ErrorKind::TimedOut));
            true
        }
        _ => false,
    });
    assert_eq!(
        fired,
        [1, 2],
        "deadline order, the cancelled timer never fires"
    );
    assert_eq!(reactor.shared().stats().idle_timeouts, 1);
}

#[test]
fn a_peer_that_does_not_read_pauses_writing_until_it_drains() {
    let (mut reactor, addr) = listening_reactor(LoopConfig::default());
    let mut peer = TcpStream::connect(addr).expect("connect");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let session = next_opened(&mut reactor);
    let payload = pattern(0, 8_000_000);
    session.write(&payload).expect("write");
    let cap = session.state().limits.max;
    let err = session.write(&vec![0u8; cap]).expect_err("past the cap");
    assert!(matches!(err, crate::shared::Refusal::Full { .. }));
    turn_until(&mut reactor, |event| {
        matches!(event, Event::PauseWriting { .. })
    });

    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 8_000_000];
        peer.read_exact(&mut got).expect("read everything");
        got
    });
    turn_until(&mut reactor, |event| {
        matches!(event, Event::ResumeWriting { .. })
    });
    turn_until(&mut reactor, |_| reader.is_finished());
    assert!(reader.join().expect("reader") == payload, "bytes differ");
}

#[test]
fn stop_closes_open_sessions_gracefully() {
    let (addr, shared, thread) = echo_reactor();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(b"ping").expect("send");
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).expect("echo");
    let log = stop(&shared, thread);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after stop");
    assert!(rest.is_empty());
    assert_eq!(log, ["opened", "closed None"]);
}

#[test]
fn a_refused_peer_that_sent_first_reads_eof_and_the_refusal_is_freed() {
    let config = LoopConfig {
        max_connections: Some(1),
        ..LoopConfig::default()
    };
    let (mut reactor, addr) = listening_reactor(config);
    let _held = TcpStream::connect(addr).expect("connect");
    turn_until(&mut reactor, |event| matches!(event, Event::Opened { .. }));
    let mut refused = TcpStream::connect(addr).expect("connect");
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The request is in the server's queue before the reactor accepts and refuses it.
    refused.write_all(&[b'x'; 50_000]).expect("send");
    turn_until(&mut reactor, |_| reactor_refused(&refused));
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        refused.read_to_end(&mut rest).map(|_| rest.len())
    });
    turn_until(&mut reactor, |_| reader.is_finished());
    assert_eq!(reader.join().expect("reader").expect("EOF, not RST"), 0);
    refused_slots_drain(&mut reactor);
}

/// Whether the server has shut `peer`'s connection down for writing (FIN seen).
fn reactor_refused(peer: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    peer.set_nonblocking(true).expect("nonblocking");
    let eof = matches!(peer.peek(&mut byte), Ok(0));
    peer.set_nonblocking(false).expect("blocking");
    eof
}

/// Turns until no refused connection lingers (the peer closed, or the linger ended).
fn refused_slots_drain(reactor: &mut Reactor) {
    turn_until(reactor, |_| true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reactor.refusals.is_empty() {
        assert!(Instant::now() < deadline, "a refusal never ended");
        reactor.turn().expect("turn");
    }
    assert!(!reactor
        .slots
        .iter()
        .any(|slot| matches!(slot, Slot::Refused { .. })));
}

#[test]
fn idle_sweeps_stop_once_the_session_with_a_short_timeout_is_gone() {
    let (mut reactor, addr) = listening_reactor(LoopConfig::default());
    let _peer = TcpStream::connect(addr).expect("connect");
    let session = next_opened(&mut reactor);
    session.set_idle_timeout(Some(Duration::from_millis(20)));
    turn_until(&mut reactor, |event| matches!(event, Event::Closed { .. }));
    assert!(reactor.idle.next.is_some(), "swept while the session lived");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reactor.idle.next.is_some() {
        assert!(
            Instant::now() < deadline,
            "idle sweeps went on with no timeout in force"
        );
        reactor
            .shared()
            .submit(Command::Timer(0, Instant::now() + Duration::from_millis(5)));
        reactor.turn().expect("turn");
    }
}
