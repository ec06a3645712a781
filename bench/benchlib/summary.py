"""From runs to the report: medians of per-round ratios against uvloop, the tables, the
markdown file and the chart.

Two kinds of ratio: server CPU per message (echo scenarios; lower is better) and, for the
scenarios reported by throughput (`Scenario.by_throughput`: the real clients
redis-benchmark and wrk, and the work scenarios `blocking` and `hash`), requests per second
(THROUGHPUT; higher is better), with their CPU per request ratio beside it; and for the
static-file scenario (`Scenario.by_byte`: static10m), server CPU per MiB sent (lower is
better), with MiB/s beside it.

Ratios are taken within a round (each server against the uvloop run of the same round,
minutes apart at most) and only then the median across rounds, because this machine's
speed drifts between rounds more than the servers differ.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchlib.catalog import (
    BASELINE,
    HAMANET_IDLE_BYTES_TARGET,
    HAMANET_TARGETS,
    REDIS_BENCHMARK,
    TLS_TWINS,
    Scenario,
)
from benchlib.clients import REDIS_TESTS
from benchlib.process import RunResult


def metric(r: RunResult) -> float | None:
    """Server CPU-us per message (or request), RSS bytes per idle connection, or CPU-us per
    MiB sent (static10m): the primary figure of the echo and static-file scenarios, and the
    CPU figure of the throughput ones."""
    if r.idle_bytes_per_conn is not None:
        return r.idle_bytes_per_conn
    if r.cpu_us_per_mib is not None:
        return r.cpu_us_per_mib
    return r.cpu_us_per_msg


def throughput(r: RunResult) -> float | None:
    """Requests per second: the primary figure of the throughput scenarios."""
    return r.msgs_per_s or None


def mib_rate(r: RunResult) -> float | None:
    """MiB of body per second: the throughput beside static10m's CPU per MiB."""
    return r.mib_per_s or None


def per_cpu_second(r: RunResult) -> float | None:
    """Messages (tls-handshake: connections) per second of server CPU: the inverse of the
    CPU per message, for targets stated as what the server's CPU buys (higher is better)."""
    return 1e6 / r.cpu_us_per_msg if r.cpu_us_per_msg else None


# A target's figure: (the key its ratios are taken of, its name in the report).
_FIGURES: dict[str, tuple[Callable[[RunResult], float | None], str]] = {
    "cpu": (metric, "CPU"),
    "throughput": (throughput, "requests/s"),
    "per-cpu": (per_cpu_second, "per server CPU-second"),
}


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


@dataclass
class Cell:
    """One server in one scenario, over all rounds."""

    runs: list[RunResult]
    ratios: list[float]  # per round, against the baseline's run of the same round
    # Throughput scenarios: requests/s per round against the baseline (higher is better);
    # static10m: MiB/s.
    throughput_ratios: list[float] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    def med(self, attr: str) -> float | None:
        return _median([getattr(r, attr) for r in self.ok_runs])

    @property
    def value(self) -> float | None:
        return _median([v for r in self.ok_runs if (v := metric(r)) is not None])

    @property
    def ratio(self) -> float | None:
        return _median(self.ratios)

    @property
    def throughput_ratio(self) -> float | None:
        return _median(self.throughput_ratios)


def per_round_ratios(
    results: list[RunResult],
    scenario: str,
    server: str,
    against: str,
    key: Callable[[RunResult], float | None] = metric,
) -> list[float]:
    base = {
        r.round: key(r) for r in results if r.server == against and r.scenario == scenario and r.ok
    }
    out = []
    for r in results:
        if r.server != server or r.scenario != scenario or not r.ok:
            continue
        b, v = base.get(r.round), key(r)
        if b and v is not None:
            out.append(v / b)
    return out


def cells(
    results: list[RunResult], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> dict[tuple[str, str], Cell]:
    return {
        (sc.name, name): Cell(
            [r for r in results if r.scenario == sc.name and r.server == name],
            per_round_ratios(results, sc.name, name, BASELINE),
            per_round_ratios(
                results, sc.name, name, BASELINE, throughput if sc.by_throughput else mib_rate
            )
            if not sc.by_message
            else [],
        )
        for sc in scenarios
        for name in servers
    }


def _fmt(v: float | None, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cols: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def headline_table(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    """Ratio to uvloop per echo scenario and server; idle10k in bytes per connection."""
    echo = [sc for sc in scenarios if sc.by_message]
    names = servers_in(grid, echo, servers)
    rows = []
    for sc in echo:
        row = [sc.name]
        for name in names:
            cell = grid[(sc.name, name)]
            if sc.mode == "idle" and cell.value is not None:
                row.append(_fmt(cell.value, ",.0f") + " B")
            else:
                row.append(_cell_text(cell, cell.ratio))
        rows.append(row)
    return _table(["scenario", *names], rows)


# The native floors' columns, explained under the echo table.
FLOORS = {
    "rust-epoll": "the plain native floor (Rust, epoll, one `send` per `recv`)",
    "native-best": "the best native floor (Rust, epoll, a wakeup's input read until drained "
    "into one 256 KiB buffer and sent straight from it; udp64: recvmmsg, then sendmmsg of "
    "the same batch)",
}


def floor_legend(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    """What the native floor columns of the echo table are, for those that ran."""
    echo = [sc for sc in scenarios if sc.by_message]
    shown = [n for n in servers_in(grid, echo, servers) if n in FLOORS]
    return "; ".join(f"{n} is {FLOORS[n]}" for n in shown)


# The columns every detail table ends with.
_TAIL_HEADER = ["p50 us", "p99 us", "peak RSS MiB", "ok runs"]


def _tail_cells(cell: Cell) -> list[str]:
    peak = cell.med("peak_rss_kb")
    return [
        _fmt(cell.med("p50_us"), ",.0f"),
        _fmt(cell.med("p99_us"), ",.0f"),
        _fmt(None if peak is None else peak / 1024, ".1f"),
        f"{len(cell.ok_runs)}/{len(cell.runs)}",
    ]


def _cells_that_ran(
    grid: dict[tuple[str, str], Cell],
    scenarios: Sequence[Scenario],
    servers: Sequence[str],
    which: Callable[[Scenario], bool],
) -> Iterator[tuple[Scenario, str, Cell]]:
    """(scenario, server, cell) for every run cell of the scenarios `which` picks (the echo,
    throughput or static-file ones)."""
    for sc in scenarios:
        if not which(sc):
            continue
        for name in servers:
            cell = grid[(sc.name, name)]
            if cell.runs:
                yield sc, name, cell


def _is_by_message(sc: Scenario) -> bool:
    return sc.by_message


def _is_by_throughput(sc: Scenario) -> bool:
    return sc.by_throughput


def _is_by_byte(sc: Scenario) -> bool:
    return sc.by_byte


def detail_table(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    rows = [
        [
            sc.name,
            name,
            _fmt(cell.value, ",.0f" if sc.mode == "idle" else ".3f"),
            _fmt(cell.ratio),
            _fmt(cell.med("msgs_per_s"), ",.0f"),
            *_tail_cells(cell),
        ]
        for sc, name, cell in _cells_that_ran(grid, scenarios, servers, _is_by_message)
    ]
    header = [
        "scenario",
        "server",
        "CPU-us/msg (idle: B/conn)",
        "vs uvloop",
        "msgs/s (idle: conns/s)",
        *_TAIL_HEADER,
    ]
    return _table(header, rows)


def servers_in(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> list[str]:
    """The servers that ran at least one of `scenarios` (a scenario runs only on the
    servers that have a program for its application: `Server.argv_for`)."""
    return [n for n in servers if any(grid[(sc.name, n)].runs for sc in scenarios)]


def _cell_text(cell: Cell, value: float | None) -> str:
    if cell.runs and not cell.ok_runs:
        return "FAIL"
    failed = len(cell.runs) - len(cell.ok_runs)
    return _fmt(value) + (f" ({failed} failed)" if failed else "")


def throughput_table(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    """Per throughput scenario: the THROUGHPUT ratio (requests/s, higher is better) and
    the server CPU per request ratio (lower is better), both against uvloop."""
    by_throughput = [sc for sc in scenarios if sc.by_throughput]
    names = servers_in(grid, by_throughput, servers)
    rows = []
    for sc in by_throughput:
        rows.append(
            [sc.name, "requests/s (higher is better)"]
            + [_cell_text(grid[(sc.name, n)], grid[(sc.name, n)].throughput_ratio) for n in names]
        )
        rows.append(
            [sc.name, "CPU per request (lower is better)"]
            + [_cell_text(grid[(sc.name, n)], grid[(sc.name, n)].ratio) for n in names]
        )
    return _table(["scenario", f"ratio to {BASELINE}", *names], rows)


def throughput_details(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    ran = list(_cells_that_ran(grid, scenarios, servers, _is_by_throughput))
    # redis-benchmark's per-test rates, when it ran.
    redis = any(sc.mode == REDIS_BENCHMARK for sc, _, _ in ran)
    rows = []
    for sc, name, cell in ran:
        per_test = []
        if redis:
            per_test.append(
                " / ".join(
                    _fmt(_median([r.tests[t] for r in cell.ok_runs if t in r.tests]), ",.0f")
                    for t in REDIS_TESTS
                )
                if sc.mode == REDIS_BENCHMARK and cell.ok_runs
                else ""
            )
        rows.append(
            [
                sc.name,
                name,
                _fmt(cell.med("msgs_per_s"), ",.0f"),
                _fmt(cell.throughput_ratio),
                _fmt(cell.value, ".3f"),
                _fmt(cell.ratio),
                *per_test,
                *_tail_cells(cell),
            ]
        )
    header = [
        "scenario",
        "server",
        "requests/s",
        "req/s vs uvloop (higher is better)",
        "CPU-us/request",
        "CPU vs uvloop (lower is better)",
        *(["redis req/s: " + " / ".join(REDIS_TESTS)] if redis else []),
        *_TAIL_HEADER,
    ]
    return _table(header, rows)


def static_table(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    """Per static-file scenario: server CPU per MiB sent (lower is better) and MiB/s
    (higher is better), both as ratios to uvloop."""
    static = [sc for sc in scenarios if sc.by_byte]
    names = servers_in(grid, static, servers)
    rows = []
    for sc in static:
        rows.append(
            [sc.name, "CPU per MiB (lower is better)"]
            + [_cell_text(grid[(sc.name, n)], grid[(sc.name, n)].ratio) for n in names]
        )
        rows.append(
            [sc.name, "MiB/s (higher is better)"]
            + [_cell_text(grid[(sc.name, n)], grid[(sc.name, n)].throughput_ratio) for n in names]
        )
    return _table(["scenario", f"ratio to {BASELINE}", *names], rows)


def static_details(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    rows = [
        [
            sc.name,
            name,
            _fmt(cell.value, ",.0f"),
            _fmt(cell.ratio),
            _fmt(cell.med("mib_per_s"), ",.0f"),
            _fmt(cell.throughput_ratio),
            _fmt(cell.med("msgs_per_s"), ",.1f"),
            *_tail_cells(cell),
        ]
        for sc, name, cell in _cells_that_ran(grid, scenarios, servers, _is_by_byte)
    ]
    header = [
        "scenario",
        "server",
        "CPU-us/MiB",
        "CPU vs uvloop (lower is better)",
        "MiB/s",
        "MiB/s vs uvloop",
        "requests/s",
        *_TAIL_HEADER,
    ]
    return _table(header, rows)


def static_send_lines(results: list[RunResult]) -> list[str]:
    """How bench/servers/static_server.py sent the file bodies, as it counted them itself
    (its `hamanet-stats` line at exit), summed over the runs: through `loop.sendfile`, or
    by reading and writing after `loop.sendfile` raised NotImplementedError (uvloop)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r.ok and "bodies_sendfile" in r.server_stats:
            got = totals.setdefault((r.scenario, r.server), [0.0, 0.0])
            got[0] += r.server_stats["bodies_sendfile"]
            got[1] += r.server_stats.get("bodies_fallback", 0)
    return [
        f"- {scenario} {server}: {sendfile:,.0f} bodies through loop.sendfile, "
        f"{fallback:,.0f} read and written after loop.sendfile raised NotImplementedError"
        for (scenario, server), (sendfile, fallback) in totals.items()
    ]


UDP_LOSS_TITLE = "UDP datagrams lost (not echoed within the load generator's timeout; all runs)"


def udp_loss_lines(results: list[RunResult]) -> list[str]:
    """Per UDP scenario and server, summed over the runs that passed: datagrams sent, lost
    (not echoed within the loss timeout, then replaced) and late (echoed after it)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for r in results:
        if r.ok and r.datagrams_sent:
            got = totals.setdefault((r.scenario, r.server), [0, 0, 0])
            got[0] += r.datagrams_sent
            got[1] += r.datagrams_lost
            got[2] += r.datagrams_late
    return [
        f"- {scenario} {server}: {lost:,} of {sent:,} lost ({lost / sent:.3%}), "
        f"{late:,} of them echoed late"
        for (scenario, server), (sent, lost, late) in totals.items()
    ]


def target_lines(results: list[RunResult], grid: dict[tuple[str, str], Cell]) -> list[str]:
    """hamanet against the targets of its issues (medians of per-round ratios), for the
    scenarios and servers that ran."""
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for target in HAMANET_TARGETS:
        key, what = _FIGURES[target.figure]
        ratio = _median(
            per_round_ratios(results, target.scenario, target.server, target.against, key)
        )
        if ratio is None:
            continue
        server = "" if target.server == "hamanet" else f" ({target.server})"
        lines.append(
            f"- {target.scenario}{server}: {what} {ratio:.2f} x {target.against} "
            f"(target {target.wanted()}): {verdict(target.met(ratio))}"
        )
    lines += serial_fraction_lines(results)
    lines += scale_lines(results)
    idle = grid.get(("idle10k", "hamanet"))
    if idle is not None and idle.value is not None:
        lines.append(
            f"- idle10k: {idle.value:,.0f} B per idle connection "
            f"(target <= {HAMANET_IDLE_BYTES_TARGET}): "
            f"{verdict(idle.value <= HAMANET_IDLE_BYTES_TARGET)}"
        )
    return lines


TLS_COST_TITLE = "What TLS costs each server (the TLS scenario against its plain twin)"


def tls_cost_lines(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> list[str]:
    """Per server, each TLS scenario against its plain twin when both ran: the CPU per
    message (or request) with TLS as a multiple of without, and for the real clients the
    requests/s too. Medians over rounds of each; the two ran minutes apart, not
    interleaved, so these are rougher than the per-round ratios to uvloop."""
    ran = {sc.name for sc in scenarios}
    lines = []
    for tls_name, plain_name in TLS_TWINS:
        if tls_name not in ran or plain_name not in ran:
            continue
        parts = []
        for name in servers:
            secure, plain = grid.get((tls_name, name)), grid.get((plain_name, name))
            if not (secure and plain and secure.value and plain.value):
                continue
            part = f"{name} CPU x{secure.value / plain.value:.2f}"
            rate, plain_rate = secure.med("msgs_per_s"), plain.med("msgs_per_s")
            if rate and plain_rate:
                part += f", rate x{rate / plain_rate:.2f}"
            parts.append(part)
        if parts:
            lines.append(f"- {tls_name} / {plain_name}: {'; '.join(parts)}")
    return lines


#: The serial fraction the every-core issue asks for at most: a bound >= 3.3x at 8 cores.
SERIAL_FRACTION_TARGET = 0.20


def serial_fraction_lines(results: list[RunResult]) -> list[str]:
    """`serial-fraction`: the share of the reactor's busy time spent attached to the
    interpreter (holding the GIL), and Amdahl's bound it implies for N reactors."""
    fractions = [
        r.server_stats["attached_us"] / r.server_stats["busy_us"]
        for r in results
        if r.scenario == "serial-fraction" and r.ok and r.server_stats.get("busy_us")
    ]
    s = _median(fractions)
    if s is None:
        return []
    bounds = ", ".join(f"{n} cores {1 / (s + (1 - s) / n):.1f}x" for n in (2, 4, 8, 16))
    met = "met" if s <= SERIAL_FRACTION_TARGET else "MISSED"
    return [
        f"- serial-fraction: {s:.0%} of the reactor's busy time attached to the interpreter "
        f"(rr64, 1 reactor, median of {len(fractions)} runs; target <= "
        f"{SERIAL_FRACTION_TARGET:.0%}): {met}; Amdahl's bound for N reactors: {bounds}"
    ]


def scale_lines(results: list[RunResult]) -> list[str]:
    """`scale`: messages/s of hamanet with N reactors as a ratio to 1 reactor."""
    by_server: dict[str, list[float]] = {}
    for r in results:
        if r.scenario == "scale" and r.ok:
            by_server.setdefault(r.server, []).append(r.msgs_per_s)
    one = _median(by_server.get("hamanet", []))
    if not one:
        return []
    parts = []
    for server, rates in sorted(by_server.items()):
        n, _, reuse_port = server.removeprefix("hamanet-r").partition("-")
        label = "1 reactor" if server == "hamanet" else f"{n} reactors"
        label += ", SO_REUSEPORT" if reuse_port else ""
        rate = _median(rates) or 0.0
        parts.append(f"{label} {rate:,.0f} msgs/s ({rate / one:.2f}x)")
    cpus = os.cpu_count() or 0
    caveat = (
        f" (this machine has {cpus} CPUs, one of them the load generator's: it cannot show "
        "more than that)"
        if cpus <= 2
        else ""
    )
    return [f"- scale: {'; '.join(parts)}{caveat}"]


def failure_lines(results: list[RunResult]) -> list[str]:
    lines = []
    for r in results:
        if not r.ok:
            lines.append(f"- FAILED {r.scenario} round {r.round} {r.server}: {r.error}")
        elif r.leaked_fds > 0:
            lines.append(
                f"- {r.scenario} round {r.round} {r.server}: {r.leaked_fds} more fds open "
                "after every client had closed"
            )
        if r.client_output:
            shown = "; ".join(r.client_output[:5])
            more = f" (+{len(r.client_output) - 5} lines)" if len(r.client_output) > 5 else ""
            lines.append(
                f"- {r.scenario} round {r.round} {r.server}: the client printed: {shown}{more}"
            )
        if r.server_output:
            shown = "; ".join(r.server_output[:5])
            more = f" (+{len(r.server_output) - 5} lines)" if len(r.server_output) > 5 else ""
            lines.append(f"- {r.scenario} round {r.round} {r.server} printed: {shown}{more}")
    return lines


def _left_panel_subject(scenarios: Sequence[Scenario]) -> str:
    """What the lower-is-better panel shows: echo servers, static files, or both."""
    kinds = [
        kind
        for kind, present in (
            ("Echo servers", any(sc.by_message for sc in scenarios)),
            ("static files", any(sc.by_byte for sc in scenarios)),
        )
        if present
    ]
    return " and ".join(kinds).capitalize()


def chart(
    path: Path,
    grid: dict[tuple[str, str], Cell],
    scenarios: Sequence[Scenario],
    servers: Sequence[str],
    subtitle: str,
) -> None:
    """Echo scenarios on the left (CPU per message, lower is better); throughput
    scenarios, when they ran, on the right (requests/s, higher is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The static-file scenario shares the left panel: its ratio is CPU per MiB, also
    # lower is better.
    echo = [sc for sc in scenarios if not sc.by_throughput]
    echo = [sc for sc in echo if any(grid[(sc.name, n)].runs for n in servers)]
    by_throughput = [sc for sc in scenarios if sc.by_throughput]
    by_throughput = [sc for sc in by_throughput if any(grid[(sc.name, n)].runs for n in servers)]
    panels = []
    if echo:
        panels.append(
            (
                echo,
                servers_in(grid, echo, servers),
                lambda cell: cell.ratio,
                f"server CPU per message vs {BASELINE}\n(idle10k: RSS per connection; "
                "static10m: CPU per MiB)",
                f"{_left_panel_subject(echo)} vs {BASELINE}: lower is better",
            )
        )
    if by_throughput:
        panels.append(
            (
                by_throughput,
                servers_in(grid, by_throughput, servers),
                lambda cell: cell.throughput_ratio,
                f"requests/s vs {BASELINE}",
                f"Real clients and work in the handler vs {BASELINE}:\nTHROUGHPUT, "
                "higher is better",
            )
        )
    if not panels:
        return
    widths = [max(len(p[0]), 1) + 1 for p in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4 + 1.3 * sum(widths), 5.5), width_ratios=widths, squeeze=False
    )
    for ax, (scs, names, value, ylabel, title) in zip(axes[0], panels):
        others = [s for s in names if s != BASELINE]
        width = 0.8 / max(len(others), 1)
        tallest = 1.0
        for i, server in enumerate(others):
            xs, ys = [], []
            for j, sc in enumerate(scs):
                ratio = value(grid[(sc.name, server)])
                if ratio is not None:
                    xs.append(j + (i - (len(others) - 1) / 2) * width)
                    ys.append(ratio)
                    tallest = max(tallest, ratio)
            # The same colour for a server in both panels.
            color = f"C{[s for s in servers if s != BASELINE].index(server)}"
            bars = ax.bar(xs, ys, width, label=server, color=color)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label=f"{BASELINE} = 1.0")
        ax.set_xticks(range(len(scs)), [sc.name for sc in scs])
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        # Headroom above the tallest bar keeps the legend clear of the bar labels.
        ax.set_ylim(0, tallest * 1.25)
        ax.legend(fontsize=8, ncols=min(len(others) + 1, 3), loc="upper center")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
