"""relay.bpf.c run by the kernel on made-up frames (BPF_PROG_RUN): no interface, nothing sent.

Each frame goes through the real verifier-checked program; the verdict and the rewritten frame
come back, and the checksums are checked from scratch (tests/media_xdp/packets.py).
"""

from __future__ import annotations

import ipaddress
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.media.xdp import XdpProgram, bpf, elf
from services.media.xdp.maps import (
    FLOW_F_ZERO_UDP_CSUM,
    Endpoint,
    NextHop,
    XdpFlow,
    pack_key,
    pack_value,
    unpack_counters,
)
from tests.media_xdp import packets as P

pytestmark = pytest.mark.interop

RELAY_IN = ("192.0.2.1", 40000)
RELAY_OUT = ("198.51.100.1", 40002)
PEER = ("198.51.100.7", 6004)
UE = ("192.0.2.9", 5004)
EGRESS_MAC = bytes.fromhex("0a0000000001")
PEER_MAC = bytes.fromhex("0a00000000b7")
LO = 1  # the program compares ingress and egress ifindex; lo is there in every namespace
EGRESS = 7


def flow(
    rx: tuple[str, int],
    tx: tuple[str, int],
    peer: tuple[str, int],
    source: tuple[str, int] | None = None,
) -> XdpFlow:
    src = Endpoint.parse(source) if source else None
    return XdpFlow("f", Endpoint.parse(rx), Endpoint.parse(tx), Endpoint.parse(peer), src)


def hop(ifindex: int = EGRESS) -> NextHop:
    return NextHop("eth9", ifindex, EGRESS_MAC, PEER_MAC)


@pytest.fixture(scope="module")
def program(bpf_object: Path) -> Iterator[XdpProgram]:
    prog = XdpProgram(max_flows=64, object_path=bpf_object)
    yield prog
    prog.close()


@pytest.fixture
def installed(program: XdpProgram) -> Iterator[XdpProgram]:
    f = flow(RELAY_IN, RELAY_OUT, PEER)
    program.update(pack_key(f.local_rx), pack_value(f, hop()))
    yield program
    for key in program.flow_keys():
        program.delete(key)


def test_object_has_one_program_whose_only_relocations_are_the_map(bpf_object: Path) -> None:
    obj = elf.parse(bpf_object.read_bytes())
    assert obj.license == "GPL"
    assert obj.maps == {"flows"}
    assert list(obj.programs) == ["xdp"]
    prog = obj.programs["xdp"]
    assert prog.name == "volte_relay"
    assert prog.map_relocations and {s for _, s in prog.map_relocations} == {"flows"}


def test_ipv4_flow_is_rewritten_and_redirected(installed: XdpProgram) -> None:
    payload = bytes(range(160)) + b"\x80"  # odd length: the checksum pads the last byte
    frame = P.udp4(*UE, *RELAY_IN, payload)
    run = installed.test_run(frame, ingress_ifindex=LO)
    assert run.verdict == bpf.XDP_REDIRECT
    out = P.parse(run.packet)
    assert (out.dst_mac, out.src_mac) == (PEER_MAC, EGRESS_MAC)
    assert (out.src, out.sport, out.dst, out.dport) == (*RELAY_OUT, *PEER)
    assert out.ttl == 64 and out.tos == 0xB8 and out.ident == 0x1234
    assert out.payload == payload
    assert out.ip_checksum_ok and out.udp_checksum_ok and out.udp_checksum != 0
    (raw,) = [installed.lookup(k) for k in installed.flow_keys()]
    assert raw is not None and unpack_counters(raw) == (1, len(payload))


def test_egress_on_the_ingress_interface_is_xdp_tx(program: XdpProgram) -> None:
    f = flow(RELAY_IN, ("192.0.2.1", 40012), ("192.0.2.9", 5006))
    program.update(pack_key(f.local_rx), pack_value(f, hop(ifindex=LO)))
    try:
        run = program.test_run(P.udp4(*UE, *RELAY_IN, b"rtp"), ingress_ifindex=LO)
        assert run.verdict == bpf.XDP_TX
        out = P.parse(run.packet)
        assert (out.src, out.sport, out.dst, out.dport) == ("192.0.2.1", 40012, "192.0.2.9", 5006)
        assert out.ip_checksum_ok and out.udp_checksum_ok
    finally:
        program.delete(pack_key(f.local_rx))


def test_checksums_hold_for_many_addresses_ports_and_payloads(program: XdpProgram) -> None:
    rng = random.Random(5)
    for i in range(200):
        v6 = i % 2 == 1

        def addr(v6: bool = v6) -> str:
            bits = rng.getrandbits(128 if v6 else 32)
            return str(ipaddress.IPv6Address(bits) if v6 else ipaddress.IPv4Address(bits))

        rx, tx, peer = (
            (addr(), rng.randrange(1, 65536)),
            (addr(), rng.randrange(1, 65536)),
            (
                addr(),
                rng.randrange(1, 65536),
            ),
        )
        f = flow(rx, tx, peer)
        program.update(pack_key(f.local_rx), pack_value(f, hop()))
        payload = rng.randbytes(rng.randrange(0, 300))
        src = (addr(), rng.randrange(1, 65536))
        frame = (
            P.udp6(*src, *rx, payload, hop=rng.randrange(1, 256))
            if v6
            else P.udp4(*src, *rx, payload, ttl=rng.randrange(1, 256), ident=rng.getrandbits(16))
        )
        run = program.test_run(frame, ingress_ifindex=LO)
        program.delete(pack_key(f.local_rx))
        assert run.verdict == bpf.XDP_REDIRECT, i
        out = P.parse(run.packet)
        assert (out.src, out.sport, out.dst, out.dport) == (*tx, *peer), i
        assert out.ip_checksum_ok and out.udp_checksum_ok, (i, frame.hex())
        assert out.payload == payload and out.ttl == 64


def test_a_checksum_that_comes_out_zero_is_sent_as_ffff(installed: XdpProgram) -> None:
    # Choose the payload's last word so that the rewritten datagram sums to 0xffff.
    base = P.udp4(*RELAY_OUT, *PEER, b"\0\0")  # the datagram as it must leave, payload 0000
    segment = bytearray(base[34:])
    segment[6:8] = b"\0\0"
    s, d = (ipaddress.IPv4Address(a).packed for a in (RELAY_OUT[0], PEER[0]))
    pseudo = s + d + struct.pack("!BBH", 0, P.UDP, len(segment))
    word = 0xFFFF - P.ones_sum(pseudo + bytes(segment))
    payload = struct.pack("!H", word)
    run = installed.test_run(P.udp4(*UE, *RELAY_IN, payload), ingress_ifindex=LO)
    out = P.parse(run.packet)
    assert out.udp_checksum == 0xFFFF and out.udp_checksum_ok


def test_ipv4_without_udp_checksum_keeps_none(installed: XdpProgram) -> None:
    run = installed.test_run(P.udp4(*UE, *RELAY_IN, b"x" * 33, with_udp_checksum=False), LO)
    out = P.parse(run.packet)
    assert run.verdict == bpf.XDP_REDIRECT and out.udp_checksum == 0 and out.ip_checksum_ok


def test_zero_checksum_flag_sends_ipv4_without_udp_checksum(program: XdpProgram) -> None:
    f = flow(RELAY_IN, RELAY_OUT, PEER)
    program.update(pack_key(f.local_rx), pack_value(f, hop(), flags=FLOW_F_ZERO_UDP_CSUM))
    try:
        run = program.test_run(P.udp4(*UE, *RELAY_IN, b"x" * 40), LO)
        out = P.parse(run.packet)
        assert (out.dst, out.dport, out.udp_checksum) == (*PEER, 0) and out.ip_checksum_ok
    finally:
        program.delete(pack_key(f.local_rx))


def test_ipv6_flow_is_rewritten(program: XdpProgram) -> None:
    f = flow(("2001:db8::1", 40000), ("2001:db8:1::1", 40002), ("2001:db8:1::7", 6004))
    program.update(pack_key(f.local_rx), pack_value(f, hop()))
    try:
        frame = P.udp6("2001:db8::9", 5004, "2001:db8::1", 40000, b"v6 rtp" * 20)
        run = program.test_run(frame, LO)
        assert run.verdict == bpf.XDP_REDIRECT
        out = P.parse(run.packet)
        assert (out.src, out.sport) == ("2001:db8:1::1", 40002)
        assert (out.dst, out.dport) == ("2001:db8:1::7", 6004)
        assert out.udp_checksum_ok and out.ttl == 64 and out.dst_mac == PEER_MAC
        # An IPv4 key with the same leading bytes is another flow: no match across families.
        v4 = P.udp4(*UE, "32.1.13.184", 40000, b"x")
        assert program.test_run(v4, LO).verdict == bpf.XDP_PASS
        # A zero UDP checksum is invalid over IPv6: left for the stack to drop.
        zero = bytearray(frame)
        zero[60:62] = b"\0\0"
        assert program.test_run(bytes(zero), LO).verdict == bpf.XDP_PASS
        # An extension header (hop-by-hop) before UDP: to the stack.
        ext = P.udp6("2001:db8::9", 5004, "2001:db8::1", 40000, b"x", nexthdr=0)
        assert program.test_run(ext, LO).verdict == bpf.XDP_PASS
    finally:
        program.delete(pack_key(f.local_rx))


def _vlan(frame: bytes) -> bytes:
    return frame[:12] + struct.pack("!HH", P.ETH_P_8021Q, 100) + frame[12:]


def _truncate_ip_length(frame: bytes) -> bytes:
    b = bytearray(frame)
    b[16:18] = struct.pack("!H", struct.unpack_from("!H", b, 16)[0] + 4)
    return bytes(b)


@pytest.mark.parametrize(
    ("why", "frame"),
    [
        ("another port", P.udp4(*UE, RELAY_IN[0], 40004, b"x")),
        ("another address", P.udp4(*UE, "192.0.2.2", RELAY_IN[1], b"x")),
        ("TCP", P.udp4(*UE, *RELAY_IN, b"x" * 20, proto=P.TCP)),
        ("first fragment", P.udp4(*UE, *RELAY_IN, b"x", frag=0x2000)),
        ("later fragment", P.udp4(*UE, *RELAY_IN, b"x", frag=0x0010)),
        ("VLAN tag", _vlan(P.udp4(*UE, *RELAY_IN, b"x"))),
        ("ARP", P.eth(b"\xff" * 6, b"\x04" * 6, P.ETH_P_ARP) + bytes(28)),
        ("IP length past the end", _truncate_ip_length(P.udp4(*UE, *RELAY_IN, b"x"))),
        ("cut inside the UDP header", P.udp4(*UE, *RELAY_IN, b"")[:38]),
        ("Ethernet header only", P.eth(b"\x02" * 6, b"\x04" * 6, P.ETH_P_IP)),
    ],
)
def test_everything_else_passes_untouched(installed: XdpProgram, why: str, frame: bytes) -> None:
    run = installed.test_run(frame, LO)
    assert run.verdict == bpf.XDP_PASS, why
    assert run.packet == frame, why
    (raw,) = [installed.lookup(k) for k in installed.flow_keys()]
    assert raw is not None and unpack_counters(raw) == (0, 0)


def test_only_the_latched_sender_is_relayed(program: XdpProgram) -> None:
    f = flow(RELAY_IN, RELAY_OUT, PEER, source=UE)
    program.update(pack_key(f.local_rx), pack_value(f, hop()))
    try:
        assert program.test_run(P.udp4(*UE, *RELAY_IN, b"x"), LO).verdict == bpf.XDP_REDIRECT
        for other in (("192.0.2.9", 5005), ("192.0.2.8", 5004)):  # another port, another host
            frame = P.udp4(*other, *RELAY_IN, b"x")
            assert program.test_run(frame, LO) == bpf.RunResult(bpf.XDP_PASS, frame), other
    finally:
        program.delete(pack_key(f.local_rx))
    f6 = flow(("2001:db8::1", 1), ("2001:db8::1", 2), ("2001:db8::7", 3), ("2001:db8::9", 4))
    program.update(pack_key(f6.local_rx), pack_value(f6, hop()))
    try:
        ok = P.udp6("2001:db8::9", 4, "2001:db8::1", 1, b"x")
        assert program.test_run(ok, LO).verdict == bpf.XDP_REDIRECT
        for src in ("2001:db8::8", "2001:db9::9", "3001:db8::9"):  # each 32-bit word differs
            frame = P.udp6(src, 4, "2001:db8::1", 1, b"x")
            assert program.test_run(frame, LO).verdict == bpf.XDP_PASS, src
    finally:
        program.delete(pack_key(f6.local_rx))


def test_wildcard_entry_matches_the_port_on_any_local_address(program: XdpProgram) -> None:
    """A relay bound to 0.0.0.0: the key has the wildcard address; exact entries win."""
    wild = flow(("0.0.0.0", 40000), RELAY_OUT, PEER)
    exact = flow(("192.0.2.1", 40000), RELAY_OUT, ("198.51.100.8", 7000))
    program.update(pack_key(wild.local_rx), pack_value(wild, hop()))
    try:
        for dst in ("192.0.2.1", "192.0.2.77"):
            run = program.test_run(P.udp4(*UE, dst, 40000, b"x"), LO)
            assert P.parse(run.packet).dst == PEER[0], dst
        assert program.test_run(P.udp4(*UE, "192.0.2.1", 40001, b"x"), LO).verdict == bpf.XDP_PASS
        program.update(pack_key(exact.local_rx), pack_value(exact, hop()))
        run = program.test_run(P.udp4(*UE, "192.0.2.1", 40000, b"x"), LO)
        assert (P.parse(run.packet).dst, P.parse(run.packet).dport) == ("198.51.100.8", 7000)
        assert (
            P.parse(program.test_run(P.udp4(*UE, "192.0.2.2", 40000, b"x"), LO).packet).dst
            == PEER[0]
        )
        v6 = P.udp6("2001:db8::9", 1, "2001:db8::1", 40000, b"x")
        assert program.test_run(v6, LO).verdict == bpf.XDP_PASS  # an IPv4 wildcard only
    finally:
        for key in program.flow_keys():
            program.delete(key)


def test_counters_are_exact(installed: XdpProgram) -> None:
    sizes = [0, 1, 160, 172, 1200, 33]
    for size in sizes:
        installed.test_run(P.udp4(*UE, *RELAY_IN, b"r" * size), LO)
    installed.test_run(P.udp4(*UE, RELAY_IN[0], 1, b"not ours"), LO)
    (raw,) = [installed.lookup(k) for k in installed.flow_keys()]
    assert raw is not None and unpack_counters(raw) == (len(sizes), sum(sizes))


def test_a_prebuilt_object_needs_no_clang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images without clang: build at image build time, point VOLTE_XDP_OBJECT at the result."""
    out = tmp_path / "relay.bpf.o"
    proc = subprocess.run(
        [sys.executable, "-m", "services.media.xdp", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr
    monkeypatch.setenv("VOLTE_XDP_OBJECT", str(out))
    monkeypatch.setenv("VOLTE_XDP_CLANG", "/nonexistent/clang")
    prog = XdpProgram(max_flows=4)
    try:
        frame = P.udp4(*UE, *RELAY_IN, b"x")
        assert prog.test_run(frame, LO).verdict == bpf.XDP_PASS
    finally:
        prog.close()
