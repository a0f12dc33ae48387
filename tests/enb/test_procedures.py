"""The agent's S1AP procedures (services/enb/procedures.py), driven with plain function calls.

A `Peer` plays one eNB by hand: it encodes messages, hands them to the agent on a chosen stream
and decodes what the agent sends back, so every rule (streams, S1 Setup outcomes, attach,
E-RAB timeouts, Reset, association loss, the section 10 error handling) is checked message by
message with a made-up clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from services.enb.procedures import (
    CAUSE_CANCELLED,
    CAUSE_ENB_LOST,
    CAUSE_TIMEOUT,
    CAUSE_UNKNOWN_BEARER,
    CAUSE_UNKNOWN_IMSI,
    Action,
    AgentConfig,
    AgentError,
    AttachFailed,
    BearerFailed,
    BearerLost,
    BearerReleased,
    BearerSetUp,
    BearerState,
    Discarded,
    EnbConnected,
    EnbLost,
    EnbRejected,
    PeerError,
    S1apAgent,
    UeAttached,
    UeReleased,
    UeState,
)
from services.enb.s1ap import (
    DEFAULT_PLMN,
    NORMAL_RELEASE,
    UNKNOWN_E_RAB_ID,
    Cause,
    Criticality,
    CriticalityDiagnostics,
    Ecgi,
    ERabCauseItem,
    ERabReleaseCommand,
    ERabReleaseResponse,
    ERabSetupItem,
    ERabSetupRequest,
    ERabSetupResponse,
    ErrorIndication,
    GlobalEnbId,
    IeDiagnostic,
    InitialContextSetupFailure,
    InitialContextSetupRequest,
    InitialContextSetupResponse,
    InitialUeMessage,
    Message,
    MessageType,
    Plmn,
    Reset,
    ResetAcknowledge,
    S1SetupFailure,
    S1SetupRequest,
    S1SetupResponse,
    Send,
    SupportedTa,
    Tai,
    UeContextReleaseCommand,
    UeContextReleaseComplete,
    UeContextReleaseRequest,
    UeIdPair,
    attach_request_nas,
    decode,
    encode,
    qos_for_codec,
)
from tests.enb.test_s1ap import CORPUS, _with_unknown_ie, raw_pdu, unknown_procedure

T = TypeVar("T")
P = DEFAULT_PLMN
VOICE = qos_for_codec(23_850)
STREAMS = 8


def imsi(n: int) -> str:
    return f"00101{n:010d}"


def sends(actions: list[Action]) -> list[tuple[int, Message]]:
    """(stream, decoded message) of every Send, checking each decodes to what it says."""
    out = []
    for a in actions:
        if isinstance(a, Send):
            decoded = decode(a.data)
            assert decoded == a.message or isinstance(decoded, ERabSetupRequest)
            out.append((a.stream, a.message))
    return out


def events(actions: Sequence[object], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


@dataclass
class Peer:
    """One eNB, by hand, on association `assoc` of `agent`."""

    agent: S1apAgent
    assoc: int = 1
    enb_id: int = 0x100
    plmn: Plmn = P
    streams: int = STREAMS
    now: float = 0.0
    ue_streams: dict[int, int] = field(default_factory=dict)  # eNB UE id -> our stream
    mme_ids: dict[int, int] = field(default_factory=dict)  # eNB UE id -> MME UE id

    def up(self) -> list[Action]:
        return self.agent.association_up(self.assoc, self.streams, self.now, self.streams)

    def send(self, message: Message | bytes, stream: int = 0) -> list[Action]:
        data = message if isinstance(message, bytes) else encode(message)
        return self.agent.receive(self.assoc, stream, data, self.now)

    def setup(self, stream: int = 0) -> list[Action]:
        request = S1SetupRequest(
            GlobalEnbId(self.plmn, self.enb_id), (SupportedTa(1, (self.plmn,)),), enb_name="e"
        )
        return self.send(request, stream)

    def initial_ue(self, enb_ue_id: int, imsi_: str, stream: int) -> list[Action]:
        return self.send(
            InitialUeMessage(
                enb_ue_id, attach_request_nas(imsi_), Tai(self.plmn, 1), Ecgi(self.plmn, 1)
            ),
            stream,
        )

    def attach(self, enb_ue_id: int, imsi_: str, stream: int | None = None) -> UeAttached:
        stream = enb_ue_id % self.streams if stream is None else stream
        out = sends(self.initial_ue(enb_ue_id, imsi_, stream))
        assert len(out) == 1
        ue_stream, ics = out[0]
        assert isinstance(ics, InitialContextSetupRequest)
        self.ue_streams[enb_ue_id] = ue_stream
        self.mme_ids[enb_ue_id] = ics.mme_ue_id
        response = InitialContextSetupResponse(
            ics.mme_ue_id, enb_ue_id, (ERabSetupItem(5, "10.0.0.2", 1),)
        )
        attached = events(self.send(response, ue_stream), UeAttached)
        assert len(attached) == 1
        return attached[0]

    def ready(self, ues: int = 0, first_imsi: int = 1) -> Peer:
        self.up()
        assert events(self.setup(), EnbConnected)
        for n in range(ues):
            self.attach(n + 1, imsi(first_imsi + n))
        return self


def bearer_up(peer: Peer, imsi_: str, enb_ue_id: int) -> int:
    """Set up a bearer for the UE and answer the E-RAB Setup Request: its bearer id."""
    bearer_id, actions = peer.agent.setup_bearer(imsi_, VOICE, peer.now)
    ((stream, request),) = sends(actions)
    assert isinstance(request, ERabSetupRequest)
    item = request.e_rabs[0]
    response = ERabSetupResponse(
        request.mme_ue_id, enb_ue_id, (ERabSetupItem(item.e_rab_id, "10.0.0.2", 9),)
    )
    assert events(peer.send(response, stream), BearerSetUp)
    return bearer_id


# --- S1 Setup ---------------------------------------------------------------------------------


def test_s1_setup_response_on_the_stream_it_came_on():
    agent = S1apAgent(AgentConfig(mme_name="test-mme", mme_group_id=7, mme_code=3))
    peer = Peer(agent)
    assert peer.up() == []
    actions = peer.setup(stream=0)
    ((stream, response),) = sends(actions)
    assert stream == 0
    assert isinstance(response, S1SetupResponse)
    assert response.mme_name == "test-mme"
    assert response.served_gummeis[0].plmns == (P,)
    assert response.served_gummeis[0].group_ids == (7,)
    assert response.served_gummeis[0].mme_codes == (3,)
    (connected,) = events(actions, EnbConnected)
    assert connected.enb.enb_id == "00101-0x100"
    assert connected.enb.tacs == (1,)
    assert [e.enb_id for e in agent.enbs()] == ["00101-0x100"]
    # A (misbehaving) eNB sending it on stream 3 gets its answer on stream 3.
    other = Peer(agent, assoc=2, enb_id=0x101)
    other.up()
    assert sends(other.setup(stream=3))[0][0] == 3


def test_s1_setup_failure_for_an_unknown_plmn():
    agent = S1apAgent(AgentConfig(time_to_wait="v20s"))
    peer = Peer(agent, plmn=Plmn("999", "99"))
    peer.up()
    actions = peer.setup()
    ((stream, failure),) = sends(actions)
    assert stream == 0
    assert failure == S1SetupFailure(Cause("misc", "unknown-PLMN"), "v20s")
    (rejected,) = events(actions, EnbRejected)
    assert rejected.cause == Cause("misc", "unknown-PLMN")
    assert agent.enbs() == []
    # UE-associated signalling is refused until a setup succeeds.
    actions = peer.initial_ue(1, imsi(1), 1)
    ((_, indication),) = sends(actions)
    assert isinstance(indication, ErrorIndication)
    assert indication.cause == Cause("protocol", "message-not-compatible-with-receiver-state")


def test_s1_setup_with_another_served_plmn_list():
    agent = S1apAgent(AgentConfig(served_plmns=(Plmn("310", "410"), Plmn("001", "01"))))
    assert Peer(agent).ready().agent.enbs()
    peer = Peer(agent, assoc=2, enb_id=0x200, plmn=Plmn("310", "410"))
    assert events(peer.ready().setup(), EnbConnected)


def test_s1_setup_missing_mandatory_ies_gets_failure_with_diagnostics():
    agent = S1apAgent()
    peer = Peer(agent)
    peer.up()
    bad = raw_pdu(
        "initiatingMessage",
        17,
        "reject",
        "S1SetupRequest",
        [{"id": 137, "criticality": "ignore", "value": ("PagingDRX", "v128")}],
    )
    actions = peer.send(bad)
    ((stream, failure),) = sends(actions)
    assert stream == 0
    assert isinstance(failure, S1SetupFailure)
    assert failure.cause == Cause("protocol", "abstract-syntax-error-reject")
    assert failure.criticality_diagnostics == CriticalityDiagnostics(
        procedure_criticality=Criticality.REJECT,
        ies=(
            IeDiagnostic(Criticality.REJECT, 59, "missing"),
            IeDiagnostic(Criticality.REJECT, 64, "missing"),
        ),
    )
    assert events(actions, EnbRejected)
    assert agent.enbs() == []


def test_repeated_s1_setup_clears_the_enbs_ues():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=2)
    bearer_up(peer, imsi(1), 1)
    actions = peer.setup()
    assert [type(m) for _, m in sends(actions)] == [S1SetupResponse]
    assert len(events(actions, UeReleased)) == 2
    assert len(events(actions, BearerLost)) == 1
    assert agent.ues() == []
    assert events(actions, EnbConnected)


def test_same_global_enb_id_on_a_new_association_replaces_the_old_one():
    agent = S1apAgent()
    Peer(agent, assoc=1).ready(ues=1)
    newer = Peer(agent, assoc=2)
    newer.up()
    actions = newer.setup()
    (lost,) = events(actions, EnbLost)
    assert lost.enb.assoc == 1
    assert [u.imsi for u in lost.ues] == [imsi(1)]
    assert [e.assoc for e in agent.enbs()] == [2]


# --- attach and streams -----------------------------------------------------------------------


def test_attach_creates_the_context_and_sets_up_the_default_bearer():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    actions = peer.initial_ue(42, imsi(1), stream=3)
    ((stream, ics),) = sends(actions)
    assert stream == 3  # answered on the stream the eNB picked for the UE
    assert isinstance(ics, InitialContextSetupRequest)
    assert ics.enb_ue_id == 42
    (e_rab,) = ics.e_rabs
    assert (e_rab.e_rab_id, e_rab.qos.qci, e_rab.qos.has_gbr) == (5, 9, False)
    ue = agent.ue(imsi(1))
    assert ue is not None and ue.state is UeState.ATTACHING
    response = InitialContextSetupResponse(ics.mme_ue_id, 42, (ERabSetupItem(5, "10.0.0.2", 1),))
    (attached,) = events(peer.send(response, 3), UeAttached)
    assert attached.ue.imsi == imsi(1)
    assert attached.ue.stream == 3
    assert attached.ue.state is UeState.ATTACHED
    assert agent.enbs()[0].ue_count == 1


def test_ue_streams_round_robin_when_the_enb_uses_stream_0():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    streams = []
    for n in range(1, 11):
        ((stream, _),) = sends(peer.initial_ue(n, imsi(n), stream=0))
        streams.append(stream)
    assert streams == [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]


def test_single_stream_association_uses_stream_0_for_everything():
    agent = S1apAgent()
    peer = Peer(agent, streams=1).ready(ues=2)
    assert set(peer.ue_streams.values()) == {0}


def test_ue_keeps_its_stream_for_all_its_signalling():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=5)
    for n in range(1, 6):
        stream = peer.ue_streams[n]
        assert stream != 0
        bearer_id, actions = agent.setup_bearer(imsi(n), VOICE, 0.0)
        ((s, request),) = sends(actions)
        assert s == stream
        assert isinstance(request, ERabSetupRequest)
        peer.send(ERabSetupResponse(request.mme_ue_id, n, (ERabSetupItem(6, "10.0.0.2", 1),)), s)
        _, actions = agent.release_bearer(bearer_id, 0.0)
        assert sends(actions)[0][0] == stream
        assert sends(agent.release_ue(imsi(n), 0.0))[0][0] == stream


def test_initial_ue_message_without_an_imsi_attach_is_released():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    guti_attach = bytes.fromhex("0741720bf600f110000101deadbeef02e0e000040201d011")
    actions = peer.send(InitialUeMessage(9, guti_attach, Tai(P, 1), Ecgi(P, 1)), 2)
    ((stream, command),) = sends(actions)
    assert stream == 2
    assert isinstance(command, UeContextReleaseCommand)
    assert command.cause == Cause("nas", "unspecified")
    assert events(actions, Discarded)
    assert agent.ues() == []
    assert peer.send(UeContextReleaseComplete(command.mme_ue_id, 9), 2) == []


def test_initial_context_setup_failure_and_timeout():
    agent = S1apAgent(AgentConfig(context_timeout=2.0))
    peer = Peer(agent).ready()
    ((_, ics),) = sends(peer.initial_ue(1, imsi(1), 1))
    assert isinstance(ics, InitialContextSetupRequest)
    cause = Cause("radioNetwork", "radio-resources-not-available")
    actions = peer.send(InitialContextSetupFailure(ics.mme_ue_id, 1, cause), 1)
    (failed,) = events(actions, AttachFailed)
    assert failed.cause == str(cause)
    assert [type(m) for _, m in sends(actions)] == [UeContextReleaseCommand]
    # The other UE never gets an answer from its eNB.
    sends(peer.initial_ue(2, imsi(2), 2))
    assert agent.next_timer() == 2.0
    actions = agent.handle_timer(2.0)
    assert events(actions, AttachFailed)[0].cause == CAUSE_TIMEOUT
    assert [type(m) for _, m in sends(actions)] == [UeContextReleaseCommand]
    assert agent.ues() == []
    # Released contexts are forgotten after one more timeout even without a Complete.
    agent.handle_timer(10.0)
    assert agent.next_timer() is None


def test_reattach_releases_the_old_context():
    agent = S1apAgent()
    a = Peer(agent, assoc=1).ready(ues=1)
    b = Peer(agent, assoc=2, enb_id=0x200).ready()
    bearer_up(a, imsi(1), 1)
    actions = b.initial_ue(7, imsi(1), 1)
    assert events(actions, BearerLost)
    (released,) = events(actions, UeReleased)
    assert released.ue.assoc == 1
    kinds = [(a_.assoc, type(a_.message)) for a_ in actions if isinstance(a_, Send)]
    assert kinds == [(1, UeContextReleaseCommand), (2, InitialContextSetupRequest)]


# --- bearers ----------------------------------------------------------------------------------


def test_bearer_setup_and_release():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    bearer_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0, key="call-1")
    ((stream, request),) = sends(actions)
    assert isinstance(request, ERabSetupRequest)
    (item,) = request.e_rabs
    assert item.e_rab_id == 6
    assert item.qos == VOICE and item.qos.qci == 1 and item.qos.gbr_ul == 42_000
    assert item.nas_pdu is not None and item.nas_pdu[6:7] == b"\x62"
    assert agent.bearer(bearer_id).state is BearerState.PENDING  # type: ignore[union-attr]
    # Repeating the request for the same call changes nothing.
    assert agent.setup_bearer(imsi(1), VOICE, 0.0, key="call-1") == (bearer_id, [])
    response = ERabSetupResponse(request.mme_ue_id, 1, (ERabSetupItem(6, "10.9.9.9", 1234),))
    (done,) = events(peer.send(response, stream), BearerSetUp)
    assert done.request_id == bearer_id
    assert (done.bearer.enb_address, done.bearer.enb_teid) == ("10.9.9.9", 1234)
    assert done.bearer.state is BearerState.ACTIVE
    again = agent.setup_bearer(imsi(1), VOICE, 0.0, key="call-1")
    assert again[0] == bearer_id and isinstance(again[1][0], BearerSetUp)

    release_id, actions = agent.release_bearer(bearer_id, 0.0)
    ((stream2, command),) = sends(actions)
    assert stream2 == stream
    assert command == ERabReleaseCommand(request.mme_ue_id, 1, (ERabCauseItem(6, NORMAL_RELEASE),))
    assert agent.release_bearer(bearer_id, 0.0) == (release_id, [])
    (released,) = events(
        peer.send(ERabReleaseResponse(request.mme_ue_id, 1, (6,)), stream), BearerReleased
    )
    assert released.request_id == release_id
    assert released.cause == "nas/normal-release"
    assert agent.bearers() == []


def test_second_bearer_gets_the_next_e_rab_id_and_ids_run_out():
    agent = S1apAgent()
    Peer(agent).ready(ues=1)
    ids = []
    for _ in range(10):
        _, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
        ((_, request),) = sends(actions)
        assert isinstance(request, ERabSetupRequest)
        ids.append(request.e_rabs[0].e_rab_id)
    assert ids == list(range(6, 16))
    request_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
    assert actions == [BearerFailed(request_id, imsi(1), "local/no-free-e-rab-id")]


def test_bearer_for_an_unknown_or_attaching_ue_fails_at_once():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    request_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
    assert actions == [BearerFailed(request_id, imsi(1), CAUSE_UNKNOWN_IMSI)]
    sends(peer.initial_ue(1, imsi(1), 1))
    request_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
    assert actions == [BearerFailed(request_id, imsi(1), "local/ue-not-attached")]
    request_id, actions = agent.release_bearer(999, 0.0)
    assert actions == [BearerFailed(request_id, None, CAUSE_UNKNOWN_BEARER)]


def test_enb_reports_the_e_rab_failed():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    bearer_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
    ((stream, request),) = sends(actions)
    assert isinstance(request, ERabSetupRequest)
    cause = Cause("radioNetwork", "not-supported-QCI-value")
    response = ERabSetupResponse(request.mme_ue_id, 1, (), (ERabCauseItem(6, cause),))
    actions = peer.send(response, stream)
    assert actions == [BearerFailed(bearer_id, imsi(1), str(cause), 6)]
    assert agent.bearers() == []


def test_e_rab_setup_timeout_then_late_success_is_released():
    agent = S1apAgent(AgentConfig(bearer_timeout=3.0))
    peer = Peer(agent).ready(ues=1)
    bearer_id, actions = agent.setup_bearer(imsi(1), VOICE, 10.0)
    ((stream, request),) = sends(actions)
    assert isinstance(request, ERabSetupRequest)
    assert agent.next_timer() == 13.0
    assert agent.handle_timer(12.9) == []
    assert agent.handle_timer(13.0) == [BearerFailed(bearer_id, imsi(1), CAUSE_TIMEOUT, 6)]
    assert agent.bearers() == []
    # The eNB answers after all: the agent takes the E-RAB down again, quietly.
    late = ERabSetupResponse(request.mme_ue_id, 1, (ERabSetupItem(6, "10.0.0.2", 5),))
    actions = peer.send(late, stream)
    ((s, command),) = sends(actions)
    assert s == stream and isinstance(command, ERabReleaseCommand)
    assert [i.e_rab_id for i in command.e_rabs] == [6]
    assert [a for a in actions if not isinstance(a, Send)] == []
    assert peer.send(ERabReleaseResponse(request.mme_ue_id, 1, (6,)), stream) == []
    # E-RAB 6 is free again.
    _, actions = agent.setup_bearer(imsi(1), VOICE, 20.0)
    assert sends(actions)[0][1].e_rabs[0].e_rab_id == 6  # type: ignore[attr-defined]


def test_e_rab_release_timeout_and_failure():
    agent = S1apAgent(AgentConfig(bearer_timeout=1.0))
    peer = Peer(agent).ready(ues=1)
    bearer_id = bearer_up(peer, imsi(1), 1)
    release_id, _ = agent.release_bearer(bearer_id, 5.0)
    assert agent.handle_timer(6.0) == [BearerFailed(release_id, imsi(1), CAUSE_TIMEOUT, 6)]
    assert agent.bearers() == []
    # The eNB refuses a release for a reason other than "unknown E-RAB": the bearer stays.
    bearer_id = bearer_up(peer, imsi(1), 1)
    release_id, actions = agent.release_bearer(bearer_id, 7.0)
    ((stream, command),) = sends(actions)
    assert isinstance(command, ERabReleaseCommand)
    cause = Cause("radioNetwork", "interaction-with-other-procedure")
    actions = peer.send(
        ERabReleaseResponse(command.mme_ue_id, 1, (), (ERabCauseItem(6, cause),)), stream
    )
    assert actions == [BearerFailed(release_id, imsi(1), str(cause), 6)]
    assert agent.bearer(bearer_id).state is BearerState.ACTIVE  # type: ignore[union-attr]
    # "Unknown E-RAB" means there is nothing left to release.
    release_id, actions = agent.release_bearer(bearer_id, 8.0)
    ((stream, command),) = sends(actions)
    assert isinstance(command, ERabReleaseCommand)
    actions = peer.send(
        ERabReleaseResponse(command.mme_ue_id, 1, (), (ERabCauseItem(6, UNKNOWN_E_RAB_ID),)),
        stream,
    )
    assert [type(a) for a in actions] == [BearerReleased]


def test_releasing_a_pending_bearer_cancels_it():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    bearer_id, actions = agent.setup_bearer(imsi(1), VOICE, 0.0)
    ((stream, request),) = sends(actions)
    assert isinstance(request, ERabSetupRequest)
    _, actions = agent.release_bearer(bearer_id, 0.0)
    assert actions[0] == BearerFailed(bearer_id, imsi(1), CAUSE_CANCELLED, 6)
    assert [type(m) for _, m in sends(actions)] == [ERabReleaseCommand]
    # The setup response arriving now changes nothing; the release completes.
    assert (
        peer.send(
            ERabSetupResponse(request.mme_ue_id, 1, (ERabSetupItem(6, "10.0.0.2", 1),)), stream
        )
        == []
    )
    actions = peer.send(ERabReleaseResponse(request.mme_ue_id, 1, (6,)), stream)
    assert [type(a) for a in actions] == [BearerReleased]


# --- UE context release, Reset, association loss ----------------------------------------------


def test_ue_context_release_requested_by_the_enb():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=2)
    bearer_up(peer, imsi(1), 1)
    mme = peer.mme_ids[1]
    cause = Cause("radioNetwork", "user-inactivity")
    actions = peer.send(UeContextReleaseRequest(mme, 1, cause), peer.ue_streams[1])
    assert sends(actions) == [(peer.ue_streams[1], UeContextReleaseCommand(mme, 1, cause))]
    assert [type(a) for a in actions if not isinstance(a, Send)] == [BearerLost, UeReleased]
    assert [u.imsi for u in agent.ues()] == [imsi(2)]
    assert peer.send(UeContextReleaseComplete(mme, 1), peer.ue_streams[1]) == []
    assert agent.enbs()[0].ue_count == 1


def test_reset_from_the_enb_clears_its_ues_only():
    agent = S1apAgent()
    a = Peer(agent, assoc=1).ready(ues=3)
    b = Peer(agent, assoc=2, enb_id=0x200).ready(ues=2, first_imsi=10)
    bearer_up(a, imsi(1), 1)
    pending, _ = agent.setup_bearer(imsi(2), VOICE, 0.0)
    other = bearer_up(b, imsi(10), 1)
    actions = a.send(Reset(Cause("misc", "om-intervention")), 0)
    assert sends(actions) == [(0, ResetAcknowledge())]
    assert len(events(actions, UeReleased)) == 3
    assert len(events(actions, BearerLost)) == 1
    assert [f.request_id for f in events(actions, BearerFailed)] == [pending]
    assert sorted(u.imsi for u in agent.ues()) == [imsi(10), imsi(11)]  # type: ignore[type-var]
    assert agent.bearer(other) is not None
    assert agent.enbs()[0].ue_count == 0


def test_partial_reset():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=3)
    pairs = (UeIdPair(peer.mme_ids[1], 1), UeIdPair(None, 3))
    actions = peer.send(Reset(Cause("misc", "unspecified"), pairs), 0)
    assert sends(actions) == [(0, ResetAcknowledge(pairs))]
    assert [u.imsi for u in agent.ues()] == [imsi(2)]


def test_association_loss_reports_the_enb_and_its_ues():
    agent = S1apAgent()
    a = Peer(agent, assoc=1).ready(ues=3)
    b = Peer(agent, assoc=2, enb_id=0x200).ready(ues=1, first_imsi=10)
    active = bearer_up(a, imsi(1), 1)
    pending, _ = agent.setup_bearer(imsi(2), VOICE, 0.0)
    releasing = bearer_up(a, imsi(3), 3)
    release_id, _ = agent.release_bearer(releasing, 0.0)
    actions = agent.association_down(1, 1.0)
    (lost,) = events(actions, EnbLost)
    assert lost.enb.enb_id == "00101-0x100"
    assert sorted(u.imsi for u in lost.ues) == [imsi(1), imsi(2), imsi(3)]  # type: ignore[type-var]
    assert [x.bearer.bearer_id for x in events(actions, BearerLost)] == [active]
    assert events(actions, BearerFailed) == [BearerFailed(pending, imsi(2), CAUSE_ENB_LOST, 6)]
    assert [x.request_id for x in events(actions, BearerReleased)] == [release_id]
    assert events(actions, UeReleased) == []  # EnbLost carries them
    assert sends(actions) == []
    assert [e.assoc for e in agent.enbs()] == [2]
    assert [u.imsi for u in agent.ues()] == [imsi(10)]
    assert agent.association_down(1, 2.0) == []
    with pytest.raises(AgentError):
        agent.receive(1, 0, b"\x00", 2.0)
    # The other eNB carries on.
    bearer_up(b, imsi(10), 1)


def test_association_restart_counts_as_loss():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    actions = peer.up()
    assert events(actions, EnbLost)
    assert agent.enbs() == []


# --- error handling (TS 36.413 section 10) ----------------------------------------------------


def test_garbage_gets_an_error_indication_and_nothing_else_changes():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=2)
    bearer_id = bearer_up(peer, imsi(1), 1)
    before = (agent.enbs(), agent.ues(), agent.bearers())
    for stream, garbage in [(0, b"\xff\xfe\xfd\xfc"), (3, b"\x01"), (5, b"")]:
        actions = peer.send(garbage, stream)
        ((s, indication),) = sends(actions)
        assert s == stream
        assert isinstance(indication, ErrorIndication)
        assert indication.cause == Cause("protocol", "transfer-syntax-error")
        assert events(actions, Discarded)
    assert (agent.enbs(), agent.ues(), agent.bearers()) == before
    # The UEs still work.
    _, actions = agent.release_bearer(bearer_id, 0.0)
    assert sends(actions)
    bearer_up(peer, imsi(2), 2)


def test_truncated_aper_error_indication_names_the_procedure():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    data = encode(ERabSetupResponse(peer.mme_ids[1], 1, (ERabSetupItem(6, "10.0.0.2", 1),)))
    actions = peer.send(data[:-4], 2)
    ((stream, indication),) = sends(actions)
    assert stream == 2
    assert isinstance(indication, ErrorIndication)
    assert indication.cause == Cause("protocol", "transfer-syntax-error")
    assert indication.criticality_diagnostics == CriticalityDiagnostics(
        5, MessageType.SUCCESSFUL, Criticality.REJECT
    )


@pytest.mark.parametrize(
    ("crit", "cause"),
    [
        ("reject", "abstract-syntax-error-reject"),
        ("notify", "abstract-syntax-error-ignore-and-notify"),
        ("ignore", None),
    ],
)
def test_unknown_procedure_code_follows_its_criticality(crit: str, cause: str | None):
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    actions = peer.send(unknown_procedure(200, crit), 4)
    assert events(actions, Discarded)
    out = sends(actions)
    if cause is None:
        assert out == []
        return
    ((stream, indication),) = out
    assert stream == 4
    assert indication == ErrorIndication(
        Cause("protocol", cause),
        criticality_diagnostics=CriticalityDiagnostics(
            200, MessageType.INITIATING, Criticality(crit)
        ),
    )
    assert len(agent.ues()) == 1


def test_bad_error_indication_is_never_answered():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    data = encode(ErrorIndication(Cause("misc", "unspecified")))
    actions = peer.send(data[:-1], 0)
    assert sends(actions) == [] and events(actions, Discarded)
    (error,) = events(peer.send(data, 0), PeerError)
    assert error.message.cause == Cause("misc", "unspecified")


def test_unknown_ue_ids_get_an_error_indication():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    mme = peer.mme_ids[1]
    actions = peer.send(ERabSetupResponse(mme + 100, 1, (ERabSetupItem(6, "10.0.0.2", 1),)), 1)
    ((_, indication),) = sends(actions)
    assert indication == ErrorIndication(
        Cause("radioNetwork", "unknown-mme-ue-s1ap-id"),
        mme + 100,
        1,
        CriticalityDiagnostics(5, MessageType.SUCCESSFUL, Criticality.REJECT),
    )
    actions = peer.send(UeContextReleaseRequest(mme, 99, NORMAL_RELEASE), 1)
    ((_, indication),) = sends(actions)
    assert isinstance(indication, ErrorIndication)
    assert indication.cause == Cause("radioNetwork", "unknown-pair-ue-s1ap-id")
    # Benign leftovers are only logged.
    assert sends(peer.send(UeContextReleaseComplete(mme + 100, 1), 1)) == []
    assert sends(peer.send(ERabReleaseResponse(mme + 100, 1, (6,)), 1)) == []
    assert len(agent.ues()) == 1


def test_messages_only_an_mme_sends_are_refused():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    actions = peer.send(UeContextReleaseCommand(peer.mme_ids[1], 1, NORMAL_RELEASE), 1)
    ((_, indication),) = sends(actions)
    assert isinstance(indication, ErrorIndication)
    assert indication.cause == Cause("protocol", "message-not-compatible-with-receiver-state")
    assert len(agent.ues()) == 1


def test_known_but_unsupported_procedures_follow_their_criticality():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    uplink_nas = raw_pdu(
        "initiatingMessage",
        13,
        "ignore",
        "UplinkNASTransport",
        [
            {"id": 0, "criticality": "reject", "value": ("MME-UE-S1AP-ID", peer.mme_ids[1])},
            {"id": 8, "criticality": "reject", "value": ("ENB-UE-S1AP-ID", 1)},
            {"id": 26, "criticality": "reject", "value": ("NAS-PDU", b"\x07\x43")},
            {
                "id": 100,
                "criticality": "ignore",
                "value": ("EUTRAN-CGI", {"pLMNidentity": P.encode(), "cell-ID": (1, 28)}),
            },
            {
                "id": 67,
                "criticality": "ignore",
                "value": ("TAI", {"pLMNidentity": P.encode(), "tAC": b"\x00\x01"}),
            },
        ],
    )
    actions = peer.send(uplink_nas, 1)
    assert sends(actions) == [] and events(actions, Discarded)
    config_update = raw_pdu("initiatingMessage", 29, "reject", "ENBConfigurationUpdate", [])
    ((stream, indication),) = sends(peer.send(config_update, 0))
    assert stream == 0
    assert isinstance(indication, ErrorIndication)
    assert indication.cause == Cause("protocol", "abstract-syntax-error-reject")


def test_not_understood_ies_are_reported_or_rejected_by_criticality():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    mme, stream = peer.mme_ids[1], peer.ue_streams[1]
    # An E-RAB Release Response with an unknown IE 250 (nothing to release: no other effect).
    assert peer.send(_with_unknown_ie("ignore", mme, 1), stream) == []
    actions = peer.send(_with_unknown_ie("notify", mme, 1), stream)
    assert sends(actions) == [
        (
            stream,
            ErrorIndication(
                Cause("protocol", "abstract-syntax-error-ignore-and-notify"),
                mme,
                1,
                CriticalityDiagnostics(
                    7,
                    MessageType.SUCCESSFUL,
                    Criticality.REJECT,
                    (IeDiagnostic(Criticality.NOTIFY, 250, "not-understood"),),
                ),
            ),
        )
    ]
    # A "reject" IE in a response: local error handling, logged only.
    actions = peer.send(_with_unknown_ie("reject", mme, 1), stream)
    assert sends(actions) == [] and events(actions, Discarded)
    assert len(agent.ues()) == 1


def test_idle_agent_has_no_timer():
    agent = S1apAgent()
    assert agent.next_timer() is None
    Peer(agent).ready(ues=2)
    assert agent.next_timer() is None
    with pytest.raises(AgentError):
        agent.association_up(9, 0, 0.0)


def test_config_is_checked():
    with pytest.raises(ValueError):
        AgentConfig(served_plmns=())
    with pytest.raises(ValueError):
        AgentConfig(time_to_wait="v3s")
    with pytest.raises(ValueError):
        AgentConfig(bearer_timeout=0)


def test_failure_causes_of_initial_context_setup_response_without_default_bearer():
    agent = S1apAgent()
    peer = Peer(agent).ready()
    ((_, ics),) = sends(peer.initial_ue(1, imsi(1), 1))
    assert isinstance(ics, InitialContextSetupRequest)
    cause = Cause("radioNetwork", "not-supported-QCI-value")
    response = InitialContextSetupResponse(
        ics.mme_ue_id, 1, (ERabSetupItem(6, "10.0.0.2", 1),), (ERabCauseItem(5, cause),)
    )
    actions = peer.send(response, 1)
    assert events(actions, AttachFailed)[0].cause == str(cause)
    assert [type(m) for _, m in sends(actions)] == [UeContextReleaseCommand]


def test_release_ue_commands_the_enb():
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=1)
    bearer_up(peer, imsi(1), 1)
    actions = agent.release_ue(imsi(1), 0.0, Cause("nas", "detach"))
    assert sends(actions) == [
        (peer.ue_streams[1], UeContextReleaseCommand(peer.mme_ids[1], 1, Cause("nas", "detach")))
    ]
    assert [type(a) for a in actions if not isinstance(a, Send)] == [BearerLost, UeReleased]
    assert agent.release_ue(imsi(1), 0.0) == []


def test_mangled_pdus_never_raise_and_leave_the_association_up():
    rng = random.Random(5)
    agent = S1apAgent()
    peer = Peer(agent).ready(ues=3)
    for message in CORPUS:
        data = encode(message)
        for _ in range(25):
            mangled = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            peer.send(bytes(mangled), rng.randrange(STREAMS))
    assert [e.assoc for e in agent.enbs()] == [1]
