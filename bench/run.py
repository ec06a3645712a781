"""hamanet's benchmark: servers side by side under a native load generator and real clients.

    bench/run.sh [--quick] [--rounds N] [--duration S] [--servers a,b] [--scenarios x,y]

Builds the load generator and the two native echo floors (release: the plain
`rust_echo` and `native_best`), then for every scenario runs every server in turn
(A B C A B C ...) for --rounds rounds, each server pinned to one core and the load
generator (or redis-benchmark, or wrk) to the other (except `hash`, whose server may use
every CPU). Every run starts a fresh server and warms it up the same way before measuring
(--warm-pass: the scenario's own load on connections that are then closed). For the echo
scenarios the primary figure is the server's CPU time per message over the measured
window; for the real-client
scenarios (`redis`: redis-benchmark, `http`: wrk, against the example protocol servers)
and the work scenarios (`blocking`, `hash`: handlers that sleep or hash, on hamanet's
worker pool and on asyncio/uvloop's run_in_executor) it is THROUGHPUT, requests per
second, with CPU per request beside it; for the static-file scenario (`static10m`: the
load generator fetching a 10 MiB file over keep-alive HTTP, every body byte checked) it is
the server's CPU time per MiB sent, with MiB/s beside it. The report gives medians of
per-round ratios against uvloop. Prints the tables, writes bench/results/latest.md and
bench/results/latest.png. Exits 1 if any run failed (a wrong byte, an error reply, a
dropped connection, a crash or a hang), after writing the report that lists it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from benchlib import static, summary, tls
from benchlib.catalog import (
    BASELINE,
    BENCH,
    BLOCKING_WORKERS,
    HASH_WORKERS,
    SCENARIOS,
    SERVERS,
)
from benchlib.process import (
    Timing,
    build_crates,
    measure,
    pick_cpus,
    raise_nofile_limit,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of short runs (a smoke test)")
    p.add_argument("--rounds", type=int, help="rounds of every server (default 3; --quick 1)")
    p.add_argument(
        "--duration",
        type=float,
        help="measured seconds per run (default 3; wrk rounds it to whole seconds, and "
        "redis-benchmark runs 300,000 requests per test per second of it)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        help="seconds of load on the measured connections before the window opens (0.5; "
        "--quick 0.3)",
    )
    p.add_argument(
        "--warm-pass",
        type=float,
        help="seconds of the warm-up pass before every measured run: the scenario's own "
        "load on connections of its own, all closed before the measured ones open (0.5; "
        "--quick 0.3; wrk: at least 1 s; 0: none, servers measured cold)",
    )
    p.add_argument("--servers", help=f"comma-separated subset of {[s.name for s in SERVERS]}")
    p.add_argument("--scenarios", help=f"comma-separated subset of {[s.name for s in SCENARIOS]}")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="report directory")
    return p.parse_args()


def pick(all_items, names: str | None, what: str):
    if not names:
        return list(all_items)
    wanted = names.split(",")
    known = {i.name: i for i in all_items}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}")
    return [known[n] for n in wanted]


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def progress(i: int, total: int, r, sc) -> str:
    head = f"[{i}/{total}] {r.scenario:<13} round {r.round} {r.server:<11}"
    if not r.ok:
        return f"{head} FAILED: {r.error}"
    if sc.by_byte:
        return (
            f"{head} {r.cpu_us_per_mib:8.1f} CPU-us/MiB {r.mib_per_s:8,.0f} MiB/s "
            f"{r.msgs_per_s:6.1f} requests/s p50 {r.p50_us:8,.0f} us p99 {r.p99_us:8,.0f} us"
        )
    if sc.by_throughput:
        return (
            f"{head} {r.msgs_per_s:11,.0f} requests/s {r.cpu_us_per_msg:8.3f} CPU-us/request "
            f"p50 {r.p50_us:8,.0f} us p99 {r.p99_us:8,.0f} us"
        )
    if r.idle_bytes_per_conn is not None:
        return f"{head} {r.idle_bytes_per_conn:8,.0f} B/conn, {r.msgs_per_s:9,.0f} conns/s"
    return (
        f"{head} {r.cpu_us_per_msg:8.3f} CPU-us/msg {r.msgs_per_s:11,.0f} msgs/s "
        f"p50 {r.p50_us:8,.0f} us p99 {r.p99_us:8,.0f} us"
    )


def main() -> int:
    args = parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    timing = Timing(
        warmup=args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5),
        duration=args.duration or (1.0 if args.quick else 3.0),
        hold=0.5,
        warm_pass=args.warm_pass if args.warm_pass is not None else (0.3 if args.quick else 0.5),
    )
    servers = pick(SERVERS, args.servers, "server")
    skipped = [s.name for s in servers if not s.available()]
    servers = [s for s in servers if s.available()]
    for name in skipped:
        print(f"note: {name} is not installed here; it is left out", flush=True)
    if BASELINE not in [s.name for s in servers]:
        raise SystemExit(f"{BASELINE} (the baseline of every ratio) must be among the servers")
    scenarios = pick(SCENARIOS, args.scenarios, "scenario")
    for sc in list(scenarios):
        why = sc.missing()
        if why:
            print(f"note: the {sc.name} scenario is left out: {why}", flush=True)
            scenarios.remove(sc)
    if not scenarios:
        raise SystemExit("no scenario left to run")
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["bench/run.py", *sys.argv[1:]])

    # The TLS scenarios' certificates: fresh for this run, deleted when it ends.
    tls_files, tls_dir = tls.make_files() if any(sc.tls for sc in scenarios) else (None, None)
    if tls_files is not None:
        print(f"TLS certificates for this run in {tls_files.directory}", flush=True)
    # The static-file scenario's file: fresh random bytes, deleted when the run ends.
    static_files, static_dir = (
        static.make_files() if any(sc.by_byte for sc in scenarios) else (None, None)
    )
    if static_files is not None:
        print(f"static10m's file for this run: {static_files.file}", flush=True)

    if not args.no_build:
        build_crates()
    raise_nofile_limit()
    cpus = pick_cpus()
    # The runner itself stays off the server's core.
    os.sched_setaffinity(0, {cpus.load})
    unpinned = [sc.name for sc in scenarios if not sc.pin_server]
    print(
        f"servers on CPU {cpus.server}, load generator on CPU {cpus.load}"
        + (
            f" ({', '.join(unpinned)}: the server on CPUs {','.join(map(str, cpus.every))})"
            if unpinned
            else ""
        )
        + f"; {rounds} round(s); per run {warm_pass_text(timing)}, then {timing.warmup:g} s "
        f"warmup + {timing.duration:g} s measured",
        flush=True,
    )

    started = time.monotonic()
    results = []

    def serving(sc):  # the servers that have a program for this scenario (in run order)
        return [
            s for s in servers if s.argv_for(sc.app) is not None and s.missing_for(sc.app) is None
        ]

    for sc in scenarios:
        for s in servers:
            why = s.argv_for(sc.app) is not None and s.missing_for(sc.app)
            if why:
                print(f"note: {s.name} is left out of {sc.name}: {why}", flush=True)

    total = sum(len(serving(sc)) for sc in scenarios) * rounds
    for sc in scenarios:
        for round_no in range(1, rounds + 1):
            for server in serving(sc):
                r = measure(server, sc, round_no, timing, cpus, tls_files, static_files)
                results.append(r)
                print(progress(len(results), total, r, sc), flush=True)
    elapsed = time.monotonic() - started

    names = [s.name for s in servers]
    grid = summary.cells(results, scenarios, names)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    echo = any(sc.by_message for sc in scenarios)
    by_throughput = any(sc.by_throughput for sc in scenarios)
    by_byte = any(sc.by_byte for sc in scenarios)
    headline = summary.headline_table(grid, scenarios, names) if echo else ""
    floors = summary.floor_legend(grid, scenarios, names) if echo else ""
    details = summary.detail_table(grid, scenarios, names) if echo else ""
    tp_headline = summary.throughput_table(grid, scenarios, names) if by_throughput else ""
    tp_details = summary.throughput_details(grid, scenarios, names) if by_throughput else ""
    st_headline = summary.static_table(grid, scenarios, names) if by_byte else ""
    st_details = summary.static_details(grid, scenarios, names) if by_byte else ""
    st_sends = summary.static_send_lines(results)
    udp_losses = summary.udp_loss_lines(results)
    targets = summary.target_lines(results, grid)
    tls_costs = summary.tls_cost_lines(grid, scenarios, names)
    failures = summary.failure_lines(results)
    if echo:
        print()
        print(
            f"Server CPU per message as a ratio to {BASELINE} (median of per-round ratios; "
            "lower is better; idle10k: server RSS bytes per idle connection)"
        )
        print(headline)
        if floors:
            print(f"Native floors: {floors}.")
        print()
        print(details)
        if udp_losses:
            print(f"\n{summary.UDP_LOSS_TITLE}:\n" + "\n".join(udp_losses))
    if by_throughput:
        print()
        print(
            f"Real clients and work in the handler: THROUGHPUT (requests/s) as a ratio to "
            f"{BASELINE}, higher is better, and server CPU per request, lower is better "
            "(medians of per-round ratios)"
        )
        print(tp_headline)
        print()
        print(tp_details)
    if by_byte:
        print()
        print(f"Static files: {STATIC_TITLE} (medians of per-round ratios)")
        print(st_headline)
        print()
        print(st_details)
        if st_sends:
            print(f"\n{STATIC_SENDS_TITLE}:\n" + "\n".join(st_sends))
    if targets:
        print("\nhamanet against its targets:\n" + "\n".join(targets))
    if tls_costs:
        print("\n" + summary.TLS_COST_TITLE + ":\n" + "\n".join(tls_costs))
    ran = {r.server for r in results}
    notes = [f"- {s.name}: {s.note}" for s in servers if s.note and s.name in ran]
    if notes:
        print("\nNotes:\n" + "\n".join(notes))
    if failures:
        print("\nFailures, leaks and server output:\n" + "\n".join(failures))

    args.out.mkdir(parents=True, exist_ok=True)
    subtitle = f"{when}; {machine()}; {rounds} round(s)"
    summary.chart(args.out / "latest.png", grid, scenarios, names, subtitle)
    md = render_markdown(
        when,
        command,
        rounds,
        timing,
        elapsed,
        scenarios,
        (
            headline,
            floors,
            details,
            tp_headline,
            tp_details,
            st_headline,
            st_details,
            st_sends,
            udp_losses,
        ),
        targets,
        tls_costs,
        notes,
        failures,
    )
    (args.out / "latest.md").write_text(md)
    if tls_dir is not None:
        tls_dir.cleanup()
    if static_dir is not None:
        static_dir.cleanup()
    print(f"\nwrote {args.out / 'latest.md'} and {args.out / 'latest.png'} ({elapsed:.0f} s)")
    return 1 if any(not r.ok for r in results) else 0


STATIC_TITLE = (
    f"server CPU per MiB sent as a ratio to {BASELINE} (LOWER is better), and MiB/s "
    "(higher is better)"
)
STATIC_SENDS_TITLE = (
    "How bench/servers/static_server.py sent the bodies (counted by the server, all runs)"
)


def warm_pass_text(timing: Timing) -> str:
    if timing.warm_pass <= 0:
        return "no warm-up pass (cold servers)"
    return f"a {timing.warm_pass:g} s warm-up pass (wrk: whole seconds, at least 1)"


def render_markdown(
    when, command, rounds, timing, elapsed, scenarios, tables, targets, tls_costs, notes, failures
) -> str:
    (
        headline,
        floors,
        details,
        tp_headline,
        tp_details,
        st_headline,
        st_details,
        st_sends,
        udp_losses,
    ) = tables
    scenario_lines = "\n".join(f"- `{sc.name}`: {sc.describe()}" for sc in scenarios)
    parts = [
        "# hamanet benchmark: latest results",
        "",
        f"- date: {when}",
        f"- machine: {machine()}",
        f"- command: `{command}` (from the repository root; took {elapsed:.0f} s)",
        f"- {rounds} round(s); a fresh server process per run; each run "
        f"{warm_pass_text(timing)}, then {timing.warmup:g} s warmup + {timing.duration:g} s "
        "measured",
        "",
        "![chart](latest.png)",
        "",
    ]
    if headline:
        parts += [
            f"## Echo servers: server CPU per message, as a ratio to {BASELINE}",
            "",
            "Median of per-round ratios, LOWER is better. idle10k: server RSS growth per idle "
            "connection, in bytes.",
            "",
            headline,
            "",
            *([f"Native floors: {floors}.", ""] if floors else []),
            *([f"{summary.UDP_LOSS_TITLE}:", "", *udp_losses, ""] if udp_losses else []),
        ]
    if tp_headline:
        parts += [
            f"## Real clients and work in the handler: THROUGHPUT (requests/s), as a ratio "
            f"to {BASELINE}",
            "",
            "redis-benchmark and wrk against the example protocol servers; the load "
            "generator against handlers that block (`blocking`) or hash (`hash`), on "
            "hamanet's worker pool (hamanet-w0: without one) and on asyncio/uvloop's "
            "`run_in_executor`. Median of per-round ratios: for requests/s HIGHER is better; "
            "the server CPU per request ratio below it is lower-is-better, like the echo "
            "table.",
            "",
            tp_headline,
            "",
        ]
    if st_headline:
        parts += [
            f"## Static files: {STATIC_TITLE}",
            "",
            "The load generator fetches a 10 MiB file over keep-alive HTTP and checks every "
            "body byte; the servers send it with sendfile (hamanet `session.sendfile`, "
            "asyncio `loop.sendfile`, native-best `sendfile(2)`) except uvloop, which has no "
            "`loop.sendfile` and reads and writes it. Median of per-round ratios.",
            "",
            st_headline,
            "",
            *([f"{STATIC_SENDS_TITLE}:", "", *st_sends, ""] if st_sends else []),
        ]
    if targets:
        parts += ["## hamanet against its targets", "", *targets, ""]
    if tls_costs:
        parts += [f"## {summary.TLS_COST_TITLE}", "", *tls_costs, ""]
    parts += ["## Details (medians over rounds)", ""]
    if details:
        parts += [details, ""]
    if tp_details:
        parts += [tp_details, ""]
    if st_details:
        parts += [st_details, ""]
    parts += [
        "## Scenarios",
        "",
        scenario_lines,
        "",
        "## Method",
        "",
        "- Echo scenarios: every server echoes every byte to its own connection and closes "
        "on EOF: hamanet (`examples/echo_server.py`, a Python `on_recv` handler), asyncio, "
        "uvloop and rloop (one `asyncio.Protocol`, `bench/servers/protocol_echo.py`), and two "
        "native floors with no Python, both single-threaded edge-triggered epoll in Rust: "
        "rust-epoll, the plain echo (`bench/servers/rust_echo`: each `recv` echoed by its own "
        "`send`), and native-best, the best we know (`bench/servers/rust_echo/src/best.rs`: "
        "a wakeup's input read until the socket is drained into one shared 256 KiB buffer "
        "and sent straight from it, only the unsent remainder kept per connection).",
        "- Warm-up, the same for every server: each run starts a fresh server, then a "
        "warm-up pass runs the scenario's own load (the load generator with the scenario's "
        "arguments; redis: a redis-benchmark SET/GET run; http: a wrk run of the same "
        "shape) on connections of its own, which are all closed before the measured run "
        "connects afresh; idle10k's pass is its first wave of 100 connections. A cold "
        "server can be slowed until a first connection has closed (asyncio: until its "
        "first EOF, glibc mmaps every 256 KiB read buffer; bench/README.md).",
        "- The server is pinned to one core, the load generator (`bench/loadgen`, one "
        "epoll thread in Rust) to the other, with `taskset`; except in `hash`, where the "
        "server may run on every CPU (the load generator's core too) so that its two "
        "hashing threads can run side by side.",
        "- Server CPU time is utime + stime of every thread, from `/proc/PID/stat`, sampled "
        "by the load generator at the instants its measured window opens and closes; "
        "divided by the messages completed in that window (accept: connections). It "
        "includes the loopback TCP work the server's own syscalls run (softirq in its "
        "context), not work the kernel defers to ksoftirqd.",
        "- accept: the load generator connects from 127.0.0.1 to 127.0.0.64 in turn (always "
        "to 127.0.0.1), so tens of thousands of connections a second do not exhaust one "
        "source address's ports into TIME_WAIT.",
        "- The load generator checks every echoed byte against a per-connection pattern: a "
        "byte from another session, a reordered, lost or extra byte, a reset, a short read "
        "or a failed connect fails the run.",
        "- idle10k: RSS (`VmRSS`) once 10,000 connections are established and have echoed "
        "once, minus RSS after a first wave of 100; peak RSS is `VmHWM`.",
        "- Real clients (`redis`, `http`): hamanet runs `examples/redis_server.py` and "
        "`examples/http_server.py` as they are; asyncio and uvloop run the same protocol "
        "classes (`examples/protocols/resp.py`, `examples/protocols/http.py`) in an "
        "`asyncio.Protocol` (`bench/servers/redis_logic_server.py`, "
        "`bench/servers/http_logic_server.py`). The client (Debian's redis-benchmark, "
        "wrk) is pinned to the load core. Server CPU is read from `/proc/PID/stat` just "
        "before the client starts and after it exits (so it includes the clients' "
        "connects), divided by the requests completed.",
        "- redis: the warm-up pass is a run of `-t set,get`, then `-t ping,set,get -P 16 "
        "-c 50 -n N --csv`; requests/s is the mean of its four tests' rates; p50/p99 are "
        "the medians of its per-test percentiles. An error reply or a dropped connection "
        "makes redis-benchmark exit non-zero, which fails the run, and so does a missing "
        "test or a wrong reply to a GET/PING of our own afterwards.",
        "- http: `wrk -t1 -c100 -dDs --latency`, keep-alive, after a warm-up pass of the "
        "same shape (whole seconds, at least one); any non-2xx/3xx response or socket "
        "error (connect, read, write, timeout) that wrk reports fails the run, and so does "
        "anything but a 200 with its whole body for a `GET /` of our own afterwards. wrk "
        "is a single thread here: its own speed can cap requests/s, so read that ratio "
        "together with the CPU per request one.",
        "- Work in the handler (`blocking`, `hash`): the load generator in `rr` mode, every "
        "echoed byte verified, against handlers that first sleep 5 ms (`blocking`) or "
        "compute SHA-256 (`hash`) per chunk received. hamanet runs them on its worker pool "
        f"(`examples/blocking_server.py --workers {BLOCKING_WORKERS}`, "
        f"`bench/servers/hash_server.py --workers {HASH_WORKERS}`), and hamanet-w0 with "
        "`--workers 0` (the reactor thread runs the handler); asyncio and uvloop run "
        "`bench/servers/executor_server.py`: asyncio streams, per connection in order "
        "`await loop.run_in_executor(pool, work)` then write and drain, on a "
        "`ThreadPoolExecutor` of the same size. Server CPU (every thread) is divided by "
        "the requests completed.",
        "- TLS scenarios (`tls-rr1k`, `tls-stream100k`, `tls-handshake`, `redis-tls`, "
        "`https`): their plain twins over TLS 1.3 with certificates made for the run "
        "(trustme: a CA and an ECDSA P-256 certificate for localhost and 127.0.0.1). Every "
        "client offers only TLS_AES_128_GCM_SHA256 and X25519 (the load generator is rustls "
        "built that way; redis-benchmark and wrk get it through OPENSSL_CONF), and every "
        "server sends no session tickets (hamanet `bench/servers/tls_echo.py` with "
        "`session_tickets=0`; asyncio/uvloop `num_tickets = 0`); the protocol examples run "
        "as they are. The load generator verifies the certificate and every echoed byte, "
        "sends close_notify before its FIN and requires the server's close_notify before "
        "its FIN; tls-handshake is a full handshake per connection (no resumption) and its "
        "target is handshakes per server CPU-second, the inverse of its CPU per connection.",
        "- hamanet inside asyncio (`streams-rr1k`, `streams-lines`, `aio-rr64`): "
        "`bench/servers/streams_echo.py` is one streams echo program (`reader.read` or "
        "`reader.readline`, then `writer.write` and `await writer.drain()`) whose servers "
        "differ only in the module whose `start_server` it calls: asyncio's on uvloop (the "
        "baseline) and on asyncio, hamanet.aio's on uvloop (hamanet-aio) and on asyncio "
        "(hamanet-aio-asyncio). streams-lines has the load generator send lines "
        "(`--lines`: each message ends in its only newline; every byte still verified). "
        "aio-rr64 is examples/echo_server.py's handler under `hamanet.aio.serve` "
        "(`bench/servers/aio_echo.py`) against the same handler on hamanet's own thread.",
        "- Static files (`static10m`): a 10 MiB file of random bytes, made for the run in a "
        "temporary directory (so in the page cache for every server), fetched by the load "
        "generator's `http-get` mode: 4 keep-alive connections, one GET at a time each; "
        "every response must be a keep-alive 200 whose Content-Length is the file's size "
        "and whose body equals the file byte for byte. hamanet runs "
        "`examples/http_server.py --root DIR` as it is (`session.sendfile`); asyncio and "
        "uvloop run the same protocol code (`HttpConnection(files=StaticFiles(DIR))`, "
        "`feed_parts`) in `bench/servers/static_server.py`, which sends each body with "
        "`await loop.sendfile(transport, file, 0, size)`: os.sendfile on asyncio; uvloop "
        "raises NotImplementedError (it does not implement loop.sendfile), so the server "
        "then reads the file (os.pread, 256 KiB) and writes it (transport.write), waiting "
        "while writing is paused; native-best is `native_static` (Rust, epoll, "
        "sendfile(2)). Server CPU (every thread, sampled by the load generator at the "
        "window's edges) is divided by the body bytes received in the window.",
        "- UDP (`udp64`): the load generator's `udp` mode: 8 UDP sockets connected to the "
        "server, 16 datagrams of 64 B in flight each, each datagram its sequence number and "
        "then the socket's byte pattern at an offset fixed by that number, so every echoed "
        "byte is checked (a wrong length, byte or number, or a datagram echoed twice, fails "
        "the run). A datagram not echoed within 0.2 s is counted lost and replaced by a new "
        "one (the count in flight stays constant); more than 1% of those sent lost fails the "
        "run. hamanet runs `examples/udp_echo.py` as it is (recvmmsg, one `on_datagrams` "
        "call per wakeup with every datagram read, `endpoint.sendto` each, sent with "
        "sendmmsg after the call); asyncio and uvloop a `DatagramProtocol` on "
        "`loop.create_datagram_endpoint` whose `datagram_received` calls "
        "`transport.sendto(data, addr)` (`bench/servers/udp_echo_asyncio.py`: one recvfrom, "
        "one Python call and one sendto per datagram); native-best `native_udp` (Rust, "
        "recvmmsg, then sendmmsg of the batch). Server CPU is divided by the datagrams "
        "echoed (and verified) in the window.",
        "",
    ]
    if notes:
        parts += ["## Notes on the servers", "", *notes, ""]
    if failures:
        parts += ["## Failures, leaks and server output", "", *failures, ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
