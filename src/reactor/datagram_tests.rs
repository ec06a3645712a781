//! Datagram endpoints in the reactor, driven turn by turn on loopback: a wakeup's
//! datagrams in one batch, the budget, the queue sent with few sendmmsg calls, truncation,
//! the queue's bound, ICMP errors, close and stop.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;
use crate::shared::{Binding, DatagramCore, DatagramLimits};
use crate::sys::datagram::{self, DatagramOptions};

const WAIT: Duration = Duration::from_secs(10);

/// A reactor with one endpoint bound on loopback (registered by a first turn).
fn reactor_with_endpoint(
    limits: DatagramLimits,
    options: &DatagramOptions,
    peer: Option<SocketAddr>,
) -> (Reactor, Arc<DatagramCore>) {
    let mut reactor = Reactor::new(LoopConfig::default()).expect("reactor");
    let fd = datagram::bind("127.0.0.1:0".parse().expect("addr"), options).expect("bind");
    if let Some(peer) = peer {
        datagram::connect(fd.as_fd(), peer).expect("connect");
    }
    let local = match address::local_addr(fd.as_fd()).expect("local") {
        Address::Inet(inet) => inet,
        Address::Unix(_) => unreachable!("a UDP socket"),
    };
    let core = DatagramCore::new(Arc::clone(reactor.shared()), (local, peer), limits, false);
    assert!(reactor.shared().bind(Binding {
        core: Arc::clone(&core),
        fd,
    }));
    reactor.turn_now().expect("turn");
    assert!(matches!(reactor.batch(), [Event::EndpointOpened { .. }]));
    (reactor, core)
}

/// A plain socket to talk to the endpoint with.
fn peer() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    socket
}

/// Turns (without waiting in the reactor) until a turn produces `want`, or fails.
fn turn_until(reactor: &mut Reactor, want: impl Fn(&Event) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        reactor.turn_now().expect("turn");
        if reactor.batch().iter().any(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "no such event within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A datagram as a test looks at it: its bytes, its sender, whether it was truncated.
type Seen = (Vec<u8>, Option<SocketAddr>, bool);

/// The datagrams of each of the turn's datagram events.
fn received(reactor: &Reactor) -> Vec<Vec<Seen>> {
    reactor
        .batch()
        .iter()
        .filter_map(|event| match event {
            Event::Datagrams { datagrams, .. } => {
                let (bytes, items) = reactor.datagrams(datagrams.clone());
                Some(
                    items
                        .iter()
                        .map(|d| (bytes[d.range.clone()].to_vec(), d.from, d.truncated))
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

fn payload(i: usize) -> Vec<u8> {
    (0..(i % 300) + 1).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn what_arrived_before_a_wakeup_is_one_batch_in_order() {
    let (mut reactor, core) =
        reactor_with_endpoint(DatagramLimits::DEFAULT, &Default::default(), None);
    let sender = peer();
    for i in 0..40 {
        sender.send_to(&payload(i), core.local).expect("send");
    }
    turn_until(&mut reactor, |e| matches!(e, Event::Datagrams { .. }));
    let batches = received(&reactor);
    assert_eq!(batches.len(), 1, "one event for the endpoint in this turn");
    let from = sender.local_addr().expect("addr");
    let got: Vec<_> = batches[0].iter().map(|(bytes, ..)| bytes.clone()).collect();
    assert_eq!(
        got,
        (0..40).map(payload).collect::<Vec<_>>(),
        "every byte, in order"
    );
    assert!(batches[0]
        .iter()
        .all(|(_, addr, truncated)| *addr == Some(from) && !truncated));
    let stats = reactor.stats;
    assert_eq!(stats.datagrams_in, 40);
    // At the default size a recvmmsg takes 16 datagrams: 40 need 3 calls, and the third
    // one's short batch proves the queue empty (no fourth call for EAGAIN).
    assert_eq!(stats.datagram_recv_calls, 3);
}

#[test]
fn a_flood_is_cut_at_the_budget_and_served_again_without_a_new_edge() {
    let options = DatagramOptions {
        recv_buffer: Some(4 * 1024 * 1024),
        ..Default::default()
    };
    let limits = DatagramLimits {
        max_datagram_size: 512,
        ..DatagramLimits::DEFAULT
    };
    let (mut reactor, core) = reactor_with_endpoint(limits, &options, None);
    let sender = peer();
    let total = DATAGRAM_BUDGET + 44;
    for i in 0..total {
        sender.send_to(&payload(i), core.local).expect("send");
    }
    turn_until(&mut reactor, |e| matches!(e, Event::Datagrams { .. }));
    let first = received(&reactor).concat();
    assert_eq!(first.len(), DATAGRAM_BUDGET, "the budget cuts the turn");
    // Nothing new arrives: only the re-queue brings the rest.
    reactor.turn_now().expect("turn");
    let second = received(&reactor).concat();
    assert_eq!(second.len(), total - DATAGRAM_BUDGET);
    let all: Vec<_> = first.into_iter().chain(second).map(|(b, ..)| b).collect();
    assert_eq!(all, (0..total).map(payload).collect::<Vec<_>>());
}

#[test]
fn the_queue_goes_out_in_few_sendmmsg_calls() {
    let (mut reactor, core) =
        reactor_with_endpoint(DatagramLimits::DEFAULT, &Default::default(), None);
    let receiver = peer();
    let to = receiver.local_addr().expect("addr");
    for i in 0..100 {
        core.send(&payload(i), Some(to)).expect("queued");
    }
    reactor.turn_now().expect("turn");
    assert_eq!(core.queued(), (0, 0), "one turn sent the whole queue");
    assert_eq!(reactor.stats.datagrams_out, 100);
    assert_eq!(reactor.stats.datagram_send_calls, 2, "64 + 36 datagrams");
    let mut buf = [0u8; 2048];
    for i in 0..100 {
        let (n, from) = receiver.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..n], payload(i).as_slice());
        assert_eq!(from, core.local);
    }
}

#[test]
fn a_datagram_over_max_datagram_size_is_marked_truncated_with_its_size() {
    let limits = DatagramLimits {
        max_datagram_size: 100,
        ..DatagramLimits::DEFAULT
    };
    let (mut reactor, core) = reactor_with_endpoint(limits, &Default::default(), None);
    let sender = peer();
    sender.send_to(&[9u8; 300], core.local).expect("send");
    sender.send_to(b"whole", core.local).expect("send");
    turn_until(&mut reactor, |e| matches!(e, Event::Datagrams { .. }));
    let mut items = Vec::new();
    for event in reactor.batch() {
        if let Event::Datagrams { datagrams, .. } = event {
            items.extend(reactor.datagrams(datagrams.clone()).1.iter().cloned());
        }
    }
    assert_eq!(items.len(), 2);
    assert!(items[0].truncated);
    assert_eq!((items[0].range.len(), items[0].size), (100, 300));
    assert!(!items[1].truncated);
    assert_eq!(items[1].size, 5);
    assert_eq!(reactor.stats.datagrams_truncated, 1);
}

#[test]
fn a_full_queue_refuses_and_the_reactor_counts_the_drop() {
    let limits = DatagramLimits {
        max_queue: 2,
        ..DatagramLimits::DEFAULT
    };
    let (mut reactor, core) = reactor_with_endpoint(limits, &Default::default(), None);
    let to = Some(peer().local_addr().expect("addr"));
    core.send(b"1", to).expect("first");
    core.send(b"2", to).expect("second");
    assert!(core.send(b"3", to).is_err(), "the third is refused");
    reactor.turn_now().expect("turn");
    assert_eq!(reactor.stats.datagrams_out, 2);
    assert_eq!(reactor.stats.datagrams_dropped, 1);
    core.send(b"4", to)
        .expect("room again once the queue was sent");
}

#[test]
fn icmp_port_unreachable_is_reported_and_the_endpoint_goes_on() {
    let closed = peer();
    let gone = closed.local_addr().expect("addr");
    drop(closed);
    let (mut reactor, core) =
        reactor_with_endpoint(DatagramLimits::DEFAULT, &Default::default(), Some(gone));
    core.send(b"anyone?", None).expect("queued");
    turn_until(&mut reactor, |e| matches!(e, Event::DatagramFailed { .. }));
    let failure = reactor
        .batch()
        .iter()
        .find_map(|e| match e {
            Event::DatagramFailed { failure, .. } => Some(failure),
            _ => None,
        })
        .expect("failure");
    assert_eq!(failure.error.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(failure.peer, Some(gone));
    assert_eq!(reactor.stats.datagram_errors, 1);
    // Still open: another send is taken (and refused again by the kernel, later).
    core.send(b"still here", None)
        .expect("the endpoint is open");
    assert!(!core.state().closed);
}

#[test]
fn close_sends_the_queue_first_and_stop_closes_endpoints() {
    let (mut reactor, core) =
        reactor_with_endpoint(DatagramLimits::DEFAULT, &Default::default(), None);
    let receiver = peer();
    let to = Some(receiver.local_addr().expect("addr"));
    core.send(b"last words", to).expect("queued");
    core.close();
    assert!(core.send(b"after", to).is_err(), "closing refuses more");
    reactor.turn_now().expect("turn");
    assert!(reactor
        .batch()
        .iter()
        .any(|e| matches!(e, Event::EndpointClosed { error: None, .. })));
    let mut buf = [0u8; 64];
    let (n, _) = receiver.recv_from(&mut buf).expect("recv");
    assert_eq!(&buf[..n], b"last words");
    reactor.shared().endpoint_closed(); // as the handler layer does on delivery

    let (mut reactor, core) =
        reactor_with_endpoint(DatagramLimits::DEFAULT, &Default::default(), None);
    assert!(reactor
        .shared()
        .submit(Command::Stop(Instant::now() + WAIT)));
    reactor.turn_now().expect("turn");
    assert!(core.state().closed);
    assert!(
        reactor.is_finished(),
        "nothing left open: the reactor finished"
    );
}

#[test]
fn eagain_keeps_the_rest_queued_and_room_to_send_resumes_it() {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    // Loopback UDP hardly ever says EAGAIN (a datagram's buffer is freed as it is sent),
    // but a Unix datagram socket does once its peer's queue is full: the same path.
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::Datagram, None, flags).expect("socketpair");
    let mut reactor = Reactor::new(LoopConfig::default()).expect("reactor");
    let named = "127.0.0.1:9".parse().expect("addr");
    let core = DatagramCore::new(
        Arc::clone(reactor.shared()),
        (named, Some(named)),
        DatagramLimits::DEFAULT,
        false,
    );
    assert!(reactor.shared().bind(Binding {
        core: Arc::clone(&core),
        fd: ours,
    }));
    reactor.turn_now().expect("turn");
    let total = 500;
    for i in 0..total {
        core.send(&payload(i), None).expect("queued");
    }
    reactor.turn_now().expect("turn");
    let left = core.queued().0;
    assert!(
        left > 0 && left < total,
        "EAGAIN kept the rest queued ({left} left)"
    );
    let sent_before = reactor.stats.datagrams_out;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + WAIT;
    while got.len() < total {
        assert!(
            Instant::now() < deadline,
            "stalled at {} datagrams",
            got.len()
        );
        // The peer reads what it holds; room to send is reported, the queue goes on.
        while let Ok(n) = net::recv(theirs.as_fd(), &mut buf) {
            got.push(buf[..n].to_vec());
        }
        reactor.turn_now().expect("turn");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        reactor.stats.datagrams_out > sent_before,
        "resumed on writability"
    );
    assert_eq!(
        got,
        (0..total).map(payload).collect::<Vec<_>>(),
        "all, in order"
    );
    assert_eq!(
        reactor.stats.datagrams_dropped, 0,
        "a full kernel buffer drops nothing"
    );
}
