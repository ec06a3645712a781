"""What a cold server costs: each server, freshly started, serves a batch of connections
(cold), then a second batch of the same shape (warm), and the two are compared.

    .venv/bin/python bench/coldwarm.py [--servers NAME,...] [--scenario rr64]
                                       [--trials 3] [--warmup 0.5] [--duration 3]

The runner's method otherwise: the server pinned to one core, the load generator to the
other, every byte verified, the server's CPU time sampled by the load generator at the
edges of its measured window. The two batches are two load generator runs with the
scenario's arguments (`bench/loadgen rr --conns 100 --size 64` for rr64), back to back
on one server process; the first connections of the second are opened after the first
batch's are all closed. Each trial starts every server afresh, servers interleaved.
The servers default to asyncio, uvloop, hamanet, rust-epoll and native-best (any echo
server of the catalog may be named). Prints every run, then medians over the trials.
Builds the load generator and the native echoes first, as bench/run.sh does
(`--no-build`: use those already built).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from benchlib.catalog import BASELINE, SCENARIOS, SERVERS
from benchlib.process import (
    CLK_TCK,
    RunError,
    ServerProcess,
    build_crates,
    free_port,
    pick_cpus,
    raise_nofile_limit,
    run_loadgen,
)

ECHO_MODES = ("rr", "accept")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=f"asyncio,{BASELINE},hamanet,rust-epoll,native-best")
    p.add_argument("--scenario", default="rr64", help="an echo scenario (rr or accept mode)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    known = {s.name: s for s in SERVERS}
    servers = [known[n] for n in args.servers.split(",")]
    servers = [s for s in servers if s.available() and s.argv is not None]
    scenario = {sc.name: sc for sc in SCENARIOS}[args.scenario]
    if scenario.mode not in ECHO_MODES or scenario.app != "echo" or scenario.tls:
        raise SystemExit(f"{scenario.name} is not a plain echo scenario")
    if not args.no_build:
        build_crates()
    raise_nofile_limit()
    cpus = pick_cpus()
    os.sched_setaffinity(0, {cpus.load})
    # (server, batch) -> [(msgs/s, CPU-us/msg)]
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for trial in range(1, args.trials + 1):
        for server in servers:
            srv = ServerProcess(server, free_port(), str(cpus.server), server.argv)
            try:
                srv.wait_ready()
                got = {}  # kept only when both batches ran, so the trials pair up
                for batch in ("cold", "warm"):
                    out = run_loadgen(
                        [
                            *scenario.loadgen_args(),
                            "--port",
                            str(srv.port),
                            "--server-pid",
                            str(srv.pid),
                            *([] if server.closes_on_eof else ["--no-close-check"]),
                            "--warmup",
                            str(args.warmup),
                            "--duration",
                            str(args.duration),
                        ],
                        cpus.load,
                        timeout=args.warmup + args.duration + 60,
                    )
                    rate = float(out["msgs_per_s"])
                    cpu = out["server_cpu_ticks"] / CLK_TCK * 1e6 / int(out["messages"])
                    got[batch] = (rate, cpu)
                    print(
                        f"trial {trial} {server.name:<12} {batch}: {rate:>10,.0f} msgs/s "
                        f"{cpu:7.2f} CPU-us/msg",
                        flush=True,
                    )
                for batch, figure in got.items():
                    figures.setdefault((server.name, batch), []).append(figure)
            except RunError as e:
                print(f"trial {trial} {server.name}: FAILED: {e}", flush=True)
            finally:
                srv.stop()
                srv.discard_log()
    print(
        f"\n{scenario.name}, medians of {args.trials} trial(s) (cold/warm: the median of "
        "the per-trial ratios):"
    )
    print(
        "| server | cold msgs/s | warm msgs/s | cold CPU-us/msg | warm CPU-us/msg | cold/warm CPU |"
    )
    print("|---|---|---|---|---|---|")
    for server in servers:
        cold, warm = figures.get((server.name, "cold"), []), figures.get((server.name, "warm"), [])
        pairs = list(zip(cold, warm))
        if not pairs:
            continue
        rc, rw = (statistics.median(r for r, _ in runs) for runs in (cold, warm))
        cc, cw = (statistics.median(c for _, c in runs) for runs in (cold, warm))
        ratio = statistics.median(c / w for (_, c), (_, w) in pairs)
        print(f"| {server.name} | {rc:,.0f} | {rw:,.0f} | {cc:.2f} | {cw:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
