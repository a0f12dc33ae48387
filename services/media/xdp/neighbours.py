"""Next-hop resolution for a flow: egress interface, its MAC, and the next hop's MAC.

The kernel decides, as it would for a packet the userspace relay sends: a route lookup (`ip
route get PEER from LOCAL`, over rtnetlink) gives the egress interface, the gateway if any, and
the source address it would use; the neighbour table (`ip neigh get`) gives the gateway's or
peer's MAC; SIOCGIFHWADDR gives the interface's own MAC. All of it answers for the network
namespace of the calling thread, and none of it forks a process.

By the time the media relay installs a flow, its userspace path has exchanged packets with the
peer, so the neighbour entry is normally there (REACHABLE or STALE: both have a valid MAC). If it
is not, `provoke()` sends one empty UDP datagram to the peer's discard port (9), which makes the
kernel resolve the next hop; the loader then checks again later (see XdpFastPath) rather than
waiting here.

The MAC is copied into the flow's map entry and not refreshed: if the next hop changes its MAC
mid-call (a failover without a virtual MAC), the flow must be installed again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
from dataclasses import dataclass

from services.media.xdp import netlink
from services.media.xdp.maps import IPAddress, NextHop

SIOCGIFHWADDR = 0x8927
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x3
ARPHRD_ETHER = 1


class NextHopError(RuntimeError):
    """No usable next hop for a flow: the reason is the message."""


@dataclass(frozen=True, slots=True)
class Egress:
    """The route part of a next hop: where packets to the peer leave, before the MAC is known."""

    ifname: str
    ifindex: int
    src_mac: bytes
    via: IPAddress  # the gateway, or the peer itself on a directly connected network
    prefsrc: IPAddress | None


def driver(ifname: str) -> str:
    """The interface's driver name (`ethtool -i`), "" if it does not say."""
    info = ctypes.create_string_buffer(struct.pack("=I", ETHTOOL_GDRVINFO), 196)
    ifreq = struct.pack("=16sQ16x", ifname.encode(), ctypes.addressof(info))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return ""
    return info.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")


def interface_mac(ifname: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
        except OSError as exc:
            raise NextHopError(f"{ifname}: no hardware address ({exc.strerror})") from exc
    family = struct.unpack_from("=H", res, 16)[0]
    if family != ARPHRD_ETHER:
        raise NextHopError(f"{ifname} is not an Ethernet interface (ARPHRD {family})")
    return bytes(res[18:24])


def egress(peer: IPAddress, local: IPAddress | None = None) -> Egress:
    """The interface and next-hop address the kernel would use for packets to `peer`."""
    if local is not None and local.is_unspecified:
        local = None
    try:
        try:
            route = netlink.route_get(peer, local)
        except OSError as exc:
            if local is None or exc.errno not in (errno.EINVAL, errno.EADDRNOTAVAIL):
                raise
            route = netlink.route_get(peer)  # `local` is not (or no longer) an address here
    except OSError as exc:
        raise NextHopError(f"no route to {peer}: {exc.strerror or exc}") from exc
    if route.type != netlink.RTN_UNICAST or not route.oif:
        raise NextHopError(f"route to {peer} is {route.type_name}")
    try:
        ifname = socket.if_indextoname(route.oif)
    except OSError as exc:
        raise NextHopError(f"route to {peer} leaves by ifindex {route.oif}, now gone") from exc
    return Egress(ifname, route.oif, interface_mac(ifname), route.gateway or peer, route.prefsrc)


def neighbour_mac(out: Egress) -> bytes | None:
    """The next hop's MAC if the neighbour table has a usable entry for it."""
    try:
        entry = netlink.neigh_get(out.via, out.ifindex)
    except OSError as exc:
        raise NextHopError(f"neighbour lookup for {out.via} on {out.ifname}: {exc}") from exc
    if entry is None or not entry.usable or entry.lladdr is None or len(entry.lladdr) != 6:
        return None
    return entry.lladdr


def provoke(peer: IPAddress, local: IPAddress | None = None) -> None:
    """One empty datagram to the peer's discard port: the kernel resolves the next hop for it."""
    family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            if local is not None and not local.is_unspecified:
                s.bind((str(local), 0))
            s.sendto(b"", (str(peer), 9))
        except OSError:
            pass  # resolution failing shows up as a missing neighbour entry


def next_hop(out: Egress, mac: bytes) -> NextHop:
    return NextHop(out.ifname, out.ifindex, out.src_mac, mac, out.prefsrc)
