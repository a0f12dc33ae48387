"""The `flows` map's key and value, byte for byte as relay.bpf.c declares them, and the flow a
caller hands to the fast path. Pure: no syscalls, so every rule here is tested without root.

struct flow_key   (20 bytes): addr[16] port(be16) family(u8) pad(u8)
                              (addr all zero: the wildcard entry, for a relay bound to 0.0.0.0)
struct flow_value (96 bytes): from_addr[16] src_addr[16] dst_addr[16] ifindex(u32)
                              flags(u32: FLOW_F_*) src_port dst_port from_port (be16) pad(u16)
                              src_mac[6] dst_mac[6] reserved(u32) packets(u64) bytes(u64)

The sizes are handed to clang as -DVOLTE_KEY_SIZE/-DVOLTE_VALUE_SIZE and checked there with
_Static_assert, so the C and Python layouts cannot drift apart silently.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

KEY = struct.Struct("=16s2sBx")
VALUE = struct.Struct("=16s16s16sII2s2s2sxx6s6s4xQQ")
FLOW_F_ZERO_UDP_CSUM = 1  # IPv4 only: send the UDP checksum as 0 instead of updating it
FLOW_F_MATCH_SOURCE = 2  # relay only packets from the latched sender (from_addr:from_port)
COUNTERS_OFFSET = 80  # packets, bytes: the last 16 bytes of the value
assert (KEY.size, VALUE.size, COUNTERS_OFFSET) == (20, 96, VALUE.size - 16)


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: IPAddress
    port: int

    @classmethod
    def parse(cls, value: object) -> Endpoint:
        """From an Endpoint, an (ip, port) pair, "ip:port" / "[v6]:port", or an object or
        mapping with ip/host/address and port."""
        if isinstance(value, Endpoint):
            return value
        host: object
        port: object
        if isinstance(value, tuple | list) and len(value) >= 2:
            host, port = value[0], value[1]
        elif isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if not sep:
                raise ValueError(f"endpoint {value!r} has no port")
            host = host.strip("[]")
        else:
            host = _pick(value, ("ip", "host", "address", "addr"))
            port = _pick(value, ("port",))
        ip = ipaddress.ip_address(str(host))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        port_number = int(str(port))
        if not 0 < port_number < 65536:
            raise ValueError(f"port {port_number} out of range")
        return cls(ip, port_number)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class XdpFlow:
    """One direction of one relayed stream.

    Packets arriving at `local_rx` (a relay address:port) leave from `local_tx` (the relay
    address:port the peer latched to) toward `peer` (the latched remote address:port). With
    `source`, only packets from that address:port (the sender the relay latched onto) are
    relayed; others go up to userspace, which may re-latch. A wildcard `local_rx` address
    (0.0.0.0, ::) matches the port on any local address; a wildcard `local_tx` address is
    replaced by the source address the kernel would pick for `peer`.
    """

    id: Hashable
    local_rx: Endpoint
    local_tx: Endpoint
    peer: Endpoint
    source: Endpoint | None = None

    def __post_init__(self) -> None:
        ends = (self.local_rx, self.local_tx, self.peer, self.source)
        families = {e.ip.version for e in ends if e is not None}
        if len(families) != 1:
            raise ValueError(f"flow {self.id!r} mixes IPv4 and IPv6; the fast path cannot")

    @property
    def family(self) -> int:
        return self.local_rx.ip.version


# Accepted attribute (or mapping key) names for a flow object from the media service.
FLOW_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "flow_id", "stream_id"),
    "local_rx": ("local_rx", "rx", "local_in", "ingress", "arrive"),
    "local_tx": ("local_tx", "tx", "local_out", "egress", "leave"),
    "peer": ("peer", "dest", "destination", "dst", "remote"),
    "source": ("source", "src", "latched", "sender"),  # optional
}


def _pick(obj: object, names: tuple[str, ...]) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if not isinstance(obj, Mapping) and hasattr(obj, name):
            return getattr(obj, name)
    raise TypeError(f"{type(obj).__name__} has none of {', '.join(names)}")


def coerce_flow(flow: object) -> XdpFlow:
    """An XdpFlow from whatever the media service passes (duck-typed; see FLOW_FIELDS)."""
    if isinstance(flow, XdpFlow):
        return flow
    try:
        source = _pick(flow, FLOW_FIELDS["source"])
    except TypeError:
        source = None
    return XdpFlow(
        id=_pick(flow, FLOW_FIELDS["id"]),
        local_rx=Endpoint.parse(_pick(flow, FLOW_FIELDS["local_rx"])),
        local_tx=Endpoint.parse(_pick(flow, FLOW_FIELDS["local_tx"])),
        peer=Endpoint.parse(_pick(flow, FLOW_FIELDS["peer"])),
        source=None if source is None else Endpoint.parse(source),
    )


def _addr16(ip: IPAddress) -> bytes:
    return ip.packed.ljust(16, b"\0")


def pack_key(local_rx: Endpoint) -> bytes:
    """The key for packets to `local_rx`; a wildcard address gives the all-zero wildcard key."""
    return KEY.pack(_addr16(local_rx.ip), local_rx.port.to_bytes(2, "big"), local_rx.ip.version)


def unpack_key(raw: bytes) -> Endpoint:
    addr, port, family = KEY.unpack(raw)
    ip: IPAddress = ipaddress.IPv4Address(addr[:4]) if family == 4 else ipaddress.IPv6Address(addr)
    return Endpoint(ip, int.from_bytes(port, "big"))


def parse_mac(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet MAC: {mac!r}")
    return raw


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a flow's packets leave: the egress interface and the next hop's MAC (and the
    source address the kernel would pick toward the peer, for a wildcard local_tx)."""

    ifname: str
    ifindex: int
    src_mac: bytes
    dst_mac: bytes
    prefsrc: IPAddress | None = None


def pack_value(
    flow: XdpFlow, hop: NextHop, packets: int = 0, nbytes: int = 0, flags: int = 0
) -> bytes:
    """The value for `flow` leaving through `hop`; `flow.local_tx` must be a real address.
    FLOW_F_MATCH_SOURCE is set when the flow has a source."""
    if flow.local_tx.ip.is_unspecified:
        raise ValueError(f"flow {flow.id!r}: resolve the wildcard local_tx address first")
    source = flow.source
    if source is not None:
        flags |= FLOW_F_MATCH_SOURCE
    return VALUE.pack(
        _addr16(source.ip) if source else bytes(16),
        _addr16(flow.local_tx.ip),
        _addr16(flow.peer.ip),
        hop.ifindex,
        flags,
        flow.local_tx.port.to_bytes(2, "big"),
        flow.peer.port.to_bytes(2, "big"),
        source.port.to_bytes(2, "big") if source else b"\0\0",
        hop.src_mac,
        hop.dst_mac,
        packets,
        nbytes,
    )


def unpack_counters(raw: bytes) -> tuple[int, int]:
    """(packets, UDP payload bytes) from a value."""
    packets, nbytes = struct.unpack_from("=QQ", raw, COUNTERS_OFFSET)
    return packets, nbytes
