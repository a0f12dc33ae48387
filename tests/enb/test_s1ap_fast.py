"""The S1AP codec's fast path for the E-RAB messages (services/enb/s1ap.py, services/enb/aper.py)
against pycrate, property-based (hypothesis).

`encode()` writes E-RAB Setup Request / Response and E-RAB Release Command / Response by hand
around pycrate-built templates, and `decode()` reads them by hand: the octets must be exactly
the ones pycrate produces for any field values, the messages read back must be the ones pycrate
reads, and any PDU the fast path does not read in full (corrupted, extended, with criticality
diagnostics) must decode exactly as pycrate alone decodes it, errors included.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.enb import aper, s1ap
from services.enb.s1ap import (
    CAUSE_VALUES,
    MAX_ENB_UE_ID,
    MAX_MME_UE_ID,
    BearerQos,
    Cause,
    CriticalityDiagnostics,
    ERabCauseItem,
    ERabReleaseCommand,
    ERabReleaseResponse,
    ERabSetupItem,
    ERabSetupRequest,
    ERabSetupResponse,
    ERabToSetup,
    ErrorKind,
    Ie,
    Message,
    MessageType,
    Undecodable,
    decode,
    encode,
    qos_for_codec,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

mme_ids = st.integers(0, MAX_MME_UE_ID)
enb_ids = st.integers(0, MAX_ENB_UE_ID)
e_rab_ids = st.integers(0, 15)
teids = st.integers(0, (1 << 32) - 1)
addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
causes = st.sampled_from(sorted(CAUSE_VALUES)).flatmap(
    lambda g: st.sampled_from(sorted(CAUSE_VALUES[g])).map(lambda v: Cause(g, v))
)
# Bit rates across every length of the BitRate INTEGER encoding (1 to 5 octets).
rates = st.one_of(st.integers(0, 300), st.integers(0, 10_000_000_000))


@st.composite
def qoses(draw: Any) -> BearerQos:
    gbr_ul, gbr_dl, mbr_ul, mbr_dl = (draw(rates) for _ in range(4))
    return BearerQos(
        qci=draw(st.integers(0, 255)),
        priority_level=draw(st.integers(0, 15)),
        pre_emption_capability=draw(st.booleans()),
        pre_emption_vulnerability=draw(st.booleans()),
        gbr_ul=min(gbr_ul, mbr_ul),
        gbr_dl=min(gbr_dl, mbr_dl),
        mbr_ul=max(gbr_ul, mbr_ul),
        mbr_dl=max(gbr_dl, mbr_dl),
    )


nas_pdus = st.one_of(
    st.none(), st.binary(min_size=1, max_size=140), st.binary(min_size=16380, max_size=16400)
)
to_setup = st.builds(ERabToSetup, e_rab_ids, qoses(), addresses, teids, nas_pdus)
setup_items = st.builds(ERabSetupItem, e_rab_ids, addresses, teids)
cause_items = st.builds(ERabCauseItem, e_rab_ids, causes)


fast_messages = st.one_of(
    st.builds(
        ERabSetupRequest,
        mme_ue_id=mme_ids,
        enb_ue_id=enb_ids,
        e_rabs=st.lists(to_setup, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(
        ERabSetupResponse,
        mme_ids,
        enb_ids,
        setup=st.lists(setup_items, max_size=3).map(tuple),
        failed=st.lists(cause_items, max_size=3).map(tuple),
    ),
    st.builds(
        ERabReleaseCommand,
        mme_ue_id=mme_ids,
        enb_ue_id=enb_ids,
        e_rabs=st.lists(cause_items, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(
        ERabReleaseResponse,
        mme_ids,
        enb_ids,
        released=st.lists(e_rab_ids, max_size=3).map(tuple),
        failed=st.lists(cause_items, max_size=3).map(tuple),
    ),
)


def _usual(m: Message) -> bool:
    """The fast path's shapes: no NAS PDU beyond 16K octets (fragmented lengths)."""
    return not isinstance(m, ERabSetupRequest) or all(
        e.nas_pdu is None or len(e.nas_pdu) < 16000 for e in m.e_rabs
    )


@SETTINGS
@given(fast_messages)
def test_fast_encoding_is_pycrates_encoding(message: Message) -> None:
    pycrate = encode(message, verify=True)  # pycrate with all its constraint checks
    assert encode(message) == pycrate
    assert (s1ap._fast_encode(message) is not None) == _usual(message)


@SETTINGS
@given(fast_messages)
def test_fast_decoding_agrees_with_pycrate(message: Message) -> None:
    data = encode(message, verify=True)
    fast = s1ap._fast_decode(data)
    assert (fast is not None) == _usual(message)
    assert decode(data) == s1ap._pycrate_decode(data)
    assert type(decode(data)) is type(message)


@SETTINGS
@given(fast_messages, st.data())
def test_corrupted_pdus_decode_as_pycrate_decodes_them(message: Message, data: Any) -> None:
    """Flip, drop or add octets: whatever the fast path does with the result, `decode` says
    exactly what pycrate says (the same message, or the same Undecodable)."""
    pdu = bytearray(encode(message))
    how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(pdu) - 1))
            pdu[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del pdu[data.draw(st.integers(0, len(pdu) - 1)) :]
    else:
        pdu += data.draw(st.binary(min_size=1, max_size=4))
    assert decode(bytes(pdu)) == s1ap._pycrate_decode(bytes(pdu))


def test_unusual_shapes_go_to_pycrate_with_its_error_handling() -> None:
    voice = qos_for_codec(23_850)
    diag = CriticalityDiagnostics(5, MessageType.INITIATING)
    with_diag = ERabSetupResponse(1, 7, (ERabSetupItem(6, "10.0.0.2", 9),), (), diag)
    assert s1ap._fast_encode(with_diag) is None
    assert decode(encode(with_diag)) == with_diag
    with_nas = ERabReleaseCommand(1, 7, (ERabCauseItem(6, s1ap.NORMAL_RELEASE),), b"\x27")
    assert s1ap._fast_encode(with_nas) is None
    assert decode(encode(with_nas)) == with_nas

    # The mandatory E-RAB list left out: pycrate's path reports the missing IE.
    request = ERabSetupRequest(1, 7, (ERabToSetup(6, voice, "10.0.0.1", 3),))
    _type, code, crit, fields = aper.split_pdu(encode(request))
    without_list = aper.pdu(
        0,
        code,
        crit,
        [aper.field(i, c, v) for i, c, v in fields if i != Ie.E_RAB_TO_BE_SETUP_LIST_BEARER_SU_REQ],
    )
    missing = decode(without_list)
    assert isinstance(missing, Undecodable) and missing.kind is ErrorKind.MISSING_IE
    assert (missing.mme_ue_id, missing.enb_ue_id) == (1, 7)

    # An IE the message does not define, criticality "reject": IE not understood.
    extra = aper.pdu(
        0, code, crit, [*(aper.field(*f) for f in fields), aper.field(999, 0, b"\x00")]
    )
    rejected = decode(extra)
    assert isinstance(rejected, Undecodable) and rejected.kind is ErrorKind.IE_NOT_UNDERSTOOD
    # ... criticality "ignore": the message, with the IE reported as not understood.
    ignored = decode(
        aper.pdu(0, code, crit, [*(aper.field(*f) for f in fields), aper.field(999, 1, b"\x00")])
    )
    assert isinstance(ignored, ERabSetupRequest) and [d.ie_id for d in ignored.not_understood] == [
        999
    ]


def test_ue_id_octets() -> None:
    for value, octets in (
        (0, "0000"),
        (255, "00ff"),
        (256, "400100"),
        (MAX_MME_UE_ID, "c0ffffffff"),
    ):
        assert aper.ue_id(value).hex() == octets
        assert aper.read_ue_id(bytes.fromhex(octets), 4) == value
