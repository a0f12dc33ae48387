"""Unit tests for the SIP message parser: start lines, header fields, typed values, limits,
responses we build, and header edits (RFC 3261 sections 7, 8.2.6, 18.3, 20 and 25)."""

from __future__ import annotations

import pytest

from services.sip import (
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    ParserLimits,
    Request,
    Response,
    Via,
    make_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)

VIA = "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds"
MANDATORY = [
    VIA,
    "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
    "To: Bob <sip:bob@biloxi.com>",
    "Call-ID: a84b4c76e66710@pc33.atlanta.com",
]


def req(*extra: str, method: str = "INVITE", body: bytes = b"", start: str | None = None,
        cseq: str | None = None, headers: list[str] | None = None) -> bytes:  # fmt: skip
    """A request: start line, the mandatory headers (unless `headers`), `extra`, the body."""
    lines = [f"{method} sip:bob@biloxi.com SIP/2.0" if start is None else start]
    lines += MANDATORY if headers is None else headers
    lines.append(cseq or f"CSeq: 314159 {method}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def resp(*extra: str, start: str = "SIP/2.0 200 OK") -> bytes:
    lines = [start, *MANDATORY, "CSeq: 314159 INVITE", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_req(data: bytes, strict: bool = True) -> Request:
    msg = parse_message(data, strict=strict)
    assert isinstance(msg, Request)
    return msg


def rejects(data: bytes, strict: bool = True, status: int = 400) -> ParseError:
    with pytest.raises(ParseError) as exc:
        parse_message(data, strict=strict)
    assert exc.value.status == status
    return exc.value


# --- start lines ----------------------------------------------------------------------------


def test_request_line() -> None:
    msg = parse_req(req("Content-Length: 0"))
    assert (msg.method, msg.uri_text, msg.version) == ("INVITE", "sip:bob@biloxi.com", "SIP/2.0")
    assert msg.uri.user == "bob" and msg.uri.host == "biloxi.com"
    assert msg.start_line() == "INVITE sip:bob@biloxi.com SIP/2.0"
    assert repr(msg) == "<Request INVITE sip:bob@biloxi.com>"


def test_request_line_version_is_case_insensitive() -> None:
    """RFC 3261 7.1: the version string is case-insensitive (we keep it as written)."""
    data = req(start="OPTIONS sip:bob@biloxi.com sip/2.0", method="OPTIONS")
    msg = parse_req(data)
    assert msg.version == "sip/2.0" and msg.to_bytes() == data


@pytest.mark.parametrize(
    "start",
    [
        "INVITE sip:bob@biloxi.com",
        "INVITE  sip:bob@biloxi.com SIP/2.0",
        "INVITE sip:bob@biloxi.com SIP/2.0 ",
        " INVITE sip:bob@biloxi.com SIP/2.0",
        "INVITE\tsip:bob@biloxi.com\tSIP/2.0",
        "INVITE sip:bob@biloxi.com SIP/2.0 extra",
        "INVITE sip:bob@biloxi.com HTTP/1.1",
        "INVITE sip:bob@biloxi.com SIP/2",
        "INVITE sip:bob@biloxi.com SIP/2.0.1",
        "INVITE <sip:bob@biloxi.com> SIP/2.0",
        "INVITE sip:bob@bi\x00loxi.com SIP/2.0",
        "IN(VITE sip:bob@biloxi.com SIP/2.0",
        "",
    ],
)
def test_bad_request_lines(start: str) -> None:
    rejects(req(start=start), strict=False)


def test_unsupported_version_is_505() -> None:
    err = rejects(req(start="INVITE sip:bob@biloxi.com SIP/3.0"), strict=False, status=505)
    assert err.reason == "Version Not Supported"
    rejects(resp(start="SIP/1.0 200 OK"), strict=False, status=505)


def test_bad_request_uri_is_found_when_used() -> None:
    data = req(start="INVITE sip:bob@bi loxi SIP/2.0")  # 4 parts: at once
    rejects(data, strict=False)
    data = req(start="INVITE sip:@biloxi.com SIP/2.0")
    msg = parse_req(data, strict=False)  # the proxy path parses the URI on first use
    with pytest.raises(ParseError):
        msg.uri  # noqa: B018
    rejects(data)


def test_status_line() -> None:
    msg = parse_message(resp(start="SIP/2.0 183 Session Progress"), strict=True)
    assert isinstance(msg, Response)
    assert (msg.version, msg.status, msg.reason) == ("SIP/2.0", 183, "Session Progress")
    assert msg.start_line() == "SIP/2.0 183 Session Progress"
    assert repr(msg) == "<Response 183 Session Progress>"


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [
        ("SIP/2.0 100 Trying", 100, "Trying"),
        ("SIP/2.0 699 Whatever It Is", 699, "Whatever It Is"),
        ("SIP/2.0 200 ", 200, ""),
        ("SIP/2.0 200", 200, ""),  # liberal: no SP before the missing reason
        ("SIP/2.0 486 Busy\there", 486, "Busy\there"),  # HTAB is allowed
        ("SIP/2.0 200 Très bien ✓", 200, "Très bien ✓"),
    ],
)
def test_status_lines(start: str, status: int, reason: str) -> None:
    msg = parse_message(resp(start=start), strict=True)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (status, reason)


@pytest.mark.parametrize(
    "start",
    [
        "SIP/2.0 099 Too Low",
        "SIP/2.0 700 Too High",
        "SIP/2.0 20 OK",
        "SIP/2.0 2000 OK",
        "SIP/2.0 2x0 OK",
        "SIP/2.0 \u0662\u0660\u0660 OK",  # non-ASCII digits
        "SIP/2.0  200 OK",
        "SIP/2.0 OK",
        "SIP/2.0 200 O\x00K",
        "SIP/2.0 200 OK\rVia: SIP/2.0/UDP evil.example.com",  # bare CR: reject, never relay
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP evil.example.com",
        "SIP/2.0/200 OK",
    ],
)
def test_bad_status_lines(start: str) -> None:
    rejects(resp(start=start), strict=False)


def test_response_default_reason() -> None:
    assert Response(404).reason == "Not Found"
    assert Response(299).reason == "Unknown"
    assert Response(200, "Fine").start_line() == "SIP/2.0 200 Fine"


# --- header fields --------------------------------------------------------------------------


def test_header_folding() -> None:
    data = req(
        "Subject: I know you're there,",
        "         pick up the phone",
        "\tand talk to me!",
        "Content-Length: 0",
    )
    msg = parse_req(data)
    assert msg.headers.get("subject") == "I know you're there, pick up the phone and talk to me!"
    assert msg.to_bytes() == data  # the folded raw lines are re-sent as received


def test_folding_in_structured_headers() -> None:
    data = req(
        start="INVITE sip:bob@biloxi.com SIP/2.0",
        headers=[
            "Via: SIP/2.0/UDP",
            "  pc33.atlanta.com",
            " ;branch=z9hG4bKnashds8",
            *MANDATORY[1:],
        ],
        cseq="CSeq:\r\n 314159\r\n INVITE",
    )
    msg = parse_req(data)
    assert msg.top_via.host == "pc33.atlanta.com" and msg.top_via.branch == "z9hG4bKnashds8"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.to_bytes() == data


def test_continuation_before_first_header() -> None:
    data = b"INVITE sip:bob@biloxi.com SIP/2.0\r\n continued\r\n" + req()[36:]
    rejects(data, strict=False)


@pytest.mark.parametrize(
    "line",
    [
        "No colon here",
        "Bad Name: x",  # SP inside a name
        ": no name",
        "X@Y: z",
        "Junk Via: SIP/2.0/UDP evil.example.com;branch=z9hG4bKevil",  # never read as a Via
        "\x00Via: SIP/2.0/UDP evil.example.com;branch=z9hG4bKevil",
        "Subject: a\nVia: SIP/2.0/UDP evil.example.com;branch=z9hG4bKevil",  # bare LF
        "Subject: a\rVia: SIP/2.0/UDP evil.example.com;branch=z9hG4bKevil",  # bare CR
    ],
)
def test_bad_header_lines(line: str) -> None:
    rejects(req(line, "Content-Length: 0"), strict=False)


def test_compact_forms() -> None:
    data = (
        b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n"
        b"f: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
        b"t: Bob <sip:bob@biloxi.com>\r\n"
        b"i: a84b4c76e66710@pc33.atlanta.com\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"m: <sip:alice@pc33.atlanta.com>\r\n"
        b"s: lunch\r\n"
        b"k: 100rel\r\n"
        b"c: text/plain\r\n"
        b"e: gzip\r\n"
        b"o: presence\r\n"
        b"u: presence, dialog\r\n"
        b"r: <sip:carol@chicago.com>\r\n"
        b"b: <sip:alice@atlanta.com>\r\n"
        b"x: 1800\r\n"
        b"l: 4\r\n"
        b"\r\nbody"
    )
    msg = parse_req(data)
    h = msg.headers
    assert msg.top_via.host == "pc33.atlanta.com"
    assert msg.from_.tag == "1928301774" and msg.to.display_name == "Bob"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert h.get("Contact") == "<sip:alice@pc33.atlanta.com>"
    expected = {
        "subject": "lunch", "supported": "100rel", "content-type": "text/plain",
        "content-encoding": "gzip", "event": "presence", "allow-events": "presence, dialog",
        "refer-to": "<sip:carol@chicago.com>", "referred-by": "<sip:alice@atlanta.com>",
        "session-expires": "1800", "content-length": "4",
    }  # fmt: skip
    for name, value in expected.items():
        assert h.get(name) == value, name
    assert "l" in h and "Content-Length" in h
    assert h.get("l") == "4" and h.get("M") == h.get("contact")
    assert msg.body == b"body"
    assert msg.to_bytes() == data  # compact names are re-sent as written


def test_case_insensitive_names_and_spacing() -> None:
    data = req("cOnTeNt-LeNgTh   :   0", "X-Custom\t:\tvalue  ", "x-custom:second")
    msg = parse_req(data)
    assert msg.headers.get("CONTENT-LENGTH") == "0"
    assert msg.headers.get_all("X-CUSTOM") == ["value", "second"]  # trailing LWS not in value
    assert msg.headers.count("x-Custom") == 2
    assert msg.to_bytes() == data


def test_empty_values() -> None:
    msg = parse_req(req("Subject:", "X-Empty:    ", "Content-Length: 0"))
    assert msg.headers.get("subject") == "" and msg.headers.get("x-empty") == ""
    assert msg.headers.get("missing") is None


def test_empty_list_headers() -> None:
    """'Supported:' / 'Allow:' / 'Accept:' may be empty (RFC 3261 20.1, 20.5, 20.37);
    an empty Via, Route or Require is malformed."""
    msg = parse_req(req("Supported:", "Allow:", "Accept:", "Accept-Encoding:", "Accept-Language:"))
    assert msg.headers.values("supported") == [""]
    for name in ("Require", "Proxy-Require", "Route", "Record-Route", "Contact", "Unsupported"):
        rejects(req(f"{name}:"))
    rejects(req("Supported: 100rel,,timer"))  # only a wholly empty field is allowed
    rejects(req("Require: 100rel, bad token"))


# --- list headers ---------------------------------------------------------------------------


def test_comma_separated_vias() -> None:
    data = req(
        headers=[
            "Via: SIP/2.0/UDP first.example.com;branch=z9hG4bK1, "
            "SIP/2.0/TCP second.example.com:5061;branch=z9hG4bK2",
            "Via: SIP/2.0/UDP third.example.com;branch=z9hG4bK3",
            *MANDATORY[1:],
        ]
    )
    msg = parse_req(data)
    assert [v.host for v in msg.vias] == [
        "first.example.com", "second.example.com", "third.example.com",
    ]  # fmt: skip
    assert msg.top_via.host == "first.example.com"
    assert msg.headers.first_value("via") == "SIP/2.0/UDP first.example.com;branch=z9hG4bK1"
    assert msg.headers.count("via") == 2


def test_comma_separated_routes_and_contacts() -> None:
    msg = parse_req(
        req(
            "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
            'Contact: "Smith, John" <sip:john,smith@a.example.com>;q=0.7, '
            "<sip:john@b.example.com>;expires=60, sip:john@c.example.com",
        )
    )
    assert [r.uri.host for r in msg.name_addrs("Route")] == [
        "p1.example.com", "p2.example.com", "p3.example.com",
    ]  # fmt: skip
    assert msg.headers.first_value("route") == "<sip:p1.example.com;lr>"
    contacts = msg.contacts
    assert contacts is not None and len(contacts) == 3
    assert contacts[0].display_name == "Smith, John"
    assert contacts[0].uri.user == "john,smith" and contacts[0].params == {"q": "0.7"}
    assert contacts[1].params == {"expires": "60"}
    assert str(contacts[2].uri) == "sip:john@c.example.com"


def test_contact_star() -> None:
    msg = parse_req(req("Contact: *", "Expires: 0", method="REGISTER"))
    assert msg.contacts is None and msg.expires == 0


@pytest.mark.parametrize(
    "name", ["WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Proxy-Authorization"]
)
def test_auth_headers_are_not_split(name: str) -> None:
    first = (
        'Digest realm="atlanta.com", domain="sip:ss1.carrier.com", qop="auth,auth-int", '
        'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5'
    )
    second = 'Digest realm="biloxi.com", nonce="x,y", algorithm=SHA-256'
    msg = parse_req(req(f"{name}: {first}", f"{name}: {second}"))
    h = msg.headers
    assert h.values(name) == [first, second]  # one value per field line
    assert h.get_all(name) == [first, second]
    assert h.first_value(name) == first
    assert h.pop_first_value(name) == first
    assert h.get_all(name) == [second]
    h.replace_first_value(name, "Digest x=1, y=2")
    assert h.get_all(name) == ["Digest x=1, y=2"]


def test_date_is_not_split() -> None:
    msg = parse_req(req("Date: Sat, 13 Nov 2010 23:29:00 GMT"))
    assert msg.headers.values("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert msg.headers.first_value("date") == "Sat, 13 Nov 2010 23:29:00 GMT"


# --- name-addr / addr-spec and quoted strings -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "display", "name", "uri", "params"),
    [
        ("<sip:a@example.com>", None, None, "sip:a@example.com", {}),
        ("sip:a@example.com", None, None, "sip:a@example.com", {}),
        ("sip:a@example.com;tag=x", None, None, "sip:a@example.com", {"tag": "x"}),
        ("<sip:a@example.com;lr>;tag=x", None, None, "sip:a@example.com;lr", {"tag": "x"}),
        ("Alice <sip:a@example.com>", "Alice", "Alice", "sip:a@example.com", {}),
        ("Alice  Liddell\t<sip:a@e.com>", "Alice  Liddell", "Alice  Liddell", "sip:a@e.com", {}),
        ('"Alice" <sip:a@e.com>', '"Alice"', "Alice", "sip:a@e.com", {}),
        ('"Alice"<sip:a@e.com>', '"Alice"', "Alice", "sip:a@e.com", {}),
        ('"" <sip:a@e.com>', '""', "", "sip:a@e.com", {}),
        ('"A \\"q\\" \\\\ n" <sip:a@e.com>', '"A \\"q\\" \\\\ n"', 'A "q" \\ n', "sip:a@e.com", {}),
        (
            '"<sip:x@y>;tag=z" <sip:a@e.com>',
            '"<sip:x@y>;tag=z"',
            "<sip:x@y>;tag=z",
            "sip:a@e.com",
            {},
        ),
        ('"Ünïcödé 名" <sip:a@e.com>', '"Ünïcödé 名"', "Ünïcödé 名", "sip:a@e.com", {}),
        ("<sip:a@e.com> ; tag = x ; q=0.5", None, None, "sip:a@e.com", {"tag": "x", "q": "0.5"}),
        ('<sip:a@e.com>;p="quoted;value"', None, None, "sip:a@e.com", {"p": '"quoted;value"'}),
        ("<tel:+15551234>", None, None, "tel:+15551234", {}),
        ("<urn:service:sos>", None, None, "urn:service:sos", {}),
    ],
)
def test_name_addr(
    value: str, display: str | None, name: str | None, uri: str, params: dict[str, str | None]
) -> None:
    na = parse_name_addr(value)
    assert na.display == display and na.display_name == name
    assert str(na.uri) == uri and na.params == params


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated <sip:a@e.com>',
        '"Alice" sip:a@e.com',  # quoted display name needs <>
        "Alice, B <sip:a@e.com>",  # non-token display name
        "<sip:a@e.com",
        "< sip:a@e.com>",
        "<>",
        "sip:a@e.com?subject=x",  # '?' needs <>
        "sip:a@e.com, sip:b@e.com",  # a single From/To value
        "<sip:a@e.com>;;tag=x",
        "<sip:a@e.com>;tag=x junk",
        "<sip:a@e.com> junk",
        "",
    ],
)
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(value)


def test_name_addr_render_and_with_params() -> None:
    na = parse_name_addr('"Bob B." <sip:bob@biloxi.com>')
    tagged = na.with_params(tag="a6c85cf")
    assert str(tagged) == '"Bob B." <sip:bob@biloxi.com>;tag=a6c85cf' and tagged.tag == "a6c85cf"
    assert na.tag is None  # frozen
    assert str(NameAddr(parse_uri("sip:x@y.com"))) == "<sip:x@y.com>"
    again = parse_name_addr(str(tagged))
    assert (again.display, again.params) == (tagged.display, tagged.params)
    assert again.uri.equals(tagged.uri)  # URIs compare with equals(), not ==


# --- Via --------------------------------------------------------------------------------------


def test_via_all_params() -> None:
    via = parse_via(
        "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1"
        ";rport=5070;maddr=224.2.0.1;ttl=16;x-flag"
    )
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0", "UDP", "pc33.atlanta.com", 5066,
    )  # fmt: skip
    assert via.branch == "z9hG4bK776asdhds" and via.has_rfc3261_branch
    assert via.params == {
        "branch": "z9hG4bK776asdhds", "received": "192.0.2.1", "rport": "5070",
        "maddr": "224.2.0.1", "ttl": "16", "x-flag": None,
    }  # fmt: skip
    assert via.sent_by == "pc33.atlanta.com:5066"


def test_via_rport_without_value_and_case() -> None:
    via = parse_via("sip/2.0/tcp client.example.com;Branch=z9hG4bKabc;RPORT")
    assert via.transport == "TCP" and via.branch == "z9hG4bKabc"
    assert "rport" in via.params and via.params["rport"] is None
    assert via.port is None and via.sent_by == "client.example.com"
    assert str(via.with_params(rport="5060", received="192.0.2.9")) == (
        "SIP/2.0/TCP client.example.com;branch=z9hG4bKabc;rport=5060;received=192.0.2.9"
    )


def test_via_ipv6() -> None:
    via = parse_via("SIP/2.0/TLS [2001:db8::9:1]:5061;branch=z9hG4bKx;received=[2001:db8::9:255]")
    assert (via.host, via.port) == ("[2001:db8::9:1]", 5061)
    assert via.params["received"] == "[2001:db8::9:255]"
    assert via.sent_by == "[2001:db8::9:1]:5061"
    assert parse_via("SIP/2.0/UDP [::1];branch=z9hG4bKy").host == "[::1]"


def test_via_lws() -> None:
    via = parse_via("SIP / 2.0 / UDP   host.example.com : 5060 ; branch = z9hG4bKq")
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP", "host.example.com", 5060, "z9hG4bKq",
    )  # fmt: skip


def test_via_branch_cookie() -> None:
    assert not parse_via("SIP/2.0/UDP h;branch=z9hG4bK").has_rfc3261_branch
    assert not parse_via("SIP/2.0/UDP h;branch=1234").has_rfc3261_branch
    assert not parse_via("SIP/2.0/UDP h").has_rfc3261_branch
    assert Via("UDP", "h", 5060, {"branch": "z9hG4bK1"}).sent_by == "h:5060"


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0 host.example.com",
        "SIP/2.0/UDP",
        "HTTP/1.1/TCP host.example.com",
        "SIP/2.0/UDP host.example.com:70000",
        "SIP/2.0/UDP host.example.com:",
        "SIP/2.0/UDP host.example.com junk",
        "SIP/2.0/UDP host.example.com;;branch=z9hG4bK1",
        "SIP/2.0/UDP host.example.com;branch=z9hG4bK1;",
        "SIP/2.0/UDP [2001:db8::zz]:5060",
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDPhost.example.com",
    ],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(ParseError):
        parse_via(value)


def test_bad_top_via_fails_the_lazy_parse() -> None:
    rejects(req(headers=["Via: SIP/2.0/UDP", *MANDATORY[1:]]), strict=False)
    # A bad non-top Via is found by strict parsing (and by .vias on demand).
    data = req(headers=[VIA, "Via: garbage", *MANDATORY[1:]])
    msg = parse_req(data, strict=False)
    with pytest.raises(ParseError):
        msg.vias  # noqa: B018
    rejects(data)


# --- CSeq, scalars ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seq", "method"),
    [
        ("1 INVITE", 1, "INVITE"),
        ("0 INVITE", 0, "INVITE"),
        ("4294967295 INVITE", 2**32 - 1, "INVITE"),
        ("00042 INVITE", 42, "INVITE"),
        ("7   \t INVITE", 7, "INVITE"),
    ],
)
def test_cseq(value: str, seq: int, method: str) -> None:
    msg = parse_req(req(cseq=f"CSeq: {value}"))
    assert msg.cseq == CSeq(seq, method)
    assert str(msg.cseq) == f"{seq} {method}"


@pytest.mark.parametrize(
    "value",
    ["4294967296 INVITE", "1" * 5000 + " INVITE", "-1 INVITE", "INVITE 1", "1", "1INVITE",
     "1 INVITE x", "1.5 INVITE", "1 INV(ITE", "", "1 OPTIONS"],
)  # fmt: skip
def test_bad_cseq(value: str) -> None:
    rejects(req(cseq=f"CSeq: {value}"), strict=False)


def test_max_forwards() -> None:
    assert parse_req(req("Max-Forwards: 70")).max_forwards == 70
    assert parse_req(req("Max-Forwards: 0")).max_forwards == 0
    assert parse_req(req("Max-Forwards: 255")).max_forwards == 255
    assert parse_req(req()).max_forwards is None
    for bad in ("256", "-1", "7O", "", "1" * 5000):
        msg = parse_req(req(f"Max-Forwards: {bad}"), strict=False)
        with pytest.raises(ParseError):  # ParseError, never a bare ValueError
            msg.max_forwards  # noqa: B018
        rejects(req(f"Max-Forwards: {bad}"))


def test_expires() -> None:
    assert parse_req(req("Expires: 3600")).expires == 3600
    assert parse_req(req("Expires: 4294967296")).expires == 2**32 - 1  # clamped
    assert parse_req(req("Expires: " + "9" * 5000)).expires == 2**32 - 1
    rejects(req("Expires: soon"))


def test_call_id() -> None:
    assert parse_req(req()).call_id == "a84b4c76e66710@pc33.atlanta.com"
    odd = "word-with.!%*_+`'~()<>:\\\"/[]?{}@host.example.com"
    msg = parse_req(req(headers=[*MANDATORY[:3], f"Call-ID: {odd}"]))
    assert msg.call_id == odd
    for bad in ("has space", "a@b@c", "abc@", "@abc", "abc@def ghi", "bad;char"):
        rejects(req(headers=[*MANDATORY[:3], f"Call-ID: {bad}"]))


def test_content_type_and_date_checked_strictly() -> None:
    rejects(req("Content-Type: sdp"))
    rejects(req("Date: 13 Nov 2010 23:29:00 GMT"))
    msg = parse_req(req("Date: Sat, 13 Nov 2010 23:29:00 GMT", "Content-Type: text/plain"))
    assert msg.headers.get("content-type") == "text/plain"


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_headers(name: str) -> None:
    lines = [*MANDATORY, "CSeq: 1 INVITE"]
    lines = [line for line in lines if not line.lower().startswith(name.lower() + ":")]
    data = ("\r\n".join(["INVITE sip:bob@biloxi.com SIP/2.0", *lines]) + "\r\n\r\n").encode()
    err = rejects(data, strict=False)
    assert "missing" in err.reason


@pytest.mark.parametrize("name", ["From", "To", "Call-ID", "CSeq", "Max-Forwards", "Expires",
                                  "Content-Type", "Content-Length"])  # fmt: skip
def test_duplicate_single_headers_rejected_strictly(name: str) -> None:
    values = {"From": "<sip:x@y.com>;tag=2", "To": "<sip:x@y.com>", "Call-ID": "other",
              "CSeq": "314159 INVITE", "Max-Forwards": "70", "Expires": "10",
              "Content-Type": "text/plain", "Content-Length": "0"}  # fmt: skip
    extra = [f"{name}: {values[name]}"] * (1 if name in ("From", "To", "Call-ID", "CSeq") else 2)
    data = req(*extra)
    parse_req(data, strict=False)  # the proxy path reads the first one
    rejects(data)


# --- datagram framing by Content-Length -------------------------------------------------------


def test_content_length_frames_the_body() -> None:
    data = req("Content-Length: 5", body=b"hello")
    assert parse_req(data).body == b"hello"
    trailing = data + b"garbage after the message"
    msg = parse_req(trailing)
    assert msg.body == b"hello" and msg.to_bytes() == data


def test_content_length_zero_ignores_trailing_octets() -> None:
    data = req("l: 0")
    msg = parse_req(data + b"\r\n\r\nINVITE more")
    assert msg.body == b"" and msg.to_bytes() == data


def test_no_content_length_takes_the_rest() -> None:
    msg = parse_req(req(body=b"the rest\r\nof the datagram"))
    assert msg.body == b"the rest\r\nof the datagram"


def test_body_shorter_than_content_length() -> None:
    rejects(req("Content-Length: 6", body=b"hello"), strict=False)


@pytest.mark.parametrize("value", ["-1", "5x", "0x5", "", " ", "1e3", "\u0665"])
def test_bad_content_length(value: str) -> None:
    rejects(req(f"Content-Length: {value}", body=b"hello"), strict=False)


def test_duplicate_content_length() -> None:
    same = req("Content-Length: 5", "l: 5", body=b"hello")
    assert parse_req(same, strict=False).body == b"hello"  # agree: framing is clear
    rejects(same)  # but it is still a duplicated single-value header
    rejects(req("Content-Length: 5", "l: 4", body=b"hello"), strict=False)


def test_binary_body_and_non_utf8_headers_pass_through() -> None:
    body = bytes(range(256))
    data = req("X-Latin1: caf\xe9".encode("latin-1").decode("latin-1"), f"l: {len(body)}")
    data = data.replace("caf\xe9".encode(), b"caf\xe9") + body
    msg = parse_req(data)
    assert msg.body == body
    assert msg.to_bytes() == data


def test_no_end_of_headers() -> None:
    rejects(req()[:-2], strict=False)
    rejects(b"", strict=False)
    rejects(b"\r\n\r\n", strict=False)


# --- limits ---------------------------------------------------------------------------------------


def test_max_message_size() -> None:
    limits = ParserLimits(max_message_size=600)
    data = req("Content-Length: 100", body=b"x" * 100)
    assert len(data) < 600
    parse_message(data, limits=limits)
    big = req("Content-Length: 400", body=b"x" * 400)
    with pytest.raises(ParseError) as exc:
        parse_message(big, limits=limits)
    assert exc.value.status == 513
    with pytest.raises(ParseError):  # a Content-Length beyond the limit, even if short
        parse_message(req("Content-Length: 700", body=b"x"), limits=ParserLimits(600))


def test_max_headers() -> None:
    limits = ParserLimits(max_headers=20)
    ok = req(*[f"X-H{i}: {i}" for i in range(10)])
    assert len(parse_message(ok, limits=limits).headers) == 15
    with pytest.raises(ParseError):
        parse_message(req(*[f"X-H{i}: {i}" for i in range(20)]), limits=limits)
    with pytest.raises(ParseError):  # folded lines count too
        parse_message(req("X-Folded: a", *[" more"] * 20), limits=limits)
    with pytest.raises(ParseError):
        parse_message(req(*[f"X-H{i}: {i}" for i in range(300)]))  # the default limit: 256


@pytest.mark.parametrize("fold", [False, True])
def test_max_line_length(fold: bool) -> None:
    limits = ParserLimits(max_line_length=200)
    parse_message(req("X-Long: " + "a" * 150), limits=limits)
    long_line = ["X-Long: " + "a" * 300]
    if fold:  # the slow (folding) path checks each physical line too
        long_line.append(" folded")
    with pytest.raises(ParseError):
        parse_message(req(*long_line), limits=limits)
    with pytest.raises(ParseError):
        parse_message(req(start="INVITE sip:" + "b" * 300 + "@biloxi.com SIP/2.0"), limits=limits)


def test_limits_hold_on_both_paths() -> None:
    limits = ParserLimits(max_message_size=1000, max_headers=10, max_line_length=100)
    data = req(*[f"X-H{i}: " + "z" * 120 for i in range(3)])
    for strict in (False, True):
        with pytest.raises(ParseError):
            parse_message(data, strict=strict, limits=limits)


# --- make_response ------------------------------------------------------------------------------


def request_for_response() -> Request:
    data = req(
        "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1;received=192.0.2.5",
        "Timestamp: 54.3 0.2",
        "Route: <sip:p1.example.com;lr>",
        "Contact: <sip:alice@pc33.atlanta.com>",
        "Content-Type: application/sdp",
        "Content-Length: 3",
        body=b"v=0",
        headers=[
            VIA,
            "v: SIP/2.0/TCP second.example.com;branch=z9hG4bK2, SIP/2.0/UDP third;branch=z9hG4bK3",
            *MANDATORY[1:],
        ],
    )
    return parse_req(data)


def test_make_response_copies_transaction_headers() -> None:
    request = request_for_response()
    resp_ = make_response(request, 180, to_tag="xyz")
    assert (resp_.status, resp_.reason) == (180, "Ringing")
    h = resp_.headers
    assert h.get_all("via") == [
        "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/TCP second.example.com;branch=z9hG4bK2, SIP/2.0/UDP third;branch=z9hG4bK3",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1;received=192.0.2.5",
    ]
    assert h.get("from") == request.headers.get("from")
    assert h.get("to") == "Bob <sip:bob@biloxi.com>;tag=xyz"
    assert h.get("call-id") == request.call_id and h.get("cseq") == "314159 INVITE"
    assert h.get("content-length") == "0" and resp_.body == b""
    for name in ("route", "contact", "content-type", "timestamp"):
        assert name not in h  # not copied
    again = parse_message(resp_.to_bytes(), strict=True)
    assert again == resp_ and again.to.tag == "xyz"


def test_make_response_to_tag_rules() -> None:
    request = request_for_response()
    trying = make_response(request, 100, to_tag="xyz")
    assert trying.headers.get("to") == "Bob <sip:bob@biloxi.com>"  # never a tag on 100
    assert trying.headers.get("timestamp") == "54.3 0.2"  # 100 echoes Timestamp (8.2.6.1)
    assert trying.reason == "Trying"
    assert make_response(request, 486).headers.get("to") == "Bob <sip:bob@biloxi.com>"
    request.headers.set("To", "Bob <sip:bob@biloxi.com>;tag=existing")
    ok = make_response(request, 200, to_tag="new")
    assert ok.to.tag == "existing"  # an in-dialog request keeps its tag


def test_make_response_body_and_extra() -> None:
    request = request_for_response()
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    ok = make_response(
        request, 200, "Fine", to_tag="t", body=body, content_type="application/sdp",
        extra=[("Contact", "<sip:bob@192.0.2.4>"), ("Allow", "INVITE, ACK")],
    )  # fmt: skip
    assert ok.reason == "Fine" and ok.body == body
    h = ok.headers
    assert h.get("content-type") == "application/sdp"
    assert h.get("content-length") == str(len(body))
    assert h.get("contact") == "<sip:bob@192.0.2.4>" and h.values("allow") == ["INVITE", "ACK"]
    assert parse_message(ok.to_bytes(), strict=True) == ok


# --- header edits and pass-through --------------------------------------------------------------


RICH = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP  pc33.atlanta.com;branch=z9hG4bK1 ,SIP/2.0/UDP h2;branch=z9hG4bK2\r\n"
    b"Via: SIP/2.0/UDP h3;branch=z9hG4bK3\r\n"
    b"Route:   <sip:p1.example.com;lr>,  <sip:p2.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"f: Alice <sip:alice@atlanta.com>;tag=1\r\n"
    b"To:Bob<sip:bob@biloxi.com>\r\n"
    b"Call-ID: rich@atlanta.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Unknown :  weird ,, value ;; here   \r\n"
    b"X-Folded: first\r\n"
    b"\t second\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 6\r\n"
    b"\r\n"
    b"\x00\xff\r\n\x80x"
)


def rich() -> Request:
    return parse_req(RICH)


def test_untouched_message_is_byte_exact() -> None:
    assert rich().to_bytes() == RICH
    assert bytes(rich()) == RICH


def test_add_first() -> None:
    msg = rich()
    msg.headers.add_first("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKnew")
    assert msg.top_via.host == "proxy.example.com"  # the parse cache follows the edit
    assert [v.host for v in msg.vias] == ["proxy.example.com", "pc33.atlanta.com", "h2", "h3"]
    out = msg.to_bytes()
    assert out == RICH.replace(
        b"Via: SIP/2.0/UDP  pc33",
        b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKnew\r\nVia: SIP/2.0/UDP  pc33",
    )
    msg.headers.add_first("Record-Route", "<sip:proxy.example.com;lr>")  # none yet: appended
    assert msg.to_bytes().endswith(b"Record-Route: <sip:proxy.example.com;lr>\r\n\r\n" + msg.body)


def test_pop_first_value() -> None:
    msg = rich()
    assert msg.headers.pop_first_value("route") == "<sip:p1.example.com;lr>"
    assert msg.headers.get_all("route") == ["<sip:p2.example.com;lr>"]
    assert b"Route: <sip:p2.example.com;lr>\r\n" in msg.to_bytes()  # re-rendered
    assert msg.headers.pop_first_value("route") == "<sip:p2.example.com;lr>"
    assert "route" not in msg.headers  # last value: the field is gone
    assert msg.headers.pop_first_value("route") is None
    assert msg.headers.pop_first_value("via") == "SIP/2.0/UDP  pc33.atlanta.com;branch=z9hG4bK1"
    assert msg.top_via.host == "h2"
    assert msg.headers.get_all("via") == [
        "SIP/2.0/UDP h2;branch=z9hG4bK2", "SIP/2.0/UDP h3;branch=z9hG4bK3",
    ]  # fmt: skip


def test_replace_first_value() -> None:
    msg = rich()
    top = msg.top_via.with_params(received="192.0.2.1", rport="5060")
    msg.headers.replace_first_value("via", str(top))
    assert msg.top_via.params["received"] == "192.0.2.1"
    assert msg.headers.get_all("via")[0] == (
        "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK1;received=192.0.2.1;rport=5060, "
        "SIP/2.0/UDP h2;branch=z9hG4bK2"
    )
    with pytest.raises(KeyError):
        msg.headers.replace_first_value("record-route", "<sip:x>")


def test_set_and_remove() -> None:
    msg = rich()
    msg.headers.set("max-forwards", "69")
    assert msg.max_forwards == 69
    msg.headers.set("CSeq", "2 INVITE")
    assert msg.cseq == CSeq(2, "INVITE")  # no stale cache
    msg.headers.set("Via", "SIP/2.0/UDP only;branch=z9hG4bKonly")  # all Via fields -> one
    assert msg.headers.count("via") == 1 and msg.top_via.host == "only"
    msg.headers.set("X-New", "appended")
    assert msg.headers.remove("x-folded") == 1 and msg.headers.remove("x-folded") == 0
    out = msg.to_bytes()
    assert out == (
        b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP only;branch=z9hG4bKonly\r\n"
        b"Route:   <sip:p1.example.com;lr>,  <sip:p2.example.com;lr>\r\n"
        b"max-forwards: 69\r\n"
        b"f: Alice <sip:alice@atlanta.com>;tag=1\r\n"
        b"To:Bob<sip:bob@biloxi.com>\r\n"
        b"Call-ID: rich@atlanta.com\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"X-Unknown :  weird ,, value ;; here   \r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: 6\r\n"
        b"X-New: appended\r\n"
        b"\r\n"
        b"\x00\xff\r\n\x80x"
    )
    assert parse_message(out, strict=True) == msg


def test_set_body_updates_length() -> None:
    msg = rich()
    msg.set_body(b"new body", "text/plain")
    assert msg.headers.get("content-length") == "8"
    assert msg.headers.get("content-type") == "text/plain"
    again = parse_message(msg.to_bytes(), strict=True)
    assert again.body == b"new body" and again == msg


def test_request_uri_setter() -> None:
    msg = rich()
    msg.uri = parse_uri("sip:bob@192.0.2.4:5062;transport=tcp")
    assert msg.uri_text == "sip:bob@192.0.2.4:5062;transport=tcp"
    assert msg.to_bytes().startswith(b"INVITE sip:bob@192.0.2.4:5062;transport=tcp SIP/2.0\r\n")


def test_a_proxys_own_via_is_parsed_once() -> None:
    """A Via we push is on top as text and as a value; the response that comes back with
    that text on top reads it without parsing it again, and replacing the top Via (received,
    rport) keeps the new value."""
    request = parse_req(req())
    ours = Via("UDP", "pcscf.ims.local", 5060, {"branch": "z9hG4bKown1", "rport": None})
    request.push_via(ours)
    assert request.top_via is ours and request.headers.get("via") == str(ours)
    assert [v.host for v in request.vias] == ["pcscf.ims.local", "pc33.atlanta.com"]
    back = parse_message(bytes(make_response(request, 200, to_tag="t1")))
    assert back.top_via is ours
    stamped = ours.with_params(received="192.0.2.7")
    request.replace_top_via(stamped)
    assert request.top_via is stamped
    assert parse_via(request.headers.values("via")[0]) == stamped
    assert request.headers.count("via") == 2


def test_headers_container() -> None:
    h = Headers.of([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("v", "SIP/2.0/UDP b"),
                    ("X-A", "1"), ("x-a", "2")])  # fmt: skip
    assert len(h) == 4 and h.count("VIA") == 2 and "x-A" in h and "x-b" not in h
    assert h.items() == [
        ("via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("via", "SIP/2.0/UDP b"),
        ("x-a", "1"), ("x-a", "2"),
    ]  # fmt: skip
    assert [name for _, name, _, _ in h] == ["Via", "v", "X-A", "x-a"]
    copy = h.copy()
    copy.add("X-A", "3")
    assert h.count("x-a") == 2 and copy.count("x-a") == 3
    assert h.render() == (
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nv: SIP/2.0/UDP b\r\nX-A: 1\r\nx-a: 2\r\n"
    )


def test_message_equality() -> None:
    assert rich() == rich()
    other = rich()
    other.headers.set("X-Unknown", "changed")
    assert other != rich()
    body = rich()
    body.body = b"different"
    assert body != rich()
    assert rich() != parse_message(resp())
    # Equality is by header (key, value): spacing and compact names do not matter.
    assert parse_message(RICH.replace(b"f: Alice", b"From:   Alice")) == rich()


def test_built_request_round_trips() -> None:
    headers = Headers.of(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbuilt;rport"),
            ("Max-Forwards", "70"),
            ("From", '"Al" <sip:al@example.com>;tag=9'),
            ("To", "<sip:bo@example.com>"),
            ("Call-ID", "built@192.0.2.1"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "2"),
        ]
    )
    msg = Request("MESSAGE", parse_uri("sip:bo@example.com"), headers, b"hi")
    data = msg.to_bytes()
    assert data.startswith(b"MESSAGE sip:bo@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1")
    again = parse_message(data, strict=True)
    assert again == msg and again.to_bytes() == data
