"""Ethernet/IPv4/IPv6/UDP frames built and checked byte by byte, for BPF_PROG_RUN tests.

Checksums here are computed from scratch over the whole header/pseudo-header and payload, so
they are an independent check of the program's incremental updates.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_ARP = 0x0806
UDP = 17
TCP = 6


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def eth(dst: bytes, src: bytes, proto: int) -> bytes:
    return dst + src + struct.pack("!H", proto)


def udp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, UDP, len(segment))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(segment), UDP)
    c = checksum(pseudo + segment)
    return c or 0xFFFF


def udp4(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes,
    *,
    ttl: int = 61,
    with_udp_checksum: bool = True,
    frag: int = 0,
    proto: int = UDP,
    ident: int = 0x1234,
    tos: int = 0xB8,
) -> bytes:
    """An Ethernet + IPv4 + UDP frame with correct checksums (unless told otherwise)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if with_udp_checksum:
        segment = segment[:6] + struct.pack("!H", udp_checksum(s, d, segment)) + segment[8:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, tos, 20 + len(segment), ident, frag, ttl, proto, 0, s, d
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return eth(b"\x02" * 6, b"\x04" * 6, ETH_P_IP) + header + segment


def udp6(
    src: str, sport: int, dst: str, dport: int, payload: bytes, *, hop: int = 61, nexthdr: int = UDP
) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    segment = segment[:6] + struct.pack("!H", udp_checksum(s, d, segment)) + segment[8:]
    header = struct.pack("!IHBB16s16s", 0x60000000, len(segment), nexthdr, hop, s, d)
    return eth(b"\x02" * 6, b"\x04" * 6, ETH_P_IPV6) + header + segment


@dataclass(frozen=True)
class Parsed:
    dst_mac: bytes
    src_mac: bytes
    src: str
    sport: int
    dst: str
    dport: int
    ttl: int
    payload: bytes
    ip_checksum_ok: bool  # always True for IPv6 (no header checksum)
    udp_checksum: int
    udp_checksum_ok: bool  # a zero IPv4 checksum counts as ok (none computed)
    tos: int = 0
    ident: int = 0


def parse(frame: bytes) -> Parsed:
    (proto,) = struct.unpack_from("!H", frame, 12)
    if proto == ETH_P_IP:
        header = frame[14:34]
        ver_ihl, tos, total, ident, _frag, ttl, _p, _c, s, d = struct.unpack(
            "!BBHHHBBH4s4s", header
        )
        assert ver_ihl == 0x45
        segment = frame[34 : 14 + total]
        ip_ok = ones_sum(header) == 0xFFFF
    else:
        _vtf, plen, _nh, ttl, s, d = struct.unpack_from("!IHBB16s16s", frame, 14)
        segment = frame[54 : 54 + plen]
        ip_ok, tos, ident = True, 0, 0
    sport, dport, length, check = struct.unpack_from("!HHHH", segment)
    assert length == len(segment)
    zeroed = segment[:6] + b"\0\0" + segment[8:]
    ok = (check == 0 and len(s) == 4) or check == udp_checksum(s, d, zeroed)
    return Parsed(
        frame[0:6],
        frame[6:12],
        str(ipaddress.ip_address(s)),
        sport,
        str(ipaddress.ip_address(d)),
        dport,
        ttl,
        segment[8:],
        ip_ok,
        check,
        ok,
        tos,
        ident,
    )
