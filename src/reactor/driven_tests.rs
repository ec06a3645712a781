//! A reactor driven from outside (as `hamanet.aio` drives it from asyncio): the outer
//! loop waits on its epoll fd and calls `turn_now`, and `park` says when to call again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::tests::listening_reactor;
use super::*;

/// Waits up to `timeout` for `fd` to be readable, as an outer event loop would.
fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    // SAFETY: `fd` is the reactor's epoll fd, open for the whole test.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    net::wait_ready(fd, false, timeout).expect("poll")
}

#[test]
fn the_epoll_fd_says_when_to_turn_and_park_says_how_long_to_wait() {
    let (mut reactor, addr) = listening_reactor(LoopConfig::default());
    let epoll_fd = reactor.epoll_fd();
    // The listener was queued as a command: the first turn runs it.
    reactor.turn_now().expect("turn");
    assert_eq!(
        reactor.park(),
        None,
        "nothing is due: only readiness brings work"
    );
    assert!(
        !readable(epoll_fd, Duration::from_millis(50)),
        "nothing is ready yet"
    );

    // A peer connects and writes: the epoll fd becomes readable, one turn serves it.
    let mut peer = TcpStream::connect(addr).expect("connect");
    peer.write_all(b"ping").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut session = None;
    let mut received = Vec::new();
    while received != b"ping" && Instant::now() < deadline {
        assert!(
            readable(epoll_fd, Duration::from_secs(5)),
            "readiness must show"
        );
        reactor.turn_now().expect("turn");
        for event in reactor.batch() {
            match event {
                Event::Opened { session: core, .. } => session = Some(Arc::clone(core)),
                Event::Received { range, .. } => {
                    received.extend_from_slice(reactor.received(range.clone()));
                }
                _ => {}
            }
        }
        reactor.park();
    }
    assert_eq!(received, b"ping");
    let session = session.expect("opened");

    // A write from another thread while the reactor is parked wakes it through the fd.
    let writer = std::thread::spawn(move || session.write(b"pong").expect("write"));
    writer.join().expect("writer");
    assert!(
        readable(epoll_fd, Duration::from_secs(5)),
        "the waker must show"
    );
    reactor.turn_now().expect("turn");
    let mut echo = [0; 4];
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    peer.read_exact(&mut echo).expect("read");
    assert_eq!(&echo, b"pong");

    // A timer is a deadline the fd never shows: park says when.
    reactor.shared().submit(Command::Timer(
        7,
        Instant::now() + Duration::from_millis(30),
    ));
    reactor.turn_now().expect("turn");
    let wait = reactor.park().expect("a timer is due later");
    assert!(wait <= Duration::from_millis(30));
    std::thread::sleep(wait);
    reactor.turn_now().expect("turn");
    assert!(reactor
        .batch()
        .iter()
        .any(|event| matches!(event, Event::Timer { id: 7 })));
}
