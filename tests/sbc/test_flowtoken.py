"""Flow tokens: what the Record-Route carries is read back, and a forged one is refused."""

from __future__ import annotations

import base64

from services.sbc.flowtoken import FlowToken, Hop, read_route_params, record_route_params
from services.sip.transport import Source
from services.sip.uri import parse_uri

KEY = b"k" * 32


def params_of(text: str) -> dict[str, str | None]:
    return dict(parse_uri(f"sip:127.0.0.1:5060;lr{text}").params)


def test_round_trip_with_ipv6_and_tcp() -> None:
    caller = Hop("UDP", ("192.0.2.10", 40000))
    callee = Hop("TCP", ("2001:db8::7", 5061))
    got = read_route_params(KEY, params_of(record_route_params(KEY, caller, callee, "ms-1")))
    assert got == FlowToken(caller, callee, "ms-1")
    assert read_route_params(KEY, params_of(record_route_params(KEY, caller))) == FlowToken(
        caller
    )


def test_forged_or_foreign_tokens_are_refused() -> None:
    caller = Hop("UDP", ("192.0.2.10", 40000))
    text = record_route_params(KEY, caller)
    assert read_route_params(b"other" * 8, params_of(text)) is None
    evil = Hop("UDP", ("203.0.113.66", 5060)).encode()
    forged = text.replace(caller.encode(), evil)
    assert read_route_params(KEY, params_of(forged)) is None
    assert read_route_params(KEY, params_of("")) is None
    anchored = record_route_params(KEY, caller, media="ms-1")
    assert read_route_params(KEY, params_of(anchored.replace("ms-1", "ms-2"))) is None
    assert Hop.decode("!!!") is None


def test_a_ue_without_nat_is_open_and_that_survives_the_token() -> None:
    """A UDP UE whose Contact is where its request came from is `open` (a worker may send to
    it from its own port); behind a NAT (Contact elsewhere) or over TCP it is not."""
    source = Source("UDP", ("192.0.2.10", 40000), ("127.0.0.1", 5060))
    assert Hop.of(source, ("192.0.2.10", 40000)).open
    assert not Hop.of(source, ("10.0.0.7", 5060)).open  # NAT: private Contact
    assert not Hop.of(source, None).open
    tcp = Source("TCP", ("192.0.2.10", 40000), ("127.0.0.1", 5060), flow=3)
    assert not Hop.of(tcp, ("192.0.2.10", 40000)).open
    caller = Hop.of(source, ("192.0.2.10", 40000))
    callee = Hop("UDP", ("192.0.2.20", 5060))
    token = read_route_params(KEY, params_of(record_route_params(KEY, caller, callee)))
    assert token == FlowToken(caller, callee)
    assert token.caller.open and not callee.open
    # Tokens written before the flag existed read as not open (the NAT-safe way).
    old = base64.urlsafe_b64encode(b"UDP|192.0.2.10|40000").decode().rstrip("=")
    assert Hop.decode(old) == Hop("UDP", ("192.0.2.10", 40000))
    bad = base64.urlsafe_b64encode(b"UDP|192.0.2.10|40000|x").decode().rstrip("=")
    assert Hop.decode(bad) is None
