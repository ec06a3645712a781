//! `idle`: open `conns` connections (at most `concurrency` connecting at once, so no
//! server's listen backlog overflows), echo one `size`-byte message on each, announce
//! that all are established, hold them for `hold` while watching that the server neither
//! sends nor closes anything, then send FIN on all and expect every one to be closed.

use std::time::Instant;

use crate::pattern::Pattern;
use crate::report::{event, Latencies, Report};
use crate::stream::{Read, Stream};
use crate::sys::{Dial, Epoll};
use crate::{Config, STALL};

/// One small write per connection: Nagle never delays it, so no TCP_NODELAY syscall.
const DIAL: Dial = Dial {
    nodelay: false,
    source: None,
};

pub fn run(cfg: &Config) -> Result<Report, String> {
    let size = cfg.size as u64;
    let pattern = Pattern::new();
    let ep = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let mut streams: Vec<Stream> = Vec::with_capacity(cfg.conns);
    let mut opened_at: Vec<Instant> = Vec::with_capacity(cfg.conns);
    let mut latencies = Latencies::default();
    let mut echoed = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let begun = Instant::now();
    let mut last_progress = begun;
    let mut established: Option<Instant> = None;
    let mut closing_since: Option<Instant> = None;
    let mut closed = 0usize;

    loop {
        let now = Instant::now();
        // Top up the connects in flight.
        while streams.len() < cfg.conns && streams.len() - echoed < cfg.concurrency {
            let id = streams.len() as u64;
            let mut s = Stream::open(&ep, &pattern, cfg.port, id, id, DIAL, None)?;
            s.issued = size;
            s.flush(&pattern)?;
            streams.push(s);
            opened_at.push(Instant::now());
        }
        if established.is_none() && echoed == cfg.conns {
            established = Some(now);
            event(
                "established",
                &format!(
                    ", \"conns\": {}, \"seconds\": {:.3}",
                    cfg.conns,
                    (now - begun).as_secs_f64()
                ),
            );
        }
        if let Some(at) = established {
            if closing_since.is_none() && now - at >= cfg.hold {
                if !cfg.close_check {
                    break;
                }
                for s in &mut streams {
                    s.shutdown_write()?;
                }
                closing_since = Some(now);
            }
        } else if now - last_progress > STALL {
            return Err(format!(
                "no connection established for {STALL:?}: {echoed} of {} echoed (server hung?)",
                cfg.conns
            ));
        }
        if let Some(since) = closing_since {
            if closed == cfg.conns {
                break;
            }
            if now - since > STALL {
                return Err(format!(
                    "{} of {} connections were not closed by the server within {STALL:?} of our FIN",
                    cfg.conns - closed,
                    cfg.conns
                ));
            }
        }

        let n = ep
            .wait(&mut events, 10)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64 as usize);
            let s = &mut streams[token];
            if !s.connected && !s.finish_connect(flags)? {
                continue;
            }
            s.flush(&pattern)?;
            let before = s.verified;
            loop {
                match s.read(&pattern, &mut buf)? {
                    Read::Data { at, .. } => {
                        last_progress = at;
                        if s.verified == size && before < size {
                            echoed += 1;
                            latencies.record(at - opened_at[token]);
                        }
                    }
                    Read::Eof => {
                        closed += 1;
                        break;
                    }
                    Read::Drained => break,
                }
            }
        }
    }

    let seconds = established.map_or(0.0, |e| (e - begun).as_secs_f64());
    let verified = streams.iter().map(|s| s.verified).sum();
    Ok(Report::new("idle")
        .int("conns", cfg.conns as u64)
        .int("size", size)
        .measured(echoed as u64, seconds, latencies, verified))
}
