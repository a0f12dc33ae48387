"""Pure parts of the state service: key layout, value framing, rules, URL parsing."""

from __future__ import annotations

import pytest

from services.sip.digest import ha1
from services.state import keys, rules
from services.state.connect import _split, check_url
from services.state.service import redact
from tests.state.helpers import PASSWORD, REALM, digest, subscriber
from volte.v1 import common_pb2, state_pb2


def test_keys_of_one_record_share_a_slot_tag():
    key = keys.registration("sip:+15550000001@ims.local")
    assert key.startswith("volte:{s") and key.endswith(":reg:sip:+15550000001@ims.local")
    assert keys.timers_for(key) == key.split("}")[0] + "}:timers"
    assert keys.timers_for(key) in keys.all_timer_keys()
    assert len(set(keys.all_timer_keys())) == keys.SHARDS
    assert keys.kind_of(key) == "binding"
    assert keys.kind_of(keys.dialogs("c@h")) == "dialog"
    assert keys.kind_of(keys.media("m1")) == "media"
    for key in (keys.subscriber("i"), keys.impu("sip:x"), keys.impi_index()):
        assert key.startswith("volte:{subs}:")


def test_sources_are_normalized():
    assert keys.source("2001:0db8::0001", 5060) == keys.source("2001:db8::1", 5060)
    a = common_pb2.SocketAddress(ip="2001:db8::1", port=5060)
    b = common_pb2.SocketAddress(ip="2001:0db8:0:0::1", port=5060)
    assert rules.same_source(a, b)
    assert not rules.same_source(a, common_pb2.SocketAddress(ip="2001:db8::1", port=5061))
    assert not rules.same_source(common_pb2.SocketAddress(), common_pb2.SocketAddress())


def test_framing_round_trip():
    value = keys.frame_binding(
        1234, b"\n\x00payload", cseq=7, reg_id=1, call_id="abc@h", instance_id=""
    )
    framed = keys.unframe(value)
    assert (framed.deadline_ms, framed.words, framed.payload) == (
        1234, ("7", "1", "abc@h"), b"\n\x00payload"
    )
    with_instance = keys.frame_binding(1, b"", cseq=1, reg_id=0, call_id="c", instance_id="<u>")
    assert keys.unframe(with_instance).words == ("1", "0", "c", "<u>")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_verify_answer(algorithm: str):
    sub = subscriber(1)
    good = digest(sub.impi, algorithm=algorithm)
    assert rules.verify_answer(sub, good)
    good.response = good.response.upper()  # hex case does not matter
    assert rules.verify_answer(sub, good)
    assert not rules.verify_answer(sub, digest(sub.impi, algorithm=algorithm, password="x"))
    other_realm = digest(sub.impi, algorithm=algorithm, realm="elsewhere")
    assert not rules.verify_answer(sub, other_realm)
    md5_only = subscriber(1)
    md5_only.credentials.ha1_sha256 = ""
    assert rules.verify_answer(md5_only, digest(sub.impi)) and not rules.verify_answer(
        md5_only, digest(sub.impi, algorithm="SHA-256")
    )


def test_nonce_count_of_an_answer():
    answer = digest("u", nc=0x2A)
    assert rules.answer_nonce_count(answer) == 0x2A
    assert rules.answer_nonce_count(state_pb2.DigestAnswer()) == 0  # RFC 2069: one use
    answer.nc = "2a"
    assert rules.answer_nonce_count(answer) is None
    answer.nc, answer.qop = "0000002a", "auth-int"
    assert rules.answer_nonce_count(answer) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"impus": []}, "at least one IMPU"),
        ({"impus": ["sip:a", "sip:a"]}, "duplicates"),
        ({"imsi": "123"}, "imsi"),
        ({"credentials": state_pb2.DigestCredentials(realm=REALM)}, "needs an HA1"),
        ({"credentials": state_pb2.DigestCredentials(realm=REALM, ha1_md5="xyz")}, "bad hex"),
    ],
)
def test_bad_subscribers(change, message):
    sub = subscriber(1)
    for name, value in change.items():
        sub.ClearField(name)
        if isinstance(value, list):
            getattr(sub, name).extend(value)
        elif isinstance(value, str):
            setattr(sub, name, value)
        else:
            getattr(sub, name).CopyFrom(value)
    with pytest.raises(rules.InvalidArgument, match=message):
        rules.check_subscriber(sub)


def test_ha1_hex_is_stored_lowercase():
    sub = subscriber(1)
    sub.credentials.ha1_md5 = ha1(sub.impi, REALM, PASSWORD).upper()
    rules.check_subscriber(sub)
    assert sub.credentials.ha1_md5 == ha1(sub.impi, REALM, PASSWORD)


def _dialog(state: state_pb2.Dialog.State, created_ms: int = 0) -> state_pb2.Dialog:
    d = state_pb2.Dialog(state=state)
    d.created_at.FromMilliseconds(created_ms)
    return d


def test_select_dialog():
    confirmed = state_pb2.Dialog.STATE_CONFIRMED
    early = state_pb2.Dialog.STATE_EARLY
    stored = {"a b1": _dialog(early, 1), "a b2": _dialog(confirmed, 0), "x ": _dialog(early)}
    assert rules.select_dialog(stored, "a", "b1") == "a b1"
    assert rules.select_dialog(stored, "b1", "a") == "a b1"  # from the callee
    assert rules.select_dialog(stored, "a", "b3") is None  # another fork
    assert rules.select_dialog(stored, "a", "") == "a b2"  # confirmed beats early
    assert rules.select_dialog(stored, "x", "y") == "x "  # To tag arrived after the store
    assert rules.select_dialog(stored, "y", "x") == "x "
    assert rules.select_dialog(stored, "z", "") is None


def test_which_dialog_a_put_updates():
    early, confirmed = state_pb2.Dialog.STATE_EARLY, state_pb2.Dialog.STATE_CONFIRMED
    stored = {"a ": _dialog(early), "x y": _dialog(confirmed), "x z": _dialog(early)}
    assert rules.stored_dialog(stored, "a", "b") == "a "  # the To tag arrives
    assert rules.stored_dialog(stored, "y", "x") == "x y"
    assert rules.stored_dialog(stored, "x", "") is None  # never overwrites a fork
    assert rules.stored_dialog(stored, "x", "w") is None
    assert rules.unconfirmed_forks(stored, "x") == ["x z"]


def test_dialog_deadline():
    d = _dialog(state_pb2.Dialog.STATE_EARLY, created_ms=1_000)
    d.expires_at.FromMilliseconds(1_000_000)
    assert rules.dialog_deadline(d, 5_000, early_ms=180_000, linger_ms=32_000) == 181_000
    d.state = state_pb2.Dialog.STATE_CONFIRMED
    assert rules.dialog_deadline(d, 5_000, early_ms=180_000, linger_ms=32_000) == 1_000_000
    d.state = state_pb2.Dialog.STATE_TERMINATED
    assert rules.dialog_deadline(d, 5_000, early_ms=180_000, linger_ms=32_000) == 37_000


def test_binding_order():
    def b(contact: str, q: int, expires_ms: int) -> state_pb2.Binding:
        binding = state_pb2.Binding(contact_uri=contact, q_milli=q)
        binding.expires_at.FromMilliseconds(expires_ms)
        return binding

    ordered = rules.binding_order([b("old", 500, 1), b("top", 900, 1), b("new", 500, 2)])
    assert [x.contact_uri for x in ordered] == ["top", "new", "old"]


@pytest.mark.parametrize(
    ("url", "hosts", "path"),
    [
        (
            "redis+sentinel://s1:26379,s2/mymaster/2",
            [("s1", 26379), ("s2", 26379)],
            ["mymaster", "2"],
        ),
        (
            "redis+cluster://u:p%40ss@[::1]:7000,10.0.0.2:7001",
            [("::1", 7000), ("10.0.0.2", 7001)],
            [],
        ),
    ],
)
def test_multi_host_urls(url, hosts, path):
    check_url(url)
    _, _, password, got_hosts, got_path = _split(url)
    assert (got_hosts, got_path) == (hosts, path)
    if "@" in url:
        assert password == "p@ss"


@pytest.mark.parametrize(
    "url",
    ["http://h:1", "redis+sentinel://h:1", "redis+sentinel://h:1/m/x", "redis+cluster://h:port"],
)
def test_bad_urls(url):
    with pytest.raises(ValueError):
        check_url(url)


def test_redact():
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
