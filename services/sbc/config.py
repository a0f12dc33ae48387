"""The sbc's options: flags and VOLTE_* environment variables of the same names."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

from services.common.config import option
from services.sbc.bearer_policy import BEST_EFFORT, parse_policy
from services.state.service import redis_url


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class SbcConfig:
    sip_listen: str = option("127.0.0.1", "address the SIP UDP and TCP listeners bind to")
    sip_port: int = option(5060, "SIP port, UDP and TCP")
    advertised_host: str = option(
        "", "host the sbc writes in Via and Record-Route (default: --sip-listen)"
    )
    domain: str = option("ims.local", "home domain: users @domain are registered here")
    state: str = option("127.0.0.1:50051", "state service gRPC address host:port")
    state_redis: str = option(
        "",
        "Redis URL of the state store (as the state service's --redis): the sbc then runs the "
        "store's operations itself, one Redis round trip per SIP transaction instead of a gRPC "
        "hop to the state service (which still runs the timers); empty: through --state",
        parse=lambda text: text and redis_url(text),
    )
    state_timeout: float = option(1.0, "seconds before a state RPC counts as failed (then 503)")
    media: str = option(
        "", "media relay gRPC address host:port: anchor every call's RTP there (empty: no)"
    )
    media_timeout: float = option(1.0, "seconds before a media RPC counts as failed (then 503)")
    enb: str = option(
        "", "eNB agent gRPC address host:port: QCI-1 bearers for answered calls (empty: no)"
    )
    bearer_timeout: float = option(2.0, "seconds the eNB agent has to set a bearer up")
    bearer_policy: str = option(
        BEST_EFFORT,
        "when a UE's QCI-1 bearer cannot be set up on answer: best-effort (the call goes on, "
        "logged and counted) or required (the call fails: 580 to the caller, BYE to the "
        "callee); required needs --enb",
        parse=parse_policy,
    )
    grpc_listen: str = option("127.0.0.1:50061", "gRPC admin + health address (port 0: any)")
    metrics_port: int = option(0, "Prometheus endpoint port (0: off)")
    next_hop: str = option("", "host:port of the S-CSCF for other domains (empty: 404)")
    nonce_secret: str = option(
        "", "digest nonce key shared by all sbc instances (empty: random per process)"
    )
    digest_algorithms: str = option(
        "MD5",
        "digest challenges offered, most preferred first, e.g. SHA-256,MD5 (RFC 8760); MD5 "
        "alone by default: SIPp knows only MD5 and answers the first, libre/baresip refuses "
        "a 401 that names SHA-256",
    )
    nonce_lifetime: float = option(300.0, "seconds a digest nonce stays valid")
    min_expires: int = option(60, "shortest registration accepted (shorter gets 423)")
    max_expires: int = option(3600, "longest registration granted")
    default_expires: int = option(600, "registration lifetime when the UE asks none")
    overload_target_ms: float = option(100.0, "target latency of overload control, ms")
    overload_initial_rate: float = option(2000.0, "initial admitted new requests per second")
    workers: int = option(1, "worker processes sharing the SIP port (SO_REUSEPORT)")
    worker_index: int = option(0, "set by the parent for each worker (0: the only one)")
    supervise: bool = option(
        False,
        "run the workers under a supervisor even with --workers 1, so that workers can be "
        "added and removed while running (SIGTTIN/SIGTTOU to it; `volte scale sbc N`)",
    )
    instance_id: str = option("", "name of this instance (default: host-pid)")
    log_level: str = option("INFO", "log level")

    @property
    def advertised(self) -> str:
        return self.advertised_host or self.sip_listen

    @property
    def shared_port(self) -> bool:
        """Other workers may listen on the SIP port too (SO_REUSEPORT): replies to what this
        worker forwards must come to a port of its own."""
        return self.workers > 1 or self.supervise

    @property
    def digest_algorithm_list(self) -> list[str]:
        return [a.strip().upper() for a in self.digest_algorithms.split(",") if a.strip()]

    @functools.cached_property
    def instance(self) -> str:  # asked for on every dialog stored: worked out once
        return self.instance_id or _default_instance()
