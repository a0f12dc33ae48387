"""RFC 4475 "SIP Torture Test Messages": one test per section of the RFC.

The messages are our own, written from each section's description: they reproduce the
tortuous property that the RFC's message exercises (folding, odd whitespace, escapes,
binary bodies, out-of-range scalars...), not the RFC's text.

* Valid messages (3.1.1) are parsed with strict=True and the values an element relies on
  are checked; an untouched message must serialize back byte for byte (to_bytes() equals
  the Content-Length-framed part of the input).
* Invalid messages (3.1.2) must raise ParseError with the status the RFC asks for (400, or
  505 for badvers). Where the lazy (proxy-path) parse defers a header to first use, the
  test also checks that using that header raises.
* Transaction and application layer tests (3.2, 3.3) parse; the test checks the fields a
  UA or proxy needs to reject them with the right response.
"""

from __future__ import annotations

import re

import pytest

from services.sip import ParseError, Request, Response, parse_message

_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]+)", re.I | re.M)


def sip(*lines: str, body: bytes = b"") -> bytes:
    """Join header lines with CRLF, add the empty line and the body; `{CL}` is len(body)."""
    head = "\r\n".join(line.replace("{CL}", str(len(body))) for line in lines)
    return (head + "\r\n\r\n").encode("utf-8") + body


def framed(data: bytes) -> bytes:
    """The first message of `data` as framed by its Content-Length (independent of the parser)."""
    end = data.index(b"\r\n\r\n") + 4
    m = _CL_RE.search(data[:end])
    return data if m is None else data[: end + int(m.group(1))]


def parse_valid(data: bytes) -> Request | Response:
    msg = parse_message(data, strict=True)
    assert msg.to_bytes() == framed(data), "an untouched message must re-serialize byte-exact"
    assert parse_message(data) == msg  # the lazy parse sees the same message
    return msg


def parse_request(data: bytes) -> Request:
    msg = parse_valid(data)
    assert isinstance(msg, Request)
    return msg


def parse_response(data: bytes) -> Response:
    msg = parse_valid(data)
    assert isinstance(msg, Response)
    return msg


def assert_rejected(data: bytes, status: int = 400, *, lazy: bool = True) -> None:
    """strict=True must reject; with lazy=True the proxy-path parse must reject too."""
    with pytest.raises(ParseError) as exc:
        parse_message(data, strict=True)
    assert exc.value.status == status
    if lazy:
        with pytest.raises(ParseError) as exc:
            parse_message(data)
        assert exc.value.status == status


SDP = (
    b"v=0\r\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\n"
    b"m=video 3227 RTP/AVP 31\r\n"
    b"a=rtpmap:31 LPC\r\n"
)


# --- 3.1.1 valid messages ------------------------------------------------------------------


def test_wsinv() -> None:
    """3.1.1.1: a short tortuous INVITE - odd case, LWS and folding everywhere."""
    data = sip(
        "INVITE sip:carol@chair.example.org;unknownparam SIP/2.0",
        "TO :",
        " sip:carol@chair.example.org ;   tag    = 8321234356x",
        'from   : "K Ramirez \\\\\\""       <sip:kramirez@example.com>',
        "  ;",
        "  tag = 7a8sdf9",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.u2hd83kdn@192.0.2.7",
        "Content-Length   : {CL}",
        "cseq: 0009",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
        "  branch  =   z9hG4bK9ikj8  ,",
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
        " z9hG4bK30239",
        'm:"Quoted string \\"\\"" <sip:kramirez@example.com> ; newparam =',
        "      newvalue ;",
        "  secondparam ; q = 0.33",
        body=SDP,
    )
    msg = parse_request(data)
    assert msg.method == "INVITE"
    assert msg.uri.host == "chair.example.org" and msg.uri.has_param("unknownparam")
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert msg.call_id == "wsinv.u2hd83kdn@192.0.2.7"
    assert msg.to.uri.user == "carol" and msg.to.tag == "8321234356x"
    assert msg.from_.display_name == 'K Ramirez \\"'  # quoted-pairs resolved
    assert msg.from_.tag == "7a8sdf9"
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.top_via == vias[0]
    assert not vias[0].has_rfc3261_branch and vias[1].has_rfc3261_branch
    contacts = msg.contacts
    assert contacts is not None and len(contacts) == 1
    assert contacts[0].display_name == 'Quoted string ""'
    assert contacts[0].params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert msg.headers.get("Subject") == ""
    (route,) = msg.name_addrs("Route")
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert msg.headers.get("content-type") == "application/sdp"
    assert msg.body == SDP


def test_intmeth() -> None:
    """3.1.1.2: the widest range of characters each element allows."""
    method = "!wild-Method0123456789_*+`.%indeed'~"
    user = "1_odd.URI~(to-be!sure)&isn't+it$/weird?,/;;*"
    password = "&it+has=1,odd!*pas$wo~d_too.(isn't-it)"
    data = sip(
        f"{method} sip:{user}:{password}@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:' + user + "@example.com>",
        "From: token1~` token2'+_ token3*%!.- <sip:plain@example.com>"
        ";fromParam''~+*_!.-%=\"работает\";tag=_token~1'+`*%!-.",
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        f"CSeq: 139122385 {method}",
        "Max-Forwards: 255",
        "extensionHeader-!.%*+_`'~:\ufeff大停電",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.method == method
    assert msg.cseq.method == method and msg.cseq.seq == 139122385
    assert (msg.uri.user, msg.uri.password, msg.uri.host) == (user, password, "example.com")
    assert msg.uri.params == {} and msg.uri.headers == ()
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.to.uri.user == user
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работает"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255
    assert msg.headers.get("EXTENSIONHEADER-!.%*+_`'~") == "\ufeff大停電"


def test_esc01() -> None:
    """3.1.1.3: valid %HH escapes in the Request-URI, From/To users and URI parameters."""
    data = sip(
        "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
        "To: sip:%75se%72@example.com",
        "From: <sip:I%20have%20spaces@example.net>;tag=1234",
        "Max-Forwards: 87",
        "i: esc01.239409asdfakjkn23onasd0-3234",
        "CSeq: 234234 INVITE",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
        "C: application/sdp",
        "Contact:",
        "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        "Content-Length: {CL}",
        body=SDP,
    )
    msg = parse_request(data)
    assert msg.uri.user == "sips%3Auser%40example.com"  # kept as written...
    assert msg.uri.user_unescaped == "sips:user@example.com"  # ...and unescaped on demand
    assert msg.uri.host == "example.net"
    assert msg.to.uri.user_unescaped == "user"
    assert msg.from_.uri.user_unescaped == "I have spaces"
    contacts = msg.contacts
    assert contacts is not None
    uri = contacts[0].uri
    assert uri.user_unescaped == "caller"
    # Escaped parameter names are the same names; values are unescaped exactly once
    # (RFC 3986: "value%2541" is "value%41", NOT "valueA").
    assert uri.has_param("lr") and uri.param("lr") is None
    assert uri.param("name") == "value%41"
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert msg.headers.get("content-type") == "application/sdp"


def test_escnull() -> None:
    """3.1.1.4: %00 in user parts is legal and unescapes to a NUL."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:null-%00-null@example.com",
        "From: sip:null-%00-null@example.com;tag=839923423",
        "Max-Forwards: 70",
        "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
        "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
        "Contact: <sip:%00@host5.example.com>",
        "Contact: <sip:%00%00@host5.example.com>",
        "L:0",
    )
    msg = parse_request(data)
    assert msg.to.uri.user_unescaped == "null-\x00-null"
    assert msg.from_.uri.user_unescaped == "null-\x00-null" and msg.from_.tag == "839923423"
    contacts = msg.contacts
    assert contacts is not None
    assert [c.uri.user_unescaped for c in contacts] == ["\x00", "\x00\x00"]
    assert msg.body == b""


def test_esc02() -> None:
    """3.1.1.5: '%' where it is not an escape: method, display name, header name."""
    data = sip(
        "RE%47IST%45R sip:registrar.example.com SIP/2.0",
        'To: "%Z%45" <sip:resource@example.com>',
        'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
        "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
        "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209793",
        "Contact: <sip:alias1@host1.example.com>",
        "C%6Fntact: <sip:alias2@host2.example.com>",
        "Contact: <sip:alias3@host3.example.com>",
        "CSeq: 29344 RE%47IST%45R",
        "Max-Forwards: 70",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.method == "RE%47IST%45R" and msg.method != "REGISTER"  # an unknown method
    assert msg.cseq.method == "RE%47IST%45R"
    assert msg.to.display_name == "%Z%45" and msg.from_.display_name == "%Z%45"
    contacts = msg.contacts
    assert contacts is not None
    assert [c.uri.user for c in contacts] == ["alias1", "alias3"]  # two Contacts, not three
    assert msg.headers.get("c%6fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp() -> None:
    """3.1.1.6: no LWS between a token display name and '<'."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: caller<sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: lwsdisp.1234abcd@funky.example.com",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
        "l: 0",
    )
    msg = parse_request(data)
    assert msg.from_.display_name == "caller"
    assert msg.from_.uri.user == "caller" and msg.from_.tag == "323"


def test_longreq() -> None:
    """3.1.1.7: very long values: display name, tag, params, Call-ID, many Vias, unknown header."""
    long_name = "extreme" * 60
    long_tag = "98asjd8" * 50
    long_param = "unknownheaderparamname" * 8
    call_id = "longreq.one" + "really" * 60 + "longcallid"
    branch = "z9hG4bK" + "longbranch" * 25
    vias = [f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{i:03d}" for i in range(34)]
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        f'To: "I have a user name of {long_name} proportion"'
        f" <sip:user@example.com:6000;unknownparam{'x' * 200}=value"
        f";longparamnamenovalue{'y' * 150}>",
        "From: sip:amazinglylongcallername" + "z" * 200 + f"@example.net;tag={long_tag}"
        f";{long_param}={'paramvalue' * 30};{long_param}noval",
        f"Call-ID: {call_id}",
        "CSeq: 3882340 INVITE",
        "Unknown-"
        + "Long" * 30
        + "-Name: unknown-"
        + "long" * 50
        + "-value; unknown-"
        + "long" * 20
        + "-parameter-name = unknown-"
        + "long" * 20
        + "-parameter-value",
        f"Via: SIP/2.0/TCP sip33.example.com;branch={branch};received={'1' * 3}.0.2.200",
        *vias,
        "Max-Forwards: 70",
        f'Contact: "{long_name}" <sip:{"c" * 300}@host5.example.net>',
        "Content-Type: application/sdp",
        "l: {CL}",
        body=SDP,
    )
    msg = parse_request(data)
    assert msg.to.display_name == f"I have a user name of {long_name} proportion"
    assert msg.to.uri.port == 6000
    assert msg.to.uri.param(f"unknownparam{'x' * 200}") == "value"
    assert msg.from_.tag == long_tag
    assert msg.from_.params[long_param] == "paramvalue" * 30
    assert msg.from_.uri.user == "amazinglylongcallername" + "z" * 200
    assert msg.call_id == call_id
    assert msg.top_via.branch == branch and msg.top_via.params["received"] == "111.0.2.200"
    assert len(msg.vias) == 35
    assert msg.vias[-1].host == "sip33.example.com"
    contacts = msg.contacts
    assert contacts is not None and contacts[0].uri.user == "c" * 300
    assert msg.body == SDP


def test_dblreq() -> None:
    """3.1.1.8: a datagram with a second message after Content-Length: it is ignored."""
    first = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.com",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
    )
    second = sip(
        "INVITE sip:joe@example.com SIP/2.0",
        "t: sip:joe@example.com",
        "From: sip:caller@example.net;tag=141334",
        "Max-Forwards: 8",
        "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    msg = parse_request(first + second)
    assert msg.method == "REGISTER" and msg.cseq.method == "REGISTER"
    assert msg.body == b""
    assert msg.to_bytes() == first
    contacts = msg.contacts
    assert contacts is not None and str(contacts[0].uri) == "sip:j.user@host.example.com"


def test_semiuri() -> None:
    """3.1.1.9: ';' inside the user part is not the start of URI parameters."""
    data = sip(
        "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
        "To: sip:j_user@example.com",
        "From: sip:caller@example.org;tag=33242",
        "Max-Forwards: 3",
        "Call-ID: semiuri.0ha0isndaksdj",
        "CSeq: 8 OPTIONS",
        "Accept: application/sdp, application/pkcs7-mime,",
        "        multipart/mixed, multipart/signed,",
        "        message/sip, message/sipfrag",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
        "l: 0",
    )
    msg = parse_request(data)
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.user_unescaped == "user;par=u@example.net"
    assert msg.uri.host == "example.com"
    assert msg.uri.params == {}
    assert msg.headers.values("accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]  # fmt: skip


def test_transports() -> None:
    """3.1.1.10: known, less common and unknown transports in Via."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: <sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
        "Accept: application/sdp",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
        "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
        "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
        "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
        "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
        "l: 0",
    )
    msg = parse_request(data)
    assert [(v.transport, v.host) for v in msg.vias] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01() -> None:
    """3.1.1.11: a multipart/signed body with binary (non-UTF-8, CRLF-laden) content."""
    signature = bytes(range(256)) + b"\r\n\r\n\x00\xff\xfe" + bytes(range(255, -1, -1))
    body = (
        b"--boundary42\r\n"
        b"Content-Type: application/sdp\r\n"
        b"\r\n" + SDP + b"\r\n"
        b"--boundary42\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-Disposition: attachment; handling=required; filename=smime.p7s\r\n"
        b"\r\n" + signature + b"\r\n"
        b"--boundary42--\r\n"
    )
    data = sip(
        "MESSAGE sip:kumiko@example.org SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
        "Max-Forwards: 70",
        "Route: <sip:127.0.0.1:5080>",
        "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuL",
        "        IS+ijm9nsFwTsCWpFkFjYn4kWpc2lx97ISgEu+eKmwaWtJ3k=",
        "Contact: <sip:fluffy@127.0.0.1:5070>",
        "To: <sip:kumiko@example.org>",
        "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
        "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
        "CSeq: 1 MESSAGE",
        "Content-Transfer-Encoding: binary",
        'Content-Type: multipart/mixed;boundary="boundary42"',
        "Content-Length: {CL}",
        body=body,
    )
    msg = parse_request(data)
    assert msg.body == body
    assert msg.headers.get("content-type") == 'multipart/mixed;boundary="boundary42"'
    assert msg.headers.get("identity") == (
        "r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuL "
        "IS+ijm9nsFwTsCWpFkFjYn4kWpc2lx97ISgEu+eKmwaWtJ3k="
    )
    assert msg.top_via.params["rport"] is None
    assert msg.top_via.port == 5070


def test_unreason() -> None:
    """3.1.1.12: a reason phrase with UTF-8 and characters that mean something elsewhere."""
    reason = "= 2**3 * 5**2 но сто девяносто девять - простое"
    data = sip(
        f"SIP/2.0 200 {reason}",
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.com;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        "Content-Length: {CL}",
        "Content-Type: application/sdp",
        "Contact: <sip:user@host198.example.com>",
        body=SDP,
    )
    msg = parse_response(data)
    assert msg.status == 200
    assert msg.reason == reason
    assert msg.to.tag == "2229" and msg.cseq.method == "INVITE"


def test_noreason() -> None:
    """3.1.1.13: an empty reason phrase (the SP after the code is there)."""
    data = sip(
        "SIP/2.0 100 ",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: noreason.asndj203insdf99223ndf",
        "CSeq: 35 INVITE",
        "From: <sip:user@example.com>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
        "Contact: <sip:user@host105.example.com>",
    )
    msg = parse_response(data)
    assert msg.status == 100 and msg.reason == ""
    # Liberal: without the SP the status line is still understood (the RFC allows either).
    lenient = parse_message(data.replace(b"100 \r\n", b"100\r\n", 1), strict=True)
    assert isinstance(lenient, Response) and (lenient.status, lenient.reason) == (100, "")


# --- 3.1.2 invalid messages ----------------------------------------------------------------


def test_badinv01() -> None:
    """3.1.2.1: empty list elements and parameters (';;,;,,' in Via, ';;;;' in Contact)."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=134161461246",
        "Max-Forwards: 7",
        "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
        'Contact: "Joe" <sip:joe@example.org>;;;;',
        "Content-Length: {CL}",
        "Content-Type: application/sdp",
        body=SDP,
    )
    assert_rejected(data)  # the top Via is malformed, so even the proxy path rejects it
    with pytest.raises(ParseError):  # and the Contact on its own
        parse_message(data.replace(b";;,;,,", b""), strict=True)


def test_clerr() -> None:
    """3.1.2.2: Content-Length larger than the message."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 80",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=93942939o2",
        "Contact: <sip:caller@hungry.example.net>",
        "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
        "Content-Type: application/sdp",
        "Content-Length: 9999",
        body=SDP,
    )
    assert_rejected(data)


def test_ncl() -> None:
    """3.1.2.3: negative Content-Length."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 254",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=32394234",
        "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
        "CSeq: 0 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
        "Contact: <sip:caller@example53.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: -999",
        body=SDP,
    )
    assert_rejected(data)


def test_scalar02() -> None:
    """3.1.2.4: request scalars out of range: CSeq, Max-Forwards, Expires, Contact expires.

    The CSeq error alone makes the request a 400, on either path. For the others the RFC
    lets an element choose; our choices (checked separately below):
    * Max-Forwards > 255 is rejected (400) rather than treated as absent: a value we cannot
      decrement faithfully would let the request loop.
    * Expires > 2**32-1 is clamped to 2**32-1 (any length, no huge int conversion).
    * A Contact expires parameter > 2**32-1 is accepted as a number: the registrar applies
      its own maximum to it, as it does to any long expiry.
    """
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
        "To: <sip:user@example.com>",
        "From: <sip:user@example.com>;tag=239232jh3",
        "CSeq: 36893488147419103232 REGISTER",
        "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
        "Max-Forwards: 300",
        "Expires: 1" + "0" * 100,
        "Contact: <sip:user@host129.example.com>",
        "  ;expires=280297596632815",
        "Content-Length: 0",
    ]
    assert_rejected(sip(*lines))

    lines[4] = "CSeq: 2 REGISTER"
    assert_rejected(sip(*lines), lazy=False)  # Max-Forwards 300
    lazy = parse_message(sip(*lines))
    with pytest.raises(ParseError):
        lazy.max_forwards  # noqa: B018

    lines[6] = "Max-Forwards: 70"
    msg = parse_request(sip(*lines))
    assert msg.expires == 2**32 - 1
    contacts = msg.contacts
    assert contacts is not None and contacts[0].params["expires"] == "280297596632815"


def test_scalarlg() -> None:
    """3.1.2.5: response scalars out of range (CSeq, Retry-After, 4-digit warn-code)."""
    data = sip(
        "SIP/2.0 503 Service Unavailable",
        "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
        "To: <sip:user@example.com>",
        "From: <sip:other@example.net>;tag=2easdjfejw",
        "CSeq: 9292394834772304023312 OPTIONS",
        "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
        "Retry-After: 949302838503028349304023988",
        'Warning: 1812 overture "In Progress"',
        "Content-Length: 0",
    )
    assert_rejected(data)  # the CSeq alone: the response is discarded


def test_quotbal() -> None:
    """3.1.2.6: unterminated quoted string in a display name."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        'To: "Mr. J. User <sip:j.user@example.com>',
        "From: sip:caller@example.net;tag=93334",
        "Max-Forwards: 10",
        "Call-ID: quotbal.aksdj",
        "Contact: <sip:caller@host59.example.net>",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data, lazy=False)
    msg = parse_message(data)  # the proxy path parses To only when asked
    with pytest.raises(ParseError):
        msg.to  # noqa: B018


def test_ltgtruri() -> None:
    """3.1.2.7: Request-URI enclosed in <>."""
    data = sip(
        "INVITE <sip:user@example.com> SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=39291",
        "Max-Forwards: 23",
        "Call-ID: ltgtruri.1@192.0.2.5",
        "CSeq: 1 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.5",
        "Contact: <sip:caller@host5.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data)


def test_lwsruri() -> None:
    """3.1.2.8: LWS inside the Request-URI."""
    data = sip(
        "INVITE sip:user@example.com; lr SIP/2.0",
        "To: sip:user@example.com;tag=3xfe-9921883-z9f",
        "From: sip:caller@example.net;tag=231413434",
        "Max-Forwards: 5",
        "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
        "CSeq: 2130706432 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data)


def test_lwsstart() -> None:
    """3.1.2.9: more than one SP between Request-Line elements."""
    data = sip(
        "INVITE  sip:user@example.com  SIP/2.0",
        "Max-Forwards: 8",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=8814",
        "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
        "CSeq: 1893884 INVITE",
        "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data)


def test_trws() -> None:
    """3.1.2.10: SP after the SIP-Version of the Request-Line.

    The RFC lets an element reject this (400) or ignore the SP. We reject: the Request-Line
    grammar is exact, and a proxy could not forward it unmodified yet cleanly anyway.
    """
    data = sip(
        "OPTIONS sip:remote-target@example.com SIP/2.0  ",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093",
        "To: <sip:remote-target@example.com>",
        "From: <sip:local-resource@example.com>;tag=329429089",
        "Call-ID: trws.oicu34958239neffasdhr2345r",
        "Accept: application/sdp",
        "CSeq: 238923 OPTIONS",
        "Max-Forwards: 70",
        "Content-Length: 0",
    )
    assert_rejected(data)


def test_escruri() -> None:
    """3.1.2.11: escaped headers in the Request-URI.

    The RFC allows rejecting (400) or ignoring them. We reject: Request.uri raises, so
    strict parsing gives 400 and the proxy path finds out as soon as it looks at the URI
    (and so can never forward the headers).
    """
    data = sip(
        "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=341518",
        "Max-Forwards: 7",
        "Contact: <sip:caller@host39923.example.net>",
        "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
        "CSeq: 39234 INVITE",
        "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data, lazy=False)
    msg = parse_message(data)
    assert isinstance(msg, Request)
    with pytest.raises(ParseError):
        msg.uri  # noqa: B018


def test_baddate() -> None:
    """3.1.2.12: a Date that is not in GMT.

    The RFC allows rejecting it or ignoring the field. We reject it in strict mode (whose
    job is to check every header we know), and the proxy path, which never uses Date,
    passes it through untouched.
    """
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=2234923",
        "Max-Forwards: 70",
        "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234",
        "CSeq: 1392934 INVITE",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
        "Date: Fri, 01 Jan 2010 16:00:00 EST",
        "Contact: <sip:caller@host5.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: {CL}",
        body=SDP,
    )
    assert_rejected(data, lazy=False)
    msg = parse_message(data)
    assert msg.headers.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert msg.to_bytes() == data
    good = data.replace(b"16:00:00 EST", b"16:00:00 GMT")
    assert parse_message(good, strict=True).headers.get("date") == "Fri, 01 Jan 2010 16:00:00 GMT"


def test_regbadct() -> None:
    """3.1.2.13: a Contact URI with a '?' header part not enclosed in <>."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=998332",
        "Max-Forwards: 70",
        "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1",
        "CSeq: 1 REGISTER",
        "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw",
        "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "l: 0",
    )
    assert_rejected(data, lazy=False)
    with pytest.raises(ParseError):
        parse_message(data).contacts  # noqa: B018


def test_badaspec() -> None:
    """3.1.2.14: SP inside <> around an addr-spec."""
    data = sip(
        "OPTIONS sip:user@example.org SIP/2.0",
        "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
        "Max-Forwards: 70",
        'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
        'To: "Watson, Thomas" < sip:t.watson@example.org >',
        "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
        "Accept: application/sdp",
        "CSeq: 3923239 OPTIONS",
        "l: 0",
    )
    assert_rejected(data, lazy=False)
    with pytest.raises(ParseError):
        parse_message(data).to  # noqa: B018


def test_baddn() -> None:
    """3.1.2.15: unquoted display names with non-token characters (',')."""
    data = sip(
        "OPTIONS sip:t.watson@example.org SIP/2.0",
        "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjw",
        "Max-Forwards:      70",
        "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
        "To:      Watson, Thomas <sip:t.watson@example.org>",
        "Call-ID: baddn.31415@c.example.com",
        "Accept: application/sdp",
        "CSeq:    3923239 OPTIONS",
        "l: 0",
    )
    assert_rejected(data, lazy=False)
    msg = parse_message(data)
    with pytest.raises(ParseError):
        msg.from_  # noqa: B018
    with pytest.raises(ParseError):
        msg.to  # noqa: B018


def test_badvers() -> None:
    """3.1.2.16: an unknown SIP version gives 505, on either path."""
    data = sip(
        "OPTIONS sip:t.watson@example.org SIP/7.0",
        "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjw",
        "Max-Forwards:     70",
        "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
        "To:      T. Watson <sip:t.watson@example.org>",
        "Call-ID: badvers.31417@c.example.com",
        "CSeq:    1 OPTIONS",
        "l: 0",
    )
    assert_rejected(data, status=505)


def test_mismatch01() -> None:
    """3.1.2.17: CSeq method differs from the Request-Line method."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch01.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
        "l: 0",
    )
    assert_rejected(data)


def test_mismatch02() -> None:
    """3.1.2.18: an unknown method whose CSeq names another method."""
    data = sip(
        "NEWMETHOD sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch02.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Contact: <sip:caller@host.example.net>",
        "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
        "Content-Type: application/sdp",
        "l: {CL}",
        body=SDP,
    )
    assert_rejected(data)


def test_bigcode() -> None:
    """3.1.2.19: a status code far beyond 699."""
    data = sip(
        "SIP/2.0 4294967301 better not break the receiver",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
        "CSeq: 353494 INVITE",
        "From: <sip:user@example.com>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
        "Contact: <sip:user@host105.example.com>",
    )
    assert_rejected(data)


# --- 3.2 transaction layer -----------------------------------------------------------------


def test_badbranch() -> None:
    """3.2.1: a branch that is exactly the magic cookie: syntactically fine, not an RFC 3261
    branch, so transaction matching must fall back to the RFC 2543 rules."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.org;tag=33242",
        "Max-Forwards: 3",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK",
        "Accept: application/sdp",
        "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n",
        "CSeq: 8 OPTIONS",
        "l: 0",
    )
    msg = parse_request(data)
    assert msg.top_via.branch == "z9hG4bK"
    assert not msg.top_via.has_rfc3261_branch


# --- 3.3 application layer -----------------------------------------------------------------


def test_insuf() -> None:
    """3.3.1: Call-ID, From and To missing. The answer is 400; the parser already refuses
    (those fields identify the transaction) and names what is missing."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "CSeq: 193942 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
        "Content-Type: application/sdp",
        "l: {CL}",
        body=SDP,
    )
    assert_rejected(data)
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert "Call-Id" in exc.value.reason and "From" in exc.value.reason
    assert "To" in exc.value.reason


def test_unkscm() -> None:
    """3.3.2: unknown Request-URI scheme: parses, scheme visible for a 416."""
    data = sip(
        "OPTIONS unheardOfScheme:entirelyopaquecontent SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=384",
        "Max-Forwards: 3",
        "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
        "CSeq: 3923423 OPTIONS",
        "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.uri.scheme == "unheardofscheme" and not msg.uri.is_sip
    assert msg.uri.opaque == "entirelyopaquecontent"
    assert msg.uri_text == "unheardOfScheme:entirelyopaquecontent"


def test_novelsc() -> None:
    """3.3.3: a registered but unusual scheme (soap.beep) in the Request-URI."""
    data = sip(
        "OPTIONS soap.beep://192.0.2.77:3002 SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=384",
        "Max-Forwards: 3",
        "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
        "CSeq: 3923423 OPTIONS",
        "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.uri.scheme == "soap.beep" and not msg.uri.is_sip
    assert msg.uri.opaque == "//192.0.2.77:3002"


def test_unksm2() -> None:
    """3.3.4: unknown schemes in To, From and Contact."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: isbn:2983792873",
        "From: <http://www.example.com>;tag=3234233",
        "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
        "CSeq: 234902 REGISTER",
        "Max-Forwards: 70",
        "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
        "Contact: <name:John_Smith>",
        "l: 0",
    )
    msg = parse_request(data)
    assert (msg.to.uri.scheme, msg.to.uri.opaque) == ("isbn", "2983792873")
    assert msg.from_.uri.scheme == "http" and msg.from_.tag == "3234233"
    contacts = msg.contacts
    assert contacts is not None and contacts[0].uri.scheme == "name"
    assert not any(u.is_sip for u in (msg.to.uri, msg.from_.uri, contacts[0].uri))


def test_bext01() -> None:
    """3.3.5: unknown Require and Proxy-Require option tags (for 420 + Unsupported)."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:j_user@example.com",
        "From: sip:caller@example.net;tag=242etr",
        "Max-Forwards: 6",
        "Call-ID: bext01.0ha0isndaksdj",
        "Require: nothingSupportsThis, nothingSupportsThisEither",
        "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
        "CSeq: 8 OPTIONS",
        "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.headers.values("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert msg.headers.values("Proxy-Require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def test_invut() -> None:
    """3.3.6: an unknown Content-Type (for 415); the body passes untouched."""
    body = b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "Contact: <sip:caller@host5.example.net>",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=8392034",
        "Max-Forwards: 70",
        "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
        "CSeq: 235448 INVITE",
        "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
        "Content-Type: application/unknownformat",
        "Content-Length: {CL}",
        body=body,
    )
    msg = parse_request(data)
    assert msg.headers.get("content-type") == "application/unknownformat"
    assert msg.body == body


def test_regaut01() -> None:
    """3.3.7: Authorization with an unknown scheme (for 401): kept whole, never comma-split."""
    credentials = 'NoOneKnowsThisScheme opaque-data=here, realm="a,b", other=x'
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=87321hj23128",
        "Max-Forwards: 8",
        "Call-ID: regaut01.0ha0isndaksdj",
        "CSeq: 9338 REGISTER",
        "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw",
        f"Authorization: {credentials}",
        "Content-Length:0",
    )
    msg = parse_request(data)
    assert msg.headers.get_all("authorization") == [credentials]
    assert msg.headers.values("authorization") == [credentials]
    assert msg.headers.first_value("authorization") == credentials


def test_multi01() -> None:
    """3.3.8: several values in single-value fields (CSeq, Call-ID, From, To, Max-Forwards).

    Strict parsing rejects it (400). The proxy path parses it (it reads the first field)
    and the duplicates stay visible for anyone who checks.
    """
    data = sip(
        "INVITE sip:user@company.com SIP/2.0",
        "Contact: <sip:caller@host25.example.net>",
        "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "CSeq: 5 INVITE",
        "Call-ID: multi01.98asdh@192.0.2.1",
        "CSeq: 59 INVITE",
        "Call-ID: multi01.98asdh@192.0.2.2",
        "From: sip:caller@example.com;tag=3413415",
        "To: sip:user@example.com",
        "To: sip:other@example.net",
        "From: sip:caller@example.net;tag=2923420123",
        "Content-Type: application/sdp",
        "l: {CL}",
        "Contact: <sip:caller@host36.example.net>",
        "Max-Forwards: 5",
        body=SDP,
    )
    assert_rejected(data, lazy=False)
    msg = parse_message(data)
    for name in ("cseq", "call-id", "from", "to", "max-forwards"):
        assert msg.headers.count(name) == 2
    assert msg.cseq.seq == 5 and msg.call_id == "multi01.98asdh@192.0.2.1"
    # Any one of them alone is enough for strict parsing to refuse.
    single = data.replace(b"Max-Forwards: 5\r\n", b"").replace(b"CSeq: 59 INVITE\r\n", b"")
    single = single.replace(b"Call-ID: multi01.98asdh@192.0.2.2\r\n", b"")
    single = single.replace(b"To: sip:other@example.net\r\n", b"")
    assert_rejected(single, lazy=False)  # the second From
    single = single.replace(b"From: sip:caller@example.net;tag=2923420123\r\n", b"")
    assert isinstance(parse_message(single, strict=True), Request)


def test_mcl01() -> None:
    """3.3.9: two different Content-Length values: there is no way to frame the body."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
        "To: sip:user@example.com",
        "From: sip:other@example.net;tag=3923942",
        "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
        "CSeq: 15932 OPTIONS",
        "Content-Length: 13",
        "Max-Forwards: 60",
        "Content-Length: 5",
        "Content-Type: text/plain",
        body=b"There's no way to know how many octets are supposed to be here.\r\n",
    )
    assert_rejected(data)


def test_bcast() -> None:
    """3.3.10: a response whose second Via sent-by is the broadcast address."""
    data = sip(
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
        "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.com;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        "Content-Length: {CL}",
        "Content-Type: application/sdp",
        "Contact: <sip:user@host28.example.com>",
        body=SDP,
    )
    msg = parse_response(data)
    assert msg.top_via.host == "192.0.2.198"
    assert msg.vias[1].host == "255.255.255.255"


def test_zeromf() -> None:
    """3.3.11: Max-Forwards 0: a proxy must answer 483 (OPTIONS may be answered locally)."""
    data = sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=3ghsd41",
        "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas",
        "CSeq: 39234321 OPTIONS",
        "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
        "Max-Forwards: 0",
        "Content-Length: 0",
    )
    msg = parse_request(data)
    assert msg.max_forwards == 0


def test_cparam01() -> None:
    """3.3.12: Contact addr-spec without <>: ';unknownparam' is a contact-param."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
        "To: sip:watson@example.com",
        "Call-ID: cparam01.70710@saturn.example.com",
        "CSeq: 2 REGISTER",
        "Contact: sip:+19725552222@gw1.example.net;unknownparam",
        "l: 0",
    )
    msg = parse_request(data)
    contacts = msg.contacts
    assert contacts is not None and len(contacts) == 1
    assert contacts[0].params == {"unknownparam": None}
    assert contacts[0].uri.params == {}
    assert str(contacts[0].uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02() -> None:
    """3.3.13: Contact name-addr: ';unknownparam' inside <> is a URI parameter."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "From: sip:watson@example.com;tag=838293",
        "To: sip:watson@example.com",
        "Call-ID: cparam02.70710@saturn.example.com",
        "CSeq: 3 REGISTER",
        "Contact: <sip:+19725552222@gw1.example.net;unknownparam>",
        "l: 0",
    )
    msg = parse_request(data)
    contacts = msg.contacts
    assert contacts is not None
    assert contacts[0].params == {}
    assert contacts[0].uri.params == {"unknownparam": None}


def test_regescrt() -> None:
    """3.3.14: Contact URI with an escaped header, properly inside <>: accepted."""
    data = sip(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=8",
        "Max-Forwards: 70",
        "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1",
        "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
        "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
        "L:0",
    )
    msg = parse_request(data)
    contacts = msg.contacts
    assert contacts is not None
    assert contacts[0].uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert contacts[0].uri.host == "example.com"


def test_sdp01() -> None:
    """3.3.15: an offer whose Accept excludes application/sdp (for 406)."""
    data = sip(
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:j_user@example.com",
        "Contact: <sip:caller@host15.example.net>",
        "From: sip:caller@example.net;tag=234",
        "Max-Forwards: 5",
        "Call-ID: sdp01.ndaksdj9342dasdd",
        "Accept: text/nobodyKnowsThis",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 60.3.4.5;branch=z9hG4bKkdjuw",
        "Content-Length: {CL}",
        "Content-Type: application/sdp",
        body=SDP,
    )
    msg = parse_request(data)
    assert msg.headers.values("accept") == ["text/nobodyKnowsThis"]
    assert msg.headers.get("content-type") == "application/sdp"
    assert msg.body == SDP


# --- 3.4 backward compatibility ------------------------------------------------------------


def test_inv2543() -> None:
    """3.4.1: RFC 2543 syntax: no branch, no From tag, no Content-Length, no Max-Forwards."""
    data = sip(
        "INVITE sip:UserB@example.com SIP/2.0",
        "Via: SIP/2.0/UDP iftgw.example.com",
        "From: <sip:+13035551111@ift.client.example.net;user=phone>",
        "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
        "To: sip:+16505552222@ss1.example.net;user=phone",
        "Call-ID: inv2543.1717@ift.client.example.com",
        "CSeq: 56 INVITE",
        "Content-Type: application/sdp",
        body=SDP,
    )
    msg = parse_request(data)
    assert msg.body == SDP  # the whole rest of the datagram
    assert msg.top_via.branch is None and not msg.top_via.has_rfc3261_branch
    assert msg.from_.tag is None
    assert msg.from_.uri.param("user") == "phone"
    assert msg.max_forwards is None
    # Without <>, ';user=phone' on To is a header parameter, not a URI parameter.
    assert msg.to.params == {"user": "phone"} and msg.to.uri.params == {}
    (rr,) = msg.name_addrs("record-route")
    assert rr.uri.param("maddr") == "ss1.example.com"
