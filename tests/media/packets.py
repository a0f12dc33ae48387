"""Build RTP and RTCP packets for tests (RFC 3550 section 5.1 and 6.4)."""

from __future__ import annotations

import struct


def rtp(
    seq: int,
    ts: int = 0,
    ssrc: int = 0x11223344,
    pt: int = 0,
    payload: bytes = b"\xd5" * 160,
    *,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | len(csrcs)
    if extension is not None:
        first |= 0x10
    if padding:
        first |= 0x20
    header = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                         ts & 0xFFFFFFFF, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    pad = b"\x00" * (padding - 1) + bytes([padding]) if padding else b""
    return header + payload + pad


def telephone_event(seq: int, ts: int, event: int, duration: int, *, end: bool = False,
                    pt: int = 101, ssrc: int = 0x11223344) -> bytes:
    """An RFC 4733 DTMF event packet."""
    body = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
    return rtp(seq, ts, ssrc, pt, body)


def rtcp_rr(ssrc: int = 0x11223344) -> bytes:
    """An empty Receiver Report (PT 201): the shortest valid RTCP packet."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def rtcp_sr(ssrc: int = 0x11223344) -> bytes:
    """A Sender Report (PT 200) with no report blocks."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0, 0, 0, 0, 0)
