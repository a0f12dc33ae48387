"""`python -m services.sbc`: the P-CSCF / signalling SBC (options: --help, or VOLTE_* variables).

With `--workers N` (N > 1) or `--supervise` this process is a supervisor: it starts N worker
processes that share the SIP port (SO_REUSEPORT), each with its own admin/health gRPC port (the
base port + index), restarts a worker that dies, adds a worker on SIGTTIN and drains the newest
on SIGTTOU (`volte scale sbc N`), and forwards SIGTERM for a graceful drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services import __version__, native
from services.common.config import load
from services.common.health import add_health
from services.common.telemetry import setup_logging, setup_telemetry
from services.sbc.bearer_client import BearerClient
from services.sbc.bearer_policy import REQUIRED
from services.sbc.config import SbcConfig
from services.sbc.core import Sbc
from services.sbc.media_client import MediaClient
from services.sbc.state_client import DirectStateClient, GrpcStateClient, StateClient
from services.sip.transport import install_event_loop_policy
from volte.v1 import sbc_admin_pb2, sbc_admin_pb2_grpc

log = logging.getLogger("volte.sbc")
DRAIN_SECONDS = 5.0
# Collector thresholds for the worker: generation 0 every 10000 net allocations (the default,
# 700, runs it several times per call). Transactions and their messages live 32 s (Timers
# D, L, M), so the heap holds tens of thousands of objects per 100 calls/s; with the default
# thresholds the full collections that walk all of it took ~7 % of the sbc's CPU.
GC_THRESHOLDS = (10_000, 20, 10)


def tune_gc() -> None:
    """Once started: what start-up allocated (modules, gRPC, telemetry) is never collected
    again (gc.freeze), and collections run less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Admin(sbc_admin_pb2_grpc.SbcAdminServicer):
    def __init__(self, sbc: Sbc, started: float) -> None:
        self.sbc = sbc
        self.started = started

    def _status(self) -> sbc_admin_pb2.SbcStatus:
        started = Timestamp()
        started.FromSeconds(int(self.started))
        state = (
            sbc_admin_pb2.SbcStatus.STATE_DRAINING
            if self.sbc.draining
            else sbc_admin_pb2.SbcStatus.STATE_SERVING
        )
        return sbc_admin_pb2.SbcStatus(
            instance_id=self.sbc.config.instance, version=__version__, state=state,
            started_at=started,
        )

    async def GetStatus(self, request: object, context: object) -> sbc_admin_pb2.SbcStatus:
        return self._status()

    async def Drain(self, request: object, context: object) -> sbc_admin_pb2.SbcStatus:
        self.sbc.draining = True
        return self._status()


def _with_port(address: str, offset: int) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset if int(port) else 0}"


async def serve(config: SbcConfig) -> int:
    telemetry = setup_telemetry("sbc", metrics_port=config.metrics_port)
    state: StateClient = (
        DirectStateClient.from_url(config.state_redis, config.state_timeout, config.instance)
        if config.state_redis
        else GrpcStateClient(config.state, config.state_timeout)
    )
    media = MediaClient(config.media, config.media_timeout) if config.media else None
    bearers = BearerClient(config.enb, config.bearer_timeout) if config.enb else None
    sbc = Sbc(config, state, media, bearers)
    try:
        await sbc.start()
    except OSError as exc:
        log.error("cannot listen for SIP", extra={"port": config.sip_port, "error": str(exc)})
        print(f"sbc: cannot listen on {config.sip_listen}:{config.sip_port}: {exc}",
              file=sys.stderr)
        return 1
    server = grpc.aio.server()
    sbc_admin_pb2_grpc.add_SbcAdminServicer_to_server(Admin(sbc, time.time()), server)
    health = await add_health(server, ["volte.v1.SbcAdmin"])
    grpc_port = server.add_insecure_port(_with_port(config.grpc_listen, config.worker_index))
    await server.start()
    log.info(
        "sbc listening",
        extra={"sip": f"{config.sip_listen}:{sbc.port}", "grpc_port": grpc_port,
               "worker": config.worker_index, "instance": config.instance,
               "call_path": native.describe()},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def watch_readiness() -> None:
        # Ready only while the state store answers: otherwise new work would only get 503s.
        serving = False
        while True:
            ok = await state.serving()
            if ok != serving:
                await (health.serving() if ok else health.not_serving())
                log.info("readiness changed", extra={"serving": ok})
                serving = ok
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch_readiness())
    tune_gc()
    await stop.wait()
    log.info("draining")
    sbc.draining = True
    await health.shutdown()
    deadline = time.monotonic() + DRAIN_SECONDS
    while sbc.by_server and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    watcher.cancel()
    await server.stop(grace=1.0)
    await sbc.stop()
    await state.close()
    if media is not None:
        await media.close()
    if bearers is not None:
        await bearers.close()
    telemetry.shutdown()
    return 0


class Supervisor:
    """Keeps `desired` worker processes on one SIP port: restarts any that dies, adds one on
    SIGTTIN and drains the newest on SIGTTOU (as gunicorn does), drains all on SIGTERM."""

    def __init__(self, config: SbcConfig, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.desired = max(1, config.workers)
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.retiring: set[int] = set()
        self.stopping = False

    def spawn(self, index: int) -> None:
        env = {**os.environ, "VOLTE_WORKER_INDEX": str(index), "VOLTE_SUPERVISE": "1"}
        self.workers[index] = subprocess.Popen([sys.executable, "-m", "services.sbc", *self.argv],
                                               env=env)
        log.info("worker started", extra={"worker": index, "pid": self.workers[index].pid})

    def on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGTTIN:
            self.desired += 1
        elif signum == signal.SIGTTOU:
            self.desired = max(1, self.desired - 1)
        else:
            self.stopping = True
            for proc in self.workers.values():
                proc.send_signal(signal.SIGTERM)

    def step(self) -> None:
        for index, proc in list(self.workers.items()):
            if proc.poll() is None:
                continue
            del self.workers[index]
            if self.stopping or index in self.retiring:
                self.retiring.discard(index)
                log.info("worker stopped", extra={"worker": index, "rc": proc.returncode})
            else:
                log.warning("worker died, restarting",
                            extra={"worker": index, "rc": proc.returncode})
        if self.stopping:
            return
        for index in range(self.desired):
            if index not in self.workers:
                self.spawn(index)
        for index, proc in self.workers.items():
            if index >= self.desired and index not in self.retiring:
                log.info("worker draining (scaled in)", extra={"worker": index})
                self.retiring.add(index)
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self.on_signal)
        while True:
            self.step()
            if self.stopping and not self.workers:
                return 0
            time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = load(SbcConfig, args, prog="python -m services.sbc",
                  description="volte sbc: P-CSCF / signalling SBC")
    setup_logging("sbc", config.log_level)
    if config.bearer_policy == REQUIRED and not config.enb:
        message = "--bearer-policy required needs --enb: no eNB agent to ask for bearers"
        log.error(message)
        print(f"sbc: {message}", file=sys.stderr)
        return 2
    if config.shared_port and "VOLTE_WORKER_INDEX" not in os.environ:
        return Supervisor(config, args).run()
    # Before asyncio.run: a policy set once the loop runs (as serve() used to) has no effect
    # on that loop, and the sbc ran on the pure-Python selector loop.
    install_event_loop_policy()
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
