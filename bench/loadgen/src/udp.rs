//! `udp`: `conns` UDP sockets, each connected to the server and keeping `depth` datagrams
//! of `size` bytes in flight. Every datagram carries its sequence number (8 bytes, little
//! endian) and then `size - 8` bytes of the socket's pattern at an offset fixed by that
//! number, so every echoed byte is checked: a datagram of another length, from another
//! socket's stream, with a number never sent or echoed twice fails the run.
//!
//! UDP may drop: a datagram not echoed within `--loss-timeout` (0.2 s) is counted lost and
//! replaced by a new one, so the count in flight stays `depth`; an echo that comes after
//! that is counted late (not an error). The run fails if more than `--max-loss` (0.01) of
//! the datagrams sent were lost, or if nothing is echoed for 5 s. A datagram completes when
//! its echo has come back verified; its latency runs from its sending to then. At the end
//! nothing new is sent and every datagram in flight must come back or time out.
//!
//! Sending and receiving are batched (`sendmmsg` of a socket's new datagrams, `recvmmsg` of
//! up to 64 echoes), so the load generator stays much cheaper than the servers it measures.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use benchsys::{udp_loopback, Datagrams, Epoll};

use crate::pattern::Pattern;
use crate::report::{Latencies, Report};
use crate::window::Window;
use crate::{Config, STALL};

const BATCH: usize = 64;
/// The sequence number before the pattern bytes.
const HEADER: usize = 8;
/// How often datagrams in flight are checked against the loss timeout.
const SCAN: Duration = Duration::from_millis(5);

struct Slot {
    issued: Instant,
    done: bool,
}

struct Sock {
    fd: OwnedFd,
    id: u64,
    start: u64,
    /// The sequence number of `slots[0]`; `slots[i]` is `base + i`.
    base: u64,
    slots: VecDeque<Slot>,
    next_seq: u64,
    /// Issued, neither echoed nor given up as lost.
    in_flight: usize,
    /// Issued but not yet taken by the kernel (its send buffer was full), oldest first.
    unsent: VecDeque<u64>,
    /// Given up as lost: an echo of one of these later is late, not a duplicate.
    lost: HashSet<u64>,
}

impl Sock {
    fn issue(&mut self, at: Instant) {
        self.slots.push_back(Slot {
            issued: at,
            done: false,
        });
        self.unsent.push_back(self.next_seq);
        self.next_seq += 1;
        self.in_flight += 1;
    }

    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.done) {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

/// Totals over every socket.
#[derive(Default)]
struct Counts {
    sent: u64,
    lost: u64,
    late: u64,
    verified: u64,
}

fn fill(pattern: &Pattern, sock: &Sock, seq: u64, size: usize, out: &mut [u8]) {
    out[..HEADER].copy_from_slice(&seq.to_le_bytes());
    let off = seq * size as u64 + HEADER as u64;
    out[HEADER..size].copy_from_slice(pattern.slice(sock.start, off, size - HEADER));
}

/// Sends what `sock` has issued, `sendmmsg` by `sendmmsg`, until all is out or the kernel
/// has no room (the rest goes when epoll reports room).
fn flush(
    sock: &mut Sock,
    batch: &mut Datagrams,
    pattern: &Pattern,
    size: usize,
    counts: &mut Counts,
) -> Result<(), String> {
    while !sock.unsent.is_empty() {
        let k = sock.unsent.len().min(batch.count());
        for i in 0..k {
            let seq = sock.unsent[i];
            fill(pattern, sock, seq, size, batch.slot_mut(i));
            batch.set_len(i, size);
        }
        match batch.send(&sock.fd, 0, k, false) {
            Ok(n) => {
                sock.unsent.drain(..n);
                counts.sent += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("socket {}: sendmmsg: {e}", sock.id)),
        }
    }
    Ok(())
}

pub fn run(cfg: &Config) -> Result<Report, String> {
    let size = cfg.size;
    if !(HEADER + 1..=65_507).contains(&size) {
        return Err(format!(
            "udp: --size must be from {} to 65507, not {size}",
            HEADER + 1
        ));
    }
    let depth = cfg.depth;
    let pattern = Pattern::new();
    let ep = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let interest = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32;
    let mut socks = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let fd = udp_loopback(0, Some(cfg.port))
            .map_err(|e| format!("socket {i}: UDP socket to 127.0.0.1:{}: {e}", cfg.port))?;
        ep.add(fd.as_raw_fd(), interest, i as u64)
            .map_err(|e| format!("socket {i}: epoll_ctl: {e}"))?;
        socks.push(Sock {
            fd,
            id: i as u64,
            start: pattern.start(i as u64),
            base: 0,
            slots: VecDeque::with_capacity(depth * 2),
            next_seq: 0,
            in_flight: 0,
            unsent: VecDeque::with_capacity(depth),
            lost: HashSet::new(),
        });
    }
    // Send batches of up to 64; receive slots with room to spare, so a longer echo shows.
    let mut out = Datagrams::new(BATCH, size);
    let mut inp = Datagrams::new(BATCH, size + 64);
    let mut counts = Counts::default();
    let begun = Instant::now();
    for s in &mut socks {
        for _ in 0..depth {
            s.issue(begun);
        }
        flush(s, &mut out, &pattern, size, &mut counts)?;
    }
    let mut window = Window::new(cfg.warmup, cfg.duration, cfg.server_pid);
    let mut latencies = Latencies::default();
    let mut messages: u64 = 0;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut last_progress = Instant::now();
    let mut last_scan = Instant::now();

    loop {
        let now = Instant::now();
        window.tick(now, true)?;
        if !window.starting() && socks.iter().all(|s| s.in_flight == 0) {
            break;
        }
        if now - last_progress > STALL {
            let stuck: usize = socks.iter().map(|s| s.in_flight).sum();
            return Err(format!(
                "no datagram echoed for {STALL:?} with {stuck} in flight (server hung or gone?)"
            ));
        }
        // Datagrams in flight longer than the loss timeout are given up and replaced.
        if now - last_scan >= SCAN {
            last_scan = now;
            for s in &mut socks {
                let mut gave_up = 0;
                for (i, slot) in s.slots.iter_mut().enumerate() {
                    if now - slot.issued < cfg.loss_timeout {
                        break; // issued in order: the rest are younger
                    }
                    if !slot.done {
                        slot.done = true;
                        s.lost.insert(s.base + i as u64);
                        gave_up += 1;
                    }
                }
                if gave_up == 0 {
                    continue;
                }
                s.trim();
                s.in_flight -= gave_up;
                counts.lost += gave_up as u64;
                if window.starting() {
                    for _ in 0..gave_up {
                        s.issue(now);
                    }
                }
                flush(s, &mut out, &pattern, size, &mut counts)?;
            }
        }

        let n = ep
            .wait(&mut events, 5)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let s = &mut socks[ev.u64 as usize];
            let mut echoed = 0;
            loop {
                let got = match inp.recv(&s.fd, false) {
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        return Err(format!(
                            "socket {}: port {} unreachable (nothing listens there?)",
                            s.id, cfg.port
                        ))
                    }
                    Err(e) => return Err(format!("socket {}: recvmmsg: {e}", s.id)),
                };
                let at = Instant::now();
                for i in 0..got {
                    let d = inp.get(i);
                    if d.len() != size {
                        return Err(format!(
                            "socket {}: an echo of {} bytes, not {size}",
                            s.id,
                            d.len()
                        ));
                    }
                    let mut head = [0u8; HEADER];
                    head.copy_from_slice(&d[..HEADER]);
                    let seq = u64::from_le_bytes(head);
                    if seq >= s.next_seq {
                        return Err(format!(
                            "socket {}: an echo numbered {seq}, never sent (next is {})",
                            s.id, s.next_seq
                        ));
                    }
                    let off = seq * size as u64 + HEADER as u64;
                    if let Err(m) = pattern.verify(s.start, off, &d[HEADER..]) {
                        return Err(format!(
                            "socket {}: datagram {seq}: byte {} is {:#04x}, expected {:#04x}",
                            s.id,
                            HEADER as u64 + m.offset - off,
                            m.got,
                            m.expected
                        ));
                    }
                    counts.verified += size as u64;
                    let slot = seq
                        .checked_sub(s.base)
                        .and_then(|i| s.slots.get_mut(i as usize))
                        .filter(|slot| !slot.done);
                    match slot {
                        Some(slot) => {
                            slot.done = true;
                            echoed += 1;
                            if window.measuring() {
                                latencies.record(at - slot.issued);
                                messages += 1;
                            }
                        }
                        None if s.lost.remove(&seq) => counts.late += 1,
                        None => {
                            return Err(format!("socket {}: datagram {seq} echoed twice", s.id))
                        }
                    }
                }
                if got > 0 {
                    last_progress = at;
                }
                // A short batch: the queue was empty at that instant, and a datagram that
                // arrives later raises a new edge.
                if got < inp.count() {
                    break;
                }
            }
            if echoed > 0 {
                s.trim();
                s.in_flight -= echoed;
                if window.starting() {
                    let at = Instant::now();
                    for _ in 0..echoed {
                        s.issue(at);
                    }
                }
            }
            flush(s, &mut out, &pattern, size, &mut counts)?;
        }
    }

    let (seconds, cpu) = window.result();
    let rate = counts.lost as f64 / counts.sent.max(1) as f64;
    if rate > cfg.max_loss {
        return Err(format!(
            "{} of {} datagrams ({:.3}%) not echoed within {:?} (at most {:.3}% may be)",
            counts.lost,
            counts.sent,
            rate * 100.0,
            cfg.loss_timeout,
            cfg.max_loss * 100.0
        ));
    }
    Ok(Report::new("udp")
        .int("conns", cfg.conns as u64)
        .int("size", size as u64)
        .int("depth", depth as u64)
        .measured(messages, seconds, latencies, counts.verified)
        .int("datagrams_sent", counts.sent)
        .int("datagrams_lost", counts.lost)
        .int("datagrams_late", counts.late)
        .float("loss_percent", rate * 100.0)
        .opt_int("server_cpu_ticks", cpu))
}
