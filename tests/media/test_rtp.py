"""RTP/RTCP header parsing and RFC 5761 demultiplexing (services.media.rtp)."""

from __future__ import annotations

import pytest

from services.media.rtp import Malformed, check_rtcp, looks_like_rtcp, parse_rtp
from tests.media.packets import rtcp_rr, rtcp_sr, rtp, telephone_event


def test_fixed_header_fields():
    header = parse_rtp(rtp(65535, 0xFFFFFFF0, ssrc=0xDEADBEEF, pt=8, marker=True))
    assert (header.sequence, header.timestamp, header.ssrc) == (65535, 0xFFFFFFF0, 0xDEADBEEF)
    assert (header.payload_type, header.marker) == (8, True)


def test_csrcs_extension_and_padding_are_accepted():
    packet = rtp(1, csrcs=(1, 2), extension=b"\x10\xff\x00\x00", padding=4)
    assert parse_rtp(packet).sequence == 1


def test_telephone_event_is_plain_rtp():
    header = parse_rtp(telephone_event(7, 8000, event=5, duration=400))
    assert header.payload_type == 101


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "shorter than the 12-byte header"),
        (rtp(1)[:11], "shorter"),
        (b"\x40" + rtp(1)[1:], "version 1"),
        (b"\x00" * 12, "version 0"),
        (b"\x8f" + rtp(1, payload=b"")[1:], "CSRCs"),  # 15 CSRCs announced, none there
        (b"\x90" + rtp(1, payload=b"")[1:], "extension"),  # extension header missing
        (b"\xa0" + rtp(1, payload=b"ab")[1:-1] + b"\x09", "padding count 9"),
        (b"\xa0" + rtp(1, payload=b"\x00")[1:], "padding count 0"),
    ],
)
def test_malformed_rtp(packet: bytes, reason: str):
    with pytest.raises(Malformed, match=reason):
        parse_rtp(packet)


def test_rtcp_demultiplexing_by_packet_type():
    # RFC 5761 section 4: octet 2 in 192-223 is RTCP (SR 200 .. PSFB 206 and the rest).
    assert looks_like_rtcp(rtcp_rr())
    assert looks_like_rtcp(rtcp_sr())
    assert looks_like_rtcp(b"\x81\xce\x00\x02" + b"\x00" * 8)  # PSFB (PLI), AVPF
    assert not looks_like_rtcp(rtp(1, pt=0))
    assert not looks_like_rtcp(rtp(1, pt=96, marker=True))  # 224: RTP with the marker set
    assert not looks_like_rtcp(rtp(1, pt=101))
    assert not looks_like_rtcp(b"\x80")


def test_rtcp_checks():
    check_rtcp(rtcp_rr())
    check_rtcp(rtcp_sr() + rtcp_rr())  # compound
    with pytest.raises(Malformed, match="shorter than 8"):
        check_rtcp(rtcp_rr()[:7])
    with pytest.raises(Malformed, match="version"):
        check_rtcp(b"\x00" + rtcp_rr()[1:])
    with pytest.raises(Malformed, match="packet type 96"):
        check_rtcp(rtp(1, pt=96))
    with pytest.raises(Malformed, match="length"):
        check_rtcp(rtcp_sr()[:12])
