"""E-RAB setup + release pairs through the real enb-agent, 1, 10 and 30 eNBs x 100 UEs each.

The agent runs as its own process (`python -m services.enb`); this process runs the simulated
eNBs (`services.enb.shell.SimulatedEnbs`, one SCTP association per eNB, all UEs attached
first, not timed) and a gRPC client that does what the sbc does on call setup and teardown:
SetupBearer (the agent sends E-RAB Setup Request on the UE's stream and answers when the E-RAB
Setup Response is back) then ReleaseBearer (E-RAB Release Command / Response). A pair is timed
from the SetupBearer call to the ReleaseBearer answer; `CONCURRENCY` pairs are in flight at
once, each on the next UE in turn.

Two paths:
- host: userspace SCTP (libusrsctp over UDP) between the two processes, once per eNB count
  (`--enbs`, default 1, 10 and 30, the range of the seed's vRAN test). Target, at every count:
  >= 1,000 pairs/s with p99 < 20 ms.
- guest: kernel SCTP inside a user-mode-linux guest (one virtual CPU shared by both processes,
  and UML's system calls are slow), 30 eNBs, for reference; no target.

For each path also the CPU time per pair of the agent process and of this one (from /proc):
unlike the rate, it hardly depends on what else runs on the machine, and it bounds the rate
one core can carry. Also printed for reference: the same pairs through the pure state machines
wired in memory (`services.enb.simulator.bench_pairs`: codec and procedure logic only, one
core, no SCTP, no gRPC).

    .venv/bin/python -m tests.bench.enb_bearers [--pairs N] [--concurrency C] [--enbs 1,10,30]
                                                [--no-guest]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.enb.shell import SimulatedEnbs
from services.enb.simulator import SimulatorConfig, bench_pairs
from services.sbc.bearer_client import CHANNEL_OPTIONS
from volte.v1 import bearer_pb2, bearer_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
ENBS = 30
ENB_COUNTS = (1, 10, 30)
UES_PER_ENB = 100
PAIRS = 4000
WARMUP = 300
CONCURRENCY = 6
GUEST_PAIRS = 500
TARGET_RATE = 1000.0
TARGET_P99_MS = 20.0
RESULT_PREFIX = "ENB-BENCH-RESULT "
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    path: str
    transport: str
    enbs: int
    pairs: int
    failures: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    attach_s: float
    leftover_bearers: int
    agent_cpu_ms: float  # CPU time per pair: the agent process
    driver_cpu_ms: float  # ... and this one (simulated eNBs + gRPC client)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"enb-agent exited with {proc.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"enb-agent not SERVING on {address} within {timeout} s")


async def drive(transport: str, pairs: int, concurrency: int, *, enbs: int = ENBS,
                ues: int = UES_PER_ENB, warmup: int = WARMUP) -> Result:
    """Start the agent as a child process on `transport`, attach enbs x ues simulated UEs and
    time `pairs` setup+release pairs, `concurrency` at a time."""
    grpc_port = free_port(socket.SOCK_STREAM)
    sctp_port = free_port(socket.SOCK_DGRAM)
    address = f"127.0.0.1:{grpc_port}"
    agent = subprocess.Popen(
        [sys.executable, "-m", "services.enb", "--grpc-listen", address, "--sctp-port",
         str(sctp_port), "--sctp-transport", transport, "--log-level", "ERROR"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("VOLTE_")},
    )
    sims = SimulatedEnbs(SimulatorConfig(enbs=enbs, ues_per_enb=ues), "127.0.0.1", sctp_port,
                         transport=transport)  # type: ignore[arg-type]
    try:
        await _wait_serving(address, agent, 30)
        started = time.perf_counter()
        await sims.start(timeout=10)
        await sims.ready(timeout=120)
        attach_s = time.perf_counter() - started
        gc.collect()
        gc.freeze()
        imsis = sims.imsis
        latencies: list[float] = []
        cpu_agent, cpu_self = cpu_seconds(agent.pid), time.process_time()
        failures = 0
        # The sbc's channel options (services/sbc/bearer_client.py): no gRPC retries.
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = bearer_pb2_grpc.BearerControlStub(channel)

            async def pair(imsi: str) -> bool:
                try:
                    setup = await stub.SetupBearer(
                        bearer_pb2.SetupBearerRequest(imsi=imsi, codec_bps=23_850), timeout=10)
                    await stub.ReleaseBearer(
                        bearer_pb2.ReleaseBearerRequest(bearer_id=setup.bearer.bearer_id),
                        timeout=10)
                except grpc.aio.AioRpcError as exc:
                    print(f"pair for {imsi} failed: {exc.code().name} {exc.details()}",
                          file=sys.stderr)
                    return False
                return True

            async def worker(counter: list[int], total: int, timed: bool) -> None:
                nonlocal failures
                clock = time.perf_counter
                while counter[0] < total:
                    n = counter[0]
                    counter[0] += 1
                    t0 = clock()
                    ok = await pair(imsis[n % len(imsis)])
                    if timed:
                        if ok:
                            latencies.append(clock() - t0)
                        else:
                            failures += 1

            await asyncio.gather(*(worker([0], warmup // concurrency, False)
                                   for _ in range(concurrency)))
            counter = [0]
            t_start = time.perf_counter()
            await asyncio.gather(*(worker(counter, pairs, True) for _ in range(concurrency)))
            seconds = time.perf_counter() - t_start
        cpu_agent = cpu_seconds(agent.pid) - cpu_agent
        cpu_self = time.process_time() - cpu_self
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        return Result(
            path="guest" if os.environ.get("VOLTE_IN_UML_GUEST") == "1" else "host",
            transport=transport, enbs=enbs, pairs=len(latencies), failures=failures,
            seconds=seconds,
            rate=len(latencies) / seconds if seconds else 0.0, p50_ms=cuts[49] * 1000,
            p99_ms=cuts[98] * 1000, attach_s=attach_s, leftover_bearers=sims.total_bearers(),
            agent_cpu_ms=cpu_agent * 1000 / max(1, len(latencies)),
            driver_cpu_ms=cpu_self * 1000 / max(1, len(latencies)),
        )
    finally:
        await sims.close()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _run(transport: str, pairs: int, concurrency: int, enbs: int = ENBS) -> Result:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(drive(transport, pairs, concurrency, enbs=enbs))
    return uvloop.run(drive(transport, pairs, concurrency, enbs=enbs))


def run_in_guest(pairs: int, concurrency: int) -> tuple[Result | None, str]:
    """The kernel path: this module's --inner run inside a user-mode-linux guest."""
    from tests.enb.uml import run_in_guest as guest
    from tests.enb.uml import uml_binary

    if uml_binary() is None:
        return None, "linux.uml missing (`make deps` installs user-mode-linux)"
    argv = [sys.executable, "-m", "tests.bench.enb_bearers", "--inner", "kernel",
            "--enbs", str(ENBS), "--pairs", str(pairs), "--concurrency", str(concurrency)]
    rc, output = guest(argv, timeout=90)
    match = re.search(re.escape(RESULT_PREFIX) + r"(\{.*\})", output)
    if rc != 0 or match is None:
        return None, f"guest run failed (exit {rc}):\n{output[-2000:]}"
    return Result(**json.loads(match.group(1))), ""


def show(r: Result) -> str:
    return (f"{r.path + ' (' + r.transport + ' SCTP)':<26}{r.enbs:>5}{r.pairs:>7}{r.rate:>10,.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.failures:>7}{r.attach_s:>10.1f}"
            f"{r.agent_cpu_ms:>11.2f}{r.driver_cpu_ms:>11.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.enb_bearers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--guest-pairs", type=int, default=GUEST_PAIRS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--enbs", type=_counts, default=ENB_COUNTS,
                        help="eNB counts to run the host path with, comma-separated "
                        "(default 1,10,30)")
    parser.add_argument("--no-guest", action="store_true", help="skip the kernel path")
    parser.add_argument("--inner", choices=("kernel", "userspace"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:  # one measurement, printed as JSON (how the guest run reports back)
        result = _run(args.inner, args.pairs, args.concurrency, max(args.enbs))
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
        return 0

    print(f"E-RAB setup+release pairs, {UES_PER_ENB} UEs per eNB, {args.concurrency} pairs in "
          "flight, through gRPC BearerControl and S1AP over SCTP")
    print(f"{'path':<26}{'eNBs':>5}{'pairs':>7}{'pairs/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'failed':>7}{'attach s':>10}{'agent cpu':>11}{'eNB+client':>11}")
    print(f"{'':<73}{'ms/pair':>11}{'ms/pair':>11}")
    hosts = []
    for enbs in args.enbs:
        hosts.append(_run("userspace", args.pairs, args.concurrency, enbs))
        print(show(hosts[-1]), flush=True)
    if not args.no_guest:
        guest, problem = run_in_guest(args.guest_pairs, args.concurrency)
        print(show(guest) if guest is not None else f"guest (kernel SCTP): {problem}",
              flush=True)
    rate, p50, p99 = bench_pairs(ENBS, UES_PER_ENB, 3000)
    print(f"{'in memory (no SCTP/gRPC)':<26}{ENBS:>5}{3000:>7}{rate:>10,.0f}{p50:>9.2f}"
          f"{p99:>9.2f}")
    agent_cpu = statistics.fmean(h.agent_cpu_ms for h in hosts)
    capacity = 1000 / agent_cpu if agent_cpu else 0.0
    print(f"agent CPU per pair {agent_cpu:.2f} ms on the host path: at most ~{capacity:,.0f} "
          f"pairs/s per core for the agent process; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs at the end of the run")
    ok = True
    for host in hosts:
        met = (host.rate >= TARGET_RATE and host.p99_ms < TARGET_P99_MS and not host.failures
               and not host.leftover_bearers)
        ok = ok and met
        print(f"host path, {host.enbs} eNBs: {'meets' if met else 'MISSES'} the target of >= "
              f"{TARGET_RATE:,.0f} pairs/s with p99 < {TARGET_P99_MS:.0f} ms ({host.rate:,.0f} "
              f"pairs/s, p99 {host.p99_ms:.1f} ms, {host.failures} failed, "
              f"{host.leftover_bearers} bearers left up)")
    return 0 if ok else 1


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"eNB counts must be positive integers: {text!r}")
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
