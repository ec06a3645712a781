"""From runs to the report: medians of per-round ratios against uvloop, the tables, the
markdown file and the chart.

Ratios are taken within a round (each server against the uvloop run of the same round,
minutes apart at most) and only then the median across rounds, because this machine's
speed drifts between rounds more than the servers differ.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib.catalog import (
    BASELINE,
    HAMANET_IDLE_BYTES_TARGET,
    HAMANET_TARGETS,
    HAMANET_VS_RUST_RR64,
    Scenario,
)
from benchlib.process import RunResult


def metric(r: RunResult) -> float | None:
    """The primary figure: server CPU-us per message, or RSS bytes per idle connection."""
    return r.idle_bytes_per_conn if r.idle_bytes_per_conn is not None else r.cpu_us_per_msg


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


@dataclass
class Cell:
    """One server in one scenario, over all rounds."""

    runs: list[RunResult]
    ratios: list[float]  # per round, against the baseline's run of the same round

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


def per_round_ratios(
    results: list[RunResult], scenario: str, server: str, against: str
) -> list[float]:
    base = {
        r.round: metric(r)
        for r in results
        if r.server == against and r.scenario == scenario and r.ok
    }
    out = []
    for r in results:
        if r.server != server or r.scenario != scenario or not r.ok:
            continue
        b, v = base.get(r.round), metric(r)
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
    """Ratio to uvloop per scenario and server; idle10k in bytes per connection."""
    rows = []
    for sc in scenarios:
        row = [sc.name]
        for name in servers:
            cell = grid[(sc.name, name)]
            if cell.runs and not cell.ok_runs:
                row.append("FAIL")
            elif sc.mode == "idle":
                row.append(_fmt(cell.value, ",.0f") + " B")
            else:
                failed = len(cell.runs) - len(cell.ok_runs)
                row.append(_fmt(cell.ratio) + (f" ({failed} failed)" if failed else ""))
        rows.append(row)
    return _table(["scenario", *servers], rows)


def detail_table(
    grid: dict[tuple[str, str], Cell], scenarios: Sequence[Scenario], servers: Sequence[str]
) -> str:
    rows = []
    for sc in scenarios:
        idle = sc.mode == "idle"
        for name in servers:
            cell = grid[(sc.name, name)]
            if not cell.runs:
                continue
            peak = cell.med("peak_rss_kb")
            rows.append(
                [
                    sc.name,
                    name,
                    _fmt(cell.value, ",.0f" if idle else ".3f"),
                    _fmt(cell.ratio),
                    _fmt(cell.med("msgs_per_s"), ",.0f"),
                    _fmt(cell.med("p50_us"), ",.0f"),
                    _fmt(cell.med("p99_us"), ",.0f"),
                    _fmt(None if peak is None else peak / 1024, ".1f"),
                    f"{len(cell.ok_runs)}/{len(cell.runs)}",
                ]
            )
    header = [
        "scenario",
        "server",
        "CPU-us/msg (idle: B/conn)",
        "vs uvloop",
        "msgs/s (idle: conns/s)",
        "p50 us",
        "p99 us",
        "peak RSS MiB",
        "ok runs",
    ]
    return _table(header, rows)


def target_lines(results: list[RunResult], grid: dict[tuple[str, str], Cell]) -> list[str]:
    """hamanet against the targets of the benchmark issue (medians of per-round ratios)."""
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for scenario, target in HAMANET_TARGETS.items():
        cell = grid.get((scenario, "hamanet"))
        if cell is None or cell.ratio is None:
            continue
        lines.append(
            f"- {scenario}: {cell.ratio:.2f} x uvloop (target <= {target:.2f}): "
            f"{verdict(cell.ratio <= target)}"
        )
    idle = grid.get(("idle10k", "hamanet"))
    if idle is not None and idle.value is not None:
        lines.append(
            f"- idle10k: {idle.value:,.0f} B per idle connection "
            f"(target <= {HAMANET_IDLE_BYTES_TARGET}): "
            f"{verdict(idle.value <= HAMANET_IDLE_BYTES_TARGET)}"
        )
    vs_rust = _median(per_round_ratios(results, "rr64", "hamanet", "rust-epoll"))
    if vs_rust is not None:
        lines.append(
            f"- rr64: {vs_rust:.2f} x the plain Rust epoll echo "
            f"(target <= {HAMANET_VS_RUST_RR64:.2f}): {verdict(vs_rust <= HAMANET_VS_RUST_RR64)}"
        )
    return lines


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
        if r.server_output:
            shown = "; ".join(r.server_output[:5])
            more = f" (+{len(r.server_output) - 5} lines)" if len(r.server_output) > 5 else ""
            lines.append(f"- {r.scenario} round {r.round} {r.server} printed: {shown}{more}")
    return lines


def chart(
    path: Path,
    grid: dict[tuple[str, str], Cell],
    scenarios: Sequence[Scenario],
    servers: Sequence[str],
    subtitle: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [s for s in servers if s != BASELINE]
    names = [sc.name for sc in scenarios]
    width = 0.8 / max(len(others), 1)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    tallest = 1.0
    for i, server in enumerate(others):
        xs, ys = [], []
        for j, sc in enumerate(scenarios):
            ratio = grid[(sc.name, server)].ratio
            if ratio is not None:
                xs.append(j + (i - (len(others) - 1) / 2) * width)
                ys.append(ratio)
                tallest = max(tallest, ratio)
        bars = ax.bar(xs, ys, width, label=server)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label=f"{BASELINE} = 1.0")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"server CPU per message vs {BASELINE}\n(idle10k: RSS per connection)")
    ax.set_title(f"Echo servers vs {BASELINE}: lower is better\n{subtitle}", fontsize=10)
    # Headroom above the tallest bar keeps the legend clear of the bar labels.
    ax.set_ylim(0, tallest * 1.2)
    ax.legend(fontsize=8, ncols=len(others) + 1, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
