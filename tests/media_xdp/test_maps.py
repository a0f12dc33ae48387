"""The flows map layout and flow coercion: pure, no root, no kernel."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, replace

import pytest

from services.media.xdp import Endpoint, XdpFlow, build, elf
from services.media.xdp.maps import (
    FLOW_F_MATCH_SOURCE,
    FLOW_F_ZERO_UDP_CSUM,
    KEY,
    VALUE,
    NextHop,
    coerce_flow,
    pack_key,
    pack_value,
    parse_mac,
    unpack_counters,
    unpack_key,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (("10.0.0.1", 4000), "10.0.0.1:4000"),
        (["10.0.0.1", "4000"], "10.0.0.1:4000"),
        ("10.0.0.1:4000", "10.0.0.1:4000"),
        ("[2001:db8::1]:4000", "[2001:db8::1]:4000"),
        (("::ffff:10.0.0.1", 4000), "10.0.0.1:4000"),  # a v4-mapped socket address is IPv4
        ({"host": "2001:db8::2", "port": 9}, "[2001:db8::2]:9"),
    ],
)
def test_endpoint_parse(raw: object, expected: str) -> None:
    assert str(Endpoint.parse(raw)) == expected


@pytest.mark.parametrize("raw", [("10.0.0.1", 0), ("10.0.0.1", 70000), "10.0.0.1", ("x", 1)])
def test_endpoint_parse_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(raw)


def test_flow_cannot_mix_families() -> None:
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        XdpFlow(
            1,
            Endpoint.parse(("10.0.0.1", 1)),
            Endpoint.parse(("2001:db8::1", 2)),
            Endpoint.parse(("10.0.0.2", 3)),
        )


@dataclass(frozen=True)
class TheirFlow:  # the media service's own flow type, duck-typed
    id: str
    rx: tuple[str, int]
    tx: tuple[str, int]
    dest: tuple[str, int]


def test_coerce_flow_from_objects_and_mappings() -> None:
    want = XdpFlow(
        "s1",
        Endpoint.parse(("10.0.0.1", 40000)),
        Endpoint.parse(("10.0.1.1", 40002)),
        Endpoint.parse(("10.0.1.7", 6004)),
    )
    their = TheirFlow("s1", ("10.0.0.1", 40000), ("10.0.1.1", 40002), ("10.0.1.7", 6004))
    assert coerce_flow(their) == want
    assert coerce_flow(want) is want
    mapping = {
        "flow_id": "s1",
        "local_rx": "10.0.0.1:40000",
        "local_tx": "10.0.1.1:40002",
        "peer": "10.0.1.7:6004",
    }
    assert coerce_flow(mapping) == want
    latched = coerce_flow({**mapping, "source": ("10.0.0.9", 5004)})
    assert latched.source == Endpoint.parse("10.0.0.9:5004")
    with pytest.raises(TypeError, match="has none of local_tx"):
        coerce_flow({"id": 1, "rx": "10.0.0.1:1", "peer": "10.0.0.2:2"})


def test_key_layout() -> None:
    key = pack_key(Endpoint.parse(("192.0.2.1", 0x1234)))
    assert len(key) == KEY.size == 20
    assert key == bytes([192, 0, 2, 1]) + bytes(12) + b"\x12\x34" + b"\x04\x00"
    v6 = Endpoint.parse(("2001:db8::1", 5))
    assert pack_key(v6)[:16] == ipaddress.IPv6Address("2001:db8::1").packed
    assert pack_key(v6)[18] == 6
    assert unpack_key(pack_key(v6)) == v6 and unpack_key(key).port == 0x1234


def test_value_layout() -> None:
    f = XdpFlow(
        "s",
        Endpoint.parse(("192.0.2.1", 1)),
        Endpoint.parse(("198.51.100.1", 0x0102)),
        Endpoint.parse(("198.51.100.7", 0x0304)),
        source=Endpoint.parse(("192.0.2.9", 0x0506)),
    )
    hop = NextHop("eth1", 9, parse_mac("0a:00:00:00:00:01"), parse_mac("0a-00-00-00-00-02"))
    raw = pack_value(f, hop, packets=5, nbytes=800, flags=FLOW_F_ZERO_UDP_CSUM)
    assert len(raw) == VALUE.size == 96
    assert raw[0:4] == bytes([192, 0, 2, 9])  # from_addr: the latched sender
    assert raw[16:20] == bytes([198, 51, 100, 1]) and raw[32:36] == bytes([198, 51, 100, 7])
    assert struct.unpack_from("=II", raw, 48) == (9, FLOW_F_ZERO_UDP_CSUM | FLOW_F_MATCH_SOURCE)
    assert raw[56:62] == b"\x01\x02\x03\x04\x05\x06"  # src_port dst_port from_port
    assert raw[64:70] == bytes.fromhex("0a0000000001") and raw[70:76] == bytes.fromhex(
        "0a0000000002"
    )
    assert unpack_counters(raw) == (5, 800)
    no_source = pack_value(replace(f, source=None), hop)
    assert struct.unpack_from("=I", no_source, 52) == (0,) and no_source[:16] == bytes(16)
    with pytest.raises(ValueError, match="wildcard"):
        pack_value(replace(f, local_tx=Endpoint.parse(("0.0.0.0", 1))), hop)
    with pytest.raises(ValueError):
        parse_mac("0a:00")


def test_wildcard_key_is_all_zero() -> None:
    assert pack_key(Endpoint.parse(("0.0.0.0", 1)))[:16] == bytes(16)
    assert pack_key(Endpoint.parse(("::", 1)))[:16] == bytes(16)


def test_clang_gets_the_sizes_python_packs() -> None:
    """relay.bpf.c _Static_asserts its struct sizes against these: drift fails the build."""
    flags = build.flags()
    assert f"-DVOLTE_KEY_SIZE={KEY.size}" in flags and f"-DVOLTE_VALUE_SIZE={VALUE.size}" in flags
    assert {"-O2", "-g", "bpf"} <= set(flags)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"MZ\x90\x00", "not an ELF"),
        (b"\x7fELF\x01\x01" + bytes(58), "64-bit little-endian"),
        (b"\x7fELF\x02\x01" + bytes(12) + struct.pack("<H", 62) + bytes(44), "is not BPF"),
    ],
)
def test_elf_rejects_what_it_cannot_load(data: bytes, message: str) -> None:
    with pytest.raises(elf.ElfError, match=message):
        elf.parse(data)
