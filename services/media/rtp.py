"""RTP and RTCP headers (RFC 3550), just enough to relay, count and demultiplex them.

The relay forwards packets unchanged; it reads the fixed RTP header for its statistics and
checks that a datagram is plausibly RTP or RTCP before relaying it. Anything else (too short,
version != 2, header fields pointing past the end) raises `Malformed` and is dropped.

Demultiplexing RTP and RTCP on one port (rtcp-mux, RFC 5761 section 4): the second octet of
an RTCP packet is its packet type, 200-204 for SR, RR, SDES, BYE and APP and 205/206 for the
AVPF feedback messages; the RFC reserves the whole range 192-223 for RTCP, which is why RTP
payload types 64-95 must not be used with rtcp-mux. We treat 192-223 as RTCP.
RFC 4733 telephone events are ordinary RTP packets (their own payload type) and need nothing.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VERSION = 2
RTP_HEADER_SIZE = 12
# RTCP fixed header plus the sender's SSRC: the shortest valid RTCP packet (an empty RR).
RTCP_MIN_SIZE = 8
RTCP_FIRST_TYPE = 192
RTCP_LAST_TYPE = 223

_RTP_HEADER = struct.Struct("!BBHII")


class Malformed(ValueError):
    """The datagram is not a well-formed RTP or RTCP packet."""


class RtpHeader(NamedTuple):  # a tuple: cheaper to build per packet than a dataclass
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int


def looks_like_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: on a multiplexed port, octet 2 in 192-223 means RTCP."""
    return len(data) >= 2 and RTCP_FIRST_TYPE <= data[1] <= RTCP_LAST_TYPE


def parse_rtp(data: bytes) -> RtpHeader:
    """The fixed header of an RTP packet, after checking the packet holds what it announces."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise Malformed(f"RTP packet of {size} bytes is shorter than the 12-byte header")
    first, second, sequence, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
    if first >> 6 != VERSION:
        raise Malformed(f"RTP version {first >> 6}, expected 2")
    header = RTP_HEADER_SIZE + 4 * (first & 0x0F)  # CSRC list
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if header + 4 > size:
            raise Malformed("RTP header extension runs past the end")
        header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
    if header > size:
        raise Malformed("RTP header (CSRCs, extension) runs past the end")
    if first & 0x20:  # padding: the last octet counts the padding octets, itself included
        padding = data[-1]
        if padding == 0 or header + padding > size:
            raise Malformed(f"RTP padding count {padding} does not fit")
    return RtpHeader(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc)


def check_rtcp(data: bytes) -> None:
    """Raise Malformed unless `data` starts with a plausible RTCP packet.

    Only the first packet of a compound packet is checked: SRTCP appends an index and an
    authentication tag after the compound packet, which a stricter walk would reject.
    """
    size = len(data)
    if size < RTCP_MIN_SIZE:
        raise Malformed(f"RTCP packet of {size} bytes is shorter than 8")
    if data[0] >> 6 != VERSION:
        raise Malformed(f"RTCP version {data[0] >> 6}, expected 2")
    if not RTCP_FIRST_TYPE <= data[1] <= RTCP_LAST_TYPE:
        raise Malformed(f"RTCP packet type {data[1]} outside 192-223")
    length = 4 * (int.from_bytes(data[2:4], "big") + 1)
    if length > size:
        raise Malformed(f"RTCP length {length} exceeds the datagram ({size} bytes)")
