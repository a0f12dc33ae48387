"""The `volte` command: runs and inspects the whole stack on one machine.

    volte up [--detach] [--provision N]    redis-server, state, media, enb-agent and sbc
    volte status [--json]                  one row per process (sbc workers included)
    volte down                             stops what `volte up` started
    volte subscribers provision|add|list|delete
    volte demo                             the whole system under load (`make demo`)

Each subcommand sets `handler`, a function from the parsed arguments to the exit status. Options
with a value follow the services' convention (services.common.config): `--sip-port 5070` is also
`VOLTE_SIP_PORT=5070`; a flag beats the environment, which beats the default.

What `volte up` started is in `<run-dir>/stack.json` (services.stack), so the other subcommands
find it from another shell. A foreground `volte up` also writes `<run-dir>/volte-up.pid`:
`volte down` then asks it to stop, so it exits 0 as it would on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc

from services import __version__
from services.common.config import (
    MISSING,
    add_options,
    one_of,
    option,
    parse_ip,
    parse_ip_or_empty,
    resolve,
)
from services.sbc.bearer_policy import BEST_EFFORT, parse_policy
from services.stack import Stack, StackConfig, StackError, pid_alive, proc_alive
from services.subscribers import Provisioner, subscriber

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")

DEFAULT_RUN_DIR = f"/tmp/volte-{os.getuid()}"
FIRST_NUMBER = 100000
OWNER_FILE = "volte-up.pid"
MEDIA_FASTPATHS = ("userspace", "xdp")  # as services.media.fastpath.KINDS
EXIT_NOT_RUNNING = 3  # as LSB init scripts' `status`: 1 = dead with a pid file, 3 = not running


class CliError(Exception):
    """A user-fixable problem: printed as one line, exit status 1."""


# -- option types ---------------------------------------------------------------------------------
def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return f"{host}:{_port(port)}"


def _host_port_or_empty(text: str) -> str:
    return _host_port(text) if text.strip() else ""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {value}")
    return value


def _redis_url(text: str) -> str:
    if not text.strip():
        return ""
    from services.state.connect import check_url  # imports redis: only when asked

    try:
        return check_url(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None






_fastpath = one_of(*MEDIA_FASTPATHS)
_sbc_state = one_of("redis", "grpc")


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _imsi(text: str) -> str:
    if text and not (text.isdigit() and 14 <= len(text) <= 15):
        raise argparse.ArgumentTypeError(f"an IMSI is 14 or 15 digits: {text!r}")
    return text


# -- options (flags and VOLTE_* variables) ------------------------------------------------------
RUN_DIR_HELP = "where stack.json and the services' logs live"


@dataclass(frozen=True, kw_only=True)
class UpOptions:
    sip_host: str = option("127.0.0.1", "address the sbc's SIP UDP and TCP listeners bind to")
    sip_port: int = option(5060, "SIP port, UDP and TCP", parse=_port)
    domain: str = option("ims.local", "home domain: users @domain register here")
    redis: str = option(
        "", "use this Redis (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://) "
        "instead of starting redis-server", parse=_redis_url,
    )
    redis_port: int = option(6390, "port of the redis-server volte starts", parse=_port)
    state_grpc: str = option("127.0.0.1:50051", "state service gRPC address", parse=_host_port)
    sbc_grpc: str = option(
        "127.0.0.1:50061", "sbc admin + health gRPC address (worker i: port + i)",
        parse=_host_port,
    )
    workers: int = option(1, "sbc worker processes sharing the SIP port", parse=_positive)
    next_hop: str = option(
        "", "host:port of the S-CSCF for other domains (empty: 404)", parse=_host_port_or_empty
    )
    media_bind: str = option(
        "127.0.0.1", "address the media relay's RTP/RTCP sockets bind to", parse=parse_ip
    )
    media_advertised: str = option(
        "", "address the sbc writes into SDP for the relay (empty: --media-bind)",
        parse=parse_ip_or_empty,
    )
    media_port_min: int = option(
        30000, "lowest relay port (RTP on even ports, RTCP on RTP + 1)", parse=_port
    )
    media_port_max: int = option(39999, "highest relay port", parse=_port)
    media_fastpath: str = option(
        "userspace",
        "media relay data path: userspace (asyncio datagram relay), or xdp (latched flows "
        "forwarded in the kernel by an XDP program on --media-interface; needs root, and falls "
        "back to userspace, saying so in the media log, when XDP cannot attach)",
        parse=_fastpath,
    )
    media_interface: str = option(
        "", "network interface for --media-fastpath xdp (empty: the one holding --media-bind)"
    )
    site: str = option(
        "", "run as a named site of a two-site deployment: everything binds to --sip-host (a "
        "loopback address of its own, e.g. 127.0.0.2), Redis is watched by Sentinel and the "
        "state service follows the primary through it",
    )
    site_peer_redis: str = option(
        "", "second site: the first site's Redis host:port; ours replicates it and our "
        "sentinels (ours and a witness) promote ours when that site is gone",
        parse=_host_port_or_empty,
    )
    sentinel_port: int = option(26390, "port of the site's Sentinel (the witness: + 1)",
                                parse=_port)
    bearer_policy: str = option(
        BEST_EFFORT,
        "when a UE's QCI-1 bearer cannot be set up on answer: best-effort (the call goes on, "
        "logged and counted) or required (580 Precondition Failure to the caller)",
        parse=parse_policy,
    )
    sbc_state: str = option(
        "redis",
        "how the sbc reaches the state store: redis (runs the store's operations on its Redis "
        "itself, one round trip per SIP transaction) or grpc (through the state service)",
        parse=_sbc_state,
    )
    run_dir: str = option(DEFAULT_RUN_DIR, RUN_DIR_HELP)
    detach: bool = option(False, "return once everything is SERVING (stop with `volte down`)")
    provision: int = option(
        0, f"provision N subscribers {FIRST_NUMBER}, {FIRST_NUMBER + 1}, ... once up",
        parse=_count,
    )
    password: str = option("secret", "password of the --provision subscribers", parse=_nonempty)
    start_timeout: float = option(30.0, "seconds each service may take to report SERVING")


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: str = option("out/demo", "where the report, the plots and the stack's run dir go")
    subscribers: int = option(1000, "subscribers provisioned and simulated", parse=_positive)
    enbs: int = option(10, "simulated eNodeBs the UEs attach through", parse=_positive)
    rate: float = option(15.0, "calls per second offered", parse=_positive_float)
    hold: float = option(2.0, "seconds each call lasts (RTP both ways)", parse=_positive_float)
    duration: float = option(30.0, "seconds of load", parse=_positive_float)


@dataclass(frozen=True, kw_only=True)
class RunDirOptions:
    run_dir: str = option(DEFAULT_RUN_DIR, RUN_DIR_HELP)


@dataclass(frozen=True, kw_only=True)
class StateOptions:
    run_dir: str = option(DEFAULT_RUN_DIR, RUN_DIR_HELP)
    state: str = option(
        "", "state service gRPC host:port (default: the one of the stack in --run-dir)",
        parse=_host_port_or_empty,
    )
    timeout: float = option(5.0, "seconds for each state RPC")


@dataclass(frozen=True, kw_only=True)
class ProvisionOptions(StateOptions):
    count: int = option(MISSING, "how many subscribers", parse=_positive)
    start: int = option(FIRST_NUMBER, "the first number", parse=_count)
    domain: str = option("", "their domain (default: the running stack's, else ims.local)")
    password: str = option("secret", "their password", parse=_nonempty)


@dataclass(frozen=True, kw_only=True)
class AddOptions(StateOptions):
    password: str = option(MISSING, "the subscriber's password", parse=_nonempty)
    domain: str = option("", "its domain (default: the running stack's, else ims.local)")
    imsi: str = option("", "IMSI (default: test PLMN 00101 + the number)", parse=_imsi)


# -- helpers ----------------------------------------------------------------------------------
def _options(args: argparse.Namespace, kind: type[C]) -> C:
    """The subcommand's options (its flags, then VOLTE_* variables, then defaults)."""
    spec = args.spec
    assert isinstance(spec, type) and issubclass(spec, kind)
    options: C = resolve(args.subparser, spec, args)
    return options


def _load(run_dir: str) -> Stack | None:
    try:
        return Stack.load(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"cannot read {Path(run_dir) / 'stack.json'} ({exc}); remove it if nothing runs"
        ) from None


def _run_dir_flag(run_dir: str) -> str:
    return "" if run_dir == DEFAULT_RUN_DIR else f" --run-dir {run_dir}"


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Let a shutdown finish: a second Ctrl-C must not leave half the stack running."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _owner(run_dir: Path) -> int | None:
    """The pid of a foreground `volte up` holding this run dir, if one is alive."""
    try:
        pid = int((run_dir / OWNER_FILE).read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return None
    ours = "services.cli" in args or any(Path(a).name == "volte" for a in args)
    return pid if ours and "up" in args and pid_alive(pid) else None


# -- volte up ---------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    opts = _options(args, UpOptions)
    run_dir = Path(opts.run_dir)
    existing = _load(opts.run_dir)
    if existing is not None:
        live = [p for p in existing.procs if proc_alive(p)]
        if live:
            pids = ", ".join(f"{p.service} {p.pid}" for p in live)
            raise CliError(
                f"a stack is already running in {run_dir} ({pids}): "
                f"run `volte down{_run_dir_flag(opts.run_dir)}` first, or pick another --run-dir"
            )
        existing.stop()  # stale: every process it names has exited; removes stack.json
    if opts.media_port_max - opts.media_port_min < 1:
        raise CliError(f"--media-port-min {opts.media_port_min} / --media-port-max "
                       f"{opts.media_port_max}: the range needs at least two ports")
    config = StackConfig(
        sip_host=opts.sip_host, sip_port=opts.sip_port, domain=opts.domain, redis=opts.redis,
        redis_port=opts.redis_port, state_grpc=opts.state_grpc, sbc_grpc=opts.sbc_grpc,
        sbc_workers=opts.workers, next_hop=opts.next_hop, run_dir=opts.run_dir,
        media_bind=opts.media_bind, media_advertised=opts.media_advertised,
        media_port_min=opts.media_port_min, media_port_max=opts.media_port_max,
        media_fastpath=opts.media_fastpath, media_interface=opts.media_interface,
        site=opts.site, peer_redis=opts.site_peer_redis, sentinel_port=opts.sentinel_port,
        bearer_policy=opts.bearer_policy, sbc_state=opts.sbc_state,
    )
    if opts.site_peer_redis and not opts.site:
        raise CliError("--site-peer-redis needs --site NAME (the second site's name)")
    if opts.site and opts.redis:
        raise CliError("--site runs its own Redis with Sentinel: leave out --redis")
    config.localise()
    stack = Stack(config)
    # SIGTERM and SIGHUP stop us as Ctrl-C does (SIGINT too when started with it ignored, as
    # `volte up &` in a script is): the services run in their own sessions, so nobody but us
    # would stop them.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    stack.preflight()  # busy ports, no redis-server: one line, before anything is said or run
    started = "state, media, enb-agent and sbc"
    started = started if opts.redis else f"redis-server, {started}"
    print(f"volte: starting {started} (logs in {run_dir}) ...", file=sys.stderr, flush=True)
    try:
        stack.start(timeout=opts.start_timeout)  # on any failure it stops what it started
    except KeyboardInterrupt:
        print("volte: interrupted; nothing left running", file=sys.stderr)
        return 130
    detached = False
    try:
        if opts.provision:
            _provision_after_up(stack, opts)
        _print_endpoints(stack, opts)
        if opts.detach:
            detached = True
            return 0
        (run_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        return _foreground(stack)
    except KeyboardInterrupt:
        return 0
    except CliError as exc:
        print(f"volte: {exc}", file=sys.stderr)
        return 1
    finally:
        if not detached:
            with _signals_ignored():
                names = ", ".join(p.service for p in reversed(stack.procs))
                print(f"volte: stopping {names} ...", file=sys.stderr, flush=True)
                stack.stop()
                with contextlib.suppress(FileNotFoundError):
                    (run_dir / OWNER_FILE).unlink()
                print("volte: stopped", file=sys.stderr, flush=True)


def _provision_after_up(stack: Stack, opts: UpOptions) -> None:
    provisioner = Provisioner(stack.config.state_grpc)
    try:
        with _state_errors(stack.config.state_grpc):
            provisioner.provision(opts.provision, FIRST_NUMBER, opts.domain, opts.password)
    finally:
        provisioner.close()


def _print_endpoints(stack: Stack, opts: UpOptions) -> None:
    c = stack.config
    logs = [p.log for p in stack.procs]
    sbc_grpc = f"{c.sbc_grpc} (volte.v1.SbcAdmin)"
    if c.sbc_workers > 1:
        port = c.sbc_grpc.rpartition(":")[2]
        last = int(port) + c.sbc_workers - 1
        sbc_grpc = f"{c.sbc_grpc} (volte.v1.SbcAdmin; {c.sbc_workers} workers, ports {port}-{last})"
    redis = _safe_url(stack.redis_url) + ("" if c.redis else " (started by volte, not saved)")
    rows = [
        ["SIP", f"{c.sip_host}:{c.sip_port} UDP and TCP"],
        ["domain", c.domain],
        ["state gRPC", f"{c.state_grpc} (volte.v1.StateStore)"],
        ["sbc gRPC", sbc_grpc],
        ["media", _media_row(stack)],
        ["enb-agent", _enb_row(stack)],
        ["Redis", redis],
    ]
    if c.next_hop:
        rows.append(["next hop", c.next_hop])
    if opts.provision:
        last_number = FIRST_NUMBER + opts.provision - 1
        rows.append([
            "subscribers",
            f"{FIRST_NUMBER}..{last_number} @{c.domain} (user = number), "
            f"password {opts.password!r}",
        ])
    rows.append(["logs", ", ".join(logs)])
    print(f"volte is up (run dir {stack.run_dir})")
    print("\n".join("  " + line for line in _table(rows).splitlines()))
    down = f"volte down{_run_dir_flag(opts.run_dir)}"
    if opts.detach:
        print(f"Stop it with: {down}", flush=True)
    else:
        print(f"Stop it with Ctrl-C (or `{down}` from another shell)", flush=True)


def _enb_row(stack: Stack) -> str:
    from services.stack import sctp_kind

    c = stack.config
    sctp = "kernel SCTP" if sctp_kind(c.enb_sctp_transport) == "SCTP" else \
        "userspace SCTP over UDP"
    return (f"S1AP {c.enb_sctp_host}:{c.enb_sctp_port} ({sctp}); gRPC {c.enb_grpc} "
            "(volte.v1.BearerControl)")


def _media_row(stack: Stack) -> str:
    c = stack.config
    path = c.media_fastpath
    if path == "xdp":
        path += f" on {c.media_interface or 'the interface of ' + c.media_bind}"
        in_use, why = _fastpath_in_use(stack)
        if in_use == "userspace":
            path = f"userspace (xdp refused: {why})" if why else "userspace (xdp refused)"
    return (f"{c.media_advertised or c.media_bind} ports {c.media_port_min}-{c.media_port_max}, "
            f"fast path {path}; gRPC {c.media_grpc} (volte.v1.MediaControl)")


def _fastpath_in_use(stack: Stack) -> tuple[str, str]:
    """What the relay's start-up log says: the fast path it runs, and why XDP was refused."""
    media = next((p for p in stack.procs if p.service == "media"), None)
    in_use, why = "", ""
    try:
        lines = Path(media.log).read_text(errors="replace").splitlines() if media else []
    except OSError:
        return in_use, why
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if message.startswith("XDP fast path unavailable: "):
            why = message.removeprefix("XDP fast path unavailable: ").split("; relaying")[0]
        elif message.startswith("media service listening"):
            in_use = str(entry.get("fastpath", ""))
    return in_use, why


def _foreground(stack: Stack) -> int:
    """Wait for Ctrl-C, SIGTERM or `volte down`; a service that dies ends the stack (status 1)."""
    while True:
        for p in stack.procs:
            if not pid_alive(p.pid):
                tail = Path(p.log).read_text(errors="replace").splitlines()[-5:]
                print(f"volte: {p.service} (pid {p.pid}) exited; the end of {p.log}:",
                      file=sys.stderr)
                print("\n".join("  " + line for line in tail), file=sys.stderr)
                return 1
        time.sleep(0.5)


# -- volte down, status -----------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import Demo, run_demo

    opts = _options(args, DemoOptions)
    return run_demo(Demo(out=opts.out, subscribers=opts.subscribers, enbs=opts.enbs,
                         rate=opts.rate, hold=opts.hold, duration=opts.duration))


def cmd_down(args: argparse.Namespace) -> int:
    opts = _options(args, RunDirOptions)
    run_dir = Path(opts.run_dir)
    stack = _load(opts.run_dir)
    if stack is None:
        print(f"nothing running (no stack.json in {run_dir})")
        return 0
    live = [p for p in stack.procs if proc_alive(p)]
    if not live:
        stack.stop()  # removes the stale stack.json
        print(f"nothing running (the processes in {stack.state_file} had exited; removed it)")
        return 0
    owner = _owner(run_dir)
    if owner is not None:
        # A foreground `volte up` holds this stack: let it stop it, so it exits 0.
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + 30.0
        while pid_alive(owner) and time.monotonic() < deadline:
            time.sleep(0.1)
        stack = _load(opts.run_dir)
    if stack is not None:
        stack.stop()
    print("stopped " + ", ".join(f"{p.service} (pid {p.pid})" for p in reversed(live)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    opts = _options(args, RunDirOptions)
    stack = _load(opts.run_dir)
    if stack is None:
        if args.json:
            print("[]")
        print(f"nothing running (no stack.json in {opts.run_dir})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    rows = stack.status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = [["SERVICE", "PID", "STATUS", "ADDRESS", "GRPC"]]
        for row in rows:
            address = str(row["address"])
            table.append([str(row["service"]), str(row["pid"]), str(row["status"]),
                          _safe_url(address) if "://" in address else address, str(row["grpc"])])
        print(_table(table))
    healthy = all(row["status"] in ("SERVING", "RUNNING") for row in rows)
    if not healthy and not args.json:
        print(f"(logs in {stack.run_dir}; `volte down{_run_dir_flag(opts.run_dir)}` "
              "stops the rest)", file=sys.stderr)
    return 0 if healthy else 1


def cmd_scale(args: argparse.Namespace) -> int:
    opts = _options(args, RunDirOptions)
    stack = _load(opts.run_dir)
    if stack is None:
        raise CliError(f"nothing running (no stack.json in {opts.run_dir}): `volte up` first")
    started = time.monotonic()
    before, after = stack.scale_sbc(args.workers, timeout=args.timeout)
    took = time.monotonic() - started
    print(f"sbc: {before} -> {after} worker(s), all SERVING ({took:.1f} s)")
    return 0


# -- volte subscribers ------------------------------------------------------------------------
@contextlib.contextmanager
def _state_errors(address: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        # A sync call's RpcError is also a grpc.Call (the stubs do not say so).
        code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
        code = code_of() if callable(code_of) else None
        details = details_of() if callable(details_of) else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"the state service at {address} is unreachable ({code.name}); "
                "is the stack up? (`volte status`)"
            ) from None
        name = code.name if code is not None else "error"
        raise CliError(f"the state service at {address} refused: {name}: {details}") from None


@dataclass
class _Target:
    address: str
    domain: str


def _target(opts: StateOptions) -> _Target:
    """The state address and default domain: from the flags, else the running stack's."""
    stack = _load(opts.run_dir)
    domain = stack.config.domain if stack is not None else "ims.local"
    if opts.state:
        return _Target(opts.state, domain)
    if stack is None:
        raise CliError(
            f"no stack is running (no stack.json in {opts.run_dir}): start one with `volte up`, "
            "or pass --state host:port"
        )
    state = next((p for p in stack.procs if p.service == "state"), None)
    if state is None or not proc_alive(state):
        where = f"; see {state.log}" if state is not None else ""
        raise CliError(f"the stack's state service is not running{where}")
    return _Target(stack.config.state_grpc, domain)


def cmd_subscribers(args: argparse.Namespace) -> int:
    opts = _options(args, StateOptions)
    target = _target(opts)
    provisioner = Provisioner(target.address, timeout=opts.timeout)
    try:
        with _state_errors(target.address):
            if isinstance(opts, ProvisionOptions):
                domain = opts.domain or target.domain
                provisioner.provision(opts.count, opts.start, domain, opts.password)
                last = opts.start + opts.count - 1
                print(f"provisioned {opts.count} subscribers {opts.start}..{last} @{domain}")
            elif isinstance(opts, AddOptions):
                domain = opts.domain or target.domain
                sub = subscriber(args.number, domain, opts.password, opts.imsi)
                provisioner.add(sub)
                print(f"added {sub.impi}: {', '.join(sub.impus)}, IMSI {sub.imsi}")
            elif args.action == "delete":
                if not provisioner.delete(args.number):
                    raise CliError(f"no subscriber {args.number}")
                print(f"deleted {args.number}")
            else:
                _list(provisioner, json_output=args.json)
    finally:
        provisioner.close()
    return 0


def _list(provisioner: Provisioner, *, json_output: bool) -> None:
    subs = list(provisioner.list())
    if json_output:
        print(json.dumps([
            {"impi": s.impi, "impus": list(s.impus), "imsi": s.imsi, "msisdn": s.msisdn,
             "realm": s.credentials.realm, "barred": s.barred}
            for s in subs
        ], indent=2))
        return
    if not subs:
        print("no subscribers", file=sys.stderr)
        return
    rows = [["IMPI", "IMPU", "IMSI", "MSISDN", "BARRED"]]
    rows += [[s.impi, ", ".join(s.impus), s.imsi, s.msisdn, "yes" if s.barred else ""]
             for s in subs]
    print(_table(rows))


# -- the parser -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line and the way to more help, rather than the whole usage block.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _command(
    subparsers: argparse._SubParsersAction[_Parser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    spec: type,
    help: str,
) -> _Parser:
    parser = subparsers.add_parser(name, help=help, description=help)
    add_options(parser, spec)
    parser.set_defaults(handler=handler, spec=spec, subparser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="volte",
        description="Cloud-native VoLTE/IMS signalling: run and inspect the stack.",
        epilog="Every option with a value is also an environment variable: --sip-port 5070 is "
        "VOLTE_SIP_PORT=5070 (a flag beats the environment, which beats the default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    _command(commands, "up", cmd_up, UpOptions,
             "start redis-server, state, the media relay and sbc; stay in the foreground until "
             "Ctrl-C (or --detach). The relay runs in userspace on loopback by default; "
             "--media-fastpath xdp --media-interface IF (with --media-bind an address on IF) "
             "forwards latched RTP in the kernel")
    _command(commands, "down", cmd_down, RunDirOptions, "stop the stack `volte up` started")
    _command(commands, "demo", cmd_demo, DemoOptions,
             "the whole system under load: `volte up` (free ports, run dir under --out), "
             "provision --subscribers, `loadgen call-setup` with media and bearers through "
             "--enbs simulated eNodeBs, the summary, report.json and report.png in --out, "
             "`volte down`")
    status = _command(
        commands, "status", cmd_status, RunDirOptions,
        "show each process of the stack; exit 0 all serving, 1 some not, 3 nothing running",
    )
    status.add_argument("--json", action="store_true", help="a JSON list, one object a process")

    scale = _command(
        commands, "scale", cmd_scale, RunDirOptions,
        "add or remove sbc workers of the running stack (they share the SIP port); removed "
        "workers drain their transactions first",
    )
    scale.add_argument("service", choices=("sbc",), help="what to scale (only the sbc has workers)")
    scale.add_argument("workers", type=_positive, help="how many workers it should run")
    scale.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for the workers to report SERVING")

    subs = commands.add_parser(
        "subscribers", help="provision, add, list or delete subscribers in the state store",
        description="Subscribers in the state store of the running stack (or --state).",
    )
    actions = subs.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    _command(actions, "provision", cmd_subscribers, ProvisionOptions,
             "provision --count subscribers numbered from --start (user and MSISDN = number)")
    add = _command(actions, "add", cmd_subscribers, AddOptions, "add or replace one subscriber")
    add.add_argument("number", help="the number: digest username (IMPI) and MSISDN")
    lst = _command(actions, "list", cmd_subscribers, StateOptions, "list the subscribers")
    lst.add_argument("--json", action="store_true", help="a JSON list, one object a subscriber")
    delete = _command(actions, "delete", cmd_subscribers, StateOptions, "delete one subscriber")
    delete.add_argument("number", help="its IMPI")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (StackError, CliError) as exc:
        print(f"volte: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a run dir we may not write, a log we may not read, ...
        print(f"volte: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("volte: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
