"""The XDP fast path relaying real packets between network namespaces (see conftest.py).

UE A and UE B are plain UDP sockets in their own namespaces; the relay's userspace sockets sit
on its relay ports in namespace R, standing in for the userspace relay. The first packets of a
stream reach those sockets (that is how the relay latches); once the flows are installed,
packets go A -> B and B -> A in the kernel with the relay's addresses, and the userspace
sockets see nothing; removing a flow hands its packets back to userspace.

Every receive has a deadline and every send loop a fixed count.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.media.xdp import Endpoint, XdpFastPath, XdpFlow, XdpUnavailable
from tests.media_xdp.conftest import Topology
from tests.media_xdp.traffic import V4, V6, Addr, receive, silent, udp

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]


def flow(fid: str, rx: Addr, tx: Addr, peer: Addr, source: Addr | None = None) -> XdpFlow:
    src = Endpoint.parse(source) if source else None
    return XdpFlow(fid, Endpoint.parse(rx), Endpoint.parse(tx), Endpoint.parse(peer), src)


@pytest.fixture
def fast(topology: Topology) -> Iterator[XdpFastPath]:
    with topology.relay.enter():
        fp = XdpFastPath(["r1", "r2"], mode="native", resolve_timeout=0.2)
    yield fp
    fp.close()


@pytest.fixture
def sockets(topology: Topology) -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def _call(
    topology: Topology, sockets: list[socket.socket], ip: dict[str, str], ports: tuple[int, ...]
) -> tuple[socket.socket, ...]:
    """UE A, UE B, and the relay's two userspace sockets (A side, B side)."""
    pa, pb, ra, rb = ports
    made = (
        udp(topology.a, (ip["a"], pa)),
        udp(topology.b, (ip["b"], pb)),
        udp(topology.relay, (ip["r1"], ra)),
        udp(topology.relay, (ip["r2"], rb)),
    )
    sockets.extend(made)
    return made


@pytest.mark.parametrize("ip", [V4, V6], ids=["ipv4", "ipv6"])
def test_relays_both_directions_in_the_kernel_after_latching(
    topology: Topology, fast: XdpFastPath, sockets: list[socket.socket], ip: dict[str, str]
) -> None:
    assert fast.modes == {"r1": "native", "r2": "native"}
    ue_a, ue_b, relay_a, relay_b = _call(topology, sockets, ip, (5004, 6004, 40000, 40002))
    to_relay_a, to_relay_b = (ip["r1"], 40000), (ip["r2"], 40002)

    # The first packets go to userspace: that is where the relay latches onto each peer.
    ue_a.sendto(b"first from A", to_relay_a)
    ue_b.sendto(b"first from B", to_relay_b)
    assert receive(relay_a, 1) == [(b"first from A", (ip["a"], 5004))]
    assert receive(relay_b, 1) == [(b"first from B", (ip["b"], 6004))]

    with topology.relay.enter():  # route and neighbour lookups happen in the relay's netns
        assert fast.install(flow("a->b", to_relay_a, to_relay_b, (ip["b"], 6004)))
        assert fast.install(flow("b->a", to_relay_b, to_relay_a, (ip["a"], 5004)))

    n = 25
    from_a = [bytes([i]) * (160 + i) for i in range(n)]  # G.711 20 ms frames, give or take
    from_b = [bytes([0x80 | i]) * (20 + 7 * i) for i in range(n)]
    for pa, pb in zip(from_a, from_b, strict=True):
        ue_a.sendto(pa, to_relay_a)
        ue_b.sendto(pb, to_relay_b)

    at_b, at_a = receive(ue_b, n), receive(ue_a, n)
    assert at_b == [(p, to_relay_b) for p in from_a]  # from the relay's B-side address:port
    assert at_a == [(p, to_relay_a) for p in from_b]
    assert silent(relay_a) == [] and silent(relay_b) == []  # userspace saw only the first ones
    assert fast.counters() == {
        "a->b": (n, sum(map(len, from_a))),
        "b->a": (n, sum(map(len, from_b))),
    }

    # A port with no flow installed is still the userspace relay's.
    other = udp(topology.relay, (ip["r1"], 40020))
    sockets.append(other)
    ue_a.sendto(b"not installed", (ip["r1"], 40020))
    assert receive(other, 1) == [(b"not installed", (ip["a"], 5004))]

    # Removing a flow gives its packets back to userspace; the other direction stays fast.
    fast.remove("a->b")
    ue_a.sendto(b"back to userspace", to_relay_a)
    ue_b.sendto(b"still fast", to_relay_b)
    assert receive(relay_a, 1) == [(b"back to userspace", (ip["a"], 5004))]
    assert receive(ue_a, 1) == [(b"still fast", to_relay_a)]
    assert silent(ue_b) == [] and silent(relay_b) == []
    assert fast.counters() == {"b->a": (n + 1, sum(map(len, from_b)) + len(b"still fast"))}


def test_hairpin_on_one_interface_uses_xdp_tx(
    topology: Topology, fast: XdpFastPath, sockets: list[socket.socket]
) -> None:
    """Both legs behind r1: packets go back out of the interface they came in on."""
    ue1, ue2 = udp(topology.a, (V4["a"], 5010)), udp(topology.a, (V4["a"], 5012))
    relay1, relay2 = udp(topology.relay, (V4["r1"], 40010)), udp(topology.relay, (V4["r1"], 40012))
    sockets.extend((ue1, ue2, relay1, relay2))
    with topology.relay.enter():
        assert fast.install(flow("1->2", (V4["r1"], 40010), (V4["r1"], 40012), (V4["a"], 5012)))
    for i in range(10):
        ue1.sendto(b"hairpin %d" % i, (V4["r1"], 40010))
    assert receive(ue2, 10) == [(b"hairpin %d" % i, (V4["r1"], 40012)) for i in range(10)]
    assert silent(relay1) == []
    assert fast.counters()["1->2"] == (10, 10 * len(b"hairpin 0"))


def test_zero_checksum_mode_serves_senders_with_checksum_offload(
    topology: Topology, sockets: list[socket.socket]
) -> None:
    """A sender on a veth with tx checksum offload leaves a partial UDP checksum that XDP cannot
    finish; with zero_ipv4_udp_checksum the relayed packets carry none and are accepted."""
    ue_a, ue_b = udp(topology.a, (V4["a"], 5020)), udp(topology.b, (V4["b"], 6020))
    sockets.extend((ue_a, ue_b))
    with topology.a.enter():
        _set_tx_checksum("a0", on=True)
    try:
        with topology.relay.enter():
            fp = XdpFastPath(["r1", "r2"], mode="native", zero_ipv4_udp_checksum=True)
            assert fp.install(flow("a->b", (V4["r1"], 40030), (V4["r2"], 40032), (V4["b"], 6020)))
        try:
            for i in range(5):
                ue_a.sendto(b"offloaded %d" % i, (V4["r1"], 40030))
            assert receive(ue_b, 5) == [(b"offloaded %d" % i, (V4["r2"], 40032)) for i in range(5)]
        finally:
            fp.close()
    finally:
        with topology.a.enter():
            _set_tx_checksum("a0", on=False)


def _set_tx_checksum(ifname: str, *, on: bool) -> None:
    import ctypes
    import fcntl
    import struct

    from tests.media_xdp.netns import ETHTOOL_STXCSUM, SIOCETHTOOL

    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, int(on)), 8)
    ifreq = struct.pack("=16sQ16x", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def test_flows_it_cannot_forward_stay_in_userspace(
    topology: Topology, fast: XdpFastPath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="volte.media.xdp")

    def refused(f: XdpFlow, reason: str) -> None:
        caplog.clear()
        assert fast.install(f) is False
        assert reason in caplog.text, caplog.text

    with topology.relay.enter():
        # The peer is the relay itself: a local route, no interface to send it out of.
        refused(flow("y", (V4["r1"], 40044), (V4["r2"], 40046), (V4["r2"], 9)), "is local")
        # The egress interface has no XDP program (the redirect would be dropped).
        topology.relay.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        topology.relay.ip("addr", "add", "10.200.9.1/24", "dev", "d0")
        for dev in ("d0", "d1"):
            topology.relay.ip("link", "set", dev, "up")
        topology.relay.ip(
            "neigh", "add", "10.200.9.2", "lladdr", "02:00:00:00:09:02", "dev", "d0"
        )  # fmt: skip
        try:
            behind_d0 = flow("z", (V4["r1"], 40048), ("10.200.9.1", 1), ("10.200.9.2", 9))
            refused(behind_d0, "egress interface d0 has no XDP program")
        finally:
            topology.relay.ip("link", "del", "d0")
    assert fast.counters() == {} and fast.pending == set()


def test_a_flow_waits_for_its_next_hop_without_blocking(
    topology: Topology, sockets: list[socket.socket]
) -> None:
    """install() takes a flow whose peer's MAC is not known yet and returns at once; the flow
    goes into the kernel on a later counters() call, once the neighbour entry is there."""
    ue_a = udp(topology.a, (V4["a"], 5070))
    sockets.append(ue_a)
    with topology.relay.enter():
        fp = XdpFastPath(["r1", "r2"], mode="native")  # resolve_timeout 0: never waits
    try:
        late = flow("late", (V4["r1"], 40070), (V4["r2"], 40072), ("10.200.2.99", 6070))
        with topology.relay.enter():
            started = time.monotonic()
            assert fp.install(late) is True
            assert time.monotonic() - started < 0.1
            assert fp.pending == {"late"} and fp.counters() == {}
        # Nobody answers for .99 yet; now B takes that address too and the relay learns its MAC.
        topology.b.ip("addr", "add", "10.200.2.99/24", "dev", "b0")
        b0_mac = topology.b.ip("-j", "link", "show", "b0").stdout.split('"address":"')[1][:17]
        topology.relay.ip("neigh", "replace", "10.200.2.99", "lladdr", b0_mac, "dev", "r2")
        ue_b = udp(topology.b, ("10.200.2.99", 6070))
        sockets.append(ue_b)
        with topology.relay.enter():
            assert fp.counters() == {"late": (0, 0)} and fp.pending == set()
        ue_a.sendto(b"now fast", (V4["r1"], 40070))
        assert receive(ue_b, 1) == [(b"now fast", (V4["r2"], 40072))]
        assert fp.counters() == {"late": (1, 8)}
    finally:
        fp.close()
        topology.b.ip("addr", "del", "10.200.2.99/24", "dev", "b0", check=False)


def test_reinstall_moves_the_flow_and_keeps_counting(
    topology: Topology, fast: XdpFastPath, sockets: list[socket.socket]
) -> None:
    ue_a, ue_b = udp(topology.a, (V4["a"], 5050)), udp(topology.b, (V4["b"], 6050))
    ue_b2 = udp(topology.b, (V4["b"], 6052))
    sockets.extend((ue_a, ue_b, ue_b2))
    rx, tx = (V4["r1"], 40050), (V4["r2"], 40052)
    with topology.relay.enter():
        assert fast.install(flow("s", rx, tx, (V4["b"], 6050)))
    ue_a.sendto(b"one", rx)
    assert receive(ue_b, 1) == [(b"one", tx)]
    with topology.relay.enter():  # the peer re-latched to another port (e.g. after re-INVITE)
        assert fast.install(flow("s", rx, tx, (V4["b"], 6052)))
    ue_a.sendto(b"two", rx)
    assert receive(ue_b2, 1) == [(b"two", tx)]
    assert fast.counters() == {"s": (2, 6)}


def test_close_detaches(topology: Topology, sockets: list[socket.socket]) -> None:
    ue_a = udp(topology.a, (V4["a"], 5060))
    relay = udp(topology.relay, (V4["r1"], 40060))
    sockets.extend((ue_a, relay))
    with topology.relay.enter():
        fp = XdpFastPath(["r1", "r2"], mode="native")
        assert fp.install(flow("c", (V4["r1"], 40060), (V4["r2"], 40062), (V4["b"], 6060)))
    assert "prog/xdp" in topology.relay.ip("-d", "link", "show", "r1").stdout
    fp.close()
    fp.close()  # idempotent
    assert "prog/xdp" not in topology.relay.ip("-d", "link", "show", "r1").stdout
    ue_a.sendto(b"after close", (V4["r1"], 40060))
    assert receive(relay, 1) == [(b"after close", (V4["a"], 5060))]
    assert fp.counters() == {} and fp.install(XdpFlow("d", *[Endpoint.parse(x) for x in (
        (V4["r1"], 1), (V4["r2"], 2), (V4["b"], 3))])) is False  # fmt: skip


def _run_loader(topology: Topology, code: str, *prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, "ip", "netns", "exec", topology.relay.name, sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_relay_that_dies_leaves_no_program_behind(topology: Topology) -> None:
    code = (
        "import sys, time\n"
        "from services.media.xdp import XdpFastPath\n"
        "fp = XdpFastPath(['r1'], mode='native')\n"
        "print(fp.mode, flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = _run_loader(topology, code)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.readline().strip() == "native"
        assert "prog/xdp" in topology.relay.ip("link", "show", "r1").stdout
    finally:
        proc.kill()  # no close(): the BPF link goes with the process
        proc.wait(timeout=10)
    assert "prog/xdp" not in topology.relay.ip("link", "show", "r1").stdout


def test_a_second_relay_on_the_same_interface_is_refused(
    topology: Topology, fast: XdpFastPath
) -> None:
    with topology.relay.enter(), pytest.raises(XdpUnavailable, match="already has an XDP program"):
        XdpFastPath(["r1"])


def test_native_refused_by_the_driver_falls_back_to_generic_in_auto_mode(
    topology: Topology,
) -> None:
    topology.relay.ip("link", "add", "br0", "type", "bridge")  # Ethernet, no native XDP
    try:
        with topology.relay.enter():
            with pytest.raises(XdpUnavailable, match="driver of br0 does not support native XDP"):
                XdpFastPath(["br0"], mode="native")
            with XdpFastPath(["br0"]) as fp:  # mode="auto"
                assert fp.mode == "generic" and fp.modes == {"br0": "generic"}
    finally:
        topology.relay.ip("link", "del", "br0")


def test_auto_mode_uses_generic_on_a_veth(
    topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod cannot know whether the host end of its veth takes native XDP frames."""
    caplog.set_level(logging.INFO, logger="volte.media.xdp")
    with topology.relay.enter():
        with XdpFastPath(["r1"]) as fp:
            assert fp.modes == {"r1": "generic"}
        with XdpFastPath(["r1", "r2"], mode="native") as fp:
            assert fp.mode == "native"
    assert "r1 is a veth: generic XDP" in caplog.text


def test_loopback_is_refused(topology: Topology) -> None:
    with topology.relay.enter(), pytest.raises(XdpUnavailable, match="lo is not an Ethernet"):
        XdpFastPath(["lo"])


def test_generic_mode_relays_too(topology: Topology, sockets: list[socket.socket]) -> None:
    ue_a, ue_b = udp(topology.a, (V4["a"], 5080)), udp(topology.b, (V4["b"], 6080))
    sockets.extend((ue_a, ue_b))
    to_a, to_b = (V4["r1"], 40080), (V4["r2"], 40082)
    with topology.relay.enter():
        fp = XdpFastPath(["r1", "r2"], mode="generic", resolve_timeout=0.5)
        assert fp.install(flow("ab", to_a, to_b, (V4["b"], 6080), source=(V4["a"], 5080)))
        assert fp.install(flow("ba", to_b, to_a, (V4["a"], 5080), source=(V4["b"], 6080)))
    try:
        for i in range(10):
            ue_a.sendto(b"a%d" % i, to_a)
            ue_b.sendto(b"b%d" % i, to_b)
        assert receive(ue_b, 10) == [(b"a%d" % i, to_b) for i in range(10)]
        assert receive(ue_a, 10) == [(b"b%d" % i, to_a) for i in range(10)]
        assert fp.counters() == {"ab": (10, 20), "ba": (10, 20)}
    finally:
        fp.close()


def test_unknown_interface(topology: Topology) -> None:
    with topology.relay.enter(), pytest.raises(XdpUnavailable, match="no network interface"):
        XdpFastPath(["nosuch0"])


def test_without_clang(topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLTE_XDP_OBJECT", raising=False)
    monkeypatch.setenv("VOLTE_XDP_CLANG", "/nonexistent/clang")
    with topology.relay.enter(), pytest.raises(XdpUnavailable, match="clang not found"):
        XdpFastPath(["r1"])


UNPRIVILEGED = {
    "nobody": ("--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"),
    # uid 0 with an empty bounding set: exec grants no capabilities, files stay readable.
    "root-without-caps": ("--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"),
}


@pytest.mark.parametrize("who", list(UNPRIVILEGED))
def test_unprivileged_process_gets_a_clear_reason(topology: Topology, who: str) -> None:
    """The loader without capabilities: XdpUnavailable naming the privilege it lacks."""
    setpriv = ("setpriv", *UNPRIVILEGED[who])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent"}

    def run(code: str) -> subprocess.CompletedProcess[str]:
        # ip netns exec needs root to enter the namespace; setpriv drops privilege inside it.
        return subprocess.run(
            ["ip", "netns", "exec", topology.relay.name, *setpriv, sys.executable, "-c", code],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    if run("import services.media.xdp").returncode != 0:
        pytest.skip(f"{who} cannot read this checkout or its Python: {REPO}")
    proc = run(
        "from services.media.xdp import XdpFastPath, XdpUnavailable\n"
        "try:\n"
        "    XdpFastPath(['r1'])\n"
        "except XdpUnavailable as exc:\n"
        "    print('XdpUnavailable:', exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("XdpUnavailable: bpf(BPF_MAP_CREATE) refused (EPERM)")
    assert "CAP_BPF" in proc.stdout and "CAP_NET_ADMIN" in proc.stdout
