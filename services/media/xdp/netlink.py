"""rtnetlink, for the two questions the fast path asks the kernel: which route, which neighbour.

`route_get` is `ip route get DST from SRC` and `neigh_get` is `ip neigh get ADDR dev IF`, as one
request and one answer on a NETLINK_ROUTE socket each: about 0.1 ms, where running `ip` costs a
few ms of fork/exec in the relay's event loop. Each call opens its own socket, so the answer
comes from the network namespace of the calling thread.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
from dataclasses import dataclass

from services.media.xdp.maps import IPAddress

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTM_GETROUTE = 26
RTM_GETNEIGH = 30
RTA_DST = 1
RTA_SRC = 2
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_VIA = 18
NDA_DST = 1
NDA_LLADDR = 2

RTN_UNICAST = 1
RTN_NAMES = {
    1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
    6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat",
}  # fmt: skip

NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_seq = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Route:
    type: int  # RTN_*
    oif: int  # egress ifindex (0: none)
    gateway: IPAddress | None
    prefsrc: IPAddress | None

    @property
    def type_name(self) -> str:
        return RTN_NAMES.get(self.type, str(self.type))


@dataclass(frozen=True, slots=True)
class Neighbour:
    state: int  # NUD_*
    lladdr: bytes | None

    @property
    def usable(self) -> bool:
        return bool(self.state & NUD_VALID) and bool(self.lladdr)


def _rtattr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _parse_attrs(buf: bytes, offset: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = buf[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def _exchange(msg_type: int, body: bytes, flags: int = 0) -> list[bytes]:
    """Send one request; the payloads of its answers (one, or a dump's until NLMSG_DONE).
    OSError(errno) on a netlink error."""
    seq = next(_seq)
    out: list[bytes] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as s:
        s.settimeout(2.0)
        header = _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0)
        s.send(header + body)
        while True:
            data = s.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size : offset + length]
                offset += (length + 3) & ~3
                if got_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return out
                if kind == NLMSG_DONE:
                    return out
                out.append(payload)
                if not flags & NLM_F_DUMP:
                    return out


def _request(msg_type: int, body: bytes) -> bytes:
    (payload,) = _exchange(msg_type, body)
    return payload


def _ip(raw: bytes | None) -> IPAddress | None:
    return None if raw is None else ipaddress.ip_address(raw)


def route_get(dst: IPAddress, src: IPAddress | None = None) -> Route:
    """The route the kernel takes for a packet to `dst` (sent from local address `src`)."""
    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    bits = 128 if dst.version == 6 else 32
    body = _RTMSG.pack(family, bits, bits if src else 0, 0, 0, 0, 0, 0, 0)
    body += _rtattr(RTA_DST, dst.packed)
    if src is not None:
        body += _rtattr(RTA_SRC, src.packed)
    payload = _request(RTM_GETROUTE, body)
    rtm_type = payload[7]
    attrs = _parse_attrs(payload, _RTMSG.size)
    if RTA_VIA in attrs:  # an IPv4 route via an IPv6 gateway (RFC 5549)
        raise OSError(0, "route via a gateway of the other address family")
    oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
    return Route(rtm_type, oif, _ip(attrs.get(RTA_GATEWAY)), _ip(attrs.get(RTA_PREFSRC)))


def neigh_get(addr: IPAddress, ifindex: int) -> Neighbour | None:
    """The neighbour entry for `addr` on interface `ifindex`, or None if there is none."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    body = _NDMSG.pack(family, ifindex, 0, 0, 0) + _rtattr(NDA_DST, addr.packed)
    try:
        payload = _request(RTM_GETNEIGH, body)
    except FileNotFoundError:  # ENOENT: no entry
        return None
    _family, _ifindex, state, _flags, _type = _NDMSG.unpack_from(payload)
    return Neighbour(state, _parse_attrs(payload, _NDMSG.size).get(NDA_LLADDR))


def addresses() -> list[tuple[int, IPAddress]]:
    """(ifindex, address) for every IPv4 and IPv6 address of this namespace (`ip addr`)."""
    found: list[tuple[int, IPAddress]] = []
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for payload in _exchange(RTM_GETADDR, body, NLM_F_DUMP):
        _family, _plen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
        attrs = _parse_attrs(payload, _IFADDRMSG.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is not None and len(raw) in (4, 16):
            found.append((index, ipaddress.ip_address(raw)))
    return found
