"""SIP, SIPS, tel and opaque URIs (RFC 3261 sections 19.1 and 25, RFC 3966)."""

from __future__ import annotations

import pytest

from services.sip import URI, ParseError, parse_uri
from services.sip.grammar import memoized


def test_full_sip_uri() -> None:
    text = (
        "sip:alice:secretword@atlanta.com:5061;transport=TCP;lr;maddr=239.255.255.1"
        "?subject=project%20x&priority=urgent"
    )
    uri = parse_uri(text)
    assert uri.scheme == "sip" and uri.is_sip
    assert (uri.user, uri.password) == ("alice", "secretword")
    assert (uri.host, uri.port) == ("atlanta.com", 5061)
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "239.255.255.1"}
    assert uri.headers == (("subject", "project%20x"), ("priority", "urgent"))
    assert str(uri) == text and uri.raw == text
    assert uri.opaque is None


def test_minimal_uris() -> None:
    uri = parse_uri("sip:example.com")
    assert (uri.user, uri.password, uri.host, uri.port) == (None, None, "example.com", None)
    assert uri.params == {} and uri.headers == ()
    uri = parse_uri("sips:bob@biloxi.example.com")
    assert uri.scheme == "sips" and uri.is_sip and uri.user == "bob"
    assert parse_uri("sip:192.0.2.4:5060").host == "192.0.2.4"


def test_scheme_is_case_insensitive_but_user_is_not() -> None:
    uri = parse_uri("SIP:Alice@AtLanTa.CoM")
    assert uri.scheme == "sip"
    assert uri.user == "Alice"  # userinfo is case-sensitive
    assert uri.host == "AtLanTa.CoM" and uri.host_lower == "atlanta.com"
    assert str(uri) == "SIP:Alice@AtLanTa.CoM"  # as written


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:alice@[2001:db8::10]:5070;transport=tcp", "[2001:db8::10]", 5070),
        ("sips:[::1]:5061", "[::1]", 5061),
        ("sip:[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]", None),
        ("sip:[2001:DB8:0:0:0:0:0:1]:1", "[2001:DB8:0:0:0:0:0:1]", 1),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "sip:[2001:db8::1",  # unclosed
        "sip:[2001:db8::g]",  # not hex
        "sip:[192.0.2.1]",  # IPv4 in brackets
        "sip:[2001:db8::1]x",  # junk after ]
        "sip:2001:db8::1",  # IPv6 without brackets: port "db8::1"
        "sip:[]",
    ],
)
def test_bad_ipv6_references(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


@pytest.mark.parametrize(("port", "ok"), [("0", True), ("5060", True), ("65535", True),
                                           ("65536", False), ("", False), ("50a", False),
                                           ("-1", False), ("1" * 5000, False),
                                           ("\u0665\u0660", False)])  # fmt: skip
def test_ports(port: str, ok: bool) -> None:
    if ok:
        assert parse_uri(f"sip:h.example.com:{port}").port == int(port)
    else:
        with pytest.raises(ParseError):  # not ValueError, even for 5000 digits
            parse_uri(f"sip:h.example.com:{port}")


def test_params_names_case_insensitive_values_as_written() -> None:
    uri = parse_uri("sip:bob@biloxi.com;Transport=TCP;LR;user=phone;x-Param=%41b")
    assert uri.params == {"transport": "TCP", "lr": None, "user": "phone", "x-param": "%41b"}
    assert uri.param("TRANSPORT") == "TCP"
    assert uri.has_param("lr") and uri.param("lr") is None
    assert uri.param("x-param") == "Ab"  # unescaped on access
    assert not uri.has_param("maddr") and uri.param("maddr") is None


def test_escaped_param_names() -> None:
    uri = parse_uri("sip:host.example.com;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.has_param("lr") and uri.has_param("LR")
    assert uri.param("name") == "value%41"  # one level of unescaping only
    assert not uri.has_param("other")


def test_user_escapes_and_user_unreserved() -> None:
    uri = parse_uri("sip:%61lice%20smith@example.com")
    assert uri.user == "%61lice%20smith" and uri.user_unescaped == "alice smith"
    uri = parse_uri("sip:+1-212-555-1212;isub=12;postd=pp22@gw.example.com;user=phone")
    assert uri.user == "+1-212-555-1212;isub=12;postd=pp22"
    assert uri.params == {"user": "phone"}
    uri = parse_uri("sip:a&b=c+d$e,f;g?h/i@example.com")
    assert uri.user == "a&b=c+d$e,f;g?h/i" and uri.headers == ()
    assert parse_uri("sip:%C3%A9t%C3%A9@example.com").user_unescaped == "été"
    # A non-UTF-8 escape survives as an undecodable octet rather than raising.
    raw = parse_uri("sip:%FF@example.com").user_unescaped
    assert raw is not None and raw.encode("utf-8", "surrogateescape") == b"\xff"


@pytest.mark.parametrize(
    "text",
    [
        "sip:a%2@example.com",  # short escape
        "sip:a%zz@example.com",  # not hex
        "sip:a:b%@example.com",  # in the password
        "sip:@example.com",  # empty user
        "sip:a@b@example.com",  # two '@'
        "sip:a b@example.com",  # SP
        "sip:a<b@example.com",
        "sip:a:pa:ss@example.com",  # ':' in the password
        "sip:exa mple.com",
        "sip:-host.example.com",
        "sip:host.example.com;",  # empty parameter
        "sip:host.example.com;=x",
        "sip:host.example.com;a=b c",
        "sip:host.example.com;a=%4",
        "sip:host.example.com?subject",  # header without '='
        "sip:host.example.com?=x",
        "sip:host.example.com?a=b c",
        "sip:",
        "sip",
        "1sip:host.example.com",
        ":host",
        "mailto:",
        "mailto:a b@example.com",
        'http:"x"',
        "tel:",
        "tel:+1 212",
        "tel:+1212;a=b c",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;ext=1234;Phone-Context=example.com")
    assert uri.scheme == "tel" and not uri.is_sip
    assert uri.user == "+1-201-555-0123"
    assert uri.params == {"ext": "1234", "phone-context": "example.com"}
    assert str(uri) == "tel:+1-201-555-0123;ext=1234;Phone-Context=example.com"
    assert parse_uri("tel:7042;phone-context=+1-201-555").user == "7042"
    assert parse_uri("TEL:911").scheme == "tel"


def test_other_schemes_are_opaque() -> None:
    uri = parse_uri("mailto:alice@example.com")
    assert (uri.scheme, uri.opaque, uri.host, uri.user) == ("mailto", "alice@example.com", "", None)
    uri = parse_uri("urn:service:sos")
    assert (uri.scheme, uri.opaque) == ("urn", "service:sos")
    uri = parse_uri("HTTP://www.example.com/x?y=z")
    assert uri.scheme == "http" and str(uri) == "HTTP://www.example.com/x?y=z"
    assert uri.render() == "http://www.example.com/x?y=z"


# --- comparison (RFC 3261 section 19.1.4) -------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
        ("sip:alice:p%61ss@atlanta.com", "sip:alice:pass@atlanta.com"),
        ("sip:host.example.com;%6C%72", "sip:host.example.com;lr"),
        ("sip:host.example.com;maddr=%31.2.3.4", "sip:host.example.com;MADDR=1.2.3.4"),
        ("tel:+1-201-555-0123", "TEL:+1-201-555-0123"),
        ("mailto:a@example.com", "mailto:a@example.com"),
    ],
)
def test_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua.equals(ub) and ub.equals(ua)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
        ("sip:alice@atlanta.com", "sip:atlanta.com"),
        ("sip:alice:a@atlanta.com", "sip:alice@atlanta.com"),
        ("sip:alice:a@atlanta.com", "sip:alice:b@atlanta.com"),
        ("sip:h.com;user=phone", "sip:h.com"),
        ("sip:h.com;ttl=1", "sip:h.com;ttl=2"),
        ("sip:h.com;method=INVITE", "sip:h.com"),
        ("sip:h.com;maddr=1.2.3.4", "sip:h.com"),
        ("sip:h.com?a=1", "sip:h.com?a=2"),
        ("mailto:a@example.com", "mailto:b@example.com"),
        ("mailto:a@example.com", "sip:a@example.com"),
    ],
)
def test_different_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert not ua.equals(ub) and not ub.equals(ua)


# --- building -----------------------------------------------------------------------------


def test_replace_renders_afresh() -> None:
    uri = parse_uri("sip:bob@Biloxi.com:5060;transport=tcp;lr")
    moved = uri.replace(host="192.0.2.7", port=None)
    assert str(moved) == "sip:bob@192.0.2.7;transport=tcp;lr"
    assert str(uri) == "sip:bob@Biloxi.com:5060;transport=tcp;lr"  # frozen: unchanged
    assert parse_uri(str(moved)).equals(moved)
    with_params = uri.replace(params={**uri.params, "maddr": "10.0.0.1"})
    assert with_params.param("maddr") == "10.0.0.1"
    assert str(with_params).endswith(";transport=tcp;lr;maddr=10.0.0.1")


def test_constructed_uri_renders() -> None:
    uri = URI("sips", user="alice", host="[2001:db8::1]", port=5061, params={"lr": None})
    assert str(uri) == "sips:alice@[2001:db8::1]:5061;lr"
    assert parse_uri(str(uri)).equals(uri)
    assert repr(uri) == "URI('sips:alice@[2001:db8::1]:5061;lr')"
    tel = URI("tel", user="+15551234", params={"phone-context": "example.com"})
    assert str(tel) == "tel:+15551234;phone-context=example.com"


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice:secretword@atlanta.com:5061;transport=TCP;lr?subject=project%20x&priority=urgent",
        "sips:[2001:db8::1]:5061;maddr=[2001:db8::2]",
        "sip:+1-212-555-1212;isub=12@gw.example.com;user=phone",
        "tel:+1-201-555-0123;ext=1234",
        "urn:service:sos",
    ],
)
def test_render_reparses_equal(text: str) -> None:
    uri = parse_uri(text)
    again = parse_uri(uri.render())
    assert again.equals(uri)
    assert (again.user, again.password, again.host, again.port) == (
        uri.user, uri.password, uri.host, uri.port,
    )  # fmt: skip
    assert again.params == uri.params and again.headers == uri.headers


def test_parsed_uris_are_remembered_within_bounds_and_bad_ones_are_not() -> None:
    calls: list[str] = []

    @memoized(size=3)
    def parse(text: str) -> tuple[str, ...]:
        calls.append(text)
        if text == "bad":
            raise ParseError("bad")
        return tuple(text)

    assert parse("ab") is parse("ab") and calls == ["ab"]  # once, then the same value
    for _ in range(2):
        with pytest.raises(ParseError):
            parse("bad")
    assert calls == ["ab", "bad", "bad"]
    parse("c"), parse("d"), parse("e")  # the fourth distinct text empties the memory
    parse("ab")
    assert calls[-1] == "ab" and len(calls) == 7
    assert parse_uri("sip:alice@example.com;transport=tcp") is parse_uri(
        "sip:alice@example.com;transport=tcp"
    )
