"""S1AP codec (services/enb/s1ap.py): every message kind round-trips, bad bytes never raise, the
NAS bits carry the IMSI, and tshark's S1AP dissector accepts every PDU we emit.

`CORPUS` holds one or more instances of every modelled message; `tshark_frames` (also used by
test_simulator.py) writes PDUs into a pcap as SCTP DATA chunks (PPID 18) and returns what tshark
decoded, failing on any malformed packet or expert warning.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycrate_asn1dir import S1AP as PYCRATE_S1AP

from services.enb import s1ap
from services.enb.s1ap import (
    ABSTRACT_SYNTAX_REJECT,
    DEFAULT_BEARER_QOS,
    DEFAULT_PLMN,
    MESSAGE_CLASSES,
    NORMAL_RELEASE,
    RADIO_RESOURCES_NOT_AVAILABLE,
    TRANSFER_SYNTAX_ERROR,
    UNKNOWN_PLMN,
    BearerQos,
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
    ERabToSetup,
    ErrorIndication,
    ErrorKind,
    FilterDirection,
    GlobalEnbId,
    Ie,
    IeDiagnostic,
    InitialContextSetupFailure,
    InitialContextSetupRequest,
    InitialContextSetupResponse,
    InitialUeMessage,
    Message,
    MessageType,
    PacketFilter,
    Plmn,
    Procedure,
    Reset,
    ResetAcknowledge,
    S1apEncodeError,
    S1SetupFailure,
    S1SetupRequest,
    S1SetupResponse,
    ServedGummei,
    SupportedTa,
    Tai,
    UeContextReleaseCommand,
    UeContextReleaseComplete,
    UeContextReleaseRequest,
    UeIdPair,
    Undecodable,
    Unhandled,
    attach_imsi,
    attach_request_nas,
    decode,
    dedicated_bearer_nas,
    encode,
    peek_header,
    protected_nas,
    qos_for_codec,
)
from services.enb.simulator import WireRecord, pcap_bytes

P = DEFAULT_PLMN
IMSI = "001010123456789"
VOICE = qos_for_codec(23_850)

CORPUS: list[Message] = [
    S1SetupRequest(GlobalEnbId(P, 0x1A2B3), (SupportedTa(1, (P,)),), enb_name="enb-1"),
    S1SetupRequest(
        GlobalEnbId(Plmn("310", "410"), 0xABCDEF1, home=True),
        (SupportedTa(7, (Plmn("310", "410"), P)), SupportedTa(0xFFFF, (P,))),
        paging_drx="v32",
    ),
    S1SetupResponse((ServedGummei((P,), (1,), (1,)),), 255, "volte-enb-agent"),
    S1SetupFailure(UNKNOWN_PLMN, "v10s"),
    S1SetupFailure(
        ABSTRACT_SYNTAX_REJECT,
        criticality_diagnostics=CriticalityDiagnostics(
            procedure_criticality=Criticality.REJECT,
            ies=(IeDiagnostic(Criticality.REJECT, 59, "missing"),),
        ),
    ),
    InitialUeMessage(7, attach_request_nas(IMSI), Tai(P, 1), Ecgi(P, 0x1A2B301)),
    InitialContextSetupRequest(1, 7, (ERabToSetup(5, DEFAULT_BEARER_QOS, "10.0.0.1", 0x1234),)),
    InitialContextSetupResponse(1, 7, (ERabSetupItem(5, "10.0.0.2", 99),)),
    InitialContextSetupResponse(
        1, 7, (ERabSetupItem(5, "2001:db8::2", 99),), (ERabCauseItem(6, NORMAL_RELEASE),)
    ),
    InitialContextSetupFailure(1, 7, RADIO_RESOURCES_NOT_AVAILABLE),
    ERabSetupRequest(
        0xFFFFFFFF,
        0xFFFFFF,
        (ERabToSetup(6, VOICE, "10.0.0.1", 77, dedicated_bearer_nas(6, VOICE)),),
    ),
    ERabSetupResponse(1, 7, (ERabSetupItem(6, "10.0.0.2", 100),)),
    ERabSetupResponse(
        1, 7, (), (ERabCauseItem(6, Cause("radioNetwork", "not-supported-QCI-value")),)
    ),
    ERabReleaseCommand(1, 7, (ERabCauseItem(6, NORMAL_RELEASE),)),
    ERabReleaseResponse(1, 7, (6,)),
    ERabReleaseResponse(1, 7, (), (ERabCauseItem(9, Cause("radioNetwork", "unknown-E-RAB-ID")),)),
    UeContextReleaseRequest(1, 7, Cause("radioNetwork", "user-inactivity")),
    UeContextReleaseCommand(1, 7, NORMAL_RELEASE),
    UeContextReleaseCommand(1, None, Cause("nas", "detach")),
    UeContextReleaseComplete(1, 7),
    Reset(Cause("misc", "om-intervention")),
    Reset(Cause("misc", "om-intervention"), (UeIdPair(1, 7), UeIdPair(None, 8))),
    ResetAcknowledge(),
    ResetAcknowledge((UeIdPair(1, 7),)),
    ErrorIndication(TRANSFER_SYNTAX_ERROR),
    ErrorIndication(
        ABSTRACT_SYNTAX_REJECT,
        1,
        7,
        CriticalityDiagnostics(200, MessageType.INITIATING, Criticality.REJECT),
    ),
]


def _id(m: Message) -> str:
    return m.name


# --- tables against pycrate's compiled ASN.1 --------------------------------------------------


def test_ie_ids_match_the_asn1_constants():
    def norm(name: str) -> str:
        return name.removeprefix("id_").replace("_", "").lower()

    constants = {
        norm(n): getattr(PYCRATE_S1AP.S1AP_Constants, n)._val
        for n in dir(PYCRATE_S1AP.S1AP_Constants)
        if n.startswith("id_")
    }
    for ie in Ie:
        assert constants[norm(ie.name)] == ie.value, ie


def test_procedure_codes_and_criticalities_match_the_asn1():
    constants = PYCRATE_S1AP.S1AP_Constants
    for proc, const in [
        (Procedure.S1_SETUP, "id_S1Setup"),
        (Procedure.INITIAL_UE_MESSAGE, "id_initialUEMessage"),
        (Procedure.INITIAL_CONTEXT_SETUP, "id_InitialContextSetup"),
        (Procedure.E_RAB_SETUP, "id_E_RABSetup"),
        (Procedure.E_RAB_RELEASE, "id_E_RABRelease"),
        (Procedure.UE_CONTEXT_RELEASE, "id_UEContextRelease"),
        (Procedure.UE_CONTEXT_RELEASE_REQUEST, "id_UEContextReleaseRequest"),
        (Procedure.RESET, "id_Reset"),
        (Procedure.ERROR_INDICATION, "id_ErrorIndication"),
        (Procedure.UPLINK_NAS_TRANSPORT, "id_uplinkNASTransport"),
        (Procedure.DOWNLINK_NAS_TRANSPORT, "id_downlinkNASTransport"),
    ]:
        assert getattr(constants, const)._val == proc
    assert s1ap.PROCEDURES[17] == (Criticality.REJECT, "S1SetupRequest")
    assert s1ap.PROCEDURES[12][0] is Criticality.IGNORE
    assert s1ap.PROCEDURES[15][0] is Criticality.IGNORE


def test_corpus_covers_every_message_class():
    assert {type(m) for m in CORPUS} == set(MESSAGE_CLASSES)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("message", CORPUS, ids=_id)
def test_round_trip(message: Message):
    data = encode(message)
    assert decode(data) == message
    # Skipping pycrate's own checks (the fast path) must not change a single bit.
    assert encode(message, verify=True) == data
    mtype, code, crit = peek_header(data)
    assert (mtype, code) == (message.TYPE, message.PROCEDURE)
    assert crit is s1ap.PROCEDURES[message.PROCEDURE][0]


def test_e_rab_setup_request_builds_the_nas_pdu_when_none_is_given():
    message = ERabSetupRequest(3, 4, (ERabToSetup(7, VOICE),))
    decoded = decode(encode(message))
    assert isinstance(decoded, ERabSetupRequest)
    assert decoded.e_rabs[0].nas_pdu == dedicated_bearer_nas(7, VOICE)
    assert decoded.e_rabs[0].qos == VOICE


def test_initial_ue_message_exposes_the_imsi():
    message = CORPUS[5]
    assert isinstance(message, InitialUeMessage)
    decoded = decode(encode(message))
    assert isinstance(decoded, InitialUeMessage)
    assert decoded.imsi == IMSI
    assert decoded.ue_associated and decoded.mme_ue_id is None


def test_known_wire_bytes():
    # An S1 Setup Request as any S1AP implementation encodes it (header 00 11 00, 4 IEs).
    data = encode(CORPUS[0])
    assert data.startswith(bytes.fromhex("0011002a000004003b0008"))
    assert bytes.fromhex("00f110") in data  # PLMN 001/01 in TBCD


def test_values_out_of_range_are_refused_when_built():
    with pytest.raises(ValueError):
        ERabCauseItem(16, NORMAL_RELEASE)
    with pytest.raises(ValueError):
        BearerQos(qci=1, gbr_ul=10, mbr_ul=5)
    with pytest.raises(ValueError):
        Tai(P, 0x10000)
    with pytest.raises(ValueError):
        GlobalEnbId(P, 1 << 20)
    with pytest.raises(ValueError):
        S1SetupRequest(GlobalEnbId(P, 1), (SupportedTa(1, (P,)),), enb_name="bad_name!")
    with pytest.raises(ValueError):
        Cause("nas", "no-such-cause")
    with pytest.raises(ValueError):
        ERabSetupRequest(1, 1, ())
    with pytest.raises(S1apEncodeError):
        encode(UeContextReleaseComplete(1 << 32, 1))


# --- identities and QoS -----------------------------------------------------------------------


def test_plmn_tbcd():
    assert Plmn("001", "01").encode() == bytes.fromhex("00f110")
    assert Plmn("310", "410").encode() == bytes.fromhex("130014")
    for plmn in (Plmn("001", "01"), Plmn("310", "410"), Plmn("999", "999")):
        assert Plmn.decode(plmn.encode()) == plmn
    assert Plmn.parse("00101") == Plmn("001", "01")
    assert Plmn.parse("310-410") == Plmn("310", "410")
    assert str(GlobalEnbId(P, 0x1A2B3)) == "00101-0x1a2b3"


def test_cause_text_form():
    assert str(UNKNOWN_PLMN) == "misc/unknown-PLMN"
    assert Cause.parse("radioNetwork/not-supported-QCI-value").group == "radioNetwork"
    with pytest.raises(ValueError):
        Cause.parse("normal-release")


def test_qos_for_codec_includes_headers_and_rtcp():
    qos = qos_for_codec(23_850)  # AMR-WB 23.85: 50 packets/s with 40 bytes of headers
    assert qos.qci == 1
    assert qos.gbr_ul == qos.gbr_dl == qos.mbr_ul == qos.mbr_dl == 42_000
    assert qos_for_codec(64_000).gbr_dl == 84_000  # G.711
    assert qos_for_codec(23_850, ip_version=6).gbr_dl > qos.gbr_dl


@pytest.mark.parametrize(
    ("bps", "octets"),
    [
        (0, (0xFF, 0)),
        (42_000, (42, 0)),
        (63_000, (63, 0)),
        (64_000, (64, 0)),
        (568_000, (127, 0)),
        (576_000, (128, 0)),
        (8_640_000, (254, 0)),
        (10_000_000, (0xFE, 14)),
        (100_000_000, (0xFE, 158)),
    ],
)
def test_eps_qos_bitrate_octets(bps: int, octets: tuple[int, int]):
    assert s1ap._bitrate_octets(bps) == octets


# --- NAS --------------------------------------------------------------------------------------


def test_attach_request_carries_the_imsi():
    nas = attach_request_nas(IMSI)
    assert nas[:2] == bytes([0x07, 0x41])  # plain EMM, Attach Request
    assert attach_imsi(nas) == IMSI
    assert attach_imsi(protected_nas(nas)) == IMSI  # integrity protected around it
    assert attach_imsi(attach_request_nas("00101123456")) == "00101123456"  # even digit count


def test_attach_imsi_refuses_everything_else():
    assert attach_imsi(b"") is None
    assert attach_imsi(b"\x07\x41") is None
    assert attach_imsi(bytes.fromhex("074c")) is None  # Service Request-ish
    assert attach_imsi(dedicated_bearer_nas(6, VOICE)) is None
    # An Attach Request identifying the UE by GUTI.
    guti = bytes.fromhex("0741720bf600f110000101deadbeef02e0e000040201d011")
    assert attach_imsi(guti) is None
    rng = random.Random(1)
    for _ in range(200):
        junk = bytes([0x07, 0x41]) + rng.randbytes(rng.randrange(0, 40))
        found = attach_imsi(junk)
        assert found is None or found.isdigit()


def test_dedicated_bearer_nas_carries_qci_bitrates_and_filters():
    filters = (
        PacketFilter(FilterDirection.UPLINK, "192.0.2.10", 30000, 4000),
        PacketFilter(FilterDirection.DOWNLINK, "2001:db8::10", 30001, 4001),
    )
    nas = dedicated_bearer_nas(6, VOICE, filters)
    assert nas[:6] == bytes([0x17, 0, 0, 0, 0, 0])  # security header, zero MAC, SQN 0
    plain = nas[6:]
    assert plain[0] == 0x62 and plain[2] == 0xC5  # EBI 6, ESM, Activate dedicated bearer
    assert plain[3] == 0x05  # linked to EBI 5
    assert plain[4:10] == bytes([5, 1, 42, 42, 42, 42])  # EPS QoS: QCI 1, 42 kbit/s each
    assert bytes([192, 0, 2, 10]) in plain and (30000).to_bytes(2, "big") in plain


# --- bad input --------------------------------------------------------------------------------


def test_garbage_never_raises():
    rng = random.Random(7)
    seen_kinds = set()
    for _ in range(400):
        data = rng.randbytes(rng.randrange(0, 64))
        result = decode(data)
        assert isinstance(result, Message | Undecodable | Unhandled)
        if isinstance(result, Undecodable):
            seen_kinds.add(result.kind)
    assert ErrorKind.TRANSFER_SYNTAX in seen_kinds


@pytest.mark.parametrize("message", CORPUS, ids=_id)
def test_every_truncation_is_undecodable(message: Message):
    data = encode(message)
    for cut in range(len(data)):
        result = decode(data[:cut])
        assert isinstance(result, Undecodable), (cut, result)
        if cut >= 3:  # the header survives: procedure and criticality are reported
            assert result.procedure_code == message.PROCEDURE
            assert result.criticality is s1ap.PROCEDURES[message.PROCEDURE][0]


def test_bit_flips_never_raise():
    rng = random.Random(3)
    for message in CORPUS:
        data = bytearray(encode(message))
        for _ in range(30):
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            assert isinstance(decode(bytes(flipped)), Message | Undecodable | Unhandled)


def test_empty_and_short():
    assert decode(b"") == Undecodable("empty PDU")
    u = decode(b"\x00\x11")
    assert isinstance(u, Undecodable)
    assert (u.kind, u.procedure_code, u.message_type) == (
        ErrorKind.TRANSFER_SYNTAX,
        17,
        MessageType.INITIATING,
    )


def raw_pdu(mtype: str, code: int, crit: str, type_name: str, ies: list[dict[str, Any]]) -> bytes:
    """Encode an S1AP-PDU straight through pycrate (for PDUs our classes refuse to build)."""
    pdu = PYCRATE_S1AP.S1AP_PDU_Descriptions.S1AP_PDU
    value = {"procedureCode": code, "criticality": crit}
    value["value"] = (type_name, {"protocolIEs": ies})
    pdu.set_val((mtype, value))
    return bytes(pdu.to_aper())


def unknown_procedure(code: int = 200, crit: str = "reject") -> bytes:
    # APER: initiatingMessage, procedureCode, criticality, open type of 3 octets.
    bits = {"reject": 0x00, "ignore": 0x40, "notify": 0x80}[crit]
    return bytes([0x00, code, bits, 0x03, 0x00, 0x00, 0x00])


@pytest.mark.parametrize("crit", ["reject", "ignore", "notify"])
def test_unknown_procedure_code(crit: str):
    u = decode(unknown_procedure(200, crit))
    assert isinstance(u, Undecodable)
    assert (u.kind, u.procedure_code, u.criticality) == (
        ErrorKind.UNKNOWN_PROCEDURE,
        200,
        Criticality(crit),
    )
    assert u.diagnostics() == CriticalityDiagnostics(200, MessageType.INITIATING, Criticality(crit))


def test_type_of_message_the_procedure_does_not_have():
    # Error Indication has no successful outcome.
    data = bytes([0x20, 15, 0x40, 0x03, 0x00, 0x00, 0x00])
    u = decode(data)
    assert isinstance(u, Undecodable)
    assert u.kind is ErrorKind.UNKNOWN_PROCEDURE
    assert u.message_type is MessageType.SUCCESSFUL


def test_missing_mandatory_ie():
    data = raw_pdu(
        "initiatingMessage",
        17,
        "reject",
        "S1SetupRequest",
        [
            {"id": 60, "criticality": "ignore", "value": ("ENBname", "x")},
            {"id": 137, "criticality": "ignore", "value": ("PagingDRX", "v128")},
        ],
    )
    u = decode(data)
    assert isinstance(u, Undecodable)
    assert u.kind is ErrorKind.MISSING_IE
    assert u.ies == (
        IeDiagnostic(Criticality.REJECT, 59, "missing"),
        IeDiagnostic(Criticality.REJECT, 64, "missing"),
    )


def _with_unknown_ie(crit: str, mme_ue_id: int = 12345, enb_ue_id: int = 7) -> bytes:
    """An E-RAB Release Response whose Criticality Diagnostics IE id is replaced by 250."""
    data = raw_pdu(
        "successfulOutcome",
        7,
        "reject",
        "E-RABReleaseResponse",
        [
            {"id": 0, "criticality": "ignore", "value": ("MME-UE-S1AP-ID", mme_ue_id)},
            {"id": 8, "criticality": "ignore", "value": ("ENB-UE-S1AP-ID", enb_ue_id)},
            {"id": 58, "criticality": crit, "value": ("CriticalityDiagnostics", {})},
        ],
    )
    at = data.rfind(bytes([0x00, 58]))
    return data[:at] + bytes([0x00, 250]) + data[at + 2 :]


def test_not_understood_ie_with_reject_is_undecodable():
    u = decode(_with_unknown_ie("reject"))
    assert isinstance(u, Undecodable)
    assert u.kind is ErrorKind.IE_NOT_UNDERSTOOD
    assert u.ies == (IeDiagnostic(Criticality.REJECT, 250, "not-understood"),)
    assert (u.mme_ue_id, u.enb_ue_id) == (12345, 7)


@pytest.mark.parametrize("crit", ["ignore", "notify"])
def test_not_understood_ie_without_reject_is_reported_on_the_message(crit: str):
    message = decode(_with_unknown_ie(crit))
    assert isinstance(message, ERabReleaseResponse)
    assert message.not_understood == (IeDiagnostic(Criticality(crit), 250, "not-understood"),)


def test_known_procedure_not_modelled_is_unhandled():
    data = raw_pdu(
        "initiatingMessage",
        13,
        "ignore",
        "UplinkNASTransport",
        [
            {"id": 0, "criticality": "reject", "value": ("MME-UE-S1AP-ID", 5)},
            {"id": 8, "criticality": "reject", "value": ("ENB-UE-S1AP-ID", 6)},
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
    assert decode(data) == Unhandled(
        13, MessageType.INITIATING, Criticality.IGNORE, "UplinkNASTransport", 5, 6
    )


# --- tshark -----------------------------------------------------------------------------------


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `make deps` installs it")  # never skip silently
    return path


def tshark_frames(
    records: list[WireRecord], tmp: Path, *, allow_unknown: bool = False
) -> list[dict[str, Any]]:
    """Write `records` as a pcap, have tshark dissect it, fail on malformed packets, expert
    infos at warning level or above and (unless allowed) PDUs of unknown procedures; return
    per frame: stream, PPID, procedure code and tshark's summary ("S1SetupRequest", ...)."""
    capture = tmp / "s1ap.pcap"
    capture.write_bytes(pcap_bytes(records))
    base = [_need("tshark"), "-r", str(capture), "-o", "sctp.checksum:CRC-32C"]
    bad = subprocess.run(
        [*base, "-Y", "_ws.malformed || _ws.expert.severity >= 0x00600000 || !s1ap"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert bad.strip() == "", f"tshark flags:\n{bad}"
    checksums = subprocess.run(
        [*base, "-T", "fields", "-e", "sctp.checksum.status"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert set(checksums) == {"1"}, "SCTP checksums must verify"  # 1 = good
    fields = ["frame.number", "sctp.data_sid", "sctp.data_payload_proto_id", "s1ap.procedureCode"]
    out = subprocess.run(
        [*base, "-T", "fields", "-E", "separator=|"]
        + [arg for f in fields for arg in ("-e", f)]
        + ["-e", "_ws.col.Info"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    frames = []
    for line in out.splitlines():
        number, sid, ppid, code, info = line.split("|", 4)
        assert allow_unknown or info.strip(), f"frame {number}: PDU tshark does not know"
        frames.append(
            {
                "stream": int(sid, 0),
                "ppid": int(ppid, 0),
                # The first one: Criticality Diagnostics can name another procedure code.
                "code": int(code.split(",")[0]) if code else None,
                "info": info,
            }
        )
    assert len(frames) == len(records)
    return frames


TSHARK_NAMES = {
    # tshark's names where they differ from ours
    "InitialUeMessage": "InitialUEMessage",
    "ERabSetupRequest": "E-RABSetupRequest",
    "ERabSetupResponse": "E-RABSetupResponse",
    "ERabReleaseCommand": "E-RABReleaseCommand",
    "ERabReleaseResponse": "E-RABReleaseResponse",
    "UeContextReleaseRequest": "UEContextReleaseRequest",
    "UeContextReleaseCommand": "UEContextReleaseCommand",
    "UeContextReleaseComplete": "UEContextReleaseComplete",
}


@pytest.mark.interop
def test_tshark_dissects_every_pdu_we_emit(tmp_path: Path):
    records = [WireRecord(0.0, i % 2 == 0, 0, i % 4, encode(m)) for i, m in enumerate(CORPUS)]
    frames = tshark_frames(records, tmp_path)
    for message, frame, record in zip(CORPUS, frames, records, strict=True):
        assert frame["ppid"] == 18
        assert frame["stream"] == record.stream
        assert frame["code"] == message.PROCEDURE, (message.name, frame)
        expected = TSHARK_NAMES.get(message.name, message.name)
        assert frame["info"].startswith(expected), (message.name, frame)
    infos = " ".join(f["info"] for f in frames)
    assert "Attach request" in infos  # the NAS inside the Initial UE Message
    assert "Activate dedicated EPS bearer context request" in infos
