"""Options of `python -m services.media`: flags and VOLTE_* variables (services.common.config)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from services.common.config import (
    one_of,
    option,
    parse_ip,
    parse_ip_or_empty,
    parse_positive_float,
)
from services.media.fastpath import KINDS


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}")
    return level






def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} outside 1-65535")
    return value




def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


_fastpath = one_of(*KINDS)


@dataclass(frozen=True, kw_only=True)
class MediaConfig:
    grpc_listen: str = option("127.0.0.1:50071", "host:port of the MediaControl gRPC API")
    bind: str = option("127.0.0.1", "address the relay's RTP/RTCP sockets bind to", parse=parse_ip)
    advertised: str = option(
        "",
        "address the sbc writes into SDP (empty: --bind; on Kubernetes the Multus interface's)",
        parse=parse_ip_or_empty,
    )
    port_min: int = option(30000, "lowest relay port (RTP on even ports, RTCP on RTP + 1)",
                           parse=_port)
    port_max: int = option(39999, "highest relay port", parse=_port)
    timeout: float = option(30.0, "seconds without RTP in either direction before "
                            "MEDIA_TIMEOUT", parse=parse_positive_float)
    relatch_packets: int = option(
        5, "consecutive packets from a new source that move a latch (0: never re-latch)",
        parse=_count,
    )
    fastpath: str = option("userspace", "kernel fast path: userspace or xdp", parse=_fastpath)
    interface: str = option("", "network interface for the XDP fast path")
    metrics_port: int = option(0, "Prometheus /metrics port (0: off)")
    instance_id: str = option(f"{socket.gethostname()}-{os.getpid()}", "name of this instance")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR", parse=_log_level)

    @property
    def advertised_ip(self) -> str:
        return self.advertised or self.bind

    def problems(self) -> list[str]:
        """What is wrong across options (each option alone was checked when parsed)."""
        found = []
        if self.port_max - self.port_min < 1:
            found.append(f"--port-min {self.port_min} / --port-max {self.port_max}: "
                         "the range needs at least two ports")
        bind = ipaddress.ip_address(self.bind)
        if bind.is_unspecified and not self.advertised:
            found.append(f"--bind {self.bind} is a wildcard: set --advertised to the address "
                         "peers can reach")
        if self.advertised and ipaddress.ip_address(self.advertised).version != bind.version:
            found.append(f"--advertised {self.advertised} and --bind {self.bind} differ in "
                         "address family")
        return found
