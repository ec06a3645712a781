//! The native floor of the UDP echo scenario (udp64): no Python, one thread, one
//! edge-triggered epoll loop on one UDP socket. Each wakeup reads every waiting datagram
//! with `recvmmsg` (64 at a time) and sends each batch straight back to its senders with
//! one `sendmmsg`, from the same buffers: the least any server can spend per datagram.
//!
//! ```text
//! native_udp PORT     # prints "native_udp: listening on 127.0.0.1:PORT", runs until killed
//! ```
//!
//! When the kernel takes only part of a batch (its send buffer is full), the rest waits for
//! the EPOLLOUT edge and nothing more is read until it is out: the receive buffer then
//! fills and the kernel drops what does not fit, as UDP does.

use std::io::{self, Write as _};
use std::os::fd::AsRawFd;

use benchsys::{udp_loopback, Datagrams, Epoll};

/// Datagrams per `recvmmsg` and `sendmmsg`, as hamanet's reactor sends them.
const BATCH: usize = 64;
/// Room per datagram: more than the benchmark sends (a longer one is cut to this).
const SLOT: usize = 2048;

fn main() {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: native_udp PORT");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(port) {
        eprintln!("native_udp: {e}");
        std::process::exit(1);
    }
}

fn run(port: u16) -> io::Result<()> {
    let fd = udp_loopback(port, None)?;
    let ep = Epoll::new()?;
    let interest = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32;
    ep.add(fd.as_raw_fd(), interest, 0)?;
    println!("native_udp: listening on 127.0.0.1:{port}");
    io::stdout().flush()?;
    let mut batch = Datagrams::new(BATCH, SLOT);
    // Slots `unsent..received` of `batch` still to be echoed (the kernel had no room).
    let (mut unsent, mut received) = (0usize, 0usize);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 8];
    loop {
        ep.wait(&mut events, -1)?;
        loop {
            while unsent < received {
                match batch.send(&fd, unsent, received, true) {
                    Ok(n) => unsent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A datagram the kernel refuses (its peer gone, ...): skip it.
                    Err(_) => unsent += 1,
                }
            }
            if unsent < received {
                break; // the EPOLLOUT edge brings us back
            }
            match batch.recv(&fd, true) {
                Ok(n) => (unsent, received) = (0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error queued on the socket (a client gone): read on.
                Err(_) => {}
            }
        }
    }
}
