"""Call throughput and CPU per call: our sbc (1 and 2 workers) against Kamailio, in one run.

What runs. Three systems, all up for the whole run on loopback UDP:

- `volte 1w`: the stack as `volte up` runs it (redis-server, state, sbc with 1 worker);
- `volte 2w`: the same with `StackConfig(sbc_workers=2)` (two workers on one SO_REUSEPORT port);
- `kamailio`: Kamailio 5.6 (Debian) with tests/bench/kamailio/pcscf.cfg, `-n 1` (one UDP worker):
  registrar with digest auth (plaintext password via `pv_www_authenticate`), transaction-stateful
  proxy between registered UEs, record-routing, dialogs tracked in memory, identity asserted,
  usrloc in memory. That is the sbc's call path minus what only the sbc does (Redis-backed state
  and dialogs that survive an instance, signed flow tokens).

For each system, SIPp UEs register with digest auth (the same scenario for all): one callee
(a SIPp UAS answering every call with 200, Record-Route copied, from the port it registered;
it takes a BYE that overtakes a lost ACK and answers retransmitted BYEs, as RFC 3261 asks of a
UAS, so that a lost datagram is the system's retransmission problem rather than SIPp's) and
CALLERS callers (one SIPp UAC each, from the port it registered). With SO_REUSEPORT the
kernel hashes each caller's address to one worker; so that two workers get an even share, as
many UEs would give them, callers of `volte 2w` are picked by the worker their REGISTER
reached (the binding's sbc_instance), half on each.

What is measured. After WARMUP_CALLS unreported calls per system, the callers place calls,
INVITE/200/ACK/BYE without SDP and CALL_MS long, at STEPS total calls per second, each step
STEP_SECONDS long (rate x STEP_SECONDS calls, split evenly between the callers). Steps alternate
between the systems (each rate: volte 1w, kamailio, volte 2w), so drift in the machine's load
falls on all of them alike. A step passes when fewer than 0.1 % of its calls failed (SIPp: any
unexpected message, or none within RECV_TIMEOUT_MS), every call ended before SIPp's own
deadline, and the achieved rate (calls / SIPp's elapsed time, so the last calls' drain counts)
was at least 90 % of the offered one. After a system's first failed step it is not stepped
further. Reported per step: calls, failed, achieved calls/s, mean INVITE->200 time (SIPp's
response time 1, 1 ms resolution), and CPU seconds per 1000 calls: utime + stime from
/proc/<pid>/stat, before and after the step, summed over every process of the system (volte:
redis-server, state, the sbc and its worker children; kamailio: the main process and all its
children); the load generators are not counted. Then per system the highest passed step, and the
ratios: CPU per call volte 1w / kamailio at the highest step both passed, and max rate 2 workers
/ 1 worker. A failed step names what the failed calls got instead (from SIPp's error logs: `503
...`, no answer). The exit status is non-zero only when a system cannot pass the first step (a
broken call path). `BENCH_KEEP=<dir>` keeps SIPp's error logs, the stacks' and Kamailio's logs
in <dir>.

Caveats printed with the table: SIPp runs on the same two cores, so at the top step the load
generator competes with the system under test, and STEPS caps what can be shown.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services import native
from services.stack import Stack, StackConfig, StackError, free_port
from services.subscribers import Provisioner, subscriber
from tests.interop import kamailio as kam
from volte.v1 import state_pb2, state_pb2_grpc

SCENARIOS = Path(__file__).parent / "sipp"
KAMAILIO_CFG = Path(__file__).parent / "kamailio" / "pcscf.cfg"
DOMAIN = "ims.local"
PASSWORD = "secret"
FIRST = 700000  # UEs get the numbers after it, callee first
# Calls per second offered: 100 apart where one sbc worker and two reach their limits.
STEPS = (50, 100, 200, *range(300, 2500, 100))
STEP_SECONDS = 4
CALL_MS = 100
CALLERS = 4
RECV_TIMEOUT_MS = 5000
MAX_FAILED = 0.001  # a step passes with fewer failed calls than this fraction
MIN_ACHIEVED = 0.9  # ... and at least this fraction of the offered rate achieved
WARMUP_CALLS = 40
PROVISIONED = 100  # numbers FIRST.. handed out to UEs (callers are picked from candidates)
SIPP_BUFFER = 1 << 20  # socket buffers of the load generators: they must not be what drops
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@dataclass
class Ue:
    number: int
    port: int = field(default_factory=udp_port)


@dataclass
class Step:
    rate: int
    offered: int
    ok: int = 0
    failed: int = 0
    achieved: float = 0.0
    setup_ms: float = 0.0
    retrans: int = 0
    cpu: float = 0.0
    by_component: dict[str, float] = field(default_factory=dict)  # CPU seconds
    split: list[float] = field(default_factory=list)  # CPU share of each sbc worker
    finished: bool = True
    why: Counter[str] = field(default_factory=Counter)  # failed calls: what SIPp got instead

    @property
    def failed_fraction(self) -> float:
        unfinished = self.offered - self.ok - self.failed
        return (self.failed + max(0, unfinished)) / max(1, self.offered)

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
            return "FAIL (SIPp deadline)"
        if self.failed_fraction >= MAX_FAILED:
            why = "; ".join(f"{reason} x{n}" for reason, n in self.why.most_common(2))
            return f"FAIL ({self.failed_fraction:.1%} failed{': ' if why else ''}{why})"
        return f"FAIL (achieved {self.achieved / self.rate:.0%} of rate)"


@dataclass
class System:
    name: str
    port: int
    pids: Callable[[], dict[str, list[int]]]  # component -> its processes
    workers: Callable[[], list[int]]  # sbc worker pids, for the CPU split ([] if one process)
    callee: Ue
    callers: list[Ue]
    steps: list[Step] = field(default_factory=list)
    stopped: bool = False
    note: str = ""

    @property
    def best(self) -> Step | None:
        passed = [s for s in self.steps if s.passed]
        return max(passed, key=lambda s: s.rate) if passed else None

    def step_at(self, rate: int) -> Step | None:
        return next((s for s in self.steps if s.rate == rate and s.passed), None)


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.next_number = FIRST
        self.uas: list[subprocess.Popen[bytes]] = []

    def number(self) -> int:
        self.next_number += 1
        return self.next_number

    # -- SIPp ----------------------------------------------------------------------------------
    def sipp(self, port: int, scenario: str, local: int, *extra: str,
             timeout: float = 10) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / scenario), "-t", "u1",
             "-i", "127.0.0.1", "-p", str(local), "-nostdin", "-timeout", f"{timeout:.0f}s",
             "-buff_size", str(SIPP_BUFFER), "-trace_err", *extra],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def register(self, port: int, ue: Ue) -> bool:
        inf = self.workdir / f"reg{ue.number}.csv"
        inf.write_text(f"SEQUENTIAL\n{ue.number};{DOMAIN};"
                       f"[authentication username={ue.number} password={PASSWORD}]\n")
        proc = self.sipp(port, "call_register.xml", ue.port, "-inf", str(inf), "-m", "1",
                         "-timeout_error")
        return proc.wait(timeout=20) == 0

    def answer(self, port: int, callee: Ue) -> None:
        self.uas.append(subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "call_uas.xml"), "-t", "u1", "-i", "127.0.0.1",
             "-p", str(callee.port), "-nostdin", "-bind_local", "-buff_size", str(SIPP_BUFFER),
             "-trace_err"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))

    def stop_answering(self) -> None:
        for proc in self.uas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.uas.clear()

    def place_calls(self, system: System, rate: int, calls: int) -> Step:
        """All callers at rate/len(callers) each; SIPp's final statistics summed."""
        n = len(system.callers)
        per_caller = calls // n
        step = Step(rate, per_caller * n)
        deadline = STEP_SECONDS * 3 + RECV_TIMEOUT_MS / 1000 + 5
        stats = [self.workdir / f"stat-{system.port}-{rate}-{i}.csv" for i in range(n)]
        for path in stats:
            path.unlink(missing_ok=True)
        components = system.pids()
        pids = [pid for group in components.values() for pid in group]
        workers = system.workers()
        before = {pid: cpu_seconds(pid) for pid in pids}
        procs = [
            self.sipp(
                system.port, "call_uac.xml", caller.port,
                "-s", str(system.callee.number), "-key", "caller", str(caller.number),
                "-key", "domain", DOMAIN,
                # rate/n per second: `rate` calls every n seconds
                "-r", str(rate), "-rp", f"{n * 1000}", "-m", str(per_caller),
                "-l", str(max(50, rate)), "-d", str(CALL_MS),
                "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_stat", "-stf", str(path),
                "-fd", "60", timeout=deadline,
            )
            for caller, path in zip(system.callers, stats, strict=True)
        ]
        for proc in procs:
            try:
                proc.wait(timeout=deadline + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                step.finished = False
        used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        step.by_component = {
            name: sum(max(0.0, used[pid]) for pid in group) for name, group in components.items()
        }
        step.cpu = sum(step.by_component.values())
        worker_cpu = [used.get(pid, 0.0) for pid in workers]
        if len(worker_cpu) > 1 and sum(worker_cpu) > 0:
            step.split = [c / sum(worker_cpu) for c in worker_cpu]
        setup_weighted = 0.0
        for path in stats:
            row = last_stats(path)
            if row is None:
                step.finished = False
                continue
            ok, failed = int(row["SuccessfulCall(C)"]), int(row["FailedCall(C)"])
            step.ok += ok
            step.failed += failed
            step.achieved += float(row["CallRate(C)"])
            step.retrans += int(row["Retransmissions(C)"])
            setup_weighted += duration_ms(row["ResponseTime1(C)"]) * ok
            if ok + failed < per_caller:
                step.finished = False
        step.setup_ms = setup_weighted / max(1, step.ok)
        for proc in procs:
            step.why.update(failure_reasons(self.workdir / f"call_uac_{proc.pid}_errors.log"))
        return step


def last_stats(path: Path) -> dict[str, str] | None:
    """The last row of a SIPp -trace_stat file (written again when SIPp exits)."""
    try:
        rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    except OSError:
        return None
    if len(rows) < 2:
        return None
    return dict(zip(rows[0], rows[-1], strict=False))


def failure_reasons(errors_log: Path) -> Counter[str]:
    """What failed calls got instead (e.g. `503 Service Unavailable`), from SIPp's -trace_err."""
    try:
        text = errors_log.read_text(errors="replace")
    except OSError:
        return Counter()
    reasons: Counter[str] = Counter()
    # One entry per event, each starting with SIPp's timestamp; "Dead call" entries are
    # messages for calls already over (a retransmitted 200, say): not failures.
    for entry in re.split(r"(?=\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t)", text):
        first = entry.split("\n", 1)[0]
        if "Dead call" in first:
            continue
        response = re.search(r"received 'SIP/2\.0 (\d{3} [^'\r]*)", first)
        if response:
            reasons[response.group(1).strip()] += 1
        elif "receive timeout" in first:
            reasons[f"no answer in {RECV_TIMEOUT_MS / 1000:.0f} s"] += 1
        elif aborted := re.search(r"Aborting call on ([^:']*)", first):
            reasons[aborted.group(1).strip()] += 1
    return reasons


def duration_ms(text: str) -> float:
    """SIPp's `HH:MM:SS:uuuuuu` (millisecond resolution) in milliseconds."""
    try:
        h, m, s, us = (int(x) for x in text.strip().split(":"))
    except ValueError:
        return 0.0
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


# -- the systems --------------------------------------------------------------------------------
@contextlib.contextmanager
def volte_stack(
    workdir: Path, workers: int
) -> Iterator[tuple[Stack, Callable[[], dict[str, list[int]]]]]:
    config = StackConfig(
        sip_port=free_port(), redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}", sbc_grpc=f"127.0.0.1:{free_port()}",
        sbc_workers=workers, run_dir=str(workdir / f"volte-{workers}w"),
        extra_sbc_args=["--log-level", "WARNING"],
    )
    stack = Stack(config)
    stack.start()
    try:
        def pids() -> dict[str, list[int]]:
            return {p.service: [p.pid, *kam.descendants(p.pid)] for p in stack.procs}
        yield stack, pids
    finally:
        stack.stop()


def worker_of(stack: Stack, ue: Ue) -> str:
    with grpc.insecure_channel(stack.config.state_grpc) as channel:
        bindings = state_pb2_grpc.StateStoreStub(channel).LookupBindings(
            state_pb2.LookupBindingsRequest(impu=f"sip:{ue.number}@{DOMAIN}"), timeout=5
        ).bindings
    return bindings[0].sbc_instance if bindings else ""


def setup_volte(
    bench: Bench, stack: Stack, pids: Callable[[], dict[str, list[int]]], name: str
) -> System:
    workers = stack.config.sbc_workers
    provisioner = Provisioner(stack.config.state_grpc)
    try:
        for n in range(FIRST, FIRST + PROVISIONED):
            provisioner.add(subscriber(str(n), DOMAIN, PASSWORD))
    finally:
        provisioner.close()
    port = stack.config.sip_port
    callee = Ue(bench.number())
    if not bench.register(port, callee):
        raise RuntimeError(f"{name}: the callee could not register")
    groups: dict[str, list[Ue]] = {}
    want = CALLERS // workers if workers > 1 else CALLERS
    for _ in range(CALLERS * 4):
        ue = Ue(bench.number())
        if not bench.register(port, ue):
            raise RuntimeError(f"{name}: caller {ue.number} could not register")
        key = worker_of(stack, ue) if workers > 1 else ""
        groups.setdefault(key, []).append(ue)
        full = [g[:want] for g in groups.values() if len(g) >= want]
        if len(full) == (workers if workers > 1 else 1):
            callers = [ue for g in full for ue in g]
            break
    else:  # the hash would not spread them: take what there is
        callers = [ue for g in groups.values() for ue in g][:CALLERS]
    sbc = next(p for p in stack.procs if p.service == "sbc")
    bench.answer(port, callee)
    return System(name, port, pids, lambda: kam.descendants(sbc.pid) if workers > 1 else [],
                  callee, callers)


def setup_kamailio(bench: Bench, server: kam.Kamailio) -> System:
    callee = Ue(bench.number())
    callers = [Ue(bench.number()) for _ in range(CALLERS)]
    for ue in (callee, *callers):
        if not bench.register(server.port, ue):
            raise RuntimeError(f"kamailio: {ue.number} could not register")
    bench.answer(server.port, callee)
    return System("kamailio -n 1", server.port, lambda: {"kamailio": server.pids()},
                  lambda: [], callee, callers)


# -- the run ------------------------------------------------------------------------------------
def run(bench: Bench, systems: list[System]) -> None:
    for system in systems:  # warm-up (not reported): the path works, caches are hot
        warm = bench.place_calls(system, 20, WARMUP_CALLS)
        if not warm.passed:
            system.stopped = True
            system.note = f"warm-up failed: {warm.ok}/{warm.offered} calls ({warm.verdict()})"
    for rate in STEPS:
        for system in systems:
            if system.stopped:
                continue
            step = bench.place_calls(system, rate, rate * STEP_SECONDS)
            system.steps.append(step)
            print(f"  {system.name:<14} {rate:>4} cps: {step.ok}/{step.offered} ok, "
                  f"{step.verdict()}", flush=True)
            if os.environ.get("BENCH_KEEP"):
                print(f"  {system.name} port {system.port}: {step}", flush=True)
            if not step.passed:
                system.stopped = True
            time.sleep(0.5)  # let retransmission and wait timers of the step run out


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped for a full socket receive buffer (whole machine)."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
                 if ln.startswith("Udp:")]
        return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])
    except (OSError, IndexError, KeyError, ValueError):
        return 0


def report(systems: list[System], drops: int) -> None:
    print(f"\nCalls through each system: {CALLERS} SIPp callers + 1 SIPp callee, all registered "
          f"with digest auth; INVITE/200/ACK/BYE, no SDP, {CALL_MS} ms calls; UDP on loopback;")
    print(f"{STEP_SECONDS} s per step; a step passes with < {MAX_FAILED:.1%} failed calls and "
          f">= {MIN_ACHIEVED:.0%} of the offered rate achieved.")
    print("kamailio: tests/bench/kamailio/pcscf.cfg: digest auth (pv_www_authenticate), usrloc "
          "and dialogs in memory, record_route, t_relay; volte: redis + state + sbc.")
    print(f"volte's call path: {native.describe()}.")
    print(f"\n{'system':<15}{'offered':>8}{'calls':>7}{'failed':>7}{'achieved':>9}"
          f"{'INV->200':>9}{'retrans':>8}{'CPU s/1k':>9}  result")
    print(f"{'':<15}{'cps':>8}{'':>7}{'':>7}{'cps':>9}{'ms':>9}{'':>8}{'calls':>9}")
    for system in systems:
        for s in system.steps:
            split = ("  workers " + "/".join(f"{x:.0%}" for x in s.split)) if s.split else ""
            setup = f"{s.setup_ms:.1f}" if s.setup_ms >= 1 or not s.ok else "<1"
            print(f"{system.name:<15}{s.rate:>8}{s.ok:>7}{s.failed:>7}{s.achieved:>9.1f}"
                  f"{setup:>9}{s.retrans:>8}{s.cpu_per_1000:>9.2f}  {s.verdict()}{split}")
        if system.note:
            print(f"{system.name:<15}{system.note}")
    print(f"\n{'system':<15}{'max cps passed':>15}{'CPU s/1k calls there':>22}  by process")
    for system in systems:
        best = system.best
        top = " (top step)" if best and best.rate == STEPS[-1] else ""
        parts = ", ".join(
            f"{name} {cpu / max(1, best.ok) * 1000:.2f}" for name, cpu in best.by_component.items()
        ) if best else ""
        print(f"{system.name:<15}{(best.rate if best else 0):>15}"
              f"{(f'{best.cpu_per_1000:.2f}' if best else '-'):>22}  {parts}{top}")
    ours1, theirs, ours2 = systems
    common = [r for r in STEPS if ours1.step_at(r) and theirs.step_at(r)]
    if common:
        rate = common[-1]
        a, b = ours1.step_at(rate), theirs.step_at(rate)
        assert a is not None and b is not None
        ratio = a.cpu_per_1000 / b.cpu_per_1000 if b.cpu_per_1000 else float("inf")
        print(f"CPU per call, {ours1.name} / {theirs.name} at {rate} cps: {ratio:.1f}x "
              f"({a.cpu_per_1000:.2f} vs {b.cpu_per_1000:.2f} CPU s per 1000 calls)")
    if ours1.best and ours2.best:
        print(f"Max rate, {ours2.name} / {ours1.name}: {ours2.best.rate / ours1.best.rate:.2f}x "
              f"({ours2.best.rate} vs {ours1.best.rate} cps)")
    print(f"SIPp (callers and callee) shares the machine's {os.cpu_count()} cores with the system "
          f"under test; {STEPS[-1]} cps is the top step offered. Load average now: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"UDP datagrams dropped on full receive buffers during the run (whole machine): {drops}")


def main() -> int:
    if not kam.available():
        print(f"sbc_vs_kamailio: skipped, kamailio is not installed ({kam.INSTALL_HINT})")
        return 0
    started = time.monotonic()
    print("\nsbc vs Kamailio: starting the systems and registering UEs ...", flush=True)
    keep = os.environ.get("BENCH_KEEP", "")  # a directory: SIPp, stack and Kamailio logs stay
    with tempfile.TemporaryDirectory(prefix="bench-kamailio-") as tmp, \
            contextlib.ExitStack() as resources:
        workdir = Path(keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bench = Bench(workdir)
        resources.callback(bench.stop_answering)
        try:
            stack1, pids1 = resources.enter_context(volte_stack(workdir, 1))
            # Shared memory for the transactions that linger (tm's wait and final-response
            # timers): with 128 MB Kamailio ran out at 1,000 cps ("out of mem" in build_cell,
            # 500s to the callers) long before its CPU did.
            server = kam.Kamailio(KAMAILIO_CFG, udp_port(), workdir,
                                  defines={"DOMAIN": f'"{DOMAIN}"', "PASSWORD": f'"{PASSWORD}"'},
                                  children=1, shm_mb=1024)
            server.start()
            resources.callback(server.stop)
            stack2, pids2 = resources.enter_context(volte_stack(workdir, 2))
            systems = [
                setup_volte(bench, stack1, pids1, "volte 1w"),
                setup_kamailio(bench, server),
                setup_volte(bench, stack2, pids2, "volte 2w"),
            ]
        except (StackError, RuntimeError, grpc.RpcError) as exc:
            print(f"sbc_vs_kamailio: set-up failed: {exc}", file=sys.stderr)
            return 1
        drops = udp_receive_drops()
        run(bench, systems)
        drops = udp_receive_drops() - drops
    report(systems, drops)
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    broken = [s for s in systems if not s.steps or not s.steps[0].passed]
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
