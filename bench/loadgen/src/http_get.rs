//! `http-get`: `conns` keep-alive HTTP/1.1 connections, each keeping `depth` requests for
//! `--path` in flight (depth 1: the next GET goes out when the last response is whole).
//! Every response is checked: its head must be `HTTP/1.1 200`, keep the connection open
//! (no `Connection: close`), have no `Transfer-Encoding` and exactly one `Content-Length`,
//! equal to the size of `--expect-file`; its body must equal that file byte for byte
//! (`memcmp` against the file read into memory once, at start). A request completes when
//! the last byte of its body has come; its latency runs from the moment it was issued.
//!
//! Reports `messages` (requests completed in the window) and, for the per-byte figures,
//! `body_bytes` (body bytes received in the window) and `bytes_per_s`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::report::{Latencies, Report};
use crate::sys::{self, Connect, Dial, Epoll};
use crate::window::Window;
use crate::{Config, STALL};

/// Requests are small writes, sent as soon as the previous response is whole.
const DIAL: Dial = Dial {
    nodelay: true,
    source: None,
};
/// The longest response head accepted (the servers send about 100 bytes).
const MAX_HEAD: usize = 8192;
/// One `recv` takes up to this much: a body is megabytes, the fewer syscalls the better.
const READ_BUF: usize = 1 << 20;

struct Conn {
    fd: OwnedFd,
    id: usize,
    connected: bool,
    /// Request bytes not yet handed to the kernel (`out[sent..]`).
    out: Vec<u8>,
    sent: usize,
    /// Issue times of the requests in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// The response head read so far (while no body is in progress).
    head: Vec<u8>,
    /// Some(offset): inside a body, `offset` bytes of it verified so far.
    body: Option<usize>,
    /// Whole responses received.
    responses: u64,
    /// Body bytes verified, in all.
    verified: u64,
    /// We sent FIN: the server's FIN is expected now, once every response is whole.
    shut: bool,
    eof: bool,
}

/// What one read brought: body bytes (all verified) and the requests it completed.
struct Got {
    body: u64,
    done: u64,
}

impl Conn {
    fn issue(&mut self, request: &[u8], count: usize, at: Instant) {
        for _ in 0..count {
            self.out.extend_from_slice(request);
            self.in_flight.push_back(at);
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        while self.connected && self.sent < self.out.len() {
            match sys::send(&self.fd, &self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if sys::would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("conn {}: send failed: {e}", self.id)),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Parses and verifies `data`, the next bytes of the response stream.
    fn take(&mut self, mut data: &[u8], expected: &[u8]) -> Result<Got, String> {
        let mut got = Got { body: 0, done: 0 };
        while !data.is_empty() {
            if let Some(offset) = self.body {
                let n = data.len().min(expected.len() - offset);
                let want = &expected[offset..offset + n];
                if &data[..n] != want {
                    let at = data.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(format!(
                        "conn {}: response {}: body byte {} is {:#04x}, expected {:#04x} \
                         (the file's byte at that offset)",
                        self.id,
                        self.responses + 1,
                        offset + at,
                        data[at],
                        want[at]
                    ));
                }
                data = &data[n..];
                got.body += n as u64;
                self.verified += n as u64;
                self.finish_body(offset + n, expected.len(), &mut got);
                continue;
            }
            if self.in_flight.is_empty() {
                return Err(format!(
                    "conn {}: {} bytes came with no request outstanding (after {} responses)",
                    self.id,
                    data.len(),
                    self.responses
                ));
            }
            // A head: find its end, which may have begun in an earlier read.
            let before = self.head.len();
            let room = (MAX_HEAD + 4 - before).min(data.len());
            self.head.extend_from_slice(&data[..room]);
            let from = before.saturating_sub(3);
            match find(&self.head[from..], b"\r\n\r\n") {
                Some(at) => {
                    let end = from + at + 4;
                    data = &data[end - before..];
                    check_head(&self.head[..end - 4], expected.len() as u64).map_err(|e| {
                        format!("conn {}: response {}: {e}", self.id, self.responses + 1)
                    })?;
                    self.head.clear();
                    self.finish_body(0, expected.len(), &mut got);
                }
                None if self.head.len() > MAX_HEAD => {
                    return Err(format!(
                        "conn {}: a response head longer than {MAX_HEAD} bytes",
                        self.id
                    ))
                }
                None => data = &data[room..],
            }
        }
        Ok(got)
    }

    /// The body is at `offset` of `len`: a whole body completes its request.
    fn finish_body(&mut self, offset: usize, len: usize, got: &mut Got) {
        if offset < len {
            self.body = Some(offset);
        } else {
            self.body = None;
            self.responses += 1;
            got.done += 1;
        }
    }

    /// Between responses, with nothing outstanding: where a FIN may come.
    fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.body.is_none() && self.head.is_empty()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response head (without its final CRLFCRLF) must say 200, keep the connection and
/// announce exactly `len` bytes of body.
fn check_head(head: &[u8], len: u64) -> Result<(), String> {
    let text = std::str::from_utf8(head).map_err(|_| "a response head that is not text")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line {status:?}, expected HTTP/1.1 200"));
    }
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(format!("a header line without a colon: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("two Content-Length headers".into());
            }
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "Transfer-Encoding {value:?}: a body of known length was expected"
            ));
        } else if name.eq_ignore_ascii_case("connection")
            && value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        {
            return Err("Connection: close on a keep-alive request".into());
        }
    }
    match length {
        Some(n) if n == len => Ok(()),
        Some(n) => Err(format!("Content-Length {n}, but the file has {len} bytes")),
        None => Err("no Content-Length".into()),
    }
}

fn open(ep: &Epoll, port: u16, id: usize) -> Result<Conn, String> {
    let (fd, connected) = match sys::connect_loopback(port, DIAL) {
        Ok(Connect::Done(fd)) => (fd, true),
        Ok(Connect::InProgress(fd)) => (fd, false),
        Err(e) => {
            return Err(format!(
                "conn {id}: connect to 127.0.0.1:{port} failed: {e}"
            ))
        }
    };
    ep.add(fd.as_raw_fd(), sys::INTEREST, id as u64)
        .map_err(|e| format!("conn {id}: epoll_ctl: {e}"))?;
    Ok(Conn {
        fd,
        id,
        connected,
        out: Vec::new(),
        sent: 0,
        in_flight: VecDeque::new(),
        head: Vec::new(),
        body: None,
        responses: 0,
        verified: 0,
        shut: false,
        eof: false,
    })
}

pub fn run(cfg: &Config) -> Result<Report, String> {
    let file = cfg
        .expect_file
        .as_ref()
        .ok_or("http-get needs --expect-file PATH (the file the server sends for --path)")?;
    let expected = std::fs::read(file).map_err(|e| format!("--expect-file {file}: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        cfg.path, cfg.port
    )
    .into_bytes();
    let ep = Epoll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let mut conns = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        conns.push(open(&ep, cfg.port, i)?);
    }
    let begun = Instant::now();
    for c in conns.iter_mut().filter(|c| c.connected) {
        c.issue(&request, cfg.depth, begun);
        c.flush()?;
    }
    let mut connected = conns.iter().filter(|c| c.connected).count();
    let mut window = Window::new(cfg.warmup, cfg.duration, cfg.server_pid);
    let mut latencies = Latencies::default();
    let mut messages: u64 = 0;
    let mut body_bytes: u64 = 0;
    let mut buf = vec![0u8; READ_BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
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
        if !window.starting() && closing_since.is_none() && conns.iter().all(Conn::idle) {
            if !cfg.close_check {
                break;
            }
            for c in &mut conns {
                c.shut = true;
                sys::shutdown_write(&c.fd)
                    .map_err(|e| format!("conn {}: shutdown failed: {e}", c.id))?;
            }
            closing_since = Some(now);
        }
        if let Some(since) = closing_since {
            if conns.iter().all(|c| c.eof) {
                break;
            }
            if now - since > STALL {
                let open = conns.iter().filter(|c| !c.eof).count();
                return Err(format!(
                    "{open} connections were not closed by the server within {STALL:?} of our FIN"
                ));
            }
        } else if now - last_progress > STALL {
            let stuck: usize = conns.iter().map(|c| c.in_flight.len()).sum();
            return Err(format!(
                "no response byte for {STALL:?} with {stuck} requests outstanding (server hung?)"
            ));
        }

        let n = ep
            .wait(&mut events, 10)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64);
            let c = &mut conns[token as usize];
            if !c.connected {
                if flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    let why = match sys::take_error(&c.fd) {
                        Err(e) => e.to_string(),
                        Ok(()) => "hang-up before the connection was established".into(),
                    };
                    return Err(format!("conn {}: connect to 127.0.0.1 failed: {why}", c.id));
                }
                if flags & libc::EPOLLOUT as u32 == 0 {
                    continue;
                }
                c.connected = true;
                connected += 1;
                if window.starting() {
                    c.issue(&request, cfg.depth, Instant::now());
                }
            }
            while !c.eof {
                let n = match sys::recv(&c.fd, &mut buf) {
                    Ok(0) => {
                        if !(c.shut && c.idle()) {
                            return Err(format!(
                                "conn {}: the server closed the connection with {} requests \
                                 outstanding{} after {} responses (we had {}sent FIN)",
                                c.id,
                                c.in_flight.len(),
                                match c.body {
                                    Some(at) => format!(", {at} bytes into a body,"),
                                    None => String::new(),
                                },
                                c.responses,
                                if c.shut { "" } else { "not " }
                            ));
                        }
                        c.eof = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if sys::would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(format!(
                            "conn {}: recv failed after {} responses: {e}",
                            c.id, c.responses
                        ))
                    }
                };
                let at = Instant::now();
                last_progress = at;
                let got = c.take(&buf[..n], &expected)?;
                if window.measuring() {
                    body_bytes += got.body;
                }
                for _ in 0..got.done {
                    let issued = c
                        .in_flight
                        .pop_front()
                        .ok_or_else(|| format!("conn {}: more responses than requests", c.id))?;
                    if window.measuring() {
                        latencies.record(at - issued);
                        messages += 1;
                    }
                }
                if window.starting() && got.done > 0 {
                    c.issue(&request, got.done as usize, at);
                }
            }
            c.flush()?;
        }
    }

    let (seconds, cpu) = window.result();
    let verified: u64 = conns.iter().map(|c| c.verified).sum();
    Ok(Report::new("http-get")
        .int("conns", cfg.conns as u64)
        .int("depth", cfg.depth as u64)
        .int("file_size", expected.len() as u64)
        .measured(messages, seconds, latencies, verified)
        .int("body_bytes", body_bytes)
        .float("bytes_per_s", body_bytes as f64 / seconds)
        .opt_int("server_cpu_ticks", cpu))
}
