"""Calls with media through sbc + media relay: RTP both ways through the relay, stats, timeout.

The real stack (redis-server, state, media, sbc as processes) and loadgen's UEs, which send
G.711-sized RTP at 50 packets/s and count what arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadgen.ue import Ue, sdp_destination
from services.sip.message import Response
from services.sip.transaction import ClientTx
from services.sip.transport import Source
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from tests.interop.test_sbc_calls import PASSWORD as SIPP_PASSWORD
from tests.interop.test_sbc_calls import Ue as SippUe
from tests.interop.test_sbc_calls import finish
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc, state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop
FIRST = 400000
PORT_MIN, PORT_MAX = 42000, 42999


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        media_grpc=f"127.0.0.1:{free_port()}",
        media_port_min=PORT_MIN,
        media_port_max=PORT_MAX,
        media_timeout=2.0,
        run_dir=str(tmp_path_factory.mktemp("stack")),
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(10, FIRST, "ims.local", "pw")
    provisioner.provision(1, FIRST + 10, "ims.local", SIPP_PASSWORD)  # a SIPp UE's
    provisioner.close()
    yield stack
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


async def test_rtp_flows_both_ways_through_the_relay(stack: Stack, tmp_path: Path) -> None:
    caller, callee = await pair(stack, FIRST, FIRST + 1)
    try:
        call = asyncio.ensure_future(caller.call(callee.number, hold=1.5))
        await asyncio.sleep(1.0)  # mid-call: the relay's statistics for this call
        state = state_pb2_grpc.StateStoreStub(grpc.aio.insecure_channel(stack.config.state_grpc))
        media = media_pb2_grpc.MediaControlStub(
            grpc.aio.insecure_channel(stack.config.media_grpc)
        )
        call_id = next(iter(callee.answered))
        invite = callee.invites[call_id]
        dialog_id = common_pb2.DialogId(call_id=call_id, from_tag=invite.from_.tag or "")
        dialog = await state.GetDialog(state_pb2.GetDialogRequest(id=dialog_id), timeout=2)
        stats = await media.QueryStats(
            media_pb2.QueryStatsRequest(session_id=dialog.media_session_id), timeout=2
        )
        result = await call
    finally:
        await caller.close()
        await callee.close()
    assert result.status == 200 and result.ended
    # The SDP each side saw names the relay, never the other UE.
    assert result.remote_media is not None
    assert PORT_MIN <= result.remote_media[1] <= PORT_MAX
    assert all(PORT_MIN <= port <= PORT_MAX for _, port in result.rtp_sources)
    callee_rtp = callee.answered[call_id]
    assert all(PORT_MIN <= port <= PORT_MAX for _, port in callee_rtp.sources)
    # Media flowed both ways (50 packets/s; allow for start-up and the hang-up).
    assert result.rtp_sent >= 70 and result.rtp_received >= 0.8 * result.rtp_sent
    assert callee_rtp.received >= 0.8 * result.rtp_sent
    by_leg = {s.leg: s for s in stats.streams}
    assert by_leg[media_pb2.LEG_CALLER].rtp_packets >= 30
    assert by_leg[media_pb2.LEG_CALLEE].rtp_packets >= 30
    assert by_leg[media_pb2.LEG_CALLER].packets_lost == 0


async def test_media_inactivity_ends_the_call_with_bye_on_both_sides(stack: Stack) -> None:
    caller, callee = await pair(stack, FIRST + 2, FIRST + 3)
    caller.media = callee.media = False  # a call whose audio never flows
    try:
        result = await caller.call(callee.number, hold=5.0)  # beyond the relay's 2 s timeout
    finally:
        await caller.close()
        await callee.close()
    assert result.status == 200
    # The sbc's BYE reached both, with the reason; the caller's own BYE after its hold time
    # comes second to the callee.
    assert caller.byes_received == 1
    assert 'text="RTP timeout"' in caller.bye_reasons[0]
    assert 'text="RTP timeout"' in callee.bye_reasons[0]


class LateAcker(Ue):
    """A caller whose ACK is late (1.2 s), so that the callee retransmits its 200 OK after the
    sbc has relayed the first and let the transaction go; keeps the SDP of every 2xx it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[bytes] = []

    def _ack(self, dialog: Any, cseq: int) -> None:
        asyncio.get_running_loop().call_later(1.2, super()._ack, dialog, cseq)

    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        if 200 <= response.status < 300 and response.cseq.method == "INVITE":
            self.answers.append(response.body)
        super().on_response(response, tx, source)


async def test_a_retransmitted_200_still_names_the_relay(stack: Stack, tmp_path: Path) -> None:
    proxy = (stack.config.sip_host, stack.config.sip_port)
    caller = LateAcker(str(FIRST + 9), "pw", domain="ims.local", proxy=proxy)
    callee = SippUe(stack, FIRST + 10, tmp_path)
    try:
        await caller.start()
        assert (await caller.register()).status == 200
        await asyncio.to_thread(callee.register)
        answering = callee.answer()  # 200 OK retransmitted every 0.5 s until the ACK
        call = await caller.dial(str(FIRST + 10))
        assert call.result.status == 200
        await asyncio.sleep(1.5)
        assert len(caller.answers) >= 2  # the first 200 and at least one retransmission
        for body in caller.answers:  # each names the relay, never SIPp's own media address
            host, port = sdp_destination(body)
            assert host == "127.0.0.1" and PORT_MIN <= port <= PORT_MAX, body
        await call.hang_up()
        await asyncio.to_thread(finish, answering, tmp_path)
    finally:
        await caller.close()
