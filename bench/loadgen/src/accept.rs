//! `accept`: `conns` concurrent loops of connect, send `size` bytes, receive the echo
//! verified, close. Counts whole connections; the latency is connect to last echoed byte.

use std::time::Instant;

use crate::pattern::Pattern;
use crate::report::{Latencies, Report};
use crate::stream::{Read, Stream};
use crate::sys::{Dial, Epoll};
use crate::window::Window;
use crate::{Config, STALL};

/// Source addresses 127.0.0.1 ..= 127.0.0.SOURCES take turns: tens of thousands of
/// connections a second towards one port would otherwise exhaust one address's ephemeral
/// ports into TIME_WAIT within the run.
const SOURCES: u64 = 64;

/// One small write per connection: no TCP_NODELAY syscall needed.
fn dial(id: u64) -> Dial {
    Dial {
        nodelay: false,
        source: Some(1 + (id % SOURCES) as u8),
    }
}

struct Slot {
    /// `None` once the loop has finished (during the drain).
    stream: Option<Stream>,
    opened: Instant,
}

pub fn run(cfg: &Config) -> Result<Report, String> {
    let size = cfg.size as u64;
    let pattern = Pattern::new();
    let ep = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
    // Each connection gets a fresh id, so its byte pattern differs from every earlier one
    // that may have used the same slot or the same fd number.
    let mut next_id: u64 = 0;
    let mut open = |slot: usize| -> Result<Stream, String> {
        let mut s = Stream::open(
            &ep,
            &pattern,
            cfg.port,
            next_id,
            slot as u64,
            dial(next_id),
            cfg.tls.as_ref(),
        )?;
        next_id += 1;
        s.issued = size;
        Ok(s)
    };
    let mut slots = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let mut stream = open(i)?;
        stream.flush(&pattern)?;
        slots.push(Slot {
            stream: Some(stream),
            opened: Instant::now(),
        });
    }
    let mut window = Window::new(cfg.warmup, cfg.duration, cfg.server_pid);
    let mut latencies = Latencies::default();
    let mut completed: u64 = 0;
    let mut total: u64 = 0;
    let mut verified: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut last_progress = Instant::now();

    loop {
        let now = Instant::now();
        window.tick(now, true)?;
        if !window.starting() && slots.iter().all(|s| s.stream.is_none()) {
            break;
        }
        if now - last_progress > STALL {
            let busy = slots.iter().filter(|s| s.stream.is_some()).count();
            return Err(format!(
                "no connection completed for {STALL:?} with {busy} in progress (server hung?)"
            ));
        }
        let n = ep
            .wait(&mut events, 10)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        // NOTE: a slot reopened below gets a new fd registered after this wait returned,
        // so no event in this batch can belong to it: tokens need no generation.
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64 as usize);
            let slot = &mut slots[token];
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            if !stream.connected && !stream.finish_connect(flags)? {
                continue;
            }
            stream.flush(&pattern)?;
            let mut finished = None;
            loop {
                match stream.read(&pattern, &mut buf)? {
                    Read::Data { at, .. } if stream.verified == size => {
                        finished = Some(at);
                        break;
                    }
                    Read::Data { .. } => {}
                    Read::Drained | Read::Eof => break,
                }
            }
            let Some(at) = finished else { continue };
            // Closing the stream (TLS: close_notify first) gives the server its EOF, and
            // it closes its side.
            if let Some(done) = slot.stream.take() {
                done.close()?;
            }
            last_progress = at;
            verified += size;
            total += 1;
            if window.measuring() {
                latencies.record(at - slot.opened);
                completed += 1;
            }
            if window.starting() {
                let mut stream = open(token)?;
                stream.flush(&pattern)?;
                slot.stream = Some(stream);
                slot.opened = Instant::now();
            }
        }
    }

    let (seconds, cpu) = window.result();
    Ok(Report::new("accept")
        .int("conns", cfg.conns as u64)
        .int("size", size)
        .int("connections_total", total)
        .measured(completed, seconds, latencies, verified)
        .opt_int("server_cpu_ticks", cpu))
}
