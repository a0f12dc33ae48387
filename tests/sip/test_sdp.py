"""SDP core (services/sip/sdp.py): parsing, accessors, anchoring for the media relay.

Realistic bodies (VoLTE AMR-WB with preconditions, WebRTC with ICE, IPv6, audio+video, holds,
rtcp-mux, RFC 3605 a=rtcp), byte-exact round trips, anchor() results line by line, malformed
input (always ParseError with status 488), and property tests (hypothesis).
"""

from __future__ import annotations

import ipaddress
from contextlib import suppress
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.sip.errors import ParseError
from services.sip.sdp import (
    STATIC_PAYLOAD_TYPES,
    Connection,
    Direction,
    Origin,
    RelayEndpoint,
    Rtcp,
    RtpMap,
    SdpLimits,
    SessionDescription,
    TransportAddress,
    anchor,
    continue_origin,
    is_hold,
    parse_sdp,
    streams,
)


def sdp(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def text_lines(desc: SessionDescription) -> list[str]:
    return desc.serialize().decode().split("\r\n")[:-1]


def relay(
    index: int,
    ip: str,
    port: int,
    rtcp_port: int | None = None,
    rtcp_ip: str | None = None,
    *,
    mux: bool = False,
) -> RelayEndpoint:
    rtp = TransportAddress(ip, port)
    if mux:
        return RelayEndpoint(index, rtp, rtp)
    rtcp = TransportAddress(rtcp_ip or ip, port + 1 if rtcp_port is None else rtcp_port)
    return RelayEndpoint(index, rtp, rtcp)


# -- realistic bodies -------------------------------------------------------------------------
VOLTE_OFFER = sdp(
    "v=0",
    "o=SAMSUNG-IMS-UE 1697543210 0 IN IP4 10.45.0.7",
    "s=-",
    "c=IN IP4 10.45.0.7",
    "t=0 0",
    "m=audio 31000 RTP/AVP 116 107 118 96 111 110",
    "b=AS:41",
    "b=RS:512",
    "b=RR:1537",
    "a=rtpmap:116 AMR-WB/16000/1",
    "a=fmtp:116 mode-change-capability=2;max-red=0",
    "a=rtpmap:107 AMR-WB/16000/1",
    "a=fmtp:107 octet-align=1;mode-change-capability=2;max-red=0",
    "a=rtpmap:118 AMR/8000/1",
    "a=fmtp:118 mode-change-capability=2;max-red=0",
    "a=rtpmap:96 AMR/8000/1",
    "a=fmtp:96 octet-align=1;mode-change-capability=2;max-red=0",
    "a=rtpmap:111 telephone-event/16000",
    "a=fmtp:111 0-15",
    "a=rtpmap:110 telephone-event/8000",
    "a=fmtp:110 0-15",
    "a=ptime:20",
    "a=maxptime:240",
    "a=curr:qos local none",
    "a=curr:qos remote none",
    "a=des:qos mandatory local sendrecv",
    "a=des:qos optional remote sendrecv",
    "a=sendrecv",
)

WEBRTC_OFFER = sdp(
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=ice-options:trickle",
    "a=msid-semantic: WMS 8b8c3a4e",
    "m=audio 54400 UDP/TLS/RTP/SAVPF 111 9 0 8 13 110",
    "c=IN IP4 198.51.100.7",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1467250027 1 udp 2122260223 192.168.1.20 54400 typ host generation 0",
    "a=candidate:435653019 1 udp 1845501695 198.51.100.7 54400 typ srflx raddr 192.168.1.20"
    " rport 54400 generation 0",
    "a=candidate:1853887674 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active generation 0",
    "a=end-of-candidates",
    "a=ice-ufrag:F7gI",
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD"
    ":34:8E:5E:EA:6F:AF:52:CE:E6:0F",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=sendrecv",
    "a=msid:8b8c3a4e 5e9f1f2e-audio",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=ssrc:1001 cname:4TOk42mSjXCkVIa6",
)

# Trickle ICE before any candidate: 0.0.0.0 and port 9 are placeholders (RFC 8840), not hold.
TRICKLE_OFFER = sdp(
    "v=0",
    "o=- 8374518837 1 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "a=ice-ufrag:Yw3k",
    "a=ice-pwd:4mJ0CkqIa9XQy0fM3Hqt9bTf",
    "a=ice-options:trickle ice2",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
)

IPV6_OFFER = sdp(
    "v=0",
    "o=- 1697543210 1 IN IP6 2001:db8:10:2::7",
    "s=-",
    "c=IN IP6 2001:db8:10:2::7",
    "t=0 0",
    "m=audio 31002 RTP/AVP 104 8 105",
    "b=AS:49",
    "a=rtpmap:104 EVS/16000",
    "a=fmtp:104 br=5.9-24.4;bw=nb-swb",
    "a=rtpmap:105 telephone-event/16000",
    "a=ptime:20",
    "a=sendrecv",
)

AUDIO_VIDEO_OFFER = sdp(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 192.0.2.10",
    "s=Video call",
    "i=Audio and video",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "a=tool:volte-test 1.0",
    "m=audio 49170 RTP/AVP 0 8 9 18 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "m=video 51372 RTP/AVP 99 31",
    "i=Main camera",
    "b=AS:1500",
    "a=rtpmap:99 H264/90000",
    "a=fmtp:99 profile-level-id=42e01f;packetization-mode=1",
    "a=framerate:30",
)

HOLD_REOFFER = sdp(
    "v=0",
    "o=SAMSUNG-IMS-UE 1697543210 1 IN IP4 10.45.0.7",
    "s=-",
    "c=IN IP4 10.45.0.7",
    "t=0 0",
    "m=audio 31000 RTP/AVP 116 111",
    "a=rtpmap:116 AMR-WB/16000/1",
    "a=rtpmap:111 telephone-event/16000",
    "a=curr:qos local sendrecv",
    "a=curr:qos remote sendrecv",
    "a=des:qos mandatory local sendrecv",
    "a=des:qos mandatory remote sendrecv",
    "a=sendonly",
)

RFC2543_HOLD = sdp(
    "v=0",
    "o=bob 2808844564 2808844565 IN IP4 192.0.2.20",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 49172 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)

RTCP_WITH_ADDRESS = sdp(  # RFC 3605 section 2.1, with documentation addresses
    "v=0",
    "o=- 20518 0 IN IP4 192.0.2.30",
    "s=-",
    "c=IN IP4 192.0.2.30",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0",
    "a=rtcp:53020 IN IP4 198.51.100.31",
)

# An answer that accepts audio (muxed) and rejects video; no session-level c=.
WITH_DISABLED_VIDEO = sdp(
    "v=0",
    "o=- 5 6 IN IP4 192.0.2.40",
    "s=-",
    "t=0 0",
    "m=audio 50000 RTP/AVP 8",
    "c=IN IP4 192.0.2.40",
    "a=rtcp-mux",
    "a=ice-ufrag:abcd",
    "m=video 0 RTP/AVP 99",
    "c=IN IP4 192.0.2.40",
    "a=rtpmap:99 H264/90000",
    "a=candidate:1 1 udp 1 192.0.2.40 50002 typ host",
)

# Lines this stack does not know (y= from GB28181, vendor attributes, UTF-8 text) pass through.
UNKNOWN_LINES = sdp(
    "v=0",
    "o=- 77 77 IN IP4 192.0.2.50",
    "s=Café ☕ session",
    "u=http://www.example.com/seminars/sdp.pdf",
    "e=j.doe@example.com (Jane Doe)",
    "p=+1 617 555-6011",
    "c=IN IP4 192.0.2.50",
    "b=CT:128",
    "t=2873397496 2873404696",
    "r=7d 1h 0 25h",
    "z=2882844526 -1h 2898848070 0",
    "k=prompt",
    "a=X-vendor:  two  spaces  kept",
    "a=recvonly",
    "m=audio 49170 RTP/AVP 0",
    "y=0100000001",
    "a=X-nat:0",
    "a=3gpp_sync_info:No Sync",
)

SAMPLES = {
    "volte": VOLTE_OFFER,
    "webrtc": WEBRTC_OFFER,
    "trickle": TRICKLE_OFFER,
    "ipv6": IPV6_OFFER,
    "audio_video": AUDIO_VIDEO_OFFER,
    "hold": HOLD_REOFFER,
    "rfc2543_hold": RFC2543_HOLD,
    "rtcp_address": RTCP_WITH_ADDRESS,
    "disabled_video": WITH_DISABLED_VIDEO,
    "unknown_lines": UNKNOWN_LINES,
}


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("body", SAMPLES.values(), ids=SAMPLES.keys())
def test_round_trip_is_byte_exact(body: bytes) -> None:
    desc = parse_sdp(body)
    assert desc.serialize() == body
    assert bytes(desc) == body
    assert parse_sdp(desc.serialize()) == desc


@pytest.mark.parametrize("body", SAMPLES.values(), ids=SAMPLES.keys())
def test_lf_only_input_is_accepted_and_written_with_crlf(body: bytes) -> None:
    desc = parse_sdp(body.replace(b"\r\n", b"\n"))
    assert desc == parse_sdp(body)
    assert desc.serialize() == body


def test_unknown_lines_and_attributes_are_kept_as_written() -> None:
    desc = parse_sdp(UNKNOWN_LINES)
    assert desc.session_lines[2].value == "Café ☕ session"
    assert desc.attributes("X-vendor") == ("  two  spaces  kept",)
    section = desc.media_sections[0]
    assert [line.render() for line in section.lines[1:]] == [
        "y=0100000001",
        "a=X-nat:0",
        "a=3gpp_sync_info:No Sync",
    ]
    assert desc.direction_for(0) is Direction.RECVONLY  # session-level a=recvonly


# -- accessors --------------------------------------------------------------------------------
def test_volte_amr_wb_offer() -> None:
    desc = parse_sdp(VOLTE_OFFER)
    assert desc.origin == Origin("SAMSUNG-IMS-UE", "1697543210", 0, "IN", "IP4", "10.45.0.7")
    assert desc.connection == Connection("IP4", "10.45.0.7")
    (audio,) = desc.media_sections
    assert (audio.media, audio.port, audio.port_count, audio.proto) == (
        "audio",
        31000,
        1,
        "RTP/AVP",
    )
    assert audio.formats == ("116", "107", "118", "96", "111", "110")
    assert audio.payload_types == (116, 107, 118, 96, 111, 110)
    assert audio.connection is None  # inherits the session c=
    assert desc.connection_for(0) == Connection("IP4", "10.45.0.7")
    assert audio.rtpmap[116] == RtpMap(116, "AMR-WB", 16000, 1)
    assert audio.rtpmap[111] == RtpMap(111, "telephone-event", 16000, None)
    # Preconditions (RFC 3312) are opaque to us but reachable.
    assert audio.attributes("curr") == ("qos local none", "qos remote none")
    assert audio.attributes("des") == (
        "qos mandatory local sendrecv",
        "qos optional remote sendrecv",
    )
    assert audio.direction is Direction.SENDRECV
    assert audio.rtcp is None and not audio.rtcp_mux
    assert not audio.ice.in_use

    (stream,) = streams(desc)
    assert stream.index == 0 and stream.media == "audio" and not stream.disabled
    assert stream.rtp == TransportAddress("10.45.0.7", 31000)
    assert stream.rtcp == TransportAddress("10.45.0.7", 31001)  # RTP + 1
    assert not stream.rtcp_mux
    assert stream.payload_types == (116, 107, 118, 96, 111, 110)
    assert stream.clock_rates == {
        116: 16000,
        107: 16000,
        118: 8000,
        96: 8000,
        111: 16000,
        110: 8000,
    }
    assert stream.direction is Direction.SENDRECV
    assert not is_hold(desc)


def test_webrtc_offer_ice_rtcp_mux_and_codecs() -> None:
    desc = parse_sdp(WEBRTC_OFFER)
    audio = desc.media_sections[0]
    assert audio.proto == "UDP/TLS/RTP/SAVPF"
    assert audio.connection == Connection("IP4", "198.51.100.7")
    assert audio.rtcp == Rtcp(9, Connection("IP4", "0.0.0.0"))
    assert audio.rtcp_mux
    ice = desc.ice_for(0)
    assert ice.ufrag == "F7gI" and ice.pwd == "x9cml/YzichV2+XlhiMu8g"
    assert ice.options == ("trickle",)  # from session level
    assert len(ice.candidates) == 3
    assert ice.candidates[1].startswith("435653019 1 udp 1845501695 198.51.100.7 54400 typ srflx")
    assert ice.end_of_candidates and not ice.lite and ice.in_use
    assert audio.ice.options == ()  # media level alone has none
    assert desc.attributes("group") == ("BUNDLE 0",)

    (stream,) = streams(desc)
    assert stream.rtp == TransportAddress("198.51.100.7", 54400)
    assert stream.rtcp == stream.rtp  # muxed: a=rtcp:9 is only a fallback
    assert stream.rtcp_mux
    assert stream.codecs[0] == RtpMap(111, "opus", 48000, 2)
    assert stream.clock_rates == {111: 48000, 9: 8000, 0: 8000, 8: 8000, 13: 8000, 110: 48000}


def test_trickle_placeholder_address_is_not_a_hold() -> None:
    desc = parse_sdp(TRICKLE_OFFER)
    assert desc.connection_for(0) == Connection("IP4", "0.0.0.0")
    assert desc.ice_for(0).options == ("trickle", "ice2")
    assert desc.direction_for(0) is Direction.SENDRECV
    assert not is_hold(desc)


def test_ipv6_offer() -> None:
    desc = parse_sdp(IPV6_OFFER)
    assert desc.origin.address_type == "IP6"
    assert desc.connection == Connection("IP6", "2001:db8:10:2::7")
    (stream,) = streams(desc)
    assert stream.rtp == TransportAddress("2001:db8:10:2::7", 31002)
    assert stream.rtcp == TransportAddress("2001:db8:10:2::7", 31003)
    assert stream.clock_rates == {104: 16000, 8: 8000, 105: 16000}


def test_audio_and_video_with_static_payload_types() -> None:
    desc = parse_sdp(AUDIO_VIDEO_OFFER)
    audio, video = streams(desc)
    assert (audio.index, audio.media, audio.rtp.port) == (0, "audio", 49170)
    assert [(c.payload_type, c.encoding, c.clock_rate) for c in audio.codecs] == [
        (0, "PCMU", 8000),
        (8, "PCMA", 8000),
        (9, "G722", 8000),  # RFC 3551: RTP clock 8000 although sampled at 16 kHz
        (18, "G729", 8000),
        (101, "telephone-event", 8000),
    ]
    assert (video.index, video.media, video.rtp, video.rtcp) == (
        1,
        "video",
        TransportAddress("192.0.2.10", 51372),
        TransportAddress("192.0.2.10", 51373),
    )
    assert video.clock_rates == {99: 90000, 31: 90000}
    assert desc.media_sections[1].attributes("framerate") == ("30",)
    assert STATIC_PAYLOAD_TYPES[31].encoding == "H261"


def test_dynamic_payload_type_without_rtpmap_has_no_clock_rate() -> None:
    desc = parse_sdp(
        sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0")
        + sdp("m=audio 4000 RTP/AVP 96 0")
    )
    (stream,) = streams(desc)
    assert stream.payload_types == (96, 0) and stream.clock_rates == {0: 8000}


def test_hold_reoffer_with_sendonly() -> None:
    desc = parse_sdp(HOLD_REOFFER)
    assert desc.origin.session_version == 1
    assert desc.direction_for(0) is Direction.SENDONLY
    assert streams(desc)[0].direction is Direction.SENDONLY
    assert is_hold(desc)
    inactive = parse_sdp(HOLD_REOFFER.replace(b"a=sendonly", b"a=inactive"))
    assert is_hold(inactive)
    # recvonly is what the held side answers, not a hold.
    assert not is_hold(parse_sdp(HOLD_REOFFER.replace(b"a=sendonly", b"a=recvonly")))


def test_rfc2543_hold_with_zero_address() -> None:
    desc = parse_sdp(RFC2543_HOLD)
    assert desc.connection_for(0) == Connection("IP4", "0.0.0.0")
    assert desc.media_sections[0].direction is None
    assert desc.direction_for(0) is Direction.SENDONLY  # sendrecv minus receiving
    assert is_hold(desc)
    recvonly = parse_sdp(RFC2543_HOLD + b"a=recvonly\r\n")
    assert recvonly.direction_for(0) is Direction.INACTIVE
    assert streams(desc)[0].rtp == TransportAddress("0.0.0.0", 49172)


def test_media_level_direction_overrides_session_level() -> None:
    body = sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0") + sdp(
        "a=sendonly", "m=audio 4000 RTP/AVP 0", "m=video 4002 RTP/AVP 31", "a=sendrecv"
    )
    desc = parse_sdp(body)
    assert desc.direction is Direction.SENDONLY
    assert [s.direction for s in streams(desc)] == [Direction.SENDONLY, Direction.SENDRECV]
    assert not is_hold(desc)  # video still flows both ways


def test_rtcp_attribute_with_address() -> None:
    desc = parse_sdp(RTCP_WITH_ADDRESS)
    assert desc.media_sections[0].rtcp == Rtcp(53020, Connection("IP4", "198.51.100.31"))
    (stream,) = streams(desc)
    assert stream.rtp == TransportAddress("192.0.2.30", 49170)
    assert stream.rtcp == TransportAddress("198.51.100.31", 53020)
    port_only = parse_sdp(RTCP_WITH_ADDRESS.replace(b" IN IP4 198.51.100.31", b""))
    assert streams(port_only)[0].rtcp == TransportAddress("192.0.2.30", 53020)


def test_disabled_stream() -> None:
    desc = parse_sdp(WITH_DISABLED_VIDEO)
    audio, video = streams(desc)
    assert not audio.disabled and audio.rtcp_mux and audio.rtcp == audio.rtp
    assert video.disabled and video.rtp == TransportAddress("192.0.2.40", 0)
    assert video.rtcp.port == 0
    assert not is_hold(parse_sdp(sdp(*_session("192.0.2.1"), "m=audio 0 RTP/AVP 0")))


def test_disabled_stream_may_lack_formats_and_connection() -> None:
    desc = parse_sdp(sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", "m=video 0 RTP/AVP"))
    (video,) = streams(desc)
    assert video.disabled and video.rtp == TransportAddress("", 0) and video.payload_types == ()


def test_non_rtp_formats_are_tokens() -> None:
    desc = parse_sdp(
        sdp(*_session("192.0.2.1"), "m=message 2855 TCP/TLS/MSRP *", "a=accept-types:text/plain")
    )
    section = desc.media_sections[0]
    assert section.formats == ("*",) and section.payload_types == () and section.codecs == ()


def test_layered_multicast_connection() -> None:
    desc = parse_sdp(
        sdp(*_session("192.0.2.1"), "m=video 51372/2 RTP/AVP 99", "c=IN IP4 233.252.0.1/127/2")
    )
    section = desc.media_sections[0]
    assert section.port_count == 2
    assert section.connection == Connection("IP4", "233.252.0.1", "/127/2")


# -- anchoring --------------------------------------------------------------------------------
def _session(ip: str) -> tuple[str, ...]:
    return ("v=0", "o=- 1 1 IN IP4 " + ip, "s=-", "c=IN IP4 " + ip, "t=0 0")


def test_anchor_volte_offer_line_by_line() -> None:
    desc = parse_sdp(VOLTE_OFFER)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40000)])
    expected = text_lines(desc)
    expected[1] = "o=SAMSUNG-IMS-UE 1697543210 1 IN IP4 10.45.0.7"  # version 0 -> 1
    expected[3] = "c=IN IP4 203.0.113.10"
    expected[5] = "m=audio 40000 RTP/AVP 116 107 118 96 111 110"
    assert text_lines(anchored) == expected  # preconditions, fmtp, b= all intact
    (stream,) = streams(anchored)
    assert stream.rtp == TransportAddress("203.0.113.10", 40000)
    assert stream.rtcp == TransportAddress("203.0.113.10", 40001)


def test_anchor_webrtc_offer_removes_ice_and_keeps_the_rest() -> None:
    desc = parse_sdp(WEBRTC_OFFER)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40002, mux=True)])
    assert text_lines(anchored) == [
        "v=0",
        "o=- 4611731400430051336 3 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS 8b8c3a4e",
        "m=audio 40002 UDP/TLS/RTP/SAVPF 111 9 0 8 13 110",
        "c=IN IP4 203.0.113.10",
        "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD"
        ":34:8E:5E:EA:6F:AF:52:CE:E6:0F",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=msid:8b8c3a4e 5e9f1f2e-audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=ssrc:1001 cname:4TOk42mSjXCkVIa6",
    ]
    assert not anchored.ice_for(0).in_use and anchored.ice.options == ()


def test_anchor_trickle_placeholder_gets_the_relay_address() -> None:
    anchored = anchor(parse_sdp(TRICKLE_OFFER), [relay(0, "203.0.113.10", 40004, mux=True)])
    assert text_lines(anchored) == [
        "v=0",
        "o=- 8374518837 2 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 203.0.113.10",
        "t=0 0",
        "m=audio 40004 UDP/TLS/RTP/SAVPF 111",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
    ]


def test_anchor_ipv4_offer_to_ipv6_relay() -> None:
    anchored = anchor(parse_sdp(VOLTE_OFFER), [relay(0, "2001:DB8:0:0::10", 40000)])
    assert text_lines(anchored)[3] == "c=IN IP6 2001:db8::10"
    assert streams(anchored)[0].rtp == TransportAddress("2001:db8::10", 40000)


def test_anchor_ipv6_offer() -> None:
    anchored = anchor(parse_sdp(IPV6_OFFER), [relay(0, "2001:db8:ff::1", 40010)])
    lines = text_lines(anchored)
    assert lines[1] == "o=- 1697543210 2 IN IP6 2001:db8:10:2::7"
    assert lines[3] == "c=IN IP6 2001:db8:ff::1"
    assert lines[5] == "m=audio 40010 RTP/AVP 104 8 105"


def test_anchor_mixed_families_gives_the_odd_stream_its_own_connection() -> None:
    desc = parse_sdp(AUDIO_VIDEO_OFFER)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40000), relay(1, "2001:db8::10", 40002)])
    assert text_lines(anchored) == [
        "v=0",
        "o=alice 2890844526 2890844527 IN IP4 192.0.2.10",
        "s=Video call",
        "i=Audio and video",
        "c=IN IP4 203.0.113.10",  # the first stream relying on the session c=
        "t=0 0",
        "a=tool:volte-test 1.0",
        "m=audio 40000 RTP/AVP 0 8 9 18 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "m=video 40002 RTP/AVP 99 31",
        "i=Main camera",
        "c=IN IP6 2001:db8::10",  # after m= and i=, as RFC 8866 orders them
        "b=AS:1500",
        "a=rtpmap:99 H264/90000",
        "a=fmtp:99 profile-level-id=42e01f;packetization-mode=1",
        "a=framerate:30",
    ]
    audio, video = streams(anchored)
    assert audio.rtp == TransportAddress("203.0.113.10", 40000)
    assert video.rtp == TransportAddress("2001:db8::10", 40002)
    assert video.rtcp == TransportAddress("2001:db8::10", 40003)


def test_anchor_same_relay_address_for_all_streams_keeps_one_session_connection() -> None:
    desc = parse_sdp(AUDIO_VIDEO_OFFER)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40000), relay(1, "203.0.113.10", 40002)])
    assert sum(line.kind == "c" for line in anchored.lines()) == 1


def test_anchor_rewrites_media_level_connection_and_hides_the_session_one() -> None:
    body = sdp(*_session("192.0.2.1"), "m=audio 4000 RTP/AVP 0", "c=IN IP4 192.0.2.2")
    anchored = anchor(parse_sdp(body), [relay(0, "203.0.113.10", 40000)])
    assert [line.render() for line in anchored.lines() if line.kind == "c"] == [
        "c=IN IP4 203.0.113.10",
        "c=IN IP4 203.0.113.10",
    ]


def test_anchor_rtcp_port_not_rtp_plus_one_adds_a_rtcp() -> None:
    desc = parse_sdp(VOLTE_OFFER)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40000, rtcp_port=40100)])
    assert text_lines(anchored)[-1] == "a=rtcp:40100"
    assert streams(anchored)[0].rtcp == TransportAddress("203.0.113.10", 40100)
    other_ip = anchor(desc, [relay(0, "203.0.113.10", 40000, 40001, "2001:db8::11")])
    assert text_lines(other_ip)[-1] == "a=rtcp:40001 IN IP6 2001:db8::11"
    assert streams(other_ip)[0].rtcp == TransportAddress("2001:db8::11", 40001)


def test_anchor_rewrites_an_existing_a_rtcp_in_place() -> None:
    desc = parse_sdp(RTCP_WITH_ADDRESS)
    anchored = anchor(desc, [relay(0, "203.0.113.10", 40000)])
    assert text_lines(anchored)[-2:] == ["m=audio 40000 RTP/AVP 0", "a=rtcp:40001"]
    moved = anchor(desc, [relay(0, "203.0.113.10", 40000, 40200, "203.0.113.11")])
    assert text_lines(moved)[-1] == "a=rtcp:40200 IN IP4 203.0.113.11"


def test_anchor_mux_removes_a_rtcp_and_adds_rtcp_mux() -> None:
    anchored = anchor(parse_sdp(RTCP_WITH_ADDRESS), [relay(0, "203.0.113.10", 40000, mux=True)])
    assert text_lines(anchored)[-2:] == ["m=audio 40000 RTP/AVP 0", "a=rtcp-mux"]
    (stream,) = streams(anchored)
    assert stream.rtcp_mux and stream.rtcp == stream.rtp


def test_anchor_without_mux_at_the_relay_removes_rtcp_mux() -> None:
    anchored = anchor(parse_sdp(WITH_DISABLED_VIDEO), [relay(0, "203.0.113.10", 40000)])
    assert not anchored.media_sections[0].rtcp_mux
    assert streams(anchored)[0].rtcp == TransportAddress("203.0.113.10", 40001)


def test_anchor_leaves_disabled_streams_untouched() -> None:
    desc = parse_sdp(WITH_DISABLED_VIDEO)
    relays = [relay(0, "203.0.113.10", 40000, mux=True), relay(1, "203.0.113.10", 40002)]
    anchored = anchor(desc, relays)
    assert text_lines(anchored) == [
        "v=0",
        "o=- 5 7 IN IP4 192.0.2.40",
        "s=-",
        "t=0 0",
        "m=audio 40000 RTP/AVP 8",
        "c=IN IP4 203.0.113.10",
        "a=rtcp-mux",
        "m=video 0 RTP/AVP 99",  # port 0 stays, and so does the rest of the section
        "c=IN IP4 192.0.2.40",
        "a=rtpmap:99 H264/90000",
        "a=candidate:1 1 udp 1 192.0.2.40 50002 typ host",
    ]
    assert anchored.media_sections[1] == desc.media_sections[1]
    # No relay is needed for a disabled stream.
    assert anchor(desc, relays[:1]) == anchored


def test_anchor_keeps_the_rfc2543_hold_marker_and_direction_attributes() -> None:
    anchored = anchor(parse_sdp(RFC2543_HOLD), [relay(0, "203.0.113.10", 40000)])
    assert text_lines(anchored) == [
        "v=0",
        "o=bob 2808844564 2808844566 IN IP4 192.0.2.20",
        "s=-",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ]
    assert is_hold(anchored)
    held = anchor(parse_sdp(HOLD_REOFFER), [relay(0, "203.0.113.10", 40000)])
    assert text_lines(held)[-1] == "a=sendonly" and is_hold(held)


def test_anchor_is_idempotent_and_bumps_the_version_once() -> None:
    for body in SAMPLES.values():
        desc = parse_sdp(body)
        relays = [relay(i, "203.0.113.10", 40000 + 2 * i) for i in range(len(desc.media_sections))]
        once = anchor(desc, relays)
        assert once.origin.session_version == desc.origin.session_version + 1
        assert anchor(once, relays) == once
        assert anchor(desc, relays) == once  # deterministic


def test_anchor_of_an_already_anchored_body_keeps_the_version() -> None:
    body = sdp(*_session("203.0.113.10"), "m=audio 40000 RTP/AVP 0")
    desc = parse_sdp(body)
    assert anchor(desc, [relay(0, "203.0.113.10", 40000)]) is desc


def test_anchor_relay_errors() -> None:
    desc = parse_sdp(AUDIO_VIDEO_OFFER)
    with pytest.raises(ValueError, match="no relay endpoint for m= line"):
        anchor(desc, [relay(0, "203.0.113.10", 40000)])
    with pytest.raises(ValueError, match="two relay endpoints"):
        anchor(desc, [relay(0, "203.0.113.10", 40000), relay(0, "203.0.113.10", 40002)])
    with pytest.raises(ValueError, match="does not exist"):
        anchor(desc, [relay(2, "203.0.113.10", 40000)])
    with pytest.raises(ValueError):
        relay(0, "relay.example.com", 40000)
    with pytest.raises(ValueError):
        relay(0, "203.0.113.10", 0)
    with pytest.raises(ValueError, match="zone id"):
        relay(0, "fe80::1%eth0", 40000)


def test_continue_origin_numbers_a_leg() -> None:
    first = anchor(parse_sdp(VOLTE_OFFER), [relay(0, "203.0.113.10", 40000)])
    assert continue_origin(None, first) is first
    # The UE refreshes the session without changes: same SDP, same version.
    again = anchor(parse_sdp(VOLTE_OFFER), [relay(0, "203.0.113.10", 40000)])
    assert continue_origin(first, again) == first
    # Same UE body, but the relay moved: the leg must see a new version.
    moved = anchor(parse_sdp(VOLTE_OFFER), [relay(0, "203.0.113.10", 40100)])
    sent = continue_origin(first, moved)
    assert sent.origin == replace(first.origin, session_version=first.origin.session_version + 1)
    # A new o= from the UE (another sess-id) never reaches the leg: its origin is kept.
    other_ue = parse_sdp(VOLTE_OFFER.replace(b"1697543210 0", b"99 7"))
    assert continue_origin(first, other_ue).origin.session_id == "1697543210"


# -- malformed input --------------------------------------------------------------------------
GOOD_HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0")

MALFORMED = {
    "empty": (b"", "empty SDP body"),
    "missing v=": (sdp(*GOOD_HEAD[1:], "m=audio 4000 RTP/AVP 0"), "must start with v=0"),
    "v=1": (sdp("v=1", *GOOD_HEAD[1:]), "must start with v=0"),
    "o= not second": (sdp("v=0", "s=-", *GOOD_HEAD[1:]), "o= must follow v="),
    "o= with 5 fields": (sdp("v=0", "o=- 1 IN IP4 192.0.2.1", *GOOD_HEAD[2:]), "o= needs 6 fields"),
    "o= version not numeric": (
        sdp("v=0", "o=- 1 x IN IP4 192.0.2.1", *GOOD_HEAD[2:]),
        "bad o= session version",
    ),
    "two o=": (sdp(*GOOD_HEAD, "o=- 1 1 IN IP4 192.0.2.1"), "more than one o= line"),
    "missing s=": (sdp(*GOOD_HEAD[:2], *GOOD_HEAD[3:]), "missing s= line"),
    "missing t=": (sdp(*GOOD_HEAD[:4], "m=audio 4000 RTP/AVP 0"), "missing t= line"),
    "bad t=": (sdp(*GOOD_HEAD[:4], "t=now later"), "bad t= line"),
    "bad c= address": (sdp(*GOOD_HEAD[:3], "c=IN IP4 999.0.2.1", "t=0 0"), "not IP4"),
    "c= IPv6 under IP4": (sdp(*GOOD_HEAD[:3], "c=IN IP4 2001:db8::1", "t=0 0"), "not IP4"),
    "c= host name": (sdp(*GOOD_HEAD[:3], "c=IN IP4 media.example.com", "t=0 0"), "not IP4"),
    "c= IPv4 under IP6": (sdp(*GOOD_HEAD[:3], "c=IN IP6 192.0.2.1", "t=0 0"), "not IP6"),
    "c= zone id": (sdp(*GOOD_HEAD[:3], "c=IN IP6 fe80::1%eth0", "t=0 0"), "not IP6"),
    "c= leading zeros": (sdp(*GOOD_HEAD[:3], "c=IN IP4 192.000.2.1", "t=0 0"), "not IP4"),
    "c= network type": (sdp(*GOOD_HEAD[:3], "c=ATM NSAP 47.0005", "t=0 0"), "not IN"),
    "c= missing address": (sdp(*GOOD_HEAD[:3], "c=IN IP4", "t=0 0"), "c= needs"),
    "c= bad ttl": (sdp(*GOOD_HEAD[:3], "c=IN IP4 233.252.0.1/x", "t=0 0"), "multicast suffix"),
    "two session c=": (sdp(*GOOD_HEAD, "c=IN IP4 192.0.2.1"), "more than one session-level c="),
    "m= port too big": (sdp(*GOOD_HEAD, "m=audio 70000 RTP/AVP 0"), "bad m= port"),
    "m= port not a number": (sdp(*GOOD_HEAD, "m=audio abc RTP/AVP 0"), "bad m= port"),
    "m= negative port": (sdp(*GOOD_HEAD, "m=audio -1 RTP/AVP 0"), "bad m= port"),
    "m= non-ASCII digits": (sdp(*GOOD_HEAD, "m=audio ٤٠٠٠ RTP/AVP 0"), "bad m= port"),
    "m= port count 0": (sdp(*GOOD_HEAD, "m=audio 4000/0 RTP/AVP 0"), "bad m= port"),
    "m= too few fields": (sdp(*GOOD_HEAD, "m=audio 4000"), "m= needs"),
    "m= without formats": (sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP"), "without formats"),
    "m= payload type 128": (sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0 128"), "bad RTP payload type"),
    "m= payload type name": (sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP PCMU"), "bad RTP payload type"),
    "m= without address": (
        sdp(*GOOD_HEAD[:3], "t=0 0", "m=audio 4000 RTP/AVP 0"),
        "no connection address",
    ),
    "m= port 65535": (sdp(*GOOD_HEAD, "m=audio 65535 RTP/AVP 0"), "no port for RTCP"),
    "t= in media section": (sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "t=0 0"), "inside a media"),
    "bad rtpmap": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 96", "a=rtpmap:96 AMR-WB"),
        "bad a=rtpmap",
    ),
    "rtpmap clock 0": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 96", "a=rtpmap:96 X/0"),
        "bad a=rtpmap",
    ),
    "two rtpmaps": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 96", "a=rtpmap:96 AMR/8000", "a=rtpmap:96 AMR/16000"),
        "two a=rtpmap lines for payload type 96",
    ),
    "bad rtcp": (sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:port"), "bad a=rtcp"),
    "rtcp bad address": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:4001 IN IP4 192.0.2"),
        "not IP4",
    ),
    "two rtcp": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:4001", "a=rtcp:4001"),
        "more than one a=rtcp",
    ),
    "conflicting directions": (
        sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "a=sendonly", "a=recvonly"),
        "conflicting direction attributes: recvonly, sendonly",
    ),
    "empty attribute": (sdp(*GOOD_HEAD, "a="), "a= line without attribute name"),
    "empty line": (sdp(*GOOD_HEAD[:3], "", *GOOD_HEAD[3:]), "empty line 4"),
    "not type=value": (sdp(*GOOD_HEAD, "hello"), "line 6 is not <type>=<value>"),
    "space before =": (sdp(*GOOD_HEAD, "a =x"), "is not <type>=<value>"),
    "NUL": (sdp(*GOOD_HEAD, "a=x\x00y"), "stray CR or NUL in line 6"),
    "lone CR": (sdp(*GOOD_HEAD[:2]) + b"s=-\rt=0 0\r\n", "stray CR"),
    "not UTF-8": (sdp(*GOOD_HEAD[:2]) + b"s=\xff\xfe\r\n" + sdp(*GOOD_HEAD[3:]), "not UTF-8"),
    "UTF-16": ("\r\n".join(GOOD_HEAD).encode("utf-16"), "not UTF-8"),
    "truncated mid-line": (sdp(*GOOD_HEAD) + b"m=audio 40", "truncated"),
    "truncated before t=": (sdp(*GOOD_HEAD[:4]), "missing t= line"),
    "huge": (sdp(*GOOD_HEAD) + b"a=x:" + b"y" * 70000 + b"\r\n", "larger than 65535 bytes"),
    "long line": (sdp(*GOOD_HEAD, "a=x:" + "y" * 9000), "line 6 longer than 8192"),
}


@pytest.mark.parametrize(("body", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_sdp_is_488(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_sdp(body)
    assert caught.value.status == 488
    assert reason in caught.value.reason


def test_errors_name_the_line() -> None:
    body = sdp(*GOOD_HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:99999")
    with pytest.raises(ParseError, match=r"bad a=rtcp port: '99999' \(line 7\)"):
        parse_sdp(body)


def test_limits_are_configurable() -> None:
    body = sdp(*GOOD_HEAD, *(f"m=audio {4000 + 2 * i} RTP/AVP 0" for i in range(3)))
    with pytest.raises(ParseError, match="more than 2 m= lines"):
        parse_sdp(body, SdpLimits(max_media=2))
    with pytest.raises(ParseError, match="more than 5 lines"):
        parse_sdp(body, SdpLimits(max_lines=5))
    assert len(parse_sdp(body).media_sections) == 3


# -- properties -------------------------------------------------------------------------------
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _relays_for(desc: SessionDescription, seed: int) -> list[RelayEndpoint]:
    relays = []
    for i in range(len(desc.media_sections)):
        ip = "203.0.113.10" if (seed >> i) & 1 else "2001:db8::10"
        port = 1024 + (seed * 7 + i * 2) % 64000
        mode = (seed >> (i + 8)) % 3
        relays.append(
            relay(i, ip, port, mux=True) if mode == 0 else relay(i, ip, port, port + mode)
        )
    return relays


def _check_parsed(body: bytes, desc: SessionDescription, seed: int = 5) -> None:
    # Faithful: nothing dropped or altered, only line ends normalised to CRLF.
    assert desc.serialize() == body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert parse_sdp(desc.serialize()) == desc
    # Every accessor of a parsed description answers without raising.
    found = streams(desc)
    is_hold(desc)
    desc.origin  # noqa: B018
    for index, section in enumerate(desc.media_sections):
        section.codecs  # noqa: B018
        section.rtcp  # noqa: B018
        desc.ice_for(index)
        assert found[index].payload_types == section.payload_types
    # Anchoring yields valid SDP, pointed at the relays, and is idempotent.
    relays = _relays_for(desc, seed)
    anchored = anchor(desc, relays)
    assert parse_sdp(anchored.serialize()) == anchored
    assert anchor(anchored, relays) == anchored
    assert anchored.origin.session_version - desc.origin.session_version in (0, 1)
    for stream, before in zip(streams(anchored), found, strict=True):
        if before.disabled:
            assert stream.rtp.port == 0
            continue
        target = relays[stream.index]
        assert stream.rtp.port == target.rtp.port
        assert not anchored.ice_for(stream.index).in_use
        if before.rtp.ip not in ("0.0.0.0", "::") or desc.ice_for(stream.index).in_use:
            assert ipaddress.ip_address(stream.rtp.ip) == ipaddress.ip_address(target.rtp.ip)
            assert ipaddress.ip_address(stream.rtcp.ip) == ipaddress.ip_address(target.rtcp.ip)
        assert stream.rtcp.port == target.rtcp.port
        assert stream.rtcp_mux == target.rtcp_mux
        assert stream.direction == before.direction


@SETTINGS
@given(st.binary(max_size=600))
@example(b"v=0\n")
@example(b"v=0\r\no=\r\n")
def test_arbitrary_bytes_parse_or_raise_parse_error(body: bytes) -> None:
    try:
        desc = parse_sdp(body)
    except ParseError as exc:
        assert exc.status == 488
        return
    _check_parsed(body, desc)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(list(SAMPLES.values()))))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut", "swap_lines"]))
        # Past v= and o= most of the time: mutations there only test the first check.
        last = max(len(body) - 1, 0)
        pos = draw(st.integers(min(60, last), last) | st.integers(0, min(60, last)))
        if action == "flip" and body:
            body[pos] = draw(st.sampled_from(b" 0:/=\r\nav\x00\xff9."))
        elif action == "insert":
            body[pos:pos] = draw(st.sampled_from([b"\r\n", b" ", b"a=rtcp-mux\r\n", b"0", b"/2"]))
        elif action == "delete":
            del body[pos : pos + draw(st.integers(1, 8))]
        elif action == "cut":  # mostly at a line end: mid-line cuts all fail the same way
            del body[pos:]
            if draw(st.integers(0, 3)):
                body[body.rfind(b"\n") + 1 :] = b""
        else:
            lines = bytes(body).split(b"\r\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            body = bytearray(b"\r\n".join(lines))
    return bytes(body)


@SETTINGS
@given(mutated(), st.integers(0, 2**16))
def test_mutated_bodies_parse_faithfully_or_raise_parse_error(body: bytes, seed: int) -> None:
    try:
        desc = parse_sdp(body)
    except ParseError as exc:
        assert exc.status == 488
        return
    _check_parsed(body, desc, seed)


_IPV4 = st.ip_addresses(v=4).map(str)
_IPV6 = st.ip_addresses(v=6).map(str).filter(lambda ip: "." not in ip)
_ADDRESS = st.one_of(st.tuples(st.just("IP4"), _IPV4), st.tuples(st.just("IP6"), _IPV6))
_TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"),
    min_size=1,
    max_size=20,
)


@st.composite
def valid_sdp(draw: st.DrawFn) -> bytes:
    lines = ["v=0", f"o=- {draw(st.integers(0, 2**40))} {draw(st.integers(0, 2**63))} IN IP4 x"]
    lines.append("s=" + draw(st.sampled_from(["-", " ", "Call"])))
    session_address = draw(st.none() | _ADDRESS)
    if session_address:
        lines.append("c=IN {} {}".format(*session_address))
    lines.append("t=0 0")
    lines += ["a=X-" + text for text in draw(st.lists(_TEXT, max_size=2))]
    if draw(st.booleans()):
        lines.append("a=" + draw(st.sampled_from(sorted(Direction))))
    if draw(st.booleans()):
        lines += ["a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdefghijkl", "a=ice-lite"]
    for _ in range(draw(st.integers(1, 4))):
        port = draw(st.sampled_from([0, 9, 4000, 49170, 65534]))
        pts = draw(st.lists(st.integers(0, 127), min_size=1, max_size=5, unique=True))
        media = draw(st.sampled_from(["audio", "video", "application"]))
        lines.append(f"m={media} {port} {draw(st.sampled_from(['RTP/AVP', 'RTP/SAVPF']))} ")
        lines[-1] += " ".join(map(str, pts))
        address = draw(st.none() | _ADDRESS) if session_address else draw(_ADDRESS)
        if address:
            lines.append("c=IN {} {}".format(*address))
        for pt in pts:
            if pt >= 96 or draw(st.booleans()):
                lines.append(f"a=rtpmap:{pt} {draw(st.sampled_from(['AMR-WB', 'X']))}/16000")
        if draw(st.booleans()):
            lines.append(f"a=rtcp:{draw(st.integers(1, 65535))}")
        if draw(st.booleans()):
            lines.append("a=rtcp-mux")
        if draw(st.booleans()):
            lines.append("a=" + draw(st.sampled_from(sorted(Direction))))
        if draw(st.booleans()):
            lines += [
                "a=candidate:1 1 udp 2130706431 192.0.2.1 4000 typ host",
                "a=end-of-candidates",
            ]
        lines += ["a=X-" + text + ":v" for text in draw(st.lists(_TEXT, max_size=2))]
    return "".join(line + "\r\n" for line in lines).encode()


@SETTINGS
@given(valid_sdp(), st.integers(0, 2**16))
def test_generated_valid_sdp_round_trips_and_anchors(body: bytes, seed: int) -> None:
    desc = parse_sdp(body)
    assert desc.serialize() == body
    _check_parsed(body, desc, seed)


def test_parse_errors_are_the_only_exception_for_odd_unicode() -> None:
    # Digits and spaces from other scripts must not slip through int() or str.split().
    for odd in ("²", "٣", "\u2003", "\x1c", "\uff11"):
        body = sdp(*GOOD_HEAD, f"m=audio 4000{odd} RTP/AVP 0")
        with suppress(ParseError):
            desc = parse_sdp(body)
            _check_parsed(body, desc)
