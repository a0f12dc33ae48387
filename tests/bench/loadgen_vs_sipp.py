"""loadgen's call rate against SIPp's, as UACs calling the same SIPp UAS, in one run.

What runs. One SIPp UAS (`sipp -sn uas`, its built-in scenario: INVITE, 180, 200 with SDP, ACK,
BYE, 200) on loopback UDP for the whole run is the far end of three UACs in turn:

- `SIPp UAC`: `sipp -sn uac` (INVITE with SDP, 200, ACK, a HOLD_MS pause, BYE), one process;
- `loadgen 1w`: `loadgen call-setup --callee <the UAS> --no-media --hold HOLD_MS`, one process;
- `loadgen 2w`: the same with `--workers 2` (two worker processes, the rate split between them).

No proxy, no registration, no media: the UAC's own cost per call is what is measured.

What is measured. Each UAC places calls at STEPS calls per second, STEP_SECONDS per step (rate x
STEP_SECONDS calls). Steps alternate between the UACs (each rate: SIPp, loadgen 1w, loadgen 2w),
so drift in the machine's load falls on all of them alike; a failed step is run once more (this
machine is shared: a burst of someone else's load can fail one step), and after a UAC's step
fails twice it is not stepped further. A step passes when fewer than 0.1 % of its calls failed
(SIPp: FailedCall, or a call not over by its deadline; loadgen: failed, blocked or never
offered), and the achieved rate was at least 90 % of the offered one (SIPp: CallRate(C) of its
-trace_stat, so the drain counts; loadgen: cps.achieved of its report). Reported per step:
calls, failed, achieved calls/s, INVITE->200 time (SIPp: mean of response time 1, 1 ms
resolution; loadgen: p50), and the UAC's CPU seconds per 1000 calls: SIPp's user + system time
from wait4() when it exits (its start-up is a few ms), loadgen's from its report
(engine.cpu_seconds: the worker processes' CPU time from the start of the load to the end of the
drain; Python's start-up and the worker spawn excluded). Then per UAC the highest passed step
and calls per CPU-second there (a core's worth of calls), and the ratios against the targets:
loadgen 1w's max rate >= SIPp's (per core) and loadgen 2w's above one SIPp process.

Caveats printed with the table: the UAS and the UAC share the machine's 2 cores (loadgen 2w's
two workers and the UAS need three), and STEPS caps what can be shown. `BENCH_KEEP=<dir>` keeps
the reports and SIPp's files there.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.stack import free_port
from tests.bench.sbc_vs_kamailio import duration_ms, last_stats, udp_receive_drops
from tests.interop.sipp_far_end import SIPP_BUFFER, SippUas, sipp_binary

STEPS = (250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 12000)
STEP_SECONDS = 3
HOLD_MS = 100
RECV_TIMEOUT_MS = 5000
MAX_FAILED = 0.001
MIN_ACHIEVED = 0.9
CALLERS_PER_WORKER = 10  # loadgen UEs (sockets) per worker; SIPp uses one socket
WARMUP_CALLS = 50
RUNS = itertools.count(1)
RETRIES = 1  # a failed step is run again once (the machine is shared): the second result counts


@dataclass
class Step:
    rate: int
    offered: int
    ok: int = 0
    failed: int = 0
    achieved: float = 0.0
    setup_ms: float = 0.0
    retrans: int = 0
    cpu: float = 0.0  # UAC CPU seconds
    finished: bool = True
    note: str = ""

    @property
    def failed_fraction(self) -> float:
        return (self.offered - self.ok) / max(1, self.offered)

    @property
    def passed(self) -> bool:
        return (self.finished and self.failed_fraction < MAX_FAILED
                and self.achieved >= MIN_ACHIEVED * self.rate)

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / max(1, self.ok) * 1000

    def verdict(self) -> str:
        if self.passed:
            return "ok"
        if not self.finished:
            return f"FAIL ({self.note or 'deadline'})"
        if self.failed_fraction >= MAX_FAILED:
            return f"FAIL ({self.failed_fraction:.1%} failed{': ' if self.note else ''}" \
                   f"{self.note})"
        return f"FAIL (achieved {self.achieved / self.rate:.0%} of rate)"


@dataclass
class Uac:
    name: str
    workers: int  # 0: SIPp
    steps: list[Step] = field(default_factory=list)
    stopped: bool = False

    @property
    def best(self) -> Step | None:
        passed = [s for s in self.steps if s.passed]
        return max(passed, key=lambda s: s.rate) if passed else None

    def step_at(self, rate: int) -> Step | None:
        return next((s for s in self.steps if s.rate == rate and s.passed), None)


def wait_cpu(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, float]:
    """Wait for `proc` (killed after `timeout` s); its exit status (None: killed) and CPU
    seconds (user + system, its waited-for children included) from wait4()."""
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return (None if killed else proc.returncode), usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline and not killed:
            proc.kill()
            killed = True
        time.sleep(0.02)


def sipp_step(uas: SippUas, workdir: Path, rate: int, calls: int) -> Step:
    step = Step(rate, calls)
    stat = workdir / f"uac-{rate}-{calls}.csv"
    deadline = calls / rate + RECV_TIMEOUT_MS / 1000 * 2 + 10
    proc = subprocess.Popen(
        [sipp_binary(), f"127.0.0.1:{uas.port}", "-sn", "uac", "-s", "service", "-t", "u1",
         "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)), "-r", str(rate),
         "-m", str(calls), "-l", str(max(100, rate * 2)), "-d", str(HOLD_MS),
         "-recv_timeout", str(RECV_TIMEOUT_MS), "-nostdin", "-timeout", f"{deadline:.0f}s",
         "-buff_size", str(SIPP_BUFFER), "-trace_stat", "-stf", str(stat), "-fd", "60"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    code, step.cpu = wait_cpu(proc, deadline + 10)
    row = last_stats(stat)
    if code is None or row is None:
        step.finished, step.note = False, "SIPp did not finish"
        return step
    step.ok = int(row["SuccessfulCall(C)"])
    step.failed = int(row["FailedCall(C)"])
    step.achieved = float(row["CallRate(C)"])
    step.retrans = int(row["Retransmissions(C)"])
    step.setup_ms = duration_ms(row["ResponseTime1(C)"])
    step.finished = step.ok + step.failed >= calls
    return step


def loadgen_step(uas: SippUas, workdir: Path, rate: int, calls: int, workers: int) -> Step:
    step = Step(rate, calls)
    name = f"loadgen-{workers}w-{rate}-{calls}-{next(RUNS)}"  # a retried step has its own
    report, log = workdir / f"{name}.json", workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "call-setup", "--callee", uas.uri,
             "--calls", str(calls), "--rate", str(rate), "--hold", str(HOLD_MS / 1000),
             "--no-media", "--subscribers", str(CALLERS_PER_WORKER * workers),
             "--workers", str(workers), "--setup-timeout", str(RECV_TIMEOUT_MS / 1000),
             "--run-dir", str(workdir / "no-stack"), "--progress", "none",
             "--report", str(report)],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )
    code, _ = wait_cpu(proc, calls / rate + RECV_TIMEOUT_MS / 1000 * 2 + 60)
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        said = log.read_text(errors="replace").strip().splitlines()
        step.finished = False
        step.note = f"no report, exit {code}: {said[-1] if said else 'nothing said'}"
        return step
    c = data["calls"]
    step.ok = c["succeeded"]
    step.failed = c["failed"] + c["blocked"]
    step.achieved = data["cps"]["achieved"]
    step.retrans = data["retransmissions"]
    step.setup_ms = data["latency_ms"]["invite_to_200"]["p50"] or 0.0
    step.cpu = data["engine"]["cpu_seconds"]
    causes = c["failed_by_cause"] | ({"blocked": c["blocked"]} if c["blocked"] else {})
    step.note = "; ".join(f"{k} x{v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])[:2])
    return step


def place(uac: Uac, uas: SippUas, workdir: Path, rate: int, calls: int) -> Step:
    if uac.workers == 0:
        return sipp_step(uas, workdir, rate, calls)
    return loadgen_step(uas, workdir, rate, calls, uac.workers)


def run(uacs: list[Uac], uas: SippUas, workdir: Path, budget: float) -> None:
    started = time.monotonic()
    for uac in uacs:  # warm-up (not reported): the path works. Its calls, not its rate: 50
        # calls take a second, and a UAC's start-up alone can hold one under 90 % of the rate.
        for _ in range(1 + RETRIES):
            warm = place(uac, uas, workdir, 50, WARMUP_CALLS)
            if warm.finished and warm.failed_fraction < MAX_FAILED:
                break
        else:
            uac.stopped = True
            print(f"  {uac.name:<12} warm-up failed: {warm.verdict()}", flush=True)
    for rate in STEPS:
        for uac in uacs:
            if uac.stopped:
                continue
            if time.monotonic() - started > budget:
                uac.stopped = True
                print(f"  {uac.name:<12} not stepped beyond {uac.steps[-1].rate} cps: the bench's "
                      f"{budget:.0f} s are up", flush=True)
                continue
            for attempt in range(1 + RETRIES):
                if attempt:
                    print(f"  {uac.name:<12} {rate:>5} cps: once more", flush=True)
                time.sleep(0.5)  # let the UAS's timers of the last step run out
                step = place(uac, uas, workdir, rate, rate * STEP_SECONDS)
                print(f"  {uac.name:<12} {rate:>5} cps: {step.ok}/{step.offered} ok, "
                      f"{step.cpu_per_1000:.2f} CPU s/1k, {step.verdict()}", flush=True)
                if step.passed:
                    break
            uac.steps.append(step)
            if not step.passed:
                uac.stopped = True


def report(uacs: list[Uac], drops: int) -> None:
    print(f"\nUACs calling one SIPp UAS (sipp -sn uas) over UDP on loopback: INVITE (SDP)/180/"
          f"200/ACK, {HOLD_MS} ms, BYE/200; no media, no proxy; {STEP_SECONDS} s per step; a step")
    print(f"passes with < {MAX_FAILED:.1%} failed calls and >= {MIN_ACHIEVED:.0%} of the offered "
          "rate achieved. CPU: the UAC's processes only (loadgen: the load phase).")
    print(f"\n{'UAC':<13}{'offered':>8}{'calls':>7}{'failed':>7}{'achieved':>9}{'INV->200':>9}"
          f"{'retrans':>8}{'CPU s/1k':>9}  result")
    print(f"{'':<13}{'cps':>8}{'':>7}{'':>7}{'cps':>9}{'ms':>9}{'':>8}{'calls':>9}")
    for uac in uacs:
        for s in uac.steps:
            setup = f"{s.setup_ms:.1f}" if s.setup_ms >= 1 or not s.ok else "<1"
            print(f"{uac.name:<13}{s.rate:>8}{s.ok:>7}{s.failed:>7}{s.achieved:>9.1f}{setup:>9}"
                  f"{s.retrans:>8}{s.cpu_per_1000:>9.2f}  {s.verdict()}")
    print(f"\n{'UAC':<13}{'max cps passed':>15}{'CPU s/1k calls':>16}{'calls per CPU-s':>17}")
    for uac in uacs:
        best = uac.best
        top = "  (top step)" if best and best.rate == STEPS[-1] else ""
        per_cpu = f"{1000 / best.cpu_per_1000:,.0f}" if best and best.cpu else "-"
        print(f"{uac.name:<13}{(best.rate if best else 0):>15}"
              f"{(f'{best.cpu_per_1000:.2f}' if best else '-'):>16}{per_cpu:>17}{top}")
    sipp, one, two = uacs
    if sipp.best and one.best:
        ratio = one.best.rate / sipp.best.rate
        print(f"Max rate per core, loadgen 1w / SIPp: {ratio:.2f}x ({one.best.rate} vs "
              f"{sipp.best.rate} cps; target >= 1: {'met' if ratio >= 1 else 'MISSED'})")
    if sipp.best and two.best:
        ratio = two.best.rate / sipp.best.rate
        print(f"Max rate, loadgen 2w / one SIPp process: {ratio:.2f}x ({two.best.rate} vs "
              f"{sipp.best.rate} cps; target > 1: {'met' if ratio > 1 else 'MISSED'})")
    common = [r for r in STEPS if sipp.step_at(r) and one.step_at(r)]
    if common:
        a, b = one.step_at(common[-1]), sipp.step_at(common[-1])
        assert a is not None and b is not None
        ratio = a.cpu_per_1000 / b.cpu_per_1000 if b.cpu_per_1000 else float("inf")
        print(f"CPU per call, loadgen 1w / SIPp at {common[-1]} cps: {ratio:.1f}x "
              f"({a.cpu_per_1000:.2f} vs {b.cpu_per_1000:.2f} CPU s per 1000 calls)")
    print(f"The UAS and the UACs share the machine's {os.cpu_count()} cores; {STEPS[-1]} cps is "
          "the top step. Load average now: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"UDP datagrams dropped on full receive buffers during the run (whole machine): {drops}")


def main() -> int:
    started = time.monotonic()
    print("\nloadgen vs SIPp as UACs calling a SIPp UAS ...", flush=True)
    keep = os.environ.get("BENCH_KEEP", "")
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        workdir = Path(keep or tmp)
        uas = SippUas(workdir / "uas")
        try:
            uas.start()
        except RuntimeError as exc:
            print(f"loadgen_vs_sipp: {exc}", file=sys.stderr)
            return 1
        uacs = [Uac("SIPp UAC", 0), Uac("loadgen 1w", 1), Uac("loadgen 2w", 2)]
        drops = udp_receive_drops()
        try:
            run(uacs, uas, workdir, budget=float(os.environ.get("BENCH_SECONDS", "240")))
        finally:
            uas.stop()
        drops = udp_receive_drops() - drops
    report(uacs, drops)
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    broken = [u for u in uacs if not u.steps or not u.steps[0].passed]
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
