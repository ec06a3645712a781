//! A listener that expects the PROXY header, driven on this thread.

use super::tests::turn_until;
use super::*;
use crate::shared::SocketFile;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A reactor whose loopback listener expects the PROXY header within `timeout`.
fn proxied_reactor(timeout: Duration) -> (Reactor, SocketAddr) {
    let reactor = Reactor::new(LoopConfig::default()).expect("reactor");
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
        tls: None,
        proxy_header: Some(timeout),
        socket_file: SocketFile::Ours,
    })));
    (reactor, addr)
}

/// Turns until the next refusal; returns its error.
fn next_refusal(reactor: &mut Reactor) -> io::Error {
    let mut refusal = None;
    turn_until(reactor, |event| match event {
        Event::Opened { .. } | Event::Received { .. } => panic!("{event:?} without a header"),
        Event::ProxyRefused { error, .. } => {
            refusal = Some(io::Error::new(error.kind(), error.to_string()));
            true
        }
        _ => false,
    });
    refusal.expect("a refusal")
}

#[test]
fn the_header_gives_the_session_its_addresses_and_what_follows_is_its_input() {
    let (mut reactor, addr) = proxied_reactor(Duration::from_secs(5));
    let mut peer = TcpStream::connect(addr).expect("connect");
    peer.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 1234 443\r\nafter")
        .expect("write");
    let mut opened = None;
    let mut received = Vec::new();
    turn_until(&mut reactor, |event| {
        if let Event::Opened { session, .. } = event {
            opened = Some(Arc::clone(session));
        }
        if let Event::Received { range, .. } = event {
            received.push(range.clone());
        }
        !received.is_empty()
    });
    let got: Vec<u8> = received
        .into_iter()
        .flat_map(|range| reactor.received(range).to_vec())
        .collect();
    assert_eq!(got, b"after");
    let session = opened.expect("opened before its input");
    assert_eq!(
        session.peer,
        Address::Inet("192.0.2.1:1234".parse().expect("addr"))
    );
    assert_eq!(
        session.local,
        Address::Inet("198.51.100.2:443".parse().expect("addr"))
    );
    let proxy = session.proxy().expect("the header's facts");
    assert_eq!(proxy.proxy, Address::Inet(peer.local_addr().expect("addr")));
    assert_eq!((proxy.version, proxy.tlvs.len()), (1, 0));
}

#[test]
fn a_bad_header_is_refused_with_fin_and_never_opens() {
    let (mut reactor, addr) = proxied_reactor(Duration::from_secs(5));
    let mut peer = TcpStream::connect(addr).expect("connect");
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let error = next_refusal(&mut reactor);
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(error.to_string(), "no PROXY protocol header");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    // The refused connection lingers, its input read away, until our EOF.
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut turned = 0;
    while turned < 50
        && !reactor
            .slots
            .iter()
            .all(|s| !matches!(s, Slot::Refused { .. }))
    {
        reactor.turn_now().expect("turn");
        turned += 1;
    }
    assert_eq!(peer.read_to_end(&mut rest).expect("EOF, not RST"), 0);
    assert_eq!(reactor.stats.proxy_refused, 1);
    assert_eq!(reactor.config.open_sessions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_silent_peer_is_refused_at_the_deadline_and_a_partial_one_at_its_eof() {
    let (mut reactor, addr) = proxied_reactor(Duration::from_millis(50));
    let _silent = TcpStream::connect(addr).expect("connect");
    let error = next_refusal(&mut reactor);
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    let mut partial = TcpStream::connect(addr).expect("connect");
    partial.write_all(b"PROXY TCP4 192.0").expect("write");
    partial
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // The refusals are reported once a second at most: counted, not necessarily reported.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reactor.stats.proxy_refused < 2 && Instant::now() < deadline {
        reactor
            .shared()
            .submit(Command::Timer(0, Instant::now() + Duration::from_millis(5)));
        reactor.turn().expect("turn");
        assert!(!reactor
            .batch()
            .iter()
            .any(|e| matches!(e, Event::Opened { .. })));
    }
    assert_eq!(reactor.stats.proxy_refused, 2);
    let awaiting = |slot: &Slot| matches!(slot, Slot::AwaitingHeader(_));
    assert!(!reactor.slots.iter().any(awaiting));
}
