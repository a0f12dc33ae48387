"""Fixtures for the XDP fast-path tests: the built object, and a three-host topology.

    ns A (caller UE)          ns R (the relay)                    ns B (callee UE)
    a0 10.200.1.2/24  ---veth---  r1 10.200.1.1/24
       fd00:200:1::2/64              fd00:200:1::1/64
                                  r2 10.200.2.1/24  ---veth---  b0 10.200.2.2/24
                                     fd00:200:2::1/64               fd00:200:2::2/64

The relay's XDP program goes on r1 and r2 (native mode, per test). Frames it sends with XDP_TX
or bpf_redirect() arrive at a0/b0 as XDP frames, which a veth only takes when its own end has
NAPI running: an XDP program (or GRO). a0 and b0 therefore get the relay object too, loaded by
iproute2 (`ip link set dev a0 xdpdrv obj ...`) with its own empty map, so it passes everything.
Namespace names are unique per run; all three go away (with their veths) at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.media.xdp import build
from tests.media_xdp.netns import Netns, tx_checksum_off, unique_prefix, veth


def require_root_and_clang() -> None:
    if os.geteuid() != 0:
        pytest.fail("the XDP tests need root: bpf(), XDP attach and network namespaces")
    try:
        build.find_clang()
    except build.BuildError as exc:
        pytest.fail(f"{exc} (`make deps` installs it)")  # never skip silently


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    require_root_and_clang()
    return build.object_path()


@dataclass
class Topology:
    relay: Netns
    a: Netns
    b: Netns


@pytest.fixture(scope="module")
def topology(bpf_object: Path) -> Iterator[Topology]:
    prefix = unique_prefix()
    made: list[Netns] = []
    try:
        relay, a, b = (Netns(f"{prefix}-{n}") for n in ("r", "a", "b"))
        made += [relay, a, b]
        veth(relay, "r1", a, "a0")
        veth(relay, "r2", b, "b0")
        for ns, dev, v4, v6 in (
            (relay, "r1", "10.200.1.1/24", "fd00:200:1::1/64"),
            (relay, "r2", "10.200.2.1/24", "fd00:200:2::1/64"),
            (a, "a0", "10.200.1.2/24", "fd00:200:1::2/64"),
            (b, "b0", "10.200.2.2/24", "fd00:200:2::2/64"),
        ):
            ns.ip("addr", "add", v4, "dev", dev)
            ns.ip("-6", "addr", "add", v6, "dev", dev, "nodad")
        for ns, gw4, gw6 in (
            (a, "10.200.1.1", "fd00:200:1::1"),
            (b, "10.200.2.1", "fd00:200:2::1"),
        ):
            ns.ip("route", "add", "default", "via", gw4)
            ns.ip("-6", "route", "add", "default", "via", gw6)
        for ns, dev in ((a, "a0"), (b, "b0")):
            ns.ip("link", "set", "dev", dev, "xdpdrv", "obj", str(bpf_object), "sec", "xdp")
            with ns.enter():
                tx_checksum_off(dev)
        yield Topology(relay, a, b)
    finally:
        for ns in made:
            ns.delete()
