"""The eNB simulator (services/enb/simulator.py) against the real agent, wired in memory.

The `Loopback` stands in for SCTP: each simulated eNB is an association, PDUs cross in order,
the clock is virtual. These tests run the whole S1 Setup -> attach -> E-RAB setup/release flow
for 3 eNBs x 5 UEs and check the stream rules on every PDU that crossed, failure injection,
response delays against the agent's timeout, Reset, association loss, and that tshark dissects
the recorded exchange cleanly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from services.enb.procedures import (
    CAUSE_TIMEOUT,
    AgentConfig,
    BearerFailed,
    BearerReleased,
    BearerSetUp,
    EnbConnected,
    EnbLost,
    S1apAgent,
    UeAttached,
    UeReleased,
)
from services.enb.s1ap import (
    ERabReleaseCommand,
    ERabSetupRequest,
    InitialUeMessage,
    Plmn,
    Reset,
    ResetAcknowledge,
    S1SetupFailure,
    S1SetupRequest,
    S1SetupResponse,
    decode,
    qos_for_codec,
)
from services.enb.simulator import (
    Attached,
    BearerDown,
    BearerRejected,
    BearerUp,
    EnbSimulator,
    Loopback,
    MmeError,
    ResetDone,
    SetupDone,
    SetupFailed,
    SimulatorConfig,
    UeGone,
    bench_pairs,
    crc32c,
)
from tests.enb.test_s1ap import tshark_frames

T = TypeVar("T")
VOICE = qos_for_codec(23_850)
NON_UE = (S1SetupRequest, S1SetupResponse, S1SetupFailure, Reset, ResetAcknowledge)


def wired(
    enbs: int = 3,
    ues: int = 5,
    *,
    streams: int = 8,
    agent_config: AgentConfig | None = None,
    **sim: object,
) -> Loopback:
    agent = S1apAgent(agent_config)
    simulator = EnbSimulator(SimulatorConfig(enbs=enbs, ues_per_enb=ues, **sim))  # type: ignore[arg-type]
    return Loopback(agent, simulator, streams=streams)


def of(events: Sequence[object], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


def check_streams(loop: Loopback) -> None:
    """TS 36.412 on every PDU that crossed: non-UE-associated ones on stream 0; each
    UE-associated connection (Initial UE Message to release) on one stream, the same both
    ways; the first connections of an eNB's UEs spread over streams 1..n-1."""
    generation: dict[tuple[int, int], int] = defaultdict(int)
    ue_stream: dict[tuple[int, int, int], set[int]] = defaultdict(set)
    for record in loop.wire:
        message = decode(record.data)
        if isinstance(message, NON_UE):
            assert record.stream == 0, message
            continue
        enb_ue_id = getattr(message, "enb_ue_id", None)
        assert enb_ue_id is not None, message
        if isinstance(message, InitialUeMessage):
            generation[(record.enb, enb_ue_id)] += 1
        ue_stream[(record.enb, enb_ue_id, generation[(record.enb, enb_ue_id)])].add(record.stream)
    for key, streams in ue_stream.items():
        assert len(streams) == 1, (key, streams)
        assert streams != {0}, key
    first: dict[int, set[int]] = defaultdict(set)
    for (enb, _, gen), streams in ue_stream.items():
        if gen == 1:
            first[enb] |= streams
    spread = set(range(1, min(loop.sim.config.ues_per_enb, loop.streams - 1) + 1))
    assert all(streams == spread for streams in first.values()), first
    assert loop.sim.stream_changes == 0
    assert loop.sim.ue_messages_on_stream_0 == 0


def test_full_flow_three_enbs_five_ues():
    loop = wired()
    loop.connect()
    assert len(of(loop.agent_events, EnbConnected)) == 3
    assert len(of(loop.agent_events, UeAttached)) == 15
    assert len(of(loop.sim_events, SetupDone)) == 3
    assert len(of(loop.sim_events, Attached)) == 15
    assert {u.imsi for u in loop.agent.ues()} == set(loop.sim.imsis)
    assert [e.ue_count for e in loop.agent.enbs()] == [5, 5, 5]

    bearers = {}
    for imsi in loop.sim.imsis:
        bearer_id = loop.setup_bearer(imsi, VOICE, key=f"call-{imsi}")
        outcome = loop.outcome(bearer_id)
        assert isinstance(outcome, BearerSetUp), outcome
        assert outcome.bearer.imsi == imsi and outcome.bearer.e_rab_id == 6
        assert loop.sim.ue(imsi).bearers.keys() == {5, 6}
        bearers[imsi] = bearer_id
    assert len(of(loop.sim_events, BearerUp)) == 15
    assert len(loop.agent.bearers()) == 15

    for imsi, bearer_id in bearers.items():
        outcome = loop.outcome(loop.release_bearer(bearer_id))
        assert isinstance(outcome, BearerReleased), outcome
        assert loop.sim.ue(imsi).bearers.keys() == {5}
    assert len(of(loop.sim_events, BearerDown)) == 15
    assert loop.agent.bearers() == []
    check_streams(loop)
    assert loop.agent.next_timer() is None


def test_stream_rules_hold_with_more_ues_than_streams():
    loop = wired(enbs=1, ues=9, streams=4)
    loop.connect()
    for imsi in loop.sim.imsis:
        assert isinstance(loop.outcome(loop.setup_bearer(imsi, VOICE)), BearerSetUp)
    check_streams(loop)
    streams = [loop.agent.ue(i).stream for i in loop.sim.imsis]  # type: ignore[union-attr]
    assert streams == [1, 2, 3, 1, 2, 3, 1, 2, 3]


def test_failure_injection_is_seeded():
    def failures(seed: int) -> list[str]:
        loop = wired(enbs=2, ues=10, failure_probability=0.5, seed=seed)
        loop.connect()
        out = []
        for imsi in loop.sim.imsis:
            outcome = loop.outcome(loop.setup_bearer(imsi, VOICE))
            if isinstance(outcome, BearerFailed):
                assert outcome.cause == "radioNetwork/radio-resources-not-available"
                out.append(imsi)
            else:
                assert isinstance(outcome, BearerSetUp)
        assert len(of(loop.sim_events, BearerRejected)) == len(out)
        return out

    first = failures(seed=11)
    assert 0 < len(first) < 20
    assert failures(seed=11) == first
    assert failures(seed=12) != first


def test_every_setup_fails_at_probability_one():
    loop = wired(enbs=1, ues=3, failure_probability=1.0)
    loop.connect()
    for imsi in loop.sim.imsis:
        outcome = loop.outcome(loop.setup_bearer(imsi, VOICE))
        assert isinstance(outcome, BearerFailed)
    assert loop.agent.bearers() == []


def test_response_delay():
    loop = wired(enbs=1, ues=2, response_delay=0.5)
    loop.connect()
    assert of(loop.agent_events, UeAttached) == []  # Initial Context Setup answers are late
    loop.advance(0.5)
    assert len(of(loop.agent_events, UeAttached)) == 2
    bearer_id = loop.setup_bearer(loop.sim.imsis[0], VOICE)
    assert loop.outcome(bearer_id) is None
    loop.advance(0.4)
    assert loop.outcome(bearer_id) is None
    loop.advance(0.1)
    assert isinstance(loop.outcome(bearer_id), BearerSetUp)


def test_agent_timeout_shorter_than_the_enb_delay():
    loop = wired(enbs=1, ues=1, response_delay=2.0, agent_config=AgentConfig(bearer_timeout=1.0))
    loop.connect()
    loop.advance(2.0)
    imsi = loop.sim.imsis[0]
    bearer_id = loop.setup_bearer(imsi, VOICE)
    loop.advance(1.0)
    assert loop.outcome(bearer_id) == BearerFailed(bearer_id, imsi, CAUSE_TIMEOUT, 6)
    # The eNB sets the E-RAB up late (its answer arrives at t=4); the agent releases it again.
    loop.advance(1.0)
    downlink = [decode(r.data) for r in loop.wire if not r.uplink]
    assert isinstance(downlink[-1], ERabReleaseCommand)
    assert loop.sim.ue(imsi).bearers.keys() == {5}
    assert loop.agent.next_timer() is not None  # waiting for that release's answer
    loop.advance(2.0)
    assert of(loop.agent_events, BearerReleased) == []  # nobody asked for this one
    assert loop.agent.bearers() == []
    assert loop.agent.next_timer() is None


def test_association_loss_reports_enb_and_its_ues():
    loop = wired()
    loop.connect()
    for imsi in loop.sim.imsis:
        loop.setup_bearer(imsi, VOICE)
    loop.disconnect(1)
    (lost,) = of(loop.agent_events, EnbLost)
    assert lost.enb.enb_id == "00101-0x101"
    expected = {u.imsi for u in loop.sim.enbs[1].ues}
    assert {u.imsi for u in lost.ues} == expected
    assert len(loop.agent.ues()) == 10
    assert {b.imsi for b in loop.agent.bearers()}.isdisjoint(expected)
    assert len(loop.agent.bearers()) == 10
    assert len(of(loop.sim_events, UeGone)) == 5
    # The other eNBs' UEs are untouched and keep working.
    other = loop.sim.enbs[2].ues[0].imsi
    bearer = next(b for b in loop.agent.bearers() if b.imsi == other)
    assert isinstance(loop.outcome(loop.release_bearer(bearer.bearer_id)), BearerReleased)
    # The eNB comes back: S1 Setup and attach again.
    loop.connect([1])
    assert len(loop.agent.ues()) == 15


def test_reset_from_a_simulated_enb():
    loop = wired(enbs=2, ues=3)
    loop.connect()
    loop.on_sim(loop.sim.reset(0, loop.now))
    loop.run()
    assert len(of(loop.agent_events, UeReleased)) == 3
    assert len(of(loop.sim_events, ResetDone)) == 1
    assert len(loop.agent.ues()) == 3
    loop.on_sim(loop.sim.attach_all(0, loop.now))
    loop.run()
    assert len(loop.agent.ues()) == 6
    check_streams(loop)


def test_ue_context_release_requested_by_a_simulated_enb():
    loop = wired(enbs=1, ues=2)
    loop.connect()
    imsi = loop.sim.imsis[0]
    loop.setup_bearer(imsi, VOICE)
    loop.on_sim(loop.sim.request_release(imsi, loop.now))
    loop.run()
    assert [e.ue.imsi for e in of(loop.agent_events, UeReleased)] == [imsi]
    assert of(loop.sim_events, UeGone)
    assert [u.imsi for u in loop.agent.ues()] == [loop.sim.imsis[1]]
    assert loop.agent.next_timer() is None  # the Release Complete came back


def test_unknown_plmn_enb_is_rejected():
    loop = wired(enbs=1, ues=2, plmn=Plmn("999", "99"))
    loop.connect()
    (failed,) = of(loop.sim_events, SetupFailed)
    assert str(failed.cause) == "misc/unknown-PLMN"
    assert failed.time_to_wait == "v10s"
    assert loop.agent.enbs() == [] and loop.agent.ues() == []
    assert not [r for r in loop.wire if r.uplink and r.stream != 0]  # no attach attempted


def test_bad_pdus_in_the_middle_of_the_flow():
    loop = wired(enbs=2, ues=3)
    loop.connect()
    for garbage, stream in [(b"\xde\xad\xbe\xef", 0), (b"\x00\x05\x00\x10\x00", 2), (b"", 1)]:
        loop.inject(0, stream, garbage)
    errors = of(loop.sim_events, MmeError)
    assert len(errors) == 3
    assert {str(e.message.cause) for e in errors} == {"protocol/transfer-syntax-error"}
    for imsi in loop.sim.imsis:
        assert isinstance(loop.outcome(loop.setup_bearer(imsi, VOICE)), BearerSetUp)
    assert len(loop.agent.enbs()) == 2


def test_e_rab_setup_request_nas_reaches_the_enb():
    loop = wired(enbs=1, ues=1)
    loop.connect()
    loop.setup_bearer(loop.sim.imsis[0], VOICE)
    requests = [decode(r.data) for r in loop.wire if not r.uplink]
    (request,) = [m for m in requests if isinstance(m, ERabSetupRequest)]
    assert request.e_rabs[0].qos == VOICE
    assert request.e_rabs[0].nas_pdu is not None


def test_bench_pairs_runs():
    rate, p50, p99 = bench_pairs(enbs=2, ues=3, pairs=30)
    assert rate > 0 and 0 < p50 <= p99


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


@pytest.mark.interop
def test_tshark_decodes_the_recorded_flow(tmp_path: Path):
    loop = wired(enbs=2, ues=3, failure_probability=0.3, seed=5)
    loop.connect()
    for imsi in loop.sim.imsis:
        bearer_id = loop.setup_bearer(imsi, VOICE)
        if isinstance(loop.outcome(bearer_id), BearerSetUp):
            loop.release_bearer(bearer_id)
    loop.on_sim(loop.sim.request_release(loop.sim.imsis[0], loop.now))
    loop.on_sim(loop.sim.reset(1, loop.now))
    loop.run()
    loop.write_pcap(tmp_path / "flow.pcap")
    frames = tshark_frames(loop.wire, tmp_path)
    for record, frame in zip(loop.wire, frames, strict=True):
        assert frame["stream"] == record.stream
        assert frame["code"] == decode(record.data).PROCEDURE  # type: ignore[union-attr]
    codes = {f["code"] for f in frames}
    assert codes == {17, 12, 9, 5, 7, 18, 23, 14}
    assert any("E-RABSetupResponse" in f["info"] for f in frames)
