//! hamanet's benchmark load generator: many non-blocking connections to an echo server on
//! 127.0.0.1, all on one edge-triggered epoll loop in one thread, every echoed byte
//! verified against a per-connection pattern.
//!
//! ```text
//! loadgen rr     --port P [--conns 100] [--size 64] [--depth 1] [--warmup 0.5] [--duration 3]
//!                [--lines]  (every message a line: SIZE-1 bytes without `\n`, then `\n`;
//!                            SIZE a power of two; for servers that echo by readline)
//! loadgen accept --port P [--conns 50]  [--size 64] [--warmup 0.5] [--duration 3]
//! loadgen idle   --port P [--conns 10000] [--size 16] [--hold 1] [--concurrency 100]
//! loadgen http-get --port P --expect-file FILE [--path /] [--conns 4] [--depth 1]
//!                [--warmup 0.5] [--duration 3]  (keep-alive GETs of PATH; every response a
//!                200 whose Content-Length and body must equal FILE's; see http_get.rs)
//! loadgen udp  --port P [--conns 8] [--size 64] [--depth 32] [--warmup 0.5] [--duration 3]
//!                [--loss-timeout 0.2] [--max-loss 0.01]  (UDP sockets, DEPTH datagrams in
//!                flight each, every echoed byte checked; a datagram not echoed within the
//!                timeout is counted lost and replaced; more than MAX-LOSS of those sent
//!                lost fails the run; see udp.rs)
//! common:        [--server-pid PID]  (sample the server's CPU time at the window's edges)
//!                [--no-close-check]  (close without waiting for the server's FIN after ours)
//!                [--tls CAFILE [--sni NAME]]  (rr and accept: TLS 1.3 to the server, its
//!                                    certificate checked against CAFILE for NAME, default
//!                                    localhost; see tls.rs)
//! ```
//!
//! Prints one JSON line with the results and exits 0, or prints `LOADGEN FAILURE: ...` on
//! stderr and exits 1 at the first wrong byte, short read, reset, failed connect or stall
//! (http-get: also a response that is not a keep-alive 200 of the file's length).
//! Every run stops by itself: each phase has a deadline.

mod accept;
mod http_get;
mod idle;
mod pattern;
mod report;
mod rr;
mod stream;
mod sys;
mod tls;
mod udp;
mod window;

use std::time::Duration;

/// How long a run may go without progress (or a close may take) before it is a failure.
pub const STALL: Duration = Duration::from_secs(5);

pub struct Config {
    pub port: u16,
    /// rr: connections; accept: concurrent loops; idle: connections held.
    pub conns: usize,
    pub size: usize,
    pub depth: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub hold: Duration,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    /// Expect the server to close each connection after our FIN (echo semantics). Off
    /// only for a server known not to: we then close without waiting.
    pub close_check: bool,
    /// `--tls`: every connection speaks TLS with this client configuration.
    pub tls: Option<tls::Client>,
    /// `--lines` (rr): every message is a line ending in its only `\n` (pattern.rs).
    pub lines: bool,
    /// `--path` (http-get): the request target.
    pub path: String,
    /// `--expect-file` (http-get): what every response body must be, byte for byte.
    pub expect_file: Option<String>,
    /// `--loss-timeout` (udp): a datagram not echoed within it is counted lost.
    pub loss_timeout: Duration,
    /// `--max-loss` (udp): the share of datagrams sent that may be lost.
    pub max_loss: f64,
}

fn parse_args(args: &[String]) -> Result<(String, Config), String> {
    let mode = args
        .first()
        .cloned()
        .ok_or("missing mode: rr, accept, idle, http-get or udp")?;
    let mut cfg = Config {
        port: 0,
        conns: 0,
        size: 64,
        depth: 1,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(3),
        hold: Duration::from_secs(1),
        concurrency: 100,
        server_pid: None,
        close_check: true,
        tls: None,
        lines: false,
        path: "/".to_string(),
        expect_file: None,
        loss_timeout: Duration::from_millis(200),
        max_loss: 0.01,
    };
    let mut depth_given = false;
    let mut cafile: Option<String> = None;
    let mut sni = "localhost".to_string();
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        if flag == "--no-close-check" {
            cfg.close_check = false;
            continue;
        }
        if flag == "--lines" {
            cfg.lines = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let int = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag}: not a count: {value}"))
        };
        let secs = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!(
                    "{flag}: not a number of seconds (0..3600): {value}"
                ))
        };
        match flag.as_str() {
            "--port" => cfg.port = value.parse().map_err(|_| format!("bad port {value}"))?,
            "--conns" => cfg.conns = int()?,
            "--size" => cfg.size = int()?,
            "--depth" => {
                cfg.depth = int()?;
                depth_given = true;
            }
            "--loss-timeout" => cfg.loss_timeout = secs()?,
            "--max-loss" => {
                cfg.max_loss = value
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or(format!("--max-loss: not a fraction (0..1): {value}"))?
            }
            "--concurrency" => cfg.concurrency = int()?,
            "--warmup" => cfg.warmup = secs()?,
            "--duration" => cfg.duration = secs()?,
            "--hold" => cfg.hold = secs()?,
            "--tls" => cafile = Some(value.clone()),
            "--sni" => sni = value.clone(),
            "--path" => cfg.path = value.clone(),
            "--expect-file" => cfg.expect_file = Some(value.clone()),
            "--server-pid" => {
                cfg.server_pid = Some(value.parse().map_err(|_| format!("bad pid {value}"))?)
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if cfg.conns == 0 {
        cfg.conns = match mode.as_str() {
            "accept" => 50,
            "idle" => 10_000,
            "http-get" => 4,
            "udp" => 8,
            _ => 100,
        };
    }
    if mode == "udp" && !depth_given {
        cfg.depth = 32;
    }
    if cfg.port == 0 {
        return Err("--port is required".into());
    }
    if cfg.size == 0 || cfg.depth == 0 || cfg.concurrency == 0 {
        return Err("--size, --depth and --concurrency must be at least 1".into());
    }
    if cfg.lines && mode != "rr" {
        return Err("--lines is for the rr mode".into());
    }
    if mode == "http-get" {
        if cfg.expect_file.is_none() {
            return Err("http-get needs --expect-file FILE".into());
        }
        if !cfg.path.starts_with('/') || cfg.path.contains(|c: char| c.is_whitespace()) {
            return Err(format!(
                "--path {:?}: an absolute path without spaces",
                cfg.path
            ));
        }
    } else if cfg.expect_file.is_some() {
        return Err("--expect-file is for the http-get mode".into());
    }
    if let Some(cafile) = cafile {
        if mode == "idle" || mode == "http-get" || mode == "udp" {
            return Err("--tls is for the rr and accept modes".into());
        }
        cfg.tls = Some(tls::Client::new(&cafile, &sni)?);
    }
    Ok((mode, cfg))
}

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, cfg) = parse_args(&args)?;
    // Room for every connection plus stdio and epoll.
    let want = cfg.conns as u64 + 64;
    let limit = sys::raise_nofile_limit(want).map_err(|e| format!("setrlimit: {e}"))?;
    if limit < want {
        return Err(format!(
            "open-file limit {limit} is below the {want} this run needs"
        ));
    }
    let report = match mode.as_str() {
        "rr" => rr::run(&cfg)?,
        "accept" => accept::run(&cfg)?,
        "idle" => idle::run(&cfg)?,
        "http-get" => http_get::run(&cfg)?,
        "udp" => udp::run(&cfg)?,
        other => {
            return Err(format!(
                "unknown mode {other}: use rr, accept, idle, http-get or udp"
            ))
        }
    };
    Ok(report.to_json())
}

fn main() {
    match run() {
        Ok(line) => println!("{line}"),
        Err(msg) => {
            eprintln!("LOADGEN FAILURE: {msg}");
            std::process::exit(1);
        }
    }
}
