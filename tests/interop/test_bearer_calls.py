"""Calls with VoLTE bearers, end to end: the stack `volte up` runs, eNodeBs, UEs, calls.

A simulated eNodeB (services.enb.shell, over userspace SCTP since this kernel has none)
attaches two UEs whose IMSIs are those of two subscribers; loadgen's UEs register and call
through the sbc. While the call is up both UEs hold a QCI-1 bearer at the eNB agent; after
the BYE, none. Losing the eNodeB's association ends the call with a BYE (and a Reason) to
both sides.

The bearer policy: with the callee on an eNodeB whose E-RAB set-ups all fail (the
simulator's failure injection), a best-effort sbc (the default) lets the call go on and
counts the failure; an sbc with `--bearer-policy required` answers the caller 580, ends the
callee's leg with a BYE saying why and leaves no bearer, dialog or media session behind.
An eNodeB that answers too late counts as a failure too; a callee that retransmits its 200
(SIPp) until ACKed gets one ACK and one BYE. Re-INVITEs (hold, resume) ask for no new bearer.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from loadgen.ue import Ue
from services.enb.sctp import SctpConfig, open_transport
from services.enb.shell import SimulatedEnbs
from services.enb.simulator import BearerDown, BearerRejected, BearerUp, SimulatorConfig
from services.stack import Stack, StackConfig, children, free_port, grpc_serving
from services.state import keys
from services.subscribers import Provisioner
from tests.interop.test_sbc_calls import PASSWORD as SIPP_PASSWORD
from tests.interop.test_sbc_calls import SCENARIOS, finish
from tests.interop.test_sbc_calls import Ue as SippUe
from volte.v1 import bearer_pb2, bearer_pb2_grpc

pytestmark = pytest.mark.interop
FIRST = 500000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default policy: best-effort."""
    yield from running_stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An sbc with `--bearer-policy required` (through StackConfig, as `volte up` passes it)."""
    yield from running_stack(tmp_path_factory.mktemp("required"), bearer_policy="required")


def running_stack(run_dir: Path, bearer_policy: str = "best-effort") -> Iterator[Stack]:
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
        run_dir=str(run_dir),
        bearer_policy=bearer_policy,
        extra_sbc_args=["--metrics-port", str(free_port())],
        extra_media_args=["--metrics-port", str(free_port())],
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(11, FIRST, "ims.local", "pw")
    provisioner.provision(1, FIRST + 11, "ims.local", SIPP_PASSWORD)  # a SIPp UE's
    provisioner.provision(2, FIRST + 12, "ims.local", "pw")
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


async def enodebs(stack: Stack, config: SimulatorConfig) -> SimulatedEnbs:
    sims = SimulatedEnbs(
        config, "127.0.0.1", stack.config.enb_sctp_port, local_host="127.0.0.1",
        transport=open_transport("userspace", SctpConfig(heartbeat_interval=0.5)),
    )
    await sims.start(timeout=5)
    await sims.ready(timeout=10)
    return sims


async def registered(stack: Stack, first: int) -> tuple[Ue, Ue]:
    """UEs `first` (the caller) and `first + 1` (the callee), registered."""
    proxy = (stack.config.sip_host, stack.config.sip_port)
    caller = Ue(str(first), "pw", domain="ims.local", proxy=proxy)
    callee = Ue(str(first + 1), "pw", domain="ims.local", proxy=proxy)
    for ue in (caller, callee):
        await ue.start()
        assert (await ue.register()).status == 200
    return caller, callee


async def setting(stack: Stack, first: int) -> tuple[SimulatedEnbs, Ue, Ue]:
    sims = await enodebs(stack, SimulatorConfig(enbs=1, ues_per_enb=2, imsi_base=first))
    return (sims, *await registered(stack, first))


async def failing_callee(stack: Stack, first: int) -> tuple[SimulatedEnbs, SimulatedEnbs, Ue, Ue]:
    """The caller on an eNodeB as usual; the callee on one that fails every E-RAB set-up."""
    good = await enodebs(stack, SimulatorConfig(imsi_base=first, first_enb_id=0x200))
    bad = await enodebs(stack, SimulatorConfig(imsi_base=first + 1, first_enb_id=0x201,
                                               name_prefix="bad-enb", failure_probability=1.0))
    return (good, bad, *await registered(stack, first))


def metric(port: int, name: str, **labels: str) -> float:
    """One sample from a Prometheus endpoint (0 when it is not there yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def bearer_failures(stack: Stack, policy: str) -> float:
    """The callee's bearer failures the eNB caused (not a UE attached nowhere)."""
    port = int(stack.config.extra_sbc_args[1])
    return metric(port, "sbc_bearer_failures_total", policy=policy, ue="callee", reason="error")


def dialog_stored(stack: Stack, call_id: str) -> bool:
    client = redis.Redis(port=stack.config.redis_port)
    try:
        return bool(client.exists(keys.dialogs(call_id)))
    finally:
        client.close()


def imsi(number: int) -> str:
    return f"00101{number:010d}"


async def bearers_of(stack: Stack, caller: int, callee: int) -> tuple[int, int]:
    """QCI-1 bearers of the caller's and the callee's UE at the eNB agent."""
    counts = await qci1_bearers(stack)
    return counts[imsi(caller)], counts[imsi(callee)]


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


async def test_a_worker_that_did_not_set_the_bearers_up_releases_them(stack: Stack) -> None:
    """The worker that set the call's bearers up dies (kill -9) mid-call: the BYE goes through
    its successor, which knows the bearers only from the dialog in state, and releases them."""
    sims, caller, callee = await setting(stack, FIRST + 12)
    try:
        call = asyncio.ensure_future(caller.call(callee.number, hold=4.0))
        await asyncio.sleep(1.2)
        assert await bearers_of(stack, FIRST + 12, FIRST + 13) == (1, 1)
        supervisor = next(p.pid for p in stack.procs if p.service == "sbc")
        (worker,) = children(supervisor)
        os.kill(worker, signal.SIGKILL)
        for _ in range(100):  # the supervisor starts another
            if children(supervisor) not in ([], [worker]) and \
                    grpc_serving(stack.config.sbc_grpc, timeout=0.5):
                break
            await asyncio.sleep(0.1)
        result = await call
        assert result.status == 200 and result.ended
        await asyncio.sleep(0.5)  # the release follows the BYE's 200
        assert await bearers_of(stack, FIRST + 12, FIRST + 13) == (0, 0)
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


async def test_best_effort_a_failed_bearer_is_counted_and_the_call_goes_on(stack: Stack) -> None:
    good, bad, caller, callee = await failing_callee(stack, FIRST + 4)
    before = bearer_failures(stack, "best-effort")
    try:
        call = await caller.dial(callee.number)
        assert call.result.status == 200
        await asyncio.sleep(0.3)
        assert await bearers_of(stack, FIRST + 4, FIRST + 5) == (1, 0)
        assert len([e for e in bad.events if isinstance(e, BearerRejected)]) == 1
        assert dialog_stored(stack, call.call_id)
        result = await call.hang_up()
        assert result.ended and callee.byes_received == 1
        assert bearer_failures(stack, "best-effort") == before + 1
        await asyncio.sleep(0.5)
        assert await bearers_of(stack, FIRST + 4, FIRST + 5) == (0, 0)
    finally:
        for closing in (caller.close(), callee.close(), good.close(), bad.close()):
            await closing


async def test_required_a_failed_bearer_fails_the_call_with_580(required: Stack) -> None:
    good, bad, caller, callee = await failing_callee(required, FIRST + 6)
    media_port = int(required.config.extra_media_args[1])
    try:
        call = await caller.dial(callee.number)
        assert call.result.status == 580 and call.final is not None
        assert call.final.reason == "Precondition Failure"
        warning = call.final.headers.get("warning") or ""
        assert warning.startswith("399 ") and "QCI-1 bearer setup failed for the callee" in warning
        # The callee answered; the sbc ACKed its 200 and ended its leg, saying why.
        assert callee.calls_answered == 1
        for _ in range(30):
            if callee.byes_received and callee.acks_received:
                break
            await asyncio.sleep(0.1)
        assert callee.acks_received == 1 and callee.byes_received == 1
        assert "cause=580" in callee.bye_reasons[0]
        assert 'text="QCI-1 bearer setup failed for the callee"' in callee.bye_reasons[0]
        # The caller's bearer was set up, then released; nothing is left of the call.
        caller_imsi = imsi(FIRST + 6)

        def caller_bearer() -> list[type]:
            return [type(e) for e in good.events
                    if isinstance(e, BearerUp | BearerDown) and e.imsi == caller_imsi]

        await good.wait_for(lambda: BearerDown in caller_bearer(), timeout=3)
        assert caller_bearer() == [BearerUp, BearerDown]
        assert await bearers_of(required, FIRST + 6, FIRST + 7) == (0, 0)
        assert not dialog_stored(required, call.final.call_id)
        for _ in range(30):
            if metric(media_port, "volte_media_sessions_active") == 0:
                break
            await asyncio.sleep(0.1)
        assert metric(media_port, "volte_media_sessions_active") == 0
        assert bearer_failures(required, "required") == 1
        assert caller.byes_received == 0
    finally:
        for closing in (caller.close(), callee.close(), good.close(), bad.close()):
            await closing


async def test_required_a_reinvite_asks_for_no_new_bearer(required: Stack) -> None:
    """Hold and resume in a call that has its bearers: no E-RAB set-up at all, so even an
    eNodeB that now refuses every set-up does not fail the call."""
    sims, caller, callee = await setting(required, FIRST + 8)
    try:
        call = await caller.dial(callee.number)
        assert call.result.status == 200
        await asyncio.sleep(0.3)
        assert await bearers_of(required, FIRST + 8, FIRST + 9) == (1, 1)
        sims.set_failure_probability(1.0)
        assert (await call.hold()).status == 200
        assert (await call.resume()).status == 200
        assert not [e for e in sims.events if isinstance(e, BearerRejected)]
        assert len([e for e in sims.events if isinstance(e, BearerUp)]) == 2
        assert await bearers_of(required, FIRST + 8, FIRST + 9) == (1, 1)
        assert (await call.hang_up()).ended
        await asyncio.sleep(0.5)
        assert await bearers_of(required, FIRST + 8, FIRST + 9) == (0, 0)
    finally:
        await caller.close()
        await callee.close()
        await sims.close()


async def test_required_a_bearer_too_late_fails_the_call_once(
    required: Stack, tmp_path: Path
) -> None:
    """The callee's eNodeB answers E-RAB Setup after the sbc's --bearer-timeout (2 s); the
    callee, SIPp, retransmits its 200 meanwhile (0.5 s, 1.5 s). The caller gets one 580;
    SIPp gets one ACK and one BYE with the Reason (a second of either fails its scenario);
    the late bearer does not stay at the agent."""
    caller_number, callee_number = FIRST + 10, FIRST + 11
    good = await enodebs(required, SimulatorConfig(imsi_base=caller_number, first_enb_id=0x202))
    slow = await enodebs(required, SimulatorConfig(imsi_base=callee_number, first_enb_id=0x203,
                                                   name_prefix="slow-enb"))
    slow.set_response_delay(3.0)
    proxy = (required.config.sip_host, required.config.sip_port)
    caller = Ue(str(caller_number), "pw", domain="ims.local", proxy=proxy)
    callee = SippUe(required, callee_number, tmp_path)
    try:
        await caller.start()
        assert (await caller.register()).status == 200
        await asyncio.to_thread(callee.register)
        answering = callee.sipp(SCENARIOS / "call_uas_bearer_refused.xml")
        call = await caller.dial(str(callee_number))
        assert call.result.status == 580 and call.final is not None
        assert "QCI-1 bearer setup failed for the callee" in (call.final.headers.get("warning")
                                                              or "")
        await asyncio.to_thread(finish, answering, tmp_path)
        await asyncio.sleep(2.0)  # the eNodeB's late answer
        assert await bearers_of(required, caller_number, callee_number) == (0, 0)
    finally:
        await caller.close()
        await good.close()
        await slow.close()
