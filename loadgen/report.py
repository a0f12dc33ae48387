"""The run's report: a JSON document, a per-second CSV, a summary table, the threshold verdict.

The JSON schema (version 1) is documented in README.md ("loadgen"); `build_report` is its
single source. Nested objects: `calls.failed_by_cause` is `report["calls"]["failed_by_cause"]`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadgen.config import LoadConfig
from loadgen.engine import Outcome
from loadgen.stats import LATENCIES, Histogram, Results, Second, recovery_seconds
from services import __version__

SCHEMA_VERSION = 1
RECOVERY_THRESHOLD = 0.999
CSV_COLUMNS = ("second", "offered", "attempted", "achieved", "active", "failed", "blocked",
               "rejected_503", "success_ratio", "setup_p50_ms", "setup_p99_ms")


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 else 0.0


def timeseries(r: Results) -> list[dict[str, Any]]:
    if not r.seconds:
        return []
    rows = []
    for k in range(0, max(r.seconds) + 1):
        s = r.seconds.get(k, Second())
        started = s.started_ok + s.started_failed
        rows.append({
            "second": k, "offered": s.offered, "attempted": s.attempted,
            "achieved": s.achieved, "active": s.active, "failed": s.failed,
            "blocked": s.blocked, "rejected_503": s.rejected_503,
            "success_ratio": _ratio(s.started_ok, started) if started else None,
            "setup_p50_ms": _round(s.setup.percentile(0.5)),
            "setup_p99_ms": _round(s.setup.percentile(0.99)),
        })
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_report(
    config: LoadConfig,
    outcome: Outcome,
    *,
    sbc_workers: int | None = None,
) -> dict[str, Any]:
    r = outcome.results
    calls = config.is_call_scenario
    load_s = r.load_seconds or config.planned_seconds()
    series = timeseries(r)
    peak_offered = max((row["offered"] for row in series), default=0)
    peak_achieved = max((row["achieved"] for row in series), default=0)
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "tool": f"loadgen {__version__}",
        "scenario": config.scenario,
        "started_at": dt.datetime.fromtimestamp(outcome.started_at, dt.UTC).isoformat(),
        "duration_s": round(load_s, 3),
        "config": _config(config),
        "calls": {
            "offered": r.offered if calls else 0,
            "attempted": r.attempted,
            "succeeded": r.succeeded,
            "failed": r.failed,
            "blocked": r.blocked if calls else 0,
            "failed_ratio": _ratio(r.failed, r.attempted),
            "failed_by_cause": dict(sorted(r.failed_by_cause.items())),
            "by_kind": {k: asdict(v) for k, v in sorted(r.by_kind.items())},
            "setups_succeeded": r.setups_succeeded,
            "dropped": r.dropped,
        },
        "cps": {
            "offered": _rate(r.offered, load_s) if calls else 0.0,
            "achieved": _rate(r.setups_succeeded, load_s) if calls else 0.0,
            "peak_offered": peak_offered if calls else 0,
            "peak_achieved": peak_achieved if calls else 0,
        },
        "registrations": {
            "attempted": r.reg_attempted,
            "succeeded": r.reg_succeeded,
            "failed": r.reg_failed,
            "failed_by_cause": dict(sorted(r.reg_failed_by_cause.items())),
            "before_load": outcome.registered if calls else 0,
            "reregistrations": r.reregistrations,
            "moved_to_secondary": r.reg_failovers,
            "bindings_cleared": r.bindings_cleared,
            "unregistered": r.unregistered,
            "offered": 0 if calls else r.offered,
            "blocked": 0 if calls else r.blocked,
            "rate_offered": 0.0 if calls else _rate(r.offered, load_s),
            "rate_achieved": 0.0 if calls else _rate(r.reg_succeeded, load_s),
        },
        "latency_ms": {name: r.latency.get(name, Histogram()).summary() for name in LATENCIES},
        "retransmissions": sum(r.retransmissions.values()),
        "retransmissions_by_message": dict(sorted(r.retransmissions.items())),
        "media": {
            "enabled": config.media,
            "calls_checked": r.media_checked,
            "calls_without_media": r.media_without,
            "one_way": r.media_one_way,
            "rtp_packets_sent": r.rtp_sent,
            "rtp_packets_received": r.rtp_received,
        },
        "bearers": _bearers(config, r),
        "engine": {
            "workers": r.workers,
            "ues": r.ues,
            "scheduler_lag_ms": r.lag.summary(),
            "cpu_seconds": round(r.cpu_seconds, 3),
        },
        "events": outcome.events,
        "failover": _failover(config, r, outcome) if config.scenario == "failover" else None,
        "scale_out": _scale_out(config, r, sbc_workers, outcome.events)
        if config.scenario == "scale-out" else None,
        "soak": _soak(config, r) if config.scenario == "soak" else None,
        "timeseries": series,
        "kube": outcome.kube,  # the contexts, Jobs and pods of a Kubernetes run (else None)
    }
    report["thresholds"] = thresholds(config, report)
    report["passed"] = not any(t["exceeded"] for t in report["thresholds"].values())
    report["warnings"] = _warnings(config, r, report)
    return report


def _bearers(config: LoadConfig, r: Results) -> dict[str, Any]:
    from loadgen.bearers import bearer_check

    out: dict[str, Any] = {"enabled": config.bearers is not None,
                           "checked": r.bearers_checked, "failed": r.bearers_failed,
                           "note": bearer_check(config.bearers).note}
    if config.bearers is not None:
        out.update(enbs=config.bearers.enbs, ues_attached=r.bearers_attached,
                   left_after_load=r.bearers_left)
    return out


def _config(c: LoadConfig) -> dict[str, Any]:
    return {
        "targets": [f"{h}:{p}" for h, p in c.targets], "domain": c.domain,
        "subscribers": c.subscribers, "start": c.start, "rate": c.rate, "ramp": c.ramp,
        "max_concurrent": c.max_concurrent, "hold": c.hold, "calls": c.calls,
        "duration": c.load_duration, "media": c.media, "mix": c.mix.as_dict(),
        "seed": c.seed, "workers": c.workers, "setup_timeout": c.setup_timeout,
        "register_timeout": c.register_timeout,
        "expires": c.expires, "steps": list(c.steps) or None,
        "step_duration": c.step_duration if c.steps else None,
        "event_at": c.failover_at if c.scenario == "failover" else None,
    }


def _failover(c: LoadConfig, r: Results, outcome: Outcome) -> dict[str, Any]:
    f = r.failover
    recovery = recovery_seconds(f.after, RECOVERY_THRESHOLD)
    after_failed = sum(bad for k, (_, bad) in f.after.items() if recovery is None or k < recovery)
    later_failed = sum(bad for k, (_, bad) in f.after.items()
                       if recovery is not None and k >= recovery)
    kill = next((e for e in outcome.events if e.get("kind") == "kill"), {})
    return {
        "killed": kill.get("target", "sbc-worker"),
        "event_at_s": c.failover_at,
        "killed_at_s": kill.get("t_s"),
        "killed_pid": kill.get("pid"),
        "killed_pod": kill.get("pod"),  # Kubernetes: the sbc pod deleted, and where
        "killed_in_context": kill.get("context"),
        "signal": kill.get("signal"),
        "recovery_s": None if recovery is None else float(recovery),
        "recovered": recovery is not None,
        "recovery_threshold": RECOVERY_THRESHOLD,
        "resolution_s": 1.0,
        "established_at_event": f.established_at_event,
        "established_calls_lost": f.established_lost,
        "in_setup_at_event": f.in_setup_at_event,
        "in_setup_failed": f.in_setup_failed,
        "setup_failures_in_window": f.in_setup_failed + after_failed,
        "failures_after_recovery": later_failed,
        "failed_by_cause": dict(sorted(f.causes.items())),
        # UEs that moved to their secondary P-CSCF when the primary stopped answering; of the
        # UEs registered before the event, those that did not have to register again.
        "ues_moved_to_secondary": f.pcscf_moves,
        "registrations_kept": max(0, outcome.registered - f.reregistered_after_move),
        "registered_again_after_move": f.reregistered_after_move,
        "after_event": [{"second": k, "succeeded": ok, "failed": bad}
                        for k, (ok, bad) in sorted(f.after.items())],
    }


def _merge_seconds(r: Results, first: int, last: int) -> Second:
    total = Second()
    for k in range(first, last):
        if k in r.seconds:
            total.merge(r.seconds[k])
    return total


def scale_step(c: LoadConfig, r: Results, i: int, base_p99: float | None) -> dict[str, Any]:
    """Step `i` of a scale-out run: its figures and why it counts as saturated (503s, achieved
    under 95 % of offered, setup p99 more than doubled from step 0's `base_p99`). Used for the
    report and, during a Kubernetes run, to decide when to add an sbc replica."""
    first = int(i * c.step_duration)
    last = int((i + 1) * c.step_duration)
    s = _merge_seconds(r, first, last)
    span = max(last - first, 1)
    p99 = s.setup.percentile(0.99)
    achieved = s.achieved / span
    offered = s.offered / span
    started = s.started_ok + s.started_failed
    reasons = []
    if s.rejected_503:
        reasons.append(f"{s.rejected_503} x 503")
    if offered and achieved < 0.95 * offered:
        reasons.append("achieved < 95% of offered")
    if p99 is not None and base_p99 is not None and i > 0 and p99 > 2 * base_p99 and \
            p99 > base_p99 + 50:
        reasons.append("setup p99 more than doubled")
    return {
        "step": i, "from_s": first, "to_s": last, "rate": c.steps[i],
        "offered_cps": round(offered, 3), "achieved_cps": round(achieved, 3),
        "failed": s.started_failed, "failed_ratio": _ratio(s.started_failed, started),
        "rejected_503": s.rejected_503, "setup_p50_ms": _round(s.setup.percentile(0.5)),
        "setup_p99_ms": _round(p99), "saturated": bool(reasons), "why": reasons,
    }


def _scaled_count(event: dict[str, Any], side: str) -> int:
    """Workers (local) or replicas (Kubernetes) before or after a scale event."""
    return int(event.get(f"workers_{side}", event.get(f"replicas_{side}", 0)))


def _scale_out(c: LoadConfig, r: Results, sbc_workers: int | None,
               events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per step: offered and achieved CPS, latency, whether it saturated, and the sbc worker
    (replica) count it ran with: the controller scales after a saturated step (events of kind
    scale; on Kubernetes the new replica may come up a few seconds into the next step)."""
    base_p99 = _merge_seconds(r, 0, int(c.step_duration)).setup.percentile(0.99)
    steps = [scale_step(c, r, i, base_p99) for i in range(len(c.steps))]
    saturated_at = next((s["step"] for s in steps if s["saturated"]), None)
    scales = sorted((e for e in events if e.get("kind") == "scale" and "error" not in e),
                    key=lambda e: int(e["after_step"]))
    by_workers: dict[str, float] = {}
    for step in steps:
        workers = sbc_workers
        for e in scales:
            if int(e["after_step"]) < step["step"]:
                workers = _scaled_count(e, "after")
            elif workers is None:
                workers = _scaled_count(e, "before")
        step["sbc_workers"] = workers
        if workers:
            key = str(workers)
            by_workers[key] = max(by_workers.get(key, 0.0), float(step["achieved_cps"]))
    failed = [e for e in events if e.get("kind") == "scale" and "error" in e]
    if scales:
        action = "; ".join(str(e["what"]) for e in scales)
    elif failed:
        action = str(failed[0]["what"])
    elif sbc_workers is None:
        action = "no local stack in --run-dir to scale: achieved CPS per step at fixed capacity"
    elif saturated_at is None:
        action = "no step saturated the sbc: nothing to scale"
    else:
        action = (f"the sbc saturated, but {sbc_workers} worker(s) is the most "
                  "--max-sbc-workers allows: not scaled")
    return {
        "sbc_workers": sbc_workers,
        "sbc_workers_at_end": _scaled_count(scales[-1], "after") if scales else sbc_workers,
        "steps": steps,
        "saturated_at_step": saturated_at,
        "max_achieved_cps": max((float(s["achieved_cps"]) for s in steps), default=0.0),
        "cps_by_workers": by_workers,
        "scaled": bool(scales),
        "action": action,
    }


def _soak(c: LoadConfig, r: Results) -> dict[str, Any]:
    total = int(r.load_seconds or c.planned_seconds())
    width = max(1, int(c.window))
    windows = []
    for first in range(0, max(total, 1), width):
        s = _merge_seconds(r, first, first + width)
        started = s.started_ok + s.started_failed
        windows.append({"from_s": first, "to_s": first + width, "attempted": s.attempted,
                        "failed": s.started_failed,
                        "failed_ratio": _ratio(s.started_failed, started),
                        "setup_p50_ms": _round(s.setup.percentile(0.5)),
                        "setup_p99_ms": _round(s.setup.percentile(0.99))})
    p99s = [w["setup_p99_ms"] for w in windows if w["setup_p99_ms"] is not None]
    return {
        "window_s": width,
        "windows": windows,
        "p99_drift": round(p99s[-1] / p99s[0], 3) if len(p99s) >= 2 and p99s[0] else None,
        "reregistrations": r.reregistrations,
    }


def thresholds(c: LoadConfig, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each requested limit with the measured value; None measured counts as exceeded (a run
    that set up no call cannot prove its latency)."""
    out: dict[str, dict[str, Any]] = {}
    calls = c.is_call_scenario
    if c.max_failed_ratio is not None:
        if calls:
            value = report["calls"]["failed_ratio"]
        else:
            regs = report["registrations"]
            value = _ratio(regs["failed"], regs["attempted"])
        out["max_failed_ratio"] = _verdict(c.max_failed_ratio, value)
    if c.max_p99_setup_ms is not None:
        metric = "invite_to_200" if calls else "register"
        out["max_p99_setup_ms"] = {**_verdict(c.max_p99_setup_ms,
                                              report["latency_ms"][metric]["p99"]),
                                   "metric": f"latency_ms.{metric}.p99"}
    return out


def _verdict(limit: float, value: float | None) -> dict[str, Any]:
    return {"limit": limit, "value": value, "exceeded": value is None or value > limit}


def _warnings(c: LoadConfig, r: Results, report: dict[str, Any]) -> list[str]:
    out = []
    if r.blocked and c.is_call_scenario:
        out.append(
            f"{r.blocked} offered calls were not placed: --max-concurrent reached or no idle UE "
            f"pair (each call keeps a pair busy for setup + hold; give at least "
            f"2 x rate x (hold + 1) --subscribers)"
        )
    if c.is_call_scenario and report["registrations"]["failed"]:
        out.append(f"{r.reg_failed} REGISTERs failed; their UE pairs placed no call")
    lag95, lag99 = r.lag.percentile(0.95), r.lag.percentile(0.99)
    if lag95 is not None and lag99 is not None and lag95 > 20:  # late often, not once
        out.append(f"loadgen's scheduler was late (p95 {lag95:.0f} ms, p99 {lag99:.0f} ms): "
                   "offers came in bursts; give loadgen more --workers (or cores)")
    if c.bearers is not None and r.bearers_attached < r.ues:
        out.append(f"{r.ues - r.bearers_attached} of {r.ues} UEs did not attach through the "
                   "simulated eNBs: their calls fail with no_bearer")
    if r.bearers_left:
        out.append(f"{r.bearers_left} UEs still held a QCI-1 bearer at the enb-agent after "
                   "the load (not released)")
    kube = report.get("kube")
    if kube and kube["late_pods"]:
        out.append(f"{len(kube['late_pods'])} pod(s) were not ready at the common start and "
                   f"began late ({', '.join(kube['late_pods'])}): give --kube-start-delay more")
    if c.is_call_scenario and not c.media:
        out.append("media off: no audio check was made")
    if c.media and c.is_call_scenario and c.hold < 0.1:
        out.append("media on with --hold under 0.1 s: too short for RTP to arrive both ways")
    return out


# -- writers -----------------------------------------------------------------------------------


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def write_csv(report: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in report["timeseries"]:
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})


def summary(report: dict[str, Any], console: Console) -> None:
    """The summary tables, on the console (plain text when it is not a terminal)."""
    calls, regs, cps = report["calls"], report["registrations"], report["cps"]
    head = Table(title=f"loadgen {report['scenario']}: {report['duration_s']:.1f} s of load",
                 show_header=False, title_justify="left")
    head.add_column("what")
    head.add_column("value", justify="right")
    if report["scenario"] != "register":
        head.add_row("calls attempted / succeeded / failed",
                     f"{calls['attempted']} / {calls['succeeded']} / {calls['failed']}")
        head.add_row("failed ratio", f"{calls['failed_ratio'] * 100:.2f} %")
        if calls["blocked"]:
            head.add_row("offered but not placed (blocked)", str(calls["blocked"]))
        head.add_row("CPS offered / achieved", f"{cps['offered']:.1f} / {cps['achieved']:.1f}")
        media = report["media"]
        if media["enabled"]:
            head.add_row("calls without media (one-way)",
                         f"{media['calls_without_media']} ({media['one_way']}) "
                         f"of {media['calls_checked']}")
        bearers = report["bearers"]
        if bearers["enabled"]:
            head.add_row("QCI-1 bearers checked / missing",
                         f"{bearers['checked']} / {bearers['failed']} ({bearers['ues_attached']} "
                         f"UEs on {bearers['enbs']} eNBs)")
        head.add_row("dropped by the network", str(calls["dropped"]))
    head.add_row("REGISTER attempted / succeeded / failed",
                 f"{regs['attempted']} / {regs['succeeded']} / {regs['failed']}")
    if report["scenario"] == "register":
        head.add_row("REGISTER/s offered / achieved",
                     f"{regs['rate_offered']:.1f} / {regs['rate_achieved']:.1f}")
    head.add_row("retransmissions", str(report["retransmissions"]))
    console.print(head)

    lat = Table(title="latency (ms)", title_justify="left")
    for col in ("metric", "count", "p50", "p95", "p99", "max"):
        lat.add_column(col, justify="left" if col == "metric" else "right")
    for name, s in report["latency_ms"].items():
        if s["count"]:
            lat.add_row(name, str(s["count"]), *(f"{s[k]:.1f}" for k in ("p50", "p95", "p99",
                                                                           "max")))
    console.print(lat)

    causes = {**calls["failed_by_cause"], **{f"REGISTER {k}": v
                                             for k, v in regs["failed_by_cause"].items()}}
    if causes:
        table = Table(title="failures by cause", title_justify="left")
        table.add_column("cause")
        table.add_column("count", justify="right")
        for cause, n in sorted(causes.items(), key=lambda kv: -kv[1]):
            table.add_row(cause, str(n))
        console.print(table)

    if report["failover"]:
        f = report["failover"]
        recovery = "never" if f["recovery_s"] is None else f"{f['recovery_s']:.0f} s"
        if f["killed"] == "site":
            what = f"the whole site ({f['signal']})"
        elif f.get("killed_pod"):
            what = f"{f['signal']} sbc pod {f['killed_pod']}"
        else:
            what = f"{f['signal']} sbc worker {f['killed_pid']}"
        moved = (f"; UEs moved to their secondary P-CSCF {f['ues_moved_to_secondary']}, "
                 f"registrations kept {f['registrations_kept']}" if f["killed"] == "site" else "")
        console.print(
            f"failover: {what} at {f['killed_at_s']} s{moved}; "
            f"established calls lost {f['established_calls_lost']} of "
            f"{f['established_at_event']}; setup failures in the window "
            f"{f['setup_failures_in_window']}; recovery {recovery}"
        )
    if report["scale_out"]:
        s = report["scale_out"]
        table = Table(title="scale-out", title_justify="left")
        for col in ("step", "sbc workers", "offered cps", "achieved cps", "p99 setup ms", "503",
                    "saturated"):
            table.add_column(col, justify="right")
        for step in s["steps"]:
            table.add_row(str(step["step"]), str(step["sbc_workers"] or "?"),
                          f"{step['offered_cps']:.1f}",
                          f"{step['achieved_cps']:.1f}", str(step["setup_p99_ms"]),
                          str(step["rejected_503"]), ", ".join(step["why"]) or "no")
        console.print(table)
        console.print(f"scale-out: {s['action']}")
        console.print("achieved cps by sbc workers: " + ", ".join(
            f"{w}: {cps:.1f}" for w, cps in s["cps_by_workers"].items()), highlight=False)
    if report.get("kube"):
        places = ", ".join(f"{p['context']} ({len(p['pods'])} pods of Job {p['job']}, "
                           f"namespace {p['namespace']}, target {p['target']})"
                           for p in report["kube"]["contexts"])
        console.print(f"on Kubernetes: {places}", highlight=False)
    for name, t in report["thresholds"].items():
        verdict = "EXCEEDED" if t["exceeded"] else "ok"
        console.print(f"threshold {name}: limit {t['limit']}, measured {t['value']}: {verdict}")
    for warning in report["warnings"]:
        console.print(f"warning: {warning}")
