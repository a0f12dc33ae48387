"""The `loadgen` command: `loadgen SCENARIO [options]`.

Scenarios: register, call-setup, failover, scale-out, soak (see README.md, "loadgen").
Exit status: 0 the run passed its thresholds; 1 a threshold (--max-failed-ratio,
--max-p99-setup-ms) was exceeded; 2 bad options; 3 the run could not start (no stack, no UE
registered, a worker crashed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from rich.console import Console

from loadgen.bearers import SCTP_TRANSPORTS, BearerConfig
from loadgen.config import SCENARIOS, LoadConfig, Mix, parse_address
from loadgen.engine import Display, LoadError, Outcome, ScenarioEvent, run_async, run_load
from loadgen.progress import PlainDisplay, QuietDisplay, RichDisplay
from services import __version__
from services.sip.transport import Address
from services.stack import DEFAULT_ENB_GRPC, DEFAULT_ENB_SCTP_PORT, StackConfig

if TYPE_CHECKING:
    from loadgen.kube import KubeOptions

DEFAULT_RUN_DIR = f"/tmp/volte-{os.getuid()}"
DEFAULT_STATE = "127.0.0.1:50051"
DEFAULT_ENB_SCTP_HOST = "127.0.0.1"
EPILOG = """\
examples:
  loadgen register --subscribers 1000 --rate 200
  loadgen call-setup --subscribers 200 --rate 20 --duration 30 --hold 2 --report out.json
  loadgen call-setup --rate 50 --ramp 10 --mix busy=0.05,cancel=0.05 --workers 2 --plots out/
  loadgen failover --rate 20 --duration 30 --event-at 10 --hold 3      (volte up --workers 2)
  loadgen scale-out --steps 20,40,80,160 --step-duration 10
  loadgen soak --rate 5 --duration 3600 --expires 600 --csv soak.csv
  loadgen call-setup --rate 100 --duration 60 --kube --kube-context private --kube-context
      public --kube-workers 4 --namespace volte --report k8s.json     (README: on Kubernetes)
  loadgen call-setup --callee sip:service@127.0.0.1:5070 --calls 200 --rate 20 --no-media

Without --target, the sbc (and domain, state address) of the `volte up` stack in --run-dir.
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a ratio between 0 and 1")
    return value


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sctp_address(text: str) -> Address:
    try:
        return parse_address(text, default_port=DEFAULT_ENB_SCTP_PORT)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _callee(text: str) -> str:
    from services.sip.errors import ParseError
    from services.sip.uri import parse_uri

    try:
        uri = parse_uri(text.strip())
    except ParseError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
    if not uri.is_sip or not uri.host:
        raise argparse.ArgumentTypeError(f"{text}: a sip: URI with a host")
    return str(uri)


def callee_address(callee: str) -> Address:
    """Where INVITEs to a --callee URI go without --target: its host and port (5060)."""
    from services.sip.uri import parse_uri

    uri = parse_uri(callee)
    return uri.host.strip("[]"), uri.port or 5060


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: comma-separated rates") from None
    if not steps or any(s <= 0 for s in steps):
        raise argparse.ArgumentTypeError(f"{text}: comma-separated rates, each > 0")
    return steps


def _context_target(text: str) -> tuple[str, Address]:
    from loadgen.kube import parse_context_target

    try:
        return parse_context_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> tuple[int, int]:
    from loadgen.kube import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _kube_arguments(p: argparse.ArgumentParser) -> None:
    from loadgen.kube import DEFAULT_IMAGE, DEFAULT_RELEASE, POLL_INTERVAL

    g = p.add_argument_group("Kubernetes (README.md, \"loadgen on Kubernetes\")")
    g.add_argument("--kube", action="store_true",
                   help="run the workers as an Indexed Job in each --kube-context (pip install "
                        "'volte[kube]'); results merged into one report")
    g.add_argument("--kube-context", action="append", metavar="CTX",
                   help="a kubeconfig context; repeat for several clusters (default: the "
                        "current context)")
    g.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG, else "
                                        "~/.kube/config)")
    g.add_argument("--namespace", help="where the Jobs run and the chart is installed "
                                       "(default: each context's namespace, else default)")
    g.add_argument("--kube-workers", type=_positive_int, default=1, metavar="N",
                   help="pods per context (Job completions = parallelism = N)")
    g.add_argument("--kube-target", action="append", type=_context_target,
                   metavar="CTX=HOST:PORT",
                   help="the sbc a context's pods call (default: the release's SIP Service "
                        "in that cluster)")
    g.add_argument("--image", default=DEFAULT_IMAGE, help="the loadgen image of the pods")
    g.add_argument("--release", default=DEFAULT_RELEASE,
                   help="the Helm release of the volte chart: its SIP Service, the sbc pods "
                        "(failover) and Deployment (scale-out)")
    g.add_argument("--kube-timeout", type=_positive_float, metavar="S",
                   help="seconds from the Jobs' creation to every result (default: start "
                        "delay + the load + drain + 120)")
    g.add_argument("--kube-start-delay", type=_non_negative_float, metavar="S",
                   help="seconds from the Jobs' creation to the common start of the load "
                        "(default: 30 + subscribers / --register-rate)")
    g.add_argument("--kube-keep", action="store_true",
                   help="leave the Jobs and their pods (and logs) in place")
    g.add_argument("--kube-poll", type=_positive_float, default=POLL_INTERVAL, metavar="S",
                   help="seconds between looks at the pods and their logs")
    g.add_argument("--shard", type=_shard, metavar="FIRST/TOTAL",
                   help="(set by --kube for its pods) run as worker FIRST + "
                        "$JOB_COMPLETION_INDEX of TOTAL, printing JSON lines")
    g.add_argument("--start-at", type=_positive_float, metavar="EPOCH",
                   help="(with --shard) the wall-clock time the load starts")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadgen",
        description="Load generator for volte: simulated UEs registering and calling through "
                    "the sbc, with media; call setup, failover, scale-out, soak.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("scenario", choices=SCENARIOS, help="what to run")
    g = p.add_argument_group("where")
    g.add_argument("--target", action="append", type=_address, metavar="HOST:PORT",
                   help="a P-CSCF (sbc) SIP address over UDP; repeat for a secondary: the first "
                        "is each UE's primary, the second its secondary")
    g.add_argument("--domain", help="home domain (default: the stack's, else ims.local)")
    g.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                   help="the `volte up` run directory (stack.json): defaults for --target, "
                        "--domain, --state; the sbc worker pids for failover")
    g.add_argument("--bind", default="127.0.0.1", help="the UEs' own address")
    g.add_argument("--callee", type=_callee, metavar="SIP-URI",
                   help="call scenarios: call this far end (a SIPp UAS, a media server) instead "
                        "of each other: no registration, every UE a caller, each INVITE to this "
                        "Request-URI, sent to its host:port (or to --target when given)")
    g = p.add_argument_group("subscribers")
    g.add_argument("--subscribers", type=_positive_int, default=100,
                   help="how many UEs (call scenarios pair them: caller, callee)")
    g.add_argument("--start", type=int, default=100000, help="first subscriber number")
    g.add_argument("--password", default="secret", help="their digest password")
    g.add_argument("--provision", action="store_true",
                   help="provision the subscribers through the state service first")
    g.add_argument("--state", help="state service gRPC host:port for --provision")
    g.add_argument("--expires", type=_positive_int, default=600, help="REGISTER Expires")
    g.add_argument("--reregister", type=_positive_float,
                   help="re-REGISTER every so many seconds during the load (default expires/2)")
    g.add_argument("--clear-bindings", action=argparse.BooleanOptionalAction, default=True,
                   help="before the load, remove every binding of each subscriber (REGISTER "
                        "Contact: *), those an earlier run left included")
    g.add_argument("--unregister", action=argparse.BooleanOptionalAction, default=True,
                   help="after the load, remove the UEs' bindings")
    g.add_argument("--register-timeout", type=_positive_float, default=10.0,
                   help="seconds a REGISTER exchange may take at one P-CSCF before the UE "
                        "tries its secondary")
    g.add_argument("--register-rate", type=_positive_float, default=200.0,
                   help="initial REGISTERs per second before a call scenario's load")
    g = p.add_argument_group("load")
    g.add_argument("--rate", type=_positive_float, default=10.0,
                   help="calls per second offered (REGISTERs per second for `register`)")
    g.add_argument("--ramp", type=_non_negative_float, default=0.0,
                   help="seconds to ramp up linearly from 0 to --rate")
    g.add_argument("--max-concurrent", type=_positive_int, default=10_000,
                   help="calls in progress at most (an offer beyond it is counted as blocked)")
    g.add_argument("--hold", type=_non_negative_float, default=1.0,
                   help="seconds from the answer to the BYE")
    g.add_argument("--calls", type=_positive_int,
                   help="calls to offer (REGISTERs for `register`)")
    g.add_argument("--duration", type=_positive_float, help="seconds to offer load for")
    g.add_argument("--media", action=argparse.BooleanOptionalAction, default=True,
                   help="RTP both ways at 50 packets/s; a call without it both ways fails "
                        "(no_audio)")
    g.add_argument("--mix", type=_mix, default=Mix(), metavar="busy=F,cancel=F",
                   help="fractions of calls the callee refuses (486) or the caller cancels")
    g.add_argument("--ring", type=_non_negative_float, default=0.0,
                   help="seconds the callee rings before answering")
    g.add_argument("--cancel-after", type=_non_negative_float, default=0.2,
                   help="cancel calls: seconds from the 180 to the CANCEL")
    g.add_argument("--setup-timeout", type=_positive_float, default=32.0,
                   help="seconds an INVITE may take to its final answer")
    g.add_argument("--seed", type=int, default=1, help="random seed (call mix)")
    g.add_argument("--workers", type=_positive_int, default=1,
                   help="processes; each takes a share of the subscribers and the rate")
    g = p.add_argument_group("bearers (the eNodeB side)")
    g.add_argument("--bearers", action="store_true",
                   help="attach every UE through simulated eNodeBs (IMSI of its subscriber) "
                        "and check that both UEs of each answered call hold a QCI-1 bearer; "
                        "a call without fails (no_bearer)")
    g.add_argument("--enbs", type=_positive_int,
                   help="--bearers: simulated eNodeBs the UEs are spread over (default 1; "
                        "with --workers, at least one per worker)")
    g.add_argument("--enb-sctp", type=_sctp_address, metavar="HOST:PORT",
                   help="--bearers: the enb-agent's S1AP address (default: the stack's)")
    g.add_argument("--enb-grpc", metavar="HOST:PORT",
                   help="--bearers: the enb-agent's gRPC address (default: the stack's)")
    g.add_argument("--sctp-transport", choices=SCTP_TRANSPORTS,
                   help="--bearers: SCTP as the enb-agent speaks it (default: the stack's; "
                        "auto = the kernel's if it has SCTP, else userspace over UDP)")
    g.add_argument("--enb-failures", type=_ratio, metavar="F",
                   help="--bearers: failure injection, the eNBs refuse this fraction of E-RAB "
                        "set-ups (radio resources not available)")
    g = p.add_argument_group("scenario events")
    g.add_argument("--event-at", type=_non_negative_float,
                   help="failover: seconds into the load to kill an sbc worker "
                        "(default: a third of the duration)")
    g.add_argument("--kill", choices=("worker", "site"), default="worker",
                   help="failover: kill one sbc worker of the stack in --run-dir, or the whole "
                        "site there (every process; UEs move to their next --target)")
    g.add_argument("--kill-signal", choices=("KILL", "TERM"), default="KILL",
                   help="failover: the signal (KILL: a crash; TERM: a graceful drain)")
    g.add_argument("--steps", type=_steps, default=(5.0, 10.0, 20.0, 40.0),
                   help="scale-out: offered rates, comma-separated")
    g.add_argument("--step-duration", type=_positive_float, default=10.0,
                   help="scale-out: seconds per step")
    g.add_argument("--max-sbc-workers", type=_positive_int,
                   help="scale-out: add sbc workers to the local stack, one after each "
                        "saturated step, up to this many (default: one more than it runs)")
    g.add_argument("--window", type=_positive_float, default=60.0,
                   help="soak: seconds per summary window")
    g = p.add_argument_group("output")
    g.add_argument("--report", help="write the JSON report here")
    g.add_argument("--csv", help="write the per-second time series here")
    g.add_argument("--plots", help="write PNG plots into this directory")
    g.add_argument("--timeline", help="write every call's timeline here (JSON lines)")
    g.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="live progress: a bar on a terminal, lines otherwise (auto)")
    g.add_argument("--max-failed-ratio", type=_ratio,
                   help="exit 1 when more calls than this fraction fail")
    g.add_argument("--max-p99-setup-ms", type=_positive_float,
                   help="exit 1 when the INVITE-to-200 p99 (REGISTER for `register`) exceeds it")
    _kube_arguments(p)
    return p


def _stack_config(run_dir: str) -> StackConfig | None:
    """The configuration of the `volte up` stack in run_dir, if there is one."""
    from services.stack import Stack

    try:
        stack = Stack.load(run_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if stack is None else stack.config


def _stack_defaults(run_dir: str) -> tuple[Address | None, str | None, str | None]:
    """The `volte up` stack in run_dir: its SIP address, domain and state gRPC address."""
    c = _stack_config(run_dir)
    if c is None:
        return None, None, None
    return (c.sip_host, c.sip_port), c.domain, c.state_grpc


def bearer_config(args: argparse.Namespace) -> BearerConfig | None:
    """--bearers and its options; what is not given comes from the stack in --run-dir."""
    if not args.bearers:
        return None
    stack = _stack_config(args.run_dir)
    sctp: Address = (DEFAULT_ENB_SCTP_HOST, DEFAULT_ENB_SCTP_PORT)
    grpc_address, transport = DEFAULT_ENB_GRPC, "auto"
    if stack is not None:
        # the agent may listen on every address: connect to this machine's
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
            stack.enb_sctp_host, stack.enb_sctp_host)
        sctp = (host, stack.enb_sctp_port)
        grpc_address, transport = stack.enb_grpc, stack.enb_sctp_transport
    return BearerConfig(enbs=args.enbs or 1, sctp=args.enb_sctp or sctp,
                        grpc=args.enb_grpc or grpc_address,
                        transport=args.sctp_transport or transport,
                        failures=args.enb_failures or 0.0)


def config_from_args(args: argparse.Namespace) -> tuple[LoadConfig, str]:
    sip, domain, state = _stack_defaults(args.run_dir)
    targets = tuple(args.target) if args.target else ((sip,) if sip else (("127.0.0.1", 5060),))
    if args.callee and not args.target:
        targets = (callee_address(args.callee),)
    config = LoadConfig(
        scenario=args.scenario, targets=targets,
        domain=args.domain or domain or "ims.local",
        subscribers=args.subscribers, start=args.start, password=args.password,
        rate=args.rate, ramp=args.ramp, max_concurrent=args.max_concurrent, hold=args.hold,
        calls=args.calls, duration=args.duration, media=args.media, mix=args.mix,
        seed=args.seed, workers=args.workers, setup_timeout=args.setup_timeout,
        cancel_after=args.cancel_after, register_timeout=args.register_timeout,
        ring=args.ring, expires=args.expires,
        reregister=args.reregister, register_rate=args.register_rate, bind=args.bind,
        clear_bindings=args.clear_bindings, unregister=args.unregister,
        bearers=bearer_config(args), callee=args.callee or "", run_dir=args.run_dir,
        event_at=args.event_at,
        kill_signal=args.kill_signal,
        steps=args.steps if args.scenario == "scale-out" else (),
        step_duration=args.step_duration, window=args.window,
        max_failed_ratio=args.max_failed_ratio, max_p99_setup_ms=args.max_p99_setup_ms,
    )
    return config, args.state or state or DEFAULT_STATE


def _check_bearers(args: argparse.Namespace, config: LoadConfig,
                   parser: argparse.ArgumentParser) -> None:
    given = [flag for flag, value in (("--enbs", args.enbs), ("--enb-sctp", args.enb_sctp),
                                      ("--enb-grpc", args.enb_grpc),
                                      ("--sctp-transport", args.sctp_transport),
                                      ("--enb-failures", args.enb_failures))
             if value is not None]
    if config.bearers is None:
        if given:
            parser.error(f"{given[0]} needs --bearers")
        return
    if not config.is_call_scenario:
        parser.error("--bearers checks calls: not for `register`")
    if config.bearers.enbs < config.workers:
        parser.error(f"--enbs {config.bearers.enbs} --workers {config.workers}: each worker "
                     "attaches its UEs through eNBs of its own; give at least one per worker")


def _check(config: LoadConfig, parser: argparse.ArgumentParser) -> None:
    if config.callee:
        if config.scenario in ("register", "failover"):
            parser.error(f"--callee: a far end to call; {config.scenario} needs the sbc")
        if config.mix != Mix():
            parser.error("--callee: the far end decides how it answers; leave out --mix")
        if config.bearers:
            parser.error("--callee: no bearers to check without the sbc; leave out --bearers")
    elif config.is_call_scenario and config.pairs < 1:
        parser.error("call scenarios need --subscribers 2 or more (callers and callees)")
    if config.workers > 1:
        unit = config.subscribers if config.solo else config.pairs
        if unit < config.workers:
            parser.error(f"--workers {config.workers}: not enough subscribers to share")
    if config.scenario == "scale-out" and (config.calls or config.duration):
        parser.error("scale-out runs --steps x --step-duration; leave out --calls/--duration")
    duration = config.load_duration
    if config.scenario == "failover" and duration is not None and \
            config.failover_at >= duration:
        parser.error(f"--event-at {config.failover_at} is not within the load ({duration} s)")


def _check_kube(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.shard and (args.start_at is None or args.kube):
        parser.error("--shard (a pod of a --kube run) needs --start-at and no --kube")
    if not args.kube:
        return
    if args.workers > 1:
        parser.error("--workers is for local processes; with --kube use --kube-workers")
    if args.timeline:
        parser.error("--timeline is not available with --kube")
    contexts = set(args.kube_context or ())
    for context, _ in args.kube_target or ():
        if contexts and context not in contexts:
            parser.error(f"--kube-target {context}=...: {context} is not a --kube-context")


def kube_options(args: argparse.Namespace) -> KubeOptions:
    from loadgen.kube import STATE_PORT, KubeOptions, chart_fullname

    state = args.state or f"{chart_fullname(args.release)}-state:{STATE_PORT}"
    return KubeOptions(
        contexts=tuple(args.kube_context or ()), kubeconfig=args.kubeconfig,
        namespace=args.namespace, workers=args.kube_workers, image=args.image,
        release=args.release, targets=dict(args.kube_target or ()),
        state=state if args.provision else None, timeout=args.kube_timeout,
        start_delay=args.kube_start_delay, keep=args.kube_keep, poll=args.kube_poll,
    )


def _display(mode: str, console: Console) -> RichDisplay | PlainDisplay | QuietDisplay:
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "lines"
    if mode == "bar":
        return RichDisplay(console)
    if mode == "lines":
        return PlainDisplay()
    return QuietDisplay()


def provision(config: LoadConfig, state: str, console: Console) -> None:
    from services.subscribers import Provisioner

    provisioner = Provisioner(state)
    try:
        provisioner.provision(config.subscribers, config.start, config.domain, config.password)
    except grpc.RpcError as exc:
        raise LoadError(f"provisioning through the state service at {state} failed: "
                        f"{exc.code().name} {exc.details()}") from None
    finally:
        provisioner.close()
    console.print(f"provisioned {config.subscribers} subscribers sip:{config.start}@"
                  f"{config.domain} .. through {state}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, state = config_from_args(args)
    except ValueError as exc:  # a value from the stack's stack.json that makes no sense
        parser.error(str(exc))
    _check(config, parser)
    _check_bearers(args, config, parser)
    _check_kube(args, parser)
    console = Console()
    try:
        return run(config, state, args, console)
    except LoadError as exc:
        console.print(f"loadgen: {exc}", markup=False, highlight=False)
        return 3
    except KeyboardInterrupt:
        console.print("loadgen: interrupted")
        return 130


def run_local(config: LoadConfig, state: str, args: argparse.Namespace,
              console: Console) -> tuple[Outcome, int | None]:
    """The load from this machine (--workers processes), with the scenario's event: an sbc
    worker or the whole site killed (failover), sbc workers added (scale-out)."""
    from loadgen.scenarios import (
        KillSbcWorker,
        KillSite,
        LocalScaler,
        ScaleOnSaturation,
        stack_sbc_workers,
    )

    if args.provision:
        provision(config, state, console)
    event: ScenarioEvent | None = None
    if config.scenario == "failover" and args.kill == "site":
        site = KillSite(config.failover_at, config.run_dir)
        site.check(len(config.targets))
        event = site
    elif config.scenario == "failover":
        kill = KillSbcWorker(config.failover_at, config.run_dir, config.kill_signal)
        kill.check()
        event = kill
    sbc_workers = stack_sbc_workers(config.run_dir) if config.scenario == "scale-out" else None
    target = ", ".join(f"{h}:{p}" for h, p in config.targets)
    calling = f" calling {config.callee}" if config.callee else ""
    console.print(f"loadgen {config.scenario}: {config.subscribers} UEs{calling} via {target}, "
                  f"domain {config.domain}, {config.workers} worker(s)", highlight=False)
    display: Display = _display(args.progress, console)
    scaling: ScaleOnSaturation | None = None
    if sbc_workers is not None:
        scaling = ScaleOnSaturation(display, LocalScaler(config.run_dir), config.step_duration,
                                    len(config.steps), args.max_sbc_workers or sbc_workers + 1)
        display = scaling

    async def load() -> Outcome:
        outcome = await run_load(config, display, event=event, timeline=args.timeline or "")
        if scaling is not None:
            await scaling.finish()
            outcome.events.extend(scaling.events)
        return outcome

    return run_async(load()), sbc_workers


def run(config: LoadConfig, state: str, args: argparse.Namespace, console: Console) -> int:
    from loadgen.report import build_report, summary, write_csv, write_json

    if args.shard:  # a pod of a --kube run: its share, JSON lines out
        from loadgen.kube import agent_share, run_agent

        worker, share = agent_share(config, args.shard)
        if args.provision:
            provision(share, state, console)
        return run_agent(share, worker, args.start_at)
    if args.kube:
        from loadgen.kube import run_kube

        console.print(f"loadgen {config.scenario}: {config.subscribers} UEs, domain "
                      f"{config.domain}, on Kubernetes", highlight=False)
        outcome, sbc_workers = run_kube(
            config, kube_options(args), _display(args.progress, console),
            lambda text: console.print(text, markup=False, highlight=False))
    else:
        outcome, sbc_workers = run_local(config, state, args, console)
    report = build_report(config, outcome, sbc_workers=sbc_workers)
    if args.report:
        write_json(report, args.report)
    if args.csv:
        write_csv(report, args.csv)
    if args.plots:
        from loadgen.plots import write_plots

        write_plots(report, args.plots)
    summary(report, console)
    written = [p for p in (args.report, args.csv, args.plots, args.timeline) if p]
    if written:
        console.print("wrote " + ", ".join(str(Path(p)) for p in written), highlight=False)
    return 0 if report["passed"] else 1

