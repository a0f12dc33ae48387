"""Calls with VoLTE bearers, end to end: the stack `volte up` runs, eNodeBs, UEs, calls.

A simulated eNodeB (services.enb.shell, over userspace SCTP since this kernel has none)
attaches two UEs whose IMSIs are those of two subscribers; loadgen's UEs register and call
through the sbc. While the call is up both UEs hold a QCI-1 bearer at the eNB agent; after
the BYE, none. Losing the eNodeB's association ends the call with a BYE (and a Reason) to
both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from loadgen.ue import Ue
from services.enb.sctp import SctpConfig, open_transport
from services.enb.shell import SimulatedEnbs
from services.enb.simulator import SimulatorConfig
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from volte.v1 import bearer_pb2, bearer_pb2_grpc

pytestmark = pytest.mark.interop
FIRST = 500000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        media_grpc=f"127.0.0.1:{free_port()}",
        media_port_min=43000,
        media_port_max=43999,
        enb_grpc=f"127.0.0.1:{free_port()}",
        enb_sctp_port=free_port(2),
        enb_sctp_transport="userspace",
        run_dir=str(tmp_path_factory.mktemp("stack")),
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(4, FIRST, "ims.local", "pw")
    provisioner.close()
    yield stack
    stack.stop()


async def qci1_bearers(stack: Stack) -> dict[str, int]:
    """IMSI -> number of active QCI-1 bearers, as the eNB agent reports them."""
    channel = grpc.aio.insecure_channel(stack.config.enb_grpc)
    try:
        reply = await bearer_pb2_grpc.BearerControlStub(channel).ListUes(
            bearer_pb2.ListUesRequest(), timeout=5
        )
    finally:
        await channel.close(None)
    return {
        ue.imsi: sum(
            1 for b in ue.bearers
            if b.qos.qci == 1 and b.state == bearer_pb2.Bearer.STATE_ACTIVE
        )
        for ue in reply.ues
    }


async def setting(stack: Stack, first: int) -> tuple[SimulatedEnbs, Ue, Ue]:
    sims = SimulatedEnbs(
        SimulatorConfig(enbs=1, ues_per_enb=2, imsi_base=first), "127.0.0.1",
        stack.config.enb_sctp_port, local_host="127.0.0.1",
        transport=open_transport("userspace", SctpConfig(heartbeat_interval=0.5)),
    )
    await sims.start(timeout=5)
    await sims.ready(timeout=10)
    proxy = (stack.config.sip_host, stack.config.sip_port)
    caller = Ue(str(first), "pw", domain="ims.local", proxy=proxy)
    callee = Ue(str(first + 1), "pw", domain="ims.local", proxy=proxy)
    for ue in (caller, callee):
        await ue.start()
        assert (await ue.register()).status == 200
    return sims, caller, callee


def imsi(number: int) -> str:
    return f"00101{number:010d}"


async def test_both_ues_hold_qci1_bearers_during_the_call_and_none_after(stack: Stack) -> None:
    sims, caller, callee = await setting(stack, FIRST)
    try:
        assert (await qci1_bearers(stack)) == {imsi(FIRST): 0, imsi(FIRST + 1): 0}
        call = asyncio.ensure_future(caller.call(callee.number, hold=2.0))
        await asyncio.sleep(1.2)
        assert (await qci1_bearers(stack)) == {imsi(FIRST): 1, imsi(FIRST + 1): 1}
        result = await call
        assert result.status == 200 and result.ended
        await asyncio.sleep(0.5)  # the release follows the BYE's 200
        assert (await qci1_bearers(stack)) == {imsi(FIRST): 0, imsi(FIRST + 1): 0}
    finally:
        await caller.close()
        await callee.close()
        await sims.close()


async def test_losing_the_enodeb_ends_its_calls_with_bye(stack: Stack) -> None:
    sims, caller, callee = await setting(stack, FIRST + 2)
    try:
        call = asyncio.ensure_future(caller.call(callee.number, hold=4.0))
        await asyncio.sleep(1.2)
        assert (await qci1_bearers(stack))[imsi(FIRST + 2)] == 1
        sims.kill(0)  # the association goes, abruptly (ABORT)
        for _ in range(50):
            if caller.byes_received and callee.byes_received:
                break
            await asyncio.sleep(0.1)
        assert caller.byes_received == 1 and callee.byes_received >= 1
        assert 'text="eNodeB lost"' in caller.bye_reasons[0]
        assert 'text="eNodeB lost"' in callee.bye_reasons[0]
        await call
    finally:
        await caller.close()
        await callee.close()
        await sims.close()
