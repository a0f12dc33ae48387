"""PNG plots of a run's time series (matplotlib, Agg backend: no display needed).

`write_plots(report, directory)` writes `cps.png` (offered vs achieved calls per second),
`latency.png` (setup latency p50/p99 per second), `failures.png` (failures, blocked offers and
503s per second) and `report.png`, the summary page: the three stacked under a headline
(calls, failures, cps, calls without audio or bearers); the failover kill and the
scale-out steps (and the step where the sbc saturated) are marked on each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

PLOTS = ("cps.png", "latency.png", "failures.png", "report.png")


def _series(report: dict[str, Any], key: str) -> list[float]:
    return [float("nan") if row[key] is None else float(row[key])
            for row in report["timeseries"]]


def _mark_events(ax: Axes, report: dict[str, Any]) -> None:
    for event in report.get("events") or []:
        if event.get("kind") == "kill":
            ax.axvline(event["t_s"], color="tab:red", linewidth=1.5)
            ax.annotate("sbc worker killed", (event["t_s"], 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color="tab:red",
                        fontsize=8)
    scale = report.get("scale_out")
    if scale:
        for step in scale["steps"][1:]:
            ax.axvline(step["from_s"], color="grey", linestyle="--", linewidth=0.8)
        at = scale.get("saturated_at_step")
        if at is not None:
            start = scale["steps"][at]["from_s"]
            ax.axvline(start, color="tab:orange", linewidth=1.5)
            ax.annotate("saturated", (start, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color="tab:orange",
                        fontsize=8)


def _unit(report: dict[str, Any]) -> str:
    return "REGISTER/s" if report["scenario"] == "register" else "calls/s"


def _cps(ax: Axes, report: dict[str, Any], x: list[int]) -> None:
    ax.plot(x, _series(report, "offered"), label="offered", color="tab:blue", linewidth=3,
            alpha=0.5)
    ax.plot(x, _series(report, "achieved"), label="achieved", color="tab:green", marker=".")
    ax.set_ylabel(_unit(report))
    ax.set_title("offered vs achieved")
    ax.legend(loc="lower right", fontsize=8)


def _latency(ax: Axes, report: dict[str, Any], x: list[int]) -> None:
    ax.plot(x, _series(report, "setup_p50_ms"), label="p50", color="tab:blue", marker=".")
    ax.plot(x, _series(report, "setup_p99_ms"), label="p99", color="tab:purple", marker=".")
    ax.set_ylabel("ms")
    ax.set_title("call setup latency (INVITE to 200) per second")
    ax.legend(loc="upper right", fontsize=8)


def _failures(ax: Axes, report: dict[str, Any], x: list[int]) -> None:
    ax.bar(x, _series(report, "failed"), label="failed", color="tab:red", width=0.8)
    ax.plot(x, _series(report, "blocked"), label="blocked (not placed)", color="tab:grey")
    ax.plot(x, _series(report, "rejected_503"), label="503", color="tab:orange")
    ax.set_ylabel("per second")
    ax.set_xlabel("seconds since the start of the load")
    ax.set_title("failures")
    ax.legend(loc="upper right", fontsize=8)


def headline(report: dict[str, Any]) -> str:
    """The run in one line, for the summary page: calls, rate, media and bearer checks."""
    if report["scenario"] == "register":
        regs = report["registrations"]
        return f"{regs['attempted']} REGISTERs, {regs['failed']} failed"
    calls, media, bearers = report["calls"], report["media"], report["bearers"]
    parts = [f"{calls['attempted']} calls, {calls['failed']} failed "
             f"({calls['failed_ratio'] * 100:.2f} %), {report['cps']['achieved']:.1f} cps"]
    if media["enabled"]:
        parts.append(f"no audio {media['calls_without_media']}/{media['calls_checked']}")
    if bearers["enabled"]:
        parts.append(f"no bearer {bearers['failed']}/{bearers['checked']}")
    return "; ".join(parts)


def _draw(ax: Axes, draw: Callable[[Axes, dict[str, Any], list[int]], None],
          report: dict[str, Any], x: list[int]) -> None:
    draw(ax, report, x)
    _mark_events(ax, report)
    ax.set_ylim(bottom=0)
    if ax.get_ylim()[1] < 1:
        ax.set_ylim(top=1)
    ax.grid(alpha=0.3)


def write_plots(report: dict[str, Any], directory: str) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    x = [row["second"] for row in report["timeseries"]]
    title = f"loadgen {report['scenario']} ({report['started_at'][:19]} UTC)"
    written = []
    for name, draw in (("cps.png", _cps), ("latency.png", _latency),
                       ("failures.png", _failures)):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        _draw(ax, draw, report, x)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for ax, draw in zip(axes, (_cps, _latency, _failures), strict=True):
        _draw(ax, draw, report, x)
    fig.suptitle(f"{title}\n{headline(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)
    written.append(out / "report.png")
    return written
