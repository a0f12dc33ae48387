"""The media relay's FastPath (services.media.fastpath) on top of XdpFastPath.

`services.media.fastpath.load("xdp", options)` calls `create(options)`. A relay `Flow` is one RTP
stream in both directions; each `Direction` becomes one entry of the XDP flows map, keyed by
the relay port it arrives at and matching only the latched sender (others go up to userspace,
which may re-latch and then replaces the flow). Counters come back per direction.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

from services.media.fastpath import Counters, Direction, FastPathOptions, Flow, FlowCounters
from services.media.xdp import netlink
from services.media.xdp.loader import XdpFastPath, XdpUnavailable
from services.media.xdp.maps import Endpoint, XdpFlow

A_TO_B, B_TO_A = "a_to_b", "b_to_a"


def _direction(flow_id: int, tag: str, d: Direction) -> XdpFlow:
    return XdpFlow(
        (flow_id, tag),
        local_rx=Endpoint.parse(d.local_in),
        local_tx=Endpoint.parse(d.local_out),
        peer=Endpoint.parse(d.destination),
        source=Endpoint.parse(d.source),
    )


class XdpRelayFastPath:
    """FastPath for services.media.relay: install/remove whole flows, per-direction counters."""

    name = "xdp"

    def __init__(self, fast: XdpFastPath) -> None:
        self.fast = fast

    def install(self, flow: Flow) -> bool:
        a = _direction(flow.id, A_TO_B, flow.a_to_b)
        b = _direction(flow.id, B_TO_A, flow.b_to_a)
        if not self.fast.install(a):
            return False
        if not self.fast.install(b):
            self.fast.remove(a.id)
            return False
        return True

    def remove(self, flow: Flow) -> None:
        self.fast.remove((flow.id, A_TO_B))
        self.fast.remove((flow.id, B_TO_A))

    def counters(self) -> Mapping[int, FlowCounters]:
        per_direction: dict[int, dict[str, Counters]] = {}
        for key, (packets, nbytes) in self.fast.counters().items():
            if isinstance(key, tuple) and len(key) == 2:
                flow_id, tag = key
                per_direction.setdefault(flow_id, {})[tag] = Counters(packets, nbytes)
        return {
            flow_id: FlowCounters(c.get(A_TO_B, Counters()), c.get(B_TO_A, Counters()))
            for flow_id, c in per_direction.items()
        }

    def close(self) -> None:
        self.fast.close()


def interface_holding(address: str) -> str:
    """The interface that has `address` (the relay's --bind), for an empty --interface."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        raise XdpUnavailable(f"--bind {address} is a wildcard: set --interface for XDP")
    try:
        found = [index for index, addr in netlink.addresses() if addr == ip]
    except OSError as exc:
        raise XdpUnavailable(f"cannot list addresses: {exc}") from None
    if not found:
        raise XdpUnavailable(f"no interface has the --bind address {address}")
    return socket.if_indextoname(found[0])


def create(options: FastPathOptions) -> XdpRelayFastPath:
    """Attach to `options.interface` (or the one holding `options.bind`); XdpUnavailable with
    the reason if XDP cannot run there."""
    interface = options.interface or interface_holding(options.bind)
    return XdpRelayFastPath(XdpFastPath([interface]))
