"""The whole stack on one machine: redis-server, state, media, enb-agent, sbc as child processes.

Used by `volte up` and by the tests that need the real thing. Each service is started with
flags, then awaited until its gRPC health service says SERVING; what was started is written to
`<run_dir>/stack.json` so `volte status` and `volte down` find it from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REDIS_INSTALL_HINT = "apt-get install redis-server   (or pass --redis redis://host:port/0)"
DEFAULT_MEDIA_GRPC = "127.0.0.1:50071"
DEFAULT_ENB_GRPC = "127.0.0.1:50081"
SENTINEL_MASTER = "volte"  # the name the sentinels of both sites monitor the primary by
SENTINEL_DOWN_AFTER_MS = 1000  # the primary is down after this long without answering
# A failover attempt that fails (the two surviving sentinels each voted for itself: a split
# vote) is tried again after twice this; Redis's default, 3 minutes, would leave a dead site's
# UEs without a primary for as long. Promotion on one machine takes milliseconds.
SENTINEL_FAILOVER_TIMEOUT_MS = 2000
DEFAULT_ENB_SCTP_PORT = 36412  # S1AP (TS 36.412)


class StackError(RuntimeError):
    """Something the user can fix: a busy port, a missing binary, a service that never came up."""


@dataclass
class Proc:
    service: str
    pid: int
    argv: list[str]
    grpc: str = ""  # host:port of its gRPC health service, "" for redis
    address: str = ""  # what it serves: redis URL, SIP address
    log: str = ""


@dataclass
class StackConfig:
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060
    domain: str = "ims.local"
    redis: str = ""  # empty: start our own redis-server
    redis_port: int = 6390
    state_grpc: str = "127.0.0.1:50051"
    sbc_grpc: str = "127.0.0.1:50061"
    sbc_workers: int = 1
    next_hop: str = ""
    run_dir: str = field(default_factory=lambda: f"/tmp/volte-{os.getuid()}")
    nonce_secret: str = field(default_factory=lambda: os.urandom(16).hex())
    extra_sbc_args: list[str] = field(default_factory=list)
    # How the sbc reaches the state store: "redis" (it runs the store's operations itself on
    # the state service's Redis: one round trip per SIP transaction) or "grpc" (through the
    # state service's API, one hop more).
    sbc_state: str = "redis"
    # The media relay: its gRPC address, and the address and port range of its RTP/RTCP
    # sockets (ports held by others are skipped, so stacks may share the range). The default
    # gRPC port is a preference: if it is busy (another stack on this machine) start() takes
    # a free port instead and records it here, hence in stack.json.
    media_grpc: str = DEFAULT_MEDIA_GRPC
    media_bind: str = "127.0.0.1"
    media_port_min: int = 30000
    media_port_max: int = 39999
    media_timeout: float = 30.0  # seconds without RTP before the relay reports the call dead
    media_advertised: str = ""  # address written into SDP (empty: media_bind)
    # The relay's data path: "userspace", or "xdp" on `media_interface` (empty: the interface
    # holding media_bind); the relay falls back to userspace, saying so in its log, when XDP
    # cannot attach.
    media_fastpath: str = "userspace"
    media_interface: str = ""
    extra_media_args: list[str] = field(default_factory=list)
    # The enb-agent: eNodeBs connect to it over SCTP (S1AP) at enb_sctp_host:enb_sctp_port; the
    # sbc asks it for bearers over gRPC at enb_grpc. enb_sctp_transport: "kernel", "userspace"
    # (SCTP over UDP, RFC 6951: the same port number, UDP) or "auto" (kernel if it has SCTP).
    # The default ports give way like media_grpc's when busy; the ones used are recorded here.
    enb_grpc: str = DEFAULT_ENB_GRPC
    enb_sctp_host: str = "127.0.0.1"
    enb_sctp_port: int = DEFAULT_ENB_SCTP_PORT
    enb_sctp_transport: str = "auto"
    enb_plmn: str = "00101"
    extra_enb_args: list[str] = field(default_factory=list)
    # Two sites ("private and public cloud"): a named site runs its services on sip_host (its
    # own loopback address here, e.g. 127.0.0.2), Redis with Sentinel on sentinel_port, and the
    # state service through Sentinel. The second site (peer_redis = the first site's Redis,
    # host:port) runs its Redis as a replica of the first's and two sentinels (its own and a
    # witness: a failover needs a majority of all sentinels, which two sites alone never have
    # when one is gone; in production the witness runs in a third place). When the first site
    # dies, the sentinels promote the second site's Redis: registrations are kept.
    site: str = ""
    peer_redis: str = ""
    sentinel_port: int = 26390

    def localise(self) -> None:
        """A named site binds everything left at a 127.0.0.1 default to its own sip_host."""
        if not self.site or self.sip_host == "127.0.0.1":
            return
        for name in ("state_grpc", "sbc_grpc", "media_grpc", "enb_grpc"):
            host, _, port = getattr(self, name).rpartition(":")
            if host == "127.0.0.1":
                setattr(self, name, f"{self.sip_host}:{port}")
        for name in ("media_bind", "enb_sctp_host"):
            if getattr(self, name) == "127.0.0.1":
                setattr(self, name, self.sip_host)

    @property
    def redis_host(self) -> str:
        return self.sip_host if self.site else "127.0.0.1"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """This site's sentinels: its own, and a witness for the second site."""
        own = [(self.redis_host, self.sentinel_port)]
        return [*own, (self.redis_host, self.sentinel_port + 1)] if self.peer_redis else own
    # What the sbc does when a QCI-1 bearer cannot be set up: "best-effort" or "required".
    bearer_policy: str = "best-effort"


# Ports free_port handed out in this process, newest last.
_HANDED_OUT: deque[int] = deque(maxlen=4096)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port on 127.0.0.1, never one handed out here recently: the kernel may give the
    same ephemeral port twice in a row, and two services of one stack then shared it (the
    sbc's SIP and gRPC listeners both bind with SO_REUSEPORT, so neither failed)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise StackError("no free port left that was not handed out before")


def sctp_kind(transport: str) -> str:
    """What an SCTP port of the enb-agent occupies: kernel SCTP, or UDP for userspace SCTP."""
    if transport == "auto":
        from services.enb.sctp import kernel_sctp_available

        transport = "kernel" if kernel_sctp_available() else "userspace"
    return "SCTP" if transport == "kernel" else "UDP"


def _sctp_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)


def sctp_port_busy(host: str, port: int, transport: str) -> bool:
    if sctp_kind(transport) == "UDP":
        return port_busy(host, port, socket.SOCK_DGRAM)
    with _sctp_socket(host) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent binds
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_sctp_port(host: str, transport: str) -> int:
    if sctp_kind(transport) == "UDP":
        return free_port(socket.SOCK_DGRAM)
    with _sctp_socket(host) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_run(count: int, kind: int = socket.SOCK_STREAM) -> int:
    """The first of `count` consecutive free ports (sbc workers use base, base + 1, ...)."""
    for _ in range(100):
        base = free_port(kind)
        rest = range(base + 1, base + count)
        if base + count <= 65535 and not any(
            port in _HANDED_OUT or port_busy("127.0.0.1", port, kind) for port in rest
        ):
            _HANDED_OUT.extend(rest)
            return base
    raise StackError(f"no run of {count} free ports found")


def port_busy(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # As the servers themselves bind: a listener makes the port busy, a connection
            # left in TIME_WAIT by the previous run does not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.procs: list[Proc] = []

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def redis_url(self) -> str:
        """Where the state service finds Redis: given, ours, or our site's through Sentinel."""
        c = self.config
        if c.redis:
            return c.redis
        if c.site:
            hosts = ",".join(f"{h}:{p}" for h, p in c.sentinels)
            return f"redis+sentinel://{hosts}/{SENTINEL_MASTER}/0"
        return f"redis://{c.redis_host}:{c.redis_port}/0"

    # -- start ----------------------------------------------------------------------------------
    def preflight(self) -> None:
        c = self.config
        for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
            if port_busy(c.sip_host, c.sip_port, kind):
                raise StackError(
                    f"SIP port {c.sip_host}:{c.sip_port}/{name} is in use: pick another with "
                    "--sip-port, or stop what holds it (`volte down` if it is us)"
                )
        host, _, port = c.sbc_grpc.rpartition(":")
        grpc_ports = [("state gRPC", c.state_grpc)] + [  # sbc worker i listens on port + i
            ("sbc gRPC", f"{host}:{int(port) + i}") for i in range(max(1, c.sbc_workers))
        ]
        if c.media_grpc != DEFAULT_MEDIA_GRPC:  # the default gives way; see StackConfig
            grpc_ports.append(("media gRPC", c.media_grpc))
        if c.enb_grpc != DEFAULT_ENB_GRPC:
            grpc_ports.append(("enb-agent gRPC", c.enb_grpc))
        for what, address in grpc_ports:
            host, _, port = address.rpartition(":")
            if port_busy(host, int(port), socket.SOCK_STREAM):
                raise StackError(f"{what} port {address} is in use")
        if c.enb_sctp_port != DEFAULT_ENB_SCTP_PORT and sctp_port_busy(
            c.enb_sctp_host, c.enb_sctp_port, c.enb_sctp_transport
        ):
            raise StackError(f"enb-agent S1AP port {c.enb_sctp_host}:{c.enb_sctp_port} "
                             f"({sctp_kind(c.enb_sctp_transport)}) is in use")
        if not c.redis:
            if shutil.which("redis-server") is None:
                raise StackError(f"redis-server is not installed: {REDIS_INSTALL_HINT}")
            if port_busy(c.redis_host, c.redis_port, socket.SOCK_STREAM):
                raise StackError(f"Redis port {c.redis_port} is in use: pass --redis-port")
            for sentinel_host, sentinel_port in c.sentinels if c.site else []:
                if port_busy(sentinel_host, sentinel_port, socket.SOCK_STREAM):
                    raise StackError(f"Sentinel port {sentinel_host}:{sentinel_port} is in "
                                     "use: pass --sentinel-port")

    def start(self, timeout: float = 30.0) -> None:
        self.preflight()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        c = self.config
        try:
            if not c.redis:
                self._start_redis(timeout)
            self._spawn(
                "state",
                [sys.executable, "-m", "services.state", "--grpc-listen", c.state_grpc,
                 "--redis", self.redis_url],
                grpc=c.state_grpc,
            )
            self._wait_serving("state", c.state_grpc, timeout)
            media_grpc = self._media_grpc()
            self._spawn(
                "media", self.media_argv(media_grpc), grpc=media_grpc,
                address=f"{c.media_bind}:{c.media_port_min}-{c.media_port_max}",
            )
            self._wait_serving("media", media_grpc, timeout)
            chosen = c.enb_sctp_port == DEFAULT_ENB_SCTP_PORT or c.enb_grpc == DEFAULT_ENB_GRPC
            asked = (c.enb_grpc, c.enb_sctp_port)
            for attempt in range(3 if chosen else 1):
                c.enb_grpc, c.enb_sctp_port = asked  # the defaults again: re-picked if busy
                enb_grpc, enb_port = self._enb_addresses()
                self._spawn(
                    "enb-agent", self.enb_argv(enb_grpc, enb_port), grpc=enb_grpc,
                    address=f"{c.enb_sctp_host}:{enb_port}",
                )
                try:
                    self._wait_serving("enb-agent", enb_grpc, timeout)
                    break
                except StackError:
                    # A port we picked as free was taken before the agent bound it (another
                    # stack on this machine): pick again, a few times.
                    if attempt == 2 or not chosen:
                        raise
                    self.procs.pop()
            sbc_args = [
                sys.executable, "-m", "services.sbc", "--sip-listen", c.sip_host,
                "--sip-port", str(c.sip_port), "--domain", c.domain, "--state", c.state_grpc,
                "--grpc-listen", c.sbc_grpc, "--workers", str(c.sbc_workers), "--supervise",
                "--nonce-secret", c.nonce_secret, "--media", media_grpc, "--enb", enb_grpc,
                "--bearer-policy", c.bearer_policy, *c.extra_sbc_args,
            ]
            if c.next_hop:
                sbc_args += ["--next-hop", c.next_hop]
            if c.sbc_state == "redis":
                sbc_args += ["--state-redis", self.redis_url]
            self._spawn("sbc", sbc_args, grpc=c.sbc_grpc, address=f"{c.sip_host}:{c.sip_port}")
            self._wait_serving("sbc", c.sbc_grpc, timeout)
        except BaseException:
            self.stop()
            raise
        self._save()

    def _start_redis(self, timeout: float) -> None:
        c = self.config
        argv = ["redis-server", "--port", str(c.redis_port), "--bind", c.redis_host,
                "--save", "", "--appendonly", "no", "--dir", str(self.run_dir)]
        if c.site:
            # Protected mode refuses clients from any address but 127.0.0.1 and ::1, and the
            # other site's replica and sentinels come from theirs (127.0.0.2 here).
            argv += ["--protected-mode", "no"]
        if c.peer_redis:
            host, _, port = c.peer_redis.rpartition(":")
            argv += ["--replicaof", host, port, "--replica-announce-ip", c.redis_host,
                     "--bind-source-addr", c.redis_host]
        self._spawn("redis", argv, address=f"redis://{c.redis_host}:{c.redis_port}/0")
        self._wait_redis(timeout)
        if not c.site:
            return
        primary = c.peer_redis or f"{c.redis_host}:{c.redis_port}"
        for index, (sentinel_host, sentinel_port) in enumerate(c.sentinels):
            name = "sentinel" if index == 0 else "sentinel-witness"
            conf = self.run_dir / f"{name}.conf"
            conf.write_text(sentinel_conf(sentinel_host, sentinel_port, primary, self.run_dir))
            self._spawn(name, ["redis-server", str(conf), "--sentinel"],
                        address=f"sentinel://{sentinel_host}:{sentinel_port}")
        deadline = time.monotonic() + timeout
        while not self._sentinels_see_primary():
            for name in ("sentinel", "sentinel-witness"):
                if any(p.service == name for p in self.procs):
                    self._check_alive(name)
            if time.monotonic() > deadline:
                raise StackError(f"the sentinels did not find the primary Redis {primary}")
            time.sleep(0.1)

    def _sentinels_see_primary(self) -> bool:
        command = f"SENTINEL get-master-addr-by-name {SENTINEL_MASTER}"
        return all(redis_reply(host, port, command).startswith(b"*2")
                   for host, port in self.config.sentinels)

    def media_argv(self, media_grpc: str) -> list[str]:
        """The media relay's command line for this config."""
        c = self.config
        argv = [sys.executable, "-m", "services.media", "--grpc-listen", media_grpc,
                "--bind", c.media_bind, "--port-min", str(c.media_port_min),
                "--port-max", str(c.media_port_max), "--timeout", str(c.media_timeout),
                "--fastpath", c.media_fastpath]
        if c.media_interface:
            argv += ["--interface", c.media_interface]
        if c.media_advertised:
            argv += ["--advertised", c.media_advertised]
        return [*argv, *c.extra_media_args]

    def enb_argv(self, enb_grpc: str, sctp_port: int) -> list[str]:
        """The enb-agent's command line for this config."""
        c = self.config
        return [sys.executable, "-m", "services.enb", "--grpc-listen", enb_grpc,
                "--sctp-listen", c.enb_sctp_host, "--sctp-port", str(sctp_port),
                "--sctp-transport", c.enb_sctp_transport, "--plmn", c.enb_plmn,
                *c.extra_enb_args]

    def _enb_addresses(self) -> tuple[str, int]:
        """The enb-agent's gRPC address and SCTP port: the configured ones, or free ports where
        a default is busy (another stack on this machine)."""
        c = self.config
        host, _, port = c.enb_grpc.rpartition(":")
        if c.enb_grpc == DEFAULT_ENB_GRPC and port_busy(host, int(port), socket.SOCK_STREAM):
            c.enb_grpc = f"{host}:{free_port()}"
        if c.enb_sctp_port == DEFAULT_ENB_SCTP_PORT and sctp_port_busy(
            c.enb_sctp_host, c.enb_sctp_port, c.enb_sctp_transport
        ):
            c.enb_sctp_port = free_sctp_port(c.enb_sctp_host, c.enb_sctp_transport)
        return c.enb_grpc, c.enb_sctp_port

    def _media_grpc(self) -> str:
        """The media gRPC address: the configured one, or a free port if the default is busy."""
        c = self.config
        host, _, port = c.media_grpc.rpartition(":")
        if c.media_grpc == DEFAULT_MEDIA_GRPC and port_busy(host, int(port), socket.SOCK_STREAM):
            c.media_grpc = f"{host}:{free_port()}"
        return c.media_grpc

    def _spawn(self, service: str, argv: list[str], *, grpc: str = "", address: str = "") -> None:
        log_path = self.run_dir / f"{service}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop them
            )
        self.procs.append(Proc(service, proc.pid, argv, grpc, address, str(log_path)))

    def _check_alive(self, service: str) -> None:
        proc = next(p for p in self.procs if p.service == service)
        if not pid_alive(proc.pid):
            tail = Path(proc.log).read_text(errors="replace")[-1500:]
            raise StackError(f"{service} exited during start-up; its log ({proc.log}):\n{tail}")

    def _wait_redis(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("redis")
            if redis_reply(self.config.redis_host, self.config.redis_port,
                           "PING").startswith(b"+PONG"):
                return
            time.sleep(0.1)
        raise StackError("redis-server did not answer PING")

    def _wait_serving(self, service: str, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(service)
            if grpc_serving(address, timeout=0.5):
                return
            time.sleep(0.2)
        raise StackError(f"{service} did not report SERVING on {address} within {timeout:.0f} s")

    # -- scale ----------------------------------------------------------------------------------
    def sbc_worker_grpc(self, index: int) -> str:
        """Worker `index` of the sbc serves admin + health gRPC on the base port + index."""
        host, _, port = self.config.sbc_grpc.rpartition(":")
        return f"{host}:{int(port) + index}"

    def scale_sbc(self, workers: int, timeout: float = 30.0) -> tuple[int, int]:
        """Run `workers` sbc workers: the supervisor adds one per SIGTTIN and drains the newest
        per SIGTTOU. Returns (before, after) once the new count runs and every worker reports
        SERVING; records the count in stack.json."""
        if workers < 1:
            raise StackError(f"scale sbc {workers}: at least 1 worker")
        sbc = next((p for p in self.procs if p.service == "sbc" and proc_alive(p)), None)
        if sbc is None:
            raise StackError(f"no running sbc in {self.run_dir}: `volte up` first")
        if "--supervise" not in sbc.argv and self.config.sbc_workers == 1:
            raise StackError("this sbc runs without a supervisor (started by an older volte): "
                             "restart the stack to scale it")
        before = len(children(sbc.pid))
        for index in range(before, workers):
            address = self.sbc_worker_grpc(index)
            host, _, port = address.rpartition(":")
            if port_busy(host, int(port), socket.SOCK_STREAM):
                raise StackError(f"sbc worker {index} would serve gRPC on {address}, which is "
                                 "in use: free it, or start the stack with --sbc-grpc elsewhere")
        deadline = time.monotonic() + timeout
        while (count := len(children(sbc.pid))) != workers:
            # One signal at a time: signals of one kind sent together merge into one.
            os.kill(sbc.pid, signal.SIGTTIN if count < workers else signal.SIGTTOU)
            while len(children(sbc.pid)) == count and time.monotonic() < deadline:
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise StackError(f"the sbc did not reach {workers} workers within "
                                 f"{timeout:.0f} s (it runs {count}); see {sbc.log}")
        for index in range(workers):
            self._wait_serving("sbc", self.sbc_worker_grpc(index),
                               max(1.0, deadline - time.monotonic()))
        self.config.sbc_workers = workers
        self._save()
        return before, workers

    # -- state file, status, stop ---------------------------------------------------------------
    def _save(self) -> None:
        data = {"config": asdict(self.config), "procs": [asdict(p) for p in self.procs]}
        self.state_file.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: str) -> Stack | None:
        path = Path(run_dir) / "stack.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        stack = cls(StackConfig(**data["config"]))
        stack.procs = [Proc(**p) for p in data["procs"]]
        return stack

    def status(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for p in self.procs:
            alive = proc_alive(p)
            if not alive:
                status = "DEAD"
            elif p.grpc:
                status = "SERVING" if grpc_serving(p.grpc) else "NOT_SERVING"
            else:
                status = "RUNNING"
            out.append({"service": p.service, "pid": p.pid, "status": status,
                        "grpc": p.grpc, "address": p.address, "log": p.log})
            for child in children(p.pid):
                grpc, worker_status = "", status
                index = worker_index(child)
                if p.service == "sbc" and index is not None:  # each its own health service
                    grpc = self.sbc_worker_grpc(index)
                    worker_status = "SERVING" if grpc_serving(grpc) else "NOT_SERVING"
                out.append({"service": f"{p.service}-worker", "pid": child,
                            "status": worker_status, "parent": p.pid, "grpc": grpc,
                            "address": p.address, "log": p.log})
        return out

    def kill(self) -> list[int]:
        """SIGKILL every process of the stack at once, as a site's power failure would (each
        runs in its own process group with its children: the sbc's workers go too). Leaves
        stack.json for `volte down` to clear. Returns the pids killed."""
        killed = []
        for p in self.procs:
            if proc_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
        return killed

    def stop(self, timeout: float = 10.0) -> None:
        # Reverse order: the sbc drains while media, state and Redis still answer.
        for p in reversed(self.procs):
            if proc_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while pid_alive(p.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_alive(p.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()


def redis_reply(host: str, port: int, command: str) -> bytes:
    """The start of a Redis (or Sentinel) server's reply to an inline command; b"" when it
    does not answer."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(command.encode() + b"\r\n")
            return s.recv(256)
    except OSError:
        return b""


def sentinel_conf(host: str, port: int, primary: str, run_dir: Path) -> str:
    """A Sentinel's config (it rewrites the file as it learns peers and failovers)."""
    primary_host, _, primary_port = primary.rpartition(":")
    return "\n".join([
        f"port {port}", f"bind {host}", f"dir {run_dir}",
        f"sentinel announce-ip {host}", f"sentinel announce-port {port}",
        f"sentinel monitor {SENTINEL_MASTER} {primary_host} {primary_port} 2",
        f"sentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}",
        f"sentinel failover-timeout {SENTINEL_MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}", "",
    ])


def pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def proc_alive(p: Proc) -> bool:
    """`p.pid` is alive and still runs what we started (after a reboot or a crash, a stale
    stack.json may name a pid the kernel has since given to an unrelated process)."""
    if not pid_alive(p.pid):
        return False
    try:
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    if cmdline.endswith(b"\0"):
        cmdline = cmdline[:-1]
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
    if args == p.argv:
        return True
    # redis-server rewrites its title ("redis-server 127.0.0.1:6390") into the first argument.
    words = args[0].split() if not any(args[1:]) else []
    return bool(words and p.argv and Path(words[0]).name == Path(p.argv[0]).name)


def worker_index(pid: int) -> int | None:
    """The VOLTE_WORKER_INDEX a supervisor gave its worker `pid` (None: not one, or unknown)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"VOLTE_WORKER_INDEX="):
            value = entry.split(b"=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
