//! `rr`: `conns` connections, each keeping `depth` messages of `size` bytes in flight
//! (depth 1 is ping-pong). A message completes when its last byte has come back verified;
//! its latency runs from the moment it was issued to then.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::pattern::Pattern;
use crate::report::{Latencies, Report};
use crate::stream::{Read, Stream};
use crate::sys::{Dial, Epoll};
use crate::window::Window;
use crate::{Config, STALL};

/// Small pipelined writes: TCP_NODELAY, as the servers set it on their side.
const DIAL: Dial = Dial {
    nodelay: true,
    source: None,
};

struct Conn {
    stream: Stream,
    /// Issue times of the messages in flight, oldest first.
    in_flight: VecDeque<Instant>,
}

impl Conn {
    fn issue(&mut self, count: u64, size: u64, at: Instant) {
        for _ in 0..count {
            self.in_flight.push_back(at);
        }
        self.stream.issued += count * size;
    }
}

pub fn run(cfg: &Config) -> Result<Report, String> {
    let size = cfg.size as u64;
    let depth = cfg.depth as u64;
    let pattern = if cfg.lines {
        Pattern::lines(cfg.size)?
    } else {
        Pattern::new()
    };
    let ep = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let mut conns = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let stream = Stream::open(
            &ep,
            &pattern,
            cfg.port,
            i as u64,
            i as u64,
            DIAL,
            cfg.tls.as_ref(),
        )?;
        conns.push(Conn {
            stream,
            in_flight: VecDeque::with_capacity(cfg.depth),
        });
    }
    let begun = Instant::now();
    for c in conns.iter_mut().filter(|c| c.stream.connected) {
        c.issue(depth, size, begun);
        c.stream.flush(&pattern)?;
    }
    let mut connected = conns.iter().filter(|c| c.stream.connected).count();
    let mut window = Window::new(cfg.warmup, cfg.duration, cfg.server_pid);
    let mut latencies = Latencies::default();
    let mut messages: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut last_progress = Instant::now();
    let mut closing_since: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if connected < conns.len() && now - begun > Duration::from_secs(10) {
            return Err(format!(
                "only {connected} of {} connections were established in 10 s",
                conns.len()
            ));
        }
        window.tick(now, connected == conns.len())?;
        if !window.starting()
            && closing_since.is_none()
            && conns.iter().all(|c| c.stream.outstanding() == 0)
        {
            if !cfg.close_check {
                break;
            }
            for c in &mut conns {
                c.stream.shutdown_write()?;
            }
            closing_since = Some(now);
        }
        if let Some(since) = closing_since {
            if conns.iter().all(|c| c.stream.eof) {
                break;
            }
            if now - since > STALL {
                let open = conns.iter().filter(|c| !c.stream.eof).count();
                return Err(format!(
                    "{open} connections were not closed by the server within {STALL:?} of our FIN"
                ));
            }
        } else if now - last_progress > STALL {
            let stuck: u64 = conns.iter().map(|c| c.stream.outstanding()).sum();
            return Err(format!(
                "no echoed byte for {STALL:?} with {stuck} bytes outstanding (server hung?)"
            ));
        }

        let n = ep
            .wait(&mut events, 10)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64);
            let c = &mut conns[token as usize];
            if !c.stream.connected {
                if !c.stream.finish_connect(flags)? {
                    continue;
                }
                connected += 1;
                if window.starting() {
                    c.issue(depth, size, Instant::now());
                }
            }
            // Drained and Eof (only after our FIN, checked in `read`) both end the burst.
            while let Read::Data { n, at } = c.stream.read(&pattern, &mut buf)? {
                last_progress = at;
                // Messages whose last byte arrived in this read.
                let done = (c.stream.verified / size) - (c.stream.verified - n as u64) / size;
                for _ in 0..done {
                    let issued = c.in_flight.pop_front().ok_or_else(|| {
                        format!("conn {}: more messages echoed than sent", c.stream.id)
                    })?;
                    if window.measuring() {
                        latencies.record(at - issued);
                        messages += 1;
                    }
                }
                if window.starting() {
                    c.issue(done, size, at);
                }
            }
            c.stream.flush(&pattern)?;
        }
    }

    let (seconds, cpu) = window.result();
    let verified: u64 = conns.iter().map(|c| c.stream.verified).sum();
    Ok(Report::new("rr")
        .int("conns", cfg.conns as u64)
        .int("size", size)
        .int("depth", depth)
        .measured(messages, seconds, latencies, verified)
        .opt_int("server_cpu_ticks", cpu))
}
