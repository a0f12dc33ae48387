"""The enb-agent service (services/enb/service.py) with simulated eNBs over real SCTP.

Each test runs the real agent shell (SCTP server, S1apAgent, gRPC BearerControl) in-process, or
as `python -m services.enb`, and 2 simulated eNBs x 5 UEs (services/enb/shell.py), each eNB on
its own SCTP association; the test talks gRPC to the agent like the sbc does.

Tests taking `kind` run over the userspace transport (usrsctp over UDP) here on the host, and
over kernel SCTP where the kernel has it: tests/enb/test_guest_s1ap.py runs the kernel variants
(`-m kernel_sctp`) inside a user-mode-linux guest with dumpcap capturing, then decodes the
capture with tshark's S1AP dissector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.enb.s1ap import (
    ERabSetupItem,
    ERabSetupResponse,
    MessageType,
    Procedure,
    encode,
)
from services.enb.sctp import (
    DownReason,
    SctpConfig,
    kernel_sctp_available,
    open_transport,
)
from services.enb.service import EnbAgentServer, EnbConfig, failure_code, qos_from_request
from services.enb.shell import SimulatedEnbs
from services.enb.simulator import SimulatorConfig
from tests.enb.test_s1ap import unknown_procedure
from volte.v1 import bearer_pb2, bearer_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parents[2]
KERNEL = kernel_sctp_available()
IN_GUEST = os.environ.get("VOLTE_IN_UML_GUEST") == "1"
# Association parameters shrunk for tests (loss detection in about a second).
FAST = SctpConfig(streams=8, heartbeat_interval=0.3, rto_initial=0.2, rto_min=0.1, rto_max=0.3,
                  max_retrans=2, max_init_attempts=3, max_init_timeout=0.5)
BEARER_TIMEOUT = 1.0
# The bad-input test's agent port under kernel SCTP: the guest capture leaves it out of the
# "no malformed PDU" check (its garbage is malformed on purpose); see test_guest_s1ap.py.
BAD_INPUT_PORT = 36413
ENBS, UES = 2, 5
Event = bearer_pb2.BearerEvent


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kind" in metafunc.fixturenames:
        kinds = [pytest.param("userspace", id="userspace")]
        if KERNEL:
            kinds.append(pytest.param("kernel", id="kernel", marks=pytest.mark.kernel_sctp))
        metafunc.parametrize("kind", kinds)


@dataclass
class Lab:
    kind: str
    agent: EnbAgentServer
    sims: SimulatedEnbs
    channel: grpc.aio.Channel
    stub: bearer_pb2_grpc.BearerControlStub

    def imsi(self, enb: int, ue: int = 0) -> str:
        return self.sims.imsis_of(enb)[ue]

    async def watch(self, imsi: str = "") -> grpc.aio.UnaryStreamCall[
            bearer_pb2.WatchBearerEventsRequest, bearer_pb2.BearerEvent]:
        """A WatchEvents stream, subscribed by the time this returns."""
        before = self.agent.hub.watchers
        call: grpc.aio.UnaryStreamCall[bearer_pb2.WatchBearerEventsRequest,
                                       bearer_pb2.BearerEvent] = self.stub.WatchEvents(
            bearer_pb2.WatchBearerEventsRequest(imsi=imsi))
        async with asyncio.timeout(5):
            while self.agent.hub.watchers <= before:
                await asyncio.sleep(0.01)
        return call

    async def setup(self, imsi: str, **kw: Any) -> bearer_pb2.Bearer:
        reply = await self.stub.SetupBearer(bearer_pb2.SetupBearerRequest(imsi=imsi, **kw),
                                            timeout=5)
        bearer: bearer_pb2.Bearer = reply.bearer
        return bearer

    async def release(self, bearer_id: str, cause: str = "") -> bearer_pb2.Bearer:
        reply = await self.stub.ReleaseBearer(
            bearer_pb2.ReleaseBearerRequest(bearer_id=bearer_id, cause=cause), timeout=5)
        bearer: bearer_pb2.Bearer = reply.bearer
        return bearer

    async def enodebs(self) -> list[bearer_pb2.Enodeb]:
        return list((await self.stub.ListEnodebs(bearer_pb2.ListEnodebsRequest())).enodebs)

    async def ues(self, enb_id: str = "") -> dict[str, bearer_pb2.UeContext]:
        reply = await self.stub.ListUes(bearer_pb2.ListUesRequest(enb_id=enb_id))
        return {u.imsi: u for u in reply.ues}


@contextlib.asynccontextmanager
async def open_lab(kind: str, *, sctp_port: int = 0, record: bool = True) -> AsyncIterator[Lab]:
    config = EnbConfig(grpc_listen="127.0.0.1:0", sctp_listen="127.0.0.1", sctp_port=sctp_port,
                       sctp_transport=kind, bearer_timeout=BEARER_TIMEOUT)
    agent = EnbAgentServer(config, transport=open_transport(kind, FAST))  # type: ignore[arg-type]
    await agent.start()
    assert agent.sctp is not None
    sims = SimulatedEnbs(SimulatorConfig(enbs=ENBS, ues_per_enb=UES), "127.0.0.1",
                         agent.sctp.port, transport=open_transport(kind, FAST),  # type: ignore[arg-type]
                         local_host="127.0.0.1", record=record)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{agent.grpc_port}")
    try:
        await sims.start(timeout=5)
        await sims.ready(timeout=10)
        yield Lab(kind, agent, sims, channel, bearer_pb2_grpc.BearerControlStub(channel))
    finally:
        await channel.close(None)
        await sims.close()
        await agent.stop(grace=0)


@pytest.fixture
async def lab(kind: str) -> AsyncIterator[Lab]:
    async with open_lab(kind) as lab:
        yield lab


async def next_event(call: grpc.aio.UnaryStreamCall[bearer_pb2.WatchBearerEventsRequest,
                                                     bearer_pb2.BearerEvent],
                     kind: bearer_pb2.BearerEvent.Kind | None = None,
                     timeout: float = 5.0) -> bearer_pb2.BearerEvent:
    """The next event (of `kind`, skipping others) on a WatchEvents stream."""
    async with asyncio.timeout(timeout):
        while True:
            event = await call.read()
            assert isinstance(event, bearer_pb2.BearerEvent), "WatchEvents ended"
            if kind is None or event.kind == kind:
                return event


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def rpc_error(coro: object) -> grpc.aio.AioRpcError:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def cause_of(exc: grpc.aio.AioRpcError) -> str:
    """The S1AP (or local) cause the agent puts in the trailing metadata."""
    metadata: Any = exc.trailing_metadata() or ()  # (key, value) pairs (not as grpc-stubs say)
    for key, value in metadata:
        if key == "s1ap-cause":
            return str(value)
    return ""


def received(lab: Lab, enb: int, code: Procedure) -> list[int]:
    """Streams on which eNB `enb` received initiating messages of procedure `code`."""
    return [r.stream for r in lab.sims.received
            if r.enb == enb and r.procedure_code == code
            and r.message_type is MessageType.INITIATING]


# -- S1 Setup, attach --------------------------------------------------------------------------
async def test_s1_setup_and_attach(lab: Lab) -> None:
    enbs = sorted(await lab.enodebs(), key=lambda e: e.enb_id)
    assert [e.enb_id for e in enbs] == ["00101-0x100", "00101-0x101"]
    for i, e in enumerate(enbs):
        assert e.name == f"sim-enb-{i}"
        assert (e.sctp_streams_in, e.sctp_streams_out) == (8, 8)
        assert e.ue_count == UES and list(e.tacs) == [1]
        assert e.sctp_peer.ip == "127.0.0.1"
        assert e.sctp_peer.port == lab.sims.association(i).local[1]  # type: ignore[union-attr]
        assert abs(e.connected_since.ToSeconds() - time.time()) < 30
    ues = await lab.ues()
    assert set(ues) == set(lab.sims.imsis)
    for imsi, ue in ues.items():
        assert ue.state == "attached"
        # Each UE keeps the stream its eNB chose for it, never stream 0 (TS 36.412).
        assert 1 <= ue.sctp_stream <= 7
        assert ue.sctp_stream == lab.sims.stream_of(imsi)
        assert ue.enb_id == ("00101-0x100" if imsi in lab.sims.imsis_of(0) else "00101-0x101")
        assert ue.mme_ue_s1ap_id and ue.enb_ue_s1ap_id
        assert not ue.bearers
    assert set(await lab.ues("00101-0x101")) == set(lab.sims.imsis_of(1))
    # S1 Setup Response on stream 0; each Initial Context Setup on its UE's stream.
    setup_streams = [r.stream for r in lab.sims.received if r.procedure_code == Procedure.S1_SETUP]
    assert setup_streams == [0, 0]
    for enb in range(ENBS):
        assert sorted(received(lab, enb, Procedure.INITIAL_CONTEXT_SETUP)) == sorted(
            lab.sims.stream_of(i) for i in lab.sims.imsis_of(enb))
    assert lab.sims.sim.stream_changes == 0 and lab.sims.sim.ue_messages_on_stream_0 == 0


# -- bearers -----------------------------------------------------------------------------------
async def test_bearer_setup_and_release_on_the_ue_stream(lab: Lab) -> None:
    imsi = lab.imsi(1, 2)
    stream = lab.sims.stream_of(imsi)
    events = await lab.watch(imsi)
    dialog = common_pb2.DialogId(call_id="call-1@ue", from_tag="a", to_tag="b")
    bearer = await lab.setup(imsi, dialog=dialog, codec_bps=23_850)
    assert bearer.state == bearer_pb2.Bearer.STATE_ACTIVE
    assert (bearer.imsi, bearer.e_rab_id, bearer.enb_id) == (imsi, 6, "00101-0x101")
    assert bearer.qos.qci == 1 and bearer.qos.arp.priority_level == 2
    # AMR-WB 23.85 kbit/s at 20 ms over IPv4 with 5 % RTCP: 42 kbit/s each way, GBR = MBR.
    assert (bearer.qos.gbr_ul_bps, bearer.qos.gbr_dl_bps) == (42_000, 42_000)
    assert (bearer.qos.mbr_ul_bps, bearer.qos.mbr_dl_bps) == (42_000, 42_000)
    assert bearer.dialog == dialog
    assert lab.sims.bearers(imsi) == [6]
    assert received(lab, 1, Procedure.E_RAB_SETUP) == [stream]  # the UE's own stream
    active = await next_event(events, Event.KIND_BEARER_ACTIVE)
    assert active.imsi == imsi and active.bearer.bearer_id == bearer.bearer_id

    ue = (await lab.ues())[imsi]
    assert [(b.bearer_id, b.state, b.dialog.call_id) for b in ue.bearers] == [
        (bearer.bearer_id, bearer_pb2.Bearer.STATE_ACTIVE, "call-1@ue")]
    # The same call asking again (a retransmitted 200 OK, say) gets the same bearer.
    again = await lab.setup(imsi, dialog=dialog)
    assert again.bearer_id == bearer.bearer_id and lab.sims.bearers(imsi) == [6]
    # A second call of the same UE gets a bearer of its own.
    other = await lab.setup(imsi, dialog=common_pb2.DialogId(call_id="call-2@ue"),
                            qos=bearer_pb2.BearerQos(gbr_ul_bps=64_000, gbr_dl_bps=64_000))
    assert other.e_rab_id == 7 and (other.qos.gbr_ul_bps, other.qos.mbr_dl_bps) == (64_000, 64_000)
    assert lab.sims.bearers(imsi) == [6, 7]

    released = await lab.release(bearer.bearer_id)
    assert released.state == bearer_pb2.Bearer.STATE_RELEASED
    assert released.cause == "nas/normal-release"
    assert lab.sims.bearers(imsi) == [7]
    assert received(lab, 1, Procedure.E_RAB_RELEASE) == [stream]
    gone = await next_event(events, Event.KIND_BEARER_RELEASED)
    assert gone.bearer.bearer_id == bearer.bearer_id
    await lab.release(other.bearer_id, "radioNetwork/user-inactivity")
    assert lab.sims.bearers(imsi) == [] and not (await lab.ues())[imsi].bearers
    missing = await rpc_error(lab.release(bearer.bearer_id))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert lab.sims.sim.stream_changes == 0 and lab.sims.sim.ue_messages_on_stream_0 == 0
    events.cancel()


async def test_requests_the_agent_cannot_serve(lab: Lab) -> None:
    unknown = await rpc_error(lab.setup("001019999999999"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "001019999999999" in (unknown.details() or "")
    assert cause_of(unknown) == "local/unknown-imsi"
    for bad, code in [
        (lab.setup("12ab"), grpc.StatusCode.INVALID_ARGUMENT),
        (lab.setup(lab.imsi(0), qos=bearer_pb2.BearerQos(gbr_ul_bps=64_000, mbr_ul_bps=1_000)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lab.setup(lab.imsi(0), filters=[bearer_pb2.PacketFilter(
            remote=common_pb2.SocketAddress(ip="not-an-ip"))]), grpc.StatusCode.INVALID_ARGUMENT),
        (lab.release("not-a-number"), grpc.StatusCode.INVALID_ARGUMENT),
        (lab.release("4242"), grpc.StatusCode.NOT_FOUND),
    ]:
        assert (await rpc_error(bad)).code() == code
    bearer = await lab.setup(lab.imsi(0))
    bad_cause = await rpc_error(lab.release(bearer.bearer_id, "nas/no-such-cause"))
    assert bad_cause.code() == grpc.StatusCode.INVALID_ARGUMENT
    await lab.release(bearer.bearer_id)


async def test_enb_refusal_and_timeout_are_clear_errors(lab: Lab) -> None:
    imsi = lab.imsi(0, 1)
    lab.sims.set_failure_probability(1.0)
    refused = await rpc_error(lab.setup(imsi))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "radioNetwork/radio-resources-not-available" in (refused.details() or "")
    assert cause_of(refused) == "radioNetwork/radio-resources-not-available"
    assert lab.sims.bearers(imsi) == [] and not (await lab.ues())[imsi].bearers
    lab.sims.set_failure_probability(0.0)

    # The eNB answers after the agent's bearer timeout: DEADLINE_EXCEEDED, and the E-RAB it
    # sets up late is released again, so nothing is left up.
    lab.sims.set_response_delay(BEARER_TIMEOUT + 0.3)
    started = time.monotonic()
    late = await rpc_error(lab.setup(imsi))
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cause_of(late) == "local/timeout"
    assert BEARER_TIMEOUT - 0.1 < time.monotonic() - started < BEARER_TIMEOUT + 0.5
    await lab.sims.wait_for(lambda: received(lab, 0, Procedure.E_RAB_RELEASE) != [], 3)
    await lab.sims.wait_for(lambda: lab.sims.bearers(imsi) == [], 3)
    lab.sims.set_response_delay(0.0)

    # A caller that gives up first (its gRPC deadline) leaves no bearer behind either.
    lab.sims.set_response_delay(0.4)
    gave_up = await rpc_error(lab.stub.SetupBearer(
        bearer_pb2.SetupBearerRequest(imsi=imsi), timeout=0.1))
    assert gave_up.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await lab.sims.wait_for(lambda: len(received(lab, 0, Procedure.E_RAB_RELEASE)) == 2, 3)
    await lab.sims.wait_for(lambda: lab.sims.bearers(imsi) == [], 3)
    await until(lambda: lab.agent.agent.bearers() == [])  # the delayed Release Response
    lab.sims.set_response_delay(0.0)
    bearer = await lab.setup(imsi)  # and the UE still gets bearers
    await lab.release(bearer.bearer_id)


# -- eNB loss ----------------------------------------------------------------------------------
async def test_enb_association_loss_reports_the_enb_and_its_ues(lab: Lab) -> None:
    events = await lab.watch()
    victim, survivor = lab.imsi(0, 3), lab.imsi(1, 3)
    bearer = await lab.setup(victim)
    await lab.setup(survivor)
    lab.sims.kill(0)  # ABORT, as when the eNB crashes
    lost = await next_event(events, Event.KIND_BEARER_LOST)
    assert (lost.imsi, lost.bearer.bearer_id) == (victim, bearer.bearer_id)
    assert lost.cause == "local/enb-lost"
    down = await next_event(events, Event.KIND_ENB_DISCONNECTED)
    assert down.enb_id == "00101-0x100"
    assert sorted(down.imsis) == sorted(lab.sims.imsis_of(0))
    assert "association" in down.cause
    assert [e.enb_id for e in await lab.enodebs()] == ["00101-0x101"]
    assert set(await lab.ues()) == set(lab.sims.imsis_of(1))
    gone = await rpc_error(lab.setup(victim))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert (await rpc_error(lab.release(bearer.bearer_id))).code() == grpc.StatusCode.NOT_FOUND
    assert lab.sims.bearers(survivor) == [6]  # the other eNB's UEs are untouched
    second = await lab.setup(survivor)
    assert second.e_rab_id == 7

    # The eNB comes back: S1 Setup and its UEs attach again.
    await lab.sims.connect(0)
    await lab.sims.ready(timeout=10)
    assert (await next_event(events, Event.KIND_ENB_CONNECTED)).enb_id == "00101-0x100"
    attached = {(await next_event(events, Event.KIND_UE_CONTEXT_CREATED)).imsi
                for _ in range(UES)}
    assert attached == set(lab.sims.imsis_of(0))
    assert len(await lab.enodebs()) == 2
    assert (await lab.setup(victim)).e_rab_id == 6
    events.cancel()


# -- bad input ---------------------------------------------------------------------------------
async def test_bad_input_gets_error_indication_or_is_dropped(kind: str) -> None:
    port = BAD_INPUT_PORT if kind == "kernel" else 0
    async with open_lab(kind, sctp_port=port) as lab:
        sims, enb, stream = lab.sims, 0, 3
        imsi = lab.imsi(enb, 1)
        bearer = await lab.setup(imsi)
        truncated = encode(ERabSetupResponse(1, 1, (ERabSetupItem(6, "10.0.0.2", 1),)))[:-4]
        bad_inputs = [
            (b"\xff\xfe\xfd\xfc\x00\x13\x37", "protocol/transfer-syntax-error"),  # garbage
            (truncated, "protocol/transfer-syntax-error"),  # truncated APER
            (unknown_procedure(200, "reject"), "protocol/abstract-syntax-error-reject"),
            (unknown_procedure(201, "notify"), "protocol/abstract-syntax-error-ignore-and-notify"),
        ]
        for n, (data, cause) in enumerate(bad_inputs, 1):
            sims.send_raw(enb, stream, data)
            await sims.wait_for(lambda n=n: len(sims.errors()) == n, 5)  # type: ignore[misc]
            assert str(sims.errors()[-1].message.cause) == cause
        # Dropped with a log line, no answer: an unknown procedure whose criticality says
        # ignore, and a message that is not S1AP at all (PPID 46, Diameter).
        sims.send_raw(enb, stream, unknown_procedure(202, "ignore"))
        sims.send_raw(enb, stream, b"\x01\x00\x00\x14", ppid=46)
        # Error Indications go back on the stream the bad PDU came on.
        assert [s for s in received(lab, enb, Procedure.ERROR_INDICATION)] == [stream] * 4
        # The association and every UE are unaffected: a bearer set up afterwards works, on
        # this eNB and the other one, and the one from before is still there.
        assert sims.association(enb).is_up  # type: ignore[union-attr]
        after = await lab.setup(lab.imsi(enb, 2))
        assert after.state == bearer_pb2.Bearer.STATE_ACTIVE
        assert (await lab.setup(lab.imsi(1, 0))).state == bearer_pb2.Bearer.STATE_ACTIVE
        assert len(sims.errors()) == 4  # nothing for the ignored ones
        assert len(await lab.ues()) == ENBS * UES and len(await lab.enodebs()) == ENBS
        assert (await lab.release(bearer.bearer_id)).state == bearer_pb2.Bearer.STATE_RELEASED
        assert sims.down_reasons == {}


# -- the process -------------------------------------------------------------------------------
def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serving(address: str, proc: subprocess.Popen[str], timeout: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(
                    service="volte.v1.BearerControl"), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"not SERVING within {timeout} s")


async def test_process_serves_then_drains_on_sigterm(kind: str) -> None:
    grpc_port = _free_port(socket.SOCK_STREAM)
    sctp_port = _free_port(socket.SOCK_DGRAM if kind == "userspace" else socket.SOCK_STREAM)
    metrics_port = _free_port(socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTE_")}
    env["VOLTE_SCTP_TRANSPORT"] = kind  # options come from VOLTE_* variables too
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.enb", "--grpc-listen", f"127.0.0.1:{grpc_port}",
         "--sctp-port", str(sctp_port), "--metrics-port", str(metrics_port),
         "--sctp-heartbeat", "0.5"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    sims = SimulatedEnbs(SimulatorConfig(enbs=1, ues_per_enb=2), "127.0.0.1", sctp_port,
                         transport=open_transport(kind, FAST),  # type: ignore[arg-type]
                         local_host="127.0.0.1")
    try:
        await _serving(f"127.0.0.1:{grpc_port}", proc, 30)
        await sims.start(timeout=5)
        await sims.ready(timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = bearer_pb2_grpc.BearerControlStub(channel)
            reply = await stub.SetupBearer(bearer_pb2.SetupBearerRequest(imsi=sims.imsis[1]),
                                           timeout=5)
            assert reply.bearer.state == bearer_pb2.Bearer.STATE_ACTIVE
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
        assert re.search(r"^volte_enb_enodebs(\{[^}]*\})? 1\.0$", page, re.M), page
        assert re.search(r"^volte_enb_ues(\{[^}]*\})? 2\.0$", page, re.M), page
        assert re.search(r'^volte_enb_bearer_setups_total\{[^}]*result="ok"[^}]*\} 1\.0$',
                         page, re.M), page
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 10)
        assert rc == 0
        # Drained: the eNB's association was shut down gracefully.
        await sims.wait_for(lambda: 0 in sims.down_reasons, 5)
        assert sims.down_reasons[0] == DownReason.SHUTDOWN
    finally:
        await sims.close()
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    used = [line for line in lines if '"message": "SCTP transport:' in line]
    assert len(used) == 1, stderr  # the transport in use, said once
    assert ("kernel SCTP" if kind == "kernel" else "userspace SCTP (libusrsctp)") in used[0]
    assert any(f"over {kind} SCTP" in line for line in lines), stderr
    assert any('"message": "stopped"' in line for line in lines), stderr


# -- pure parts ----------------------------------------------------------------------------------
def test_qos_from_the_request() -> None:
    voice = qos_from_request(bearer_pb2.SetupBearerRequest(imsi="001010000000001"))
    assert (voice.qci, voice.priority_level, voice.pre_emption_capability,
            voice.pre_emption_vulnerability) == (1, 2, True, False)
    assert (voice.gbr_ul, voice.gbr_dl, voice.mbr_ul, voice.mbr_dl) == (42_000,) * 4  # AMR-WB
    g711 = qos_from_request(bearer_pb2.SetupBearerRequest(codec_bps=64_000, ptime_ms=20))
    assert g711.gbr_ul == g711.mbr_dl == 84_000  # (64 + 16) kbit/s plus 5 % RTCP
    given = qos_from_request(bearer_pb2.SetupBearerRequest(qos=bearer_pb2.BearerQos(
        qci=2, gbr_ul_bps=100_000, gbr_dl_bps=50_000, mbr_dl_bps=80_000,
        arp=common_pb2.AllocationRetentionPriority(priority_level=9,
                                                   pre_emption_vulnerability=True))))
    assert (given.qci, given.gbr_ul, given.mbr_ul, given.gbr_dl, given.mbr_dl) == (
        2, 100_000, 100_000, 50_000, 80_000)
    assert (given.priority_level, given.pre_emption_capability,
            given.pre_emption_vulnerability) == (9, False, True)
    best_effort = qos_from_request(bearer_pb2.SetupBearerRequest(
        qos=bearer_pb2.BearerQos(qci=8)))
    assert best_effort.qci == 8 and not best_effort.has_gbr


def test_failure_causes_map_to_clear_status_codes() -> None:
    code = grpc.StatusCode
    assert failure_code("local/unknown-imsi") == code.NOT_FOUND
    assert failure_code("local/timeout") == code.DEADLINE_EXCEEDED
    assert failure_code("local/enb-lost") == code.UNAVAILABLE
    assert failure_code("local/ue-not-attached") == code.UNAVAILABLE
    assert failure_code("local/no-free-e-rab-id") == code.RESOURCE_EXHAUSTED
    assert failure_code("local/cancelled") == code.ABORTED
    assert failure_code("radioNetwork/radio-resources-not-available") == code.FAILED_PRECONDITION
