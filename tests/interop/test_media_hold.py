"""Hold and resume by re-INVITE through sbc + media relay, and bad SDP refused with 488.

The real stack (redis-server, state, media, sbc as processes) and loadgen's UEs: the caller
dials, talks, holds (re-INVITE a=sendonly), resumes (a=sendrecv) and hangs up, while both UEs
send G.711-sized RTP at 50 packets/s and count what arrives. What each side's SDP names is
checked at every step (the relay, with the same ports throughout), and what arrived is counted
per phase: both ways while talking, nothing in a held direction while on hold.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from loadgen.rtp import RtpStream
from loadgen.ue import Call, Ue, sdp_destination, sdp_direction
from services.sip.sdp import Direction
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc, state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop
FIRST = 410000
PORT_MIN, PORT_MAX = 43000, 43499
TALK = 1.0  # seconds of each phase
SETTLE = 0.2  # packets in flight when a phase changes (20 ms apart, sub-ms through the relay)


@dataclass
class Env:
    stack: Stack
    metrics_port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    metrics_port = free_port()
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        media_grpc=f"127.0.0.1:{free_port()}",
        media_port_min=PORT_MIN,
        media_port_max=PORT_MAX,
        media_timeout=10.0,  # longer than any silent hold here
        extra_media_args=["--metrics-port", str(metrics_port)],
        run_dir=str(tmp_path_factory.mktemp("stack")),
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(10, FIRST, "ims.local", "pw")
    provisioner.close()
    yield Env(stack, metrics_port)
    stack.stop()


async def pair(stack: Stack, a: int, b: int) -> tuple[Ue, Ue]:
    proxy = (stack.config.sip_host, stack.config.sip_port)
    ues = (Ue(str(a), "pw", domain="ims.local", proxy=proxy),
           Ue(str(b), "pw", domain="ims.local", proxy=proxy))
    for ue in ues:
        ue.media = True
        await ue.start()
        assert (await ue.register()).status == 200
    return ues


async def relay_stats(stack: Stack, callee: Ue, call_id: str) -> dict[int, int]:
    """RTP packets the relay received from each leg of the call (LEG_CALLER, LEG_CALLEE)."""
    async with grpc.aio.insecure_channel(stack.config.state_grpc) as state_channel, \
            grpc.aio.insecure_channel(stack.config.media_grpc) as media_channel:
        invite = callee.invites[call_id]
        dialog_id = common_pb2.DialogId(call_id=call_id, from_tag=invite.from_.tag or "")
        dialog = await state_pb2_grpc.StateStoreStub(state_channel).GetDialog(
            state_pb2.GetDialogRequest(id=dialog_id), timeout=2
        )
        stats = await media_pb2_grpc.MediaControlStub(media_channel).QueryStats(
            media_pb2.QueryStatsRequest(session_id=dialog.media_session_id), timeout=2
        )
    assert all(s.packets_lost == 0 for s in stats.streams), stats  # no gap across the hold
    return {s.leg: s.rtp_packets for s in stats.streams}


@dataclass(frozen=True)
class Counts:
    """What each UE has received so far, and what the relay got from each."""

    at_caller: int
    at_callee: int
    from_caller: int
    from_callee: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.at_caller - other.at_caller, self.at_callee - other.at_callee,
                      self.from_caller - other.from_caller, self.from_callee - other.from_callee)


async def counts(stack: Stack, call: Call, callee: Ue, callee_rtp: RtpStream) -> Counts:
    relay = await relay_stats(stack, callee, call.call_id)
    return Counts(call.rtp.received, callee_rtp.received,
                  relay[media_pb2.LEG_CALLER], relay[media_pb2.LEG_CALLEE])


def relay_address(body: bytes) -> tuple[str, int]:
    address = sdp_destination(body)
    assert PORT_MIN <= address[1] <= PORT_MAX, body  # the relay, never the other UE
    return address


async def hold_and_resume(env: Env, a: int, b: int, *, music: bool) -> tuple[
    Call, Ue, list[Counts]
]:
    """Talk, hold, resume, talk, hang up; what had arrived at each phase boundary."""
    caller, callee = await pair(env.stack, a, b)
    try:
        call = await caller.dial(callee.number, rtp_seconds=20)
        assert call.answered and call.result.status == 200
        callee_rtp = callee.answered[call.call_id]
        marks = [await counts(env.stack, call, callee, callee_rtp)]
        await asyncio.sleep(TALK)
        marks.append(await counts(env.stack, call, callee, callee_rtp))
        held = await call.hold(music=music)
        on_hold = [call.on_hold]
        await asyncio.sleep(SETTLE)
        marks.append(await counts(env.stack, call, callee, callee_rtp))
        await asyncio.sleep(TALK)
        marks.append(await counts(env.stack, call, callee, callee_rtp))
        resumed = await call.resume()
        on_hold.append(call.on_hold)
        await asyncio.sleep(SETTLE)
        marks.append(await counts(env.stack, call, callee, callee_rtp))
        await asyncio.sleep(TALK)
        marks.append(await counts(env.stack, call, callee, callee_rtp))
        result = await call.hang_up()
    finally:
        await caller.close()
        await callee.close()
    assert held.status == 200 and resumed.status == 200 and on_hold == [True, False]
    assert result.ended and result.reinvites == [200, 200]
    return call, callee, marks


def check_sdp(call: Call, callee: Ue) -> None:
    """Each re-INVITE and its 200 went through the sbc, which anchored them on the relay
    ports of the call: the same ones at every step, on both sides."""
    answers = call.sdp_received  # at the caller: the 200s to INVITE, hold, resume
    offers = callee.offers[call.call_id]  # at the callee: INVITE, hold, resume
    assert len(answers) == 3 and len(offers) == 3
    assert len({relay_address(body) for body in answers}) == 1
    assert len({relay_address(body) for body in offers}) == 1
    assert relay_address(answers[0]) != relay_address(offers[0])  # one port pair per leg
    assert [sdp_direction(body) for body in offers] == [
        Direction.SENDRECV, Direction.SENDONLY, Direction.SENDRECV
    ]
    assert [sdp_direction(body) for body in answers] == [
        Direction.SENDRECV, Direction.RECVONLY, Direction.SENDRECV
    ]


async def test_hold_and_resume_by_reinvite(env: Env) -> None:
    call, callee, marks = await hold_and_resume(env, FIRST, FIRST + 1, music=False)
    check_sdp(call, callee)
    talk, hold, resumed = marks[1] - marks[0], marks[3] - marks[2], marks[5] - marks[4]
    # Talking: RTP both ways through the relay (50 packets/s; 1 s).
    for phase in (talk, resumed):
        assert phase.at_caller >= 35 and phase.at_callee >= 35, phase
        assert phase.from_caller >= 35 and phase.from_callee >= 35, phase
    # On hold: the holder pauses its RTP, the held side answered recvonly and sends none:
    # nothing reaches the relay or either UE.
    assert hold == Counts(0, 0, 0, 0), hold


async def test_music_on_hold_flows_only_toward_the_held_side(env: Env) -> None:
    call, callee, marks = await hold_and_resume(env, FIRST + 2, FIRST + 3, music=True)
    check_sdp(call, callee)
    talk, hold, resumed = marks[1] - marks[0], marks[3] - marks[2], marks[5] - marks[4]
    for phase in (talk, resumed):
        assert phase.at_caller >= 35 and phase.at_callee >= 35, phase
    # sendonly / recvonly: the holder's audio still reaches the held side through the relay;
    # the held direction carries nothing.
    assert hold.at_callee >= 35 and hold.from_caller >= 35, hold
    assert hold.at_caller == 0 and hold.from_callee == 0, hold


# -- bad SDP ----------------------------------------------------------------------------------
BAD_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 300.1.2.3\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
)


def media_sessions(env: Env) -> float:
    """volte_media_sessions_active from the relay's Prometheus endpoint."""
    url = f"http://127.0.0.1:{env.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as reply:
        text = reply.read().decode()
    match = re.search(r"^volte_media_sessions_active(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert match is not None, text
    return float(match.group(1))


async def no_sessions(env: Env) -> None:
    """Sessions of calls that ended are deleted shortly after their BYE: wait for that."""
    for _ in range(40):
        if await asyncio.to_thread(media_sessions, env) == 0:
            return
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(media_sessions, env) == 0


async def test_bad_sdp_gets_488_and_leaves_no_media_session(env: Env) -> None:
    caller, callee = await pair(env.stack, FIRST + 4, FIRST + 5)
    try:
        await no_sessions(env)
        refused = await caller.dial(callee.number, offer=BAD_SDP)
        assert refused.result.status == 488 and not refused.answered
        assert refused.final is not None
        assert refused.final.reason == "Not Acceptable Here"
        warning = refused.final.headers.get("warning") or ""
        assert warning.startswith("399 ") and "300.1.2.3" in warning, warning
        assert callee.calls_answered == 0 and not callee.invites  # never forwarded
        await no_sessions(env)  # the relay holds nothing for the refused call
        # The sbc goes on serving: a good call right after, with media (held and resumed in
        # passing: call()'s scheduled form of what the tests above do step by step).
        good = await caller.call(callee.number, hold=0.8, hold_after=0.2, resume_after=0.4)
    finally:
        await caller.close()
        await callee.close()
    assert good.status == 200 and good.ended and good.reinvites == [200, 200]
    assert good.rtp_received >= 10
    await no_sessions(env)
