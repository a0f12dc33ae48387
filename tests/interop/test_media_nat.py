"""Latching through NAT: a UE in a network namespace behind nftables masquerade gets media.

    ns <p>-ue                   ns <p>-nat (the NAT box)                  root namespace
    UE 10.77.N.2/24 ---veth--- 10.77.N.1/24                              (sbc, media, UE B,
       default via 10.77.N.1    10.78.N.1/24 ---veth--- 10.78.N.2/24      redis, state)
                                masquerade 10.77.N.0/24 out of the wan   unreachable 10.77.N.0/24

The UE behind the NAT (loadgen's, run in its own process by tests.interop.natted_ue) says its
private address in Via, Contact and SDP. SIP works because the sbc answers to where requests
came from (rport/received) and reaches the UE on its registration's flow; media works because
the relay latches onto the NAT's public address and port. The root namespace cannot reach the
private network at all (an unreachable route, so a relay that believed the SDP would fail
rather than leak packets out of the default route): without latching there is no audio.

Names are unique per run (namespaces, veths, the /24s' third octet); everything made here goes
at teardown, also after a failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadgen.ue import Ue
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc, state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
FIRST = 420000
PORT_MIN, PORT_MAX = 44000, 44499
TALK = 2.0  # seconds of RTP in each call


def run(*argv: str, stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@dataclass
class Topology:
    ue_ns: str
    private: str  # the UE's address, 10.77.N.2
    public: str  # the NAT box's outside address, 10.78.N.1
    host: str  # ours in the root namespace, 10.78.N.2: sbc, relay, UE B


def _free_octet() -> int:
    """N such that 10.77.N.0/24 and 10.78.N.0/24 overlap nothing routed here."""
    routes = subprocess.run(["ip", "-o", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True).stdout
    taken = []
    for line in routes.splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev ..." or "local 10.0.0.1 dev ..."
            try:
                taken.append(ipaddress.ip_network(word, strict=False))
                break
            except ValueError:
                continue
    for n in random.sample(range(256), 256):
        mine = [ipaddress.ip_network(f"10.{b}.{n}.0/24") for b in (77, 78)]
        if not any(m.overlaps(t) for m in mine for t in taken if t.prefixlen > 0):
            return n
    raise RuntimeError("no free 10.77.N.0/24 + 10.78.N.0/24")


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("the NAT test needs root: network namespaces, veth pairs, nftables")
    if shutil.which("nft") is None:
        pytest.fail("nft is not installed (`make deps` installs nftables)")  # never skip
    prefix = f"vnat{secrets.token_hex(3)}"
    ue_ns, nat_ns = f"{prefix}-ue", f"{prefix}-nat"
    n = _free_octet()
    private_net = f"10.77.{n}.0/24"
    made: list[str] = []
    route = False
    try:
        for ns in (ue_ns, nat_ns):
            run("ip", "netns", "add", ns)
            made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", f"{prefix}u", "netns", ue_ns, "type", "veth",
            "peer", "name", f"{prefix}l", "netns", nat_ns)
        run("ip", "link", "add", f"{prefix}r", "type", "veth",
            "peer", "name", f"{prefix}w", "netns", nat_ns)
        for ns, dev, address in (
            (ue_ns, f"{prefix}u", f"10.77.{n}.2/24"),
            (nat_ns, f"{prefix}l", f"10.77.{n}.1/24"),
            (nat_ns, f"{prefix}w", f"10.78.{n}.1/24"),
            ("", f"{prefix}r", f"10.78.{n}.2/24"),
        ):
            where = ["-n", ns] if ns else []
            run("ip", *where, "addr", "add", address, "dev", dev)
            run("ip", *where, "link", "set", dev, "up")
        run("ip", "-n", ue_ns, "route", "add", "default", "via", f"10.77.{n}.1")
        run("ip", "netns", "exec", nat_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "netns", "exec", nat_ns, "nft", "-f", "-", stdin=(
            "table ip nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {private_net} oifname "{prefix}w" masquerade\n'
            "  }\n"
            "}\n"
        ))
        # The public side cannot reach the private network (no route leaks it either).
        run("ip", "route", "add", "unreachable", private_net)
        route = True
        yield Topology(ue_ns, f"10.77.{n}.2", f"10.78.{n}.1", f"10.78.{n}.2")
    finally:
        if route:
            subprocess.run(["ip", "route", "del", "unreachable", private_net], check=False,
                           capture_output=True, timeout=10)
        for ns in made:  # their veths (and the root end of the pair) go with them
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True,
                           timeout=10)
        subprocess.run(["ip", "link", "del", f"{prefix}r"], check=False, capture_output=True,
                       timeout=10)


@pytest.fixture(scope="module")
def stack(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_host=topology.host,
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        media_grpc=f"127.0.0.1:{free_port()}",
        media_bind=topology.host,
        media_port_min=PORT_MIN,
        media_port_max=PORT_MAX,
        media_timeout=10.0,
        run_dir=str(tmp_path_factory.mktemp("stack")),
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(4, FIRST, "ims.local", "pw")
    provisioner.close()
    yield stack
    stack.stop()


class NattedUe:
    """tests.interop.natted_ue in the UE's namespace: its JSON lines, bounded waits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, topology: Topology, stack: Stack, number: int,
                    *mode: str) -> NattedUe:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topology.ue_ns, sys.executable, "-m",
            "tests.interop.natted_ue", "--proxy", f"{stack.config.sip_host}:"
            f"{stack.config.sip_port}", "--local", topology.private, "--number", str(number),
            *mode, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, timeout: float = 15) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = await self.proc.stderr.read() if self.proc.stderr is not None else b""
            raise AssertionError(f"natted_ue ended early: {err.decode(errors='replace')}")
        value: dict[str, Any] = json.loads(raw)
        return value

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def root_ue(topology: Topology, stack: Stack, number: int) -> Ue:
    ue = Ue(str(number), "pw", domain="ims.local",
            proxy=(stack.config.sip_host, stack.config.sip_port))
    ue.media = True
    await ue.start(topology.host)
    assert (await ue.register()).status == 200
    return ue


async def relay_stats(stack: Stack, call_id: str, from_tag: str) -> media_pb2.SessionStats:
    async with grpc.aio.insecure_channel(stack.config.state_grpc) as state_channel, \
            grpc.aio.insecure_channel(stack.config.media_grpc) as media_channel:
        dialog = await state_pb2_grpc.StateStoreStub(state_channel).GetDialog(
            state_pb2.GetDialogRequest(id=common_pb2.DialogId(call_id=call_id,
                                                              from_tag=from_tag)),
            timeout=2,
        )
        stats: media_pb2.SessionStats = await media_pb2_grpc.MediaControlStub(
            media_channel).QueryStats(
            media_pb2.QueryStatsRequest(session_id=dialog.media_session_id), timeout=2
        )
    return stats


async def registration(stack: Stack, number: int) -> state_pb2.Binding:
    async with grpc.aio.insecure_channel(stack.config.state_grpc) as channel:
        reply = await state_pb2_grpc.StateStoreStub(channel).LookupBindings(
            state_pb2.LookupBindingsRequest(impu=f"sip:{number}@ims.local"), timeout=2
        )
    assert len(reply.bindings) == 1, reply
    binding: state_pb2.Binding = reply.bindings[0]
    return binding


def latched(stats: media_pb2.SessionStats, leg: media_pb2.Leg) -> tuple[str, int]:
    stream = next(s for s in stats.streams if s.leg == leg)
    return stream.latched_source.ip, stream.latched_source.port


def relay_port(address: Any) -> bool:
    return PORT_MIN <= int(address[1]) <= PORT_MAX


async def test_natted_caller_gets_media_through_the_latched_nat_address(
    topology: Topology, stack: Stack
) -> None:
    callee = await root_ue(topology, stack, FIRST + 1)
    natted = await NattedUe.start(topology, stack, FIRST, "call", str(FIRST + 1),
                                  "--seconds", str(TALK))
    try:
        registered = await natted.line()
        assert registered["status"] == 200  # REGISTER and its 401/200 went through the NAT
        for _ in range(100):  # the INVITE through the NAT, answered here
            if callee.answered:
                break
            await asyncio.sleep(0.05)
        call_id = next(iter(callee.answered))
        await asyncio.sleep(TALK / 2)
        stats = await relay_stats(stack, call_id, callee.invites[call_id].from_.tag or "")
        done = await natted.line(timeout=TALK + 10)
    finally:
        await natted.close()
        await callee.close()
    # The UE said its private address; the relay latched onto the NAT's public one.
    assert f"c=IN IP4 {topology.private}" in done["sdp_sent"]
    source_ip, _ = latched(stats, media_pb2.LEG_CALLER)
    assert source_ip == topology.public != topology.private
    assert latched(stats, media_pb2.LEG_CALLEE)[0] == topology.host
    # Media both ways, through the relay only (50 packets/s for TALK seconds).
    assert done["status"] == 200 and done["ended"]
    assert relay_port(done["remote_media"])
    assert done["rtp_sources"] and all(relay_port(s) for s in done["rtp_sources"])
    assert done["rtp_sent"] >= 70
    callee_rtp = callee.answered[call_id]
    assert callee_rtp.received >= 0.8 * done["rtp_sent"]
    assert done["rtp_received"] >= 0.8 * callee_rtp.sent
    assert all(s[0] == topology.host and relay_port(s) for s in callee_rtp.sources)
    by_leg = {s.leg: s for s in stats.streams}
    assert by_leg[media_pb2.LEG_CALLER].rtp_packets >= 30
    assert by_leg[media_pb2.LEG_CALLEE].rtp_packets >= 30


async def test_natted_callee_is_reached_and_gets_media(topology: Topology, stack: Stack) -> None:
    natted = await NattedUe.start(topology, stack, FIRST + 2, "answer", "--timeout",
                                  str(TALK + 10))
    caller = await root_ue(topology, stack, FIRST + 3)
    try:
        registered = await natted.line()
        assert registered["status"] == 200
        # Registered as the UE said (private Contact), reached where it really is (the NAT).
        binding = await registration(stack, FIRST + 2)
        assert topology.private in binding.contact_uri
        assert binding.received.ip == topology.public
        # The INVITE reaches the UE through the NAT, on the flow of its REGISTER.
        call = await caller.dial(str(FIRST + 2), rtp_seconds=TALK)
        assert call.answered, call.result
        assert call.dialog is not None
        await asyncio.sleep(TALK / 2)
        stats = await relay_stats(stack, call.call_id, call.dialog.local_tag)
        await asyncio.sleep(TALK / 2)
        result = await call.hang_up()
        done = await natted.line(timeout=10)
    finally:
        await natted.close()
        await caller.close()
    # The answer said the private address; what reached the caller sends media to the relay.
    # (o= keeps the answerer's address: the sbc rewrites where media goes, not the origin.)
    answer = call.sdp_received[0].decode()
    assert f"c=IN IP4 {topology.host}" in answer and f"c=IN IP4 {topology.private}" not in answer
    assert latched(stats, media_pb2.LEG_CALLEE)[0] == topology.public
    assert latched(stats, media_pb2.LEG_CALLER)[0] == topology.host
    assert result.ended and done["ended"]
    assert relay_port(done["remote_media"]) and relay_port(result.remote_media or ("", 0))
    assert result.rtp_sent >= 70 and done["rtp_sent"] >= 70
    assert done["rtp_received"] >= 0.8 * result.rtp_sent
    assert result.rtp_received >= 0.8 * done["rtp_sent"]
    assert all(relay_port(s) for s in done["rtp_sources"])
