"""Flow tokens: what the Record-Route carries is read back, and a forged one is refused."""

from __future__ import annotations

from services.sbc.flowtoken import FlowToken, Hop, read_route_params, record_route_params
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
