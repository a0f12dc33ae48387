"""Property tests for the SIP parser, serializer and stream framer (hypothesis).

(a) Robustness: for any input - random bytes, or realistic messages with bytes flipped,
    inserted, deleted or cut off - parse_message returns a Request/Response or raises
    ParseError, and so does every accessor of a message it returned; StreamFramer raises
    nothing but FramingError. A message that parses is faithful to its input: its
    serialization is the input's framed part, so no octet is silently dropped or altered.
(b) Round trips: generated messages survive to_bytes() -> parse_message() unchanged, and
    valid wire text (odd spacing, folding, compact and mixed-case names) survives
    parse_message() -> to_bytes() byte for byte.
"""

from __future__ import annotations

import ipaddress
import string
from contextlib import suppress

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.sip import (
    FramingError,
    Headers,
    ParseError,
    Request,
    Response,
    parse_message,
    parse_uri,
)
from services.sip.framing import NEED_DATA, RawMessage, StreamFramer
from services.sip.grammar import quote
from tests.bench.messages import INVITE, OK_200

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REGISTER = (
    b"REGISTER sip:registrar.biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Bob <sip:bob@biloxi.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b'Contact: <sip:bob@192.0.2.4>;expires=7200, "B, the 2nd" <sip:bob@[2001:db8::4]:5070>\r\n'
    b'Authorization: Digest username="bob", realm="biloxi.com", nonce="dcd98b",'
    b' uri="sip:biloxi.com"\r\n'
    b"Expires: 7200\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

FOLDED = (
    b"OPTIONS sip:carol@chicago.com;transport=tcp SIP/2.0\r\n"
    b"v: SIP/2.0/TCP\r\n  client.example.com:5060 ;branch=z9hG4bKa1,\r\n"
    b" SIP/2.0/UDP [2001:db8::9];branch=z9hG4bKa2\r\n"
    b"MAX-FORWARDS :70\r\n"
    b'f: "A \\"quoted\\" name" <sip:a%20b@example.com>\r\n ;tag=x1\r\n'
    b"t:sip:carol@chicago.com\r\n"
    b"i: folded@example.com\r\n"
    b"cseq: 0063104\r\n\tOPTIONS\r\n"
    b"Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n"
    b"Subject: a\r\n b\r\n"
    b"X-Empty:\r\n"
    b"c: text/plain\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"hello"
)

TRYING = (
    b"SIP/2.0 100 \r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKt1;received=192.0.2.1;rport=5060\r\n"
    b"From: <sip:a@example.com>;tag=1\r\n"
    b"To: <sip:b@example.com>\r\n"
    b"Call-ID: t@1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Timestamp: 0.5\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

SEEDS = [INVITE, OK_200, REGISTER, FOLDED, TRYING]

# --- (a) robustness -----------------------------------------------------------------------------


def exercise(msg: Request | Response) -> None:
    """Touch every lazy accessor: each returns or raises ParseError (anything else escapes)."""
    for attr in ("top_via", "vias", "cseq", "call_id", "from_", "to", "contacts",
                 "max_forwards", "expires"):  # fmt: skip
        with suppress(ParseError):
            getattr(msg, attr)
    if isinstance(msg, Request):
        with suppress(ParseError):
            uri = msg.uri
            uri.equals(uri)
            uri.param("lr")
            _ = uri.user_unescaped
    for _, name, _, _ in list(msg.headers):
        with suppress(ParseError):
            msg.headers.values(name)
        with suppress(ParseError):
            msg.headers.first_value(name)
    for name in ("route", "record-route", "path"):
        with suppress(ParseError):
            msg.name_addrs(name)
    with suppress(ParseError):
        msg.validate()
    msg.to_bytes()


def assert_faithful(msg: Request | Response, data: bytes) -> None:
    """The parsed message re-serializes to the input's framed part (no octet lost)."""
    first = data.index(b"\r\n")
    end = data.index(b"\r\n\r\n", first)
    rendered = msg.headers.render().encode("utf-8", "surrogateescape")
    assert rendered == data[first + 2 : end + 2]
    assert msg.body == data[end + 4 : end + 4 + len(msg.body)]
    start = data[:first].decode("utf-8", "surrogateescape")
    # The one liberty we take: "SIP/2.0 100" (no SP before an empty reason) gains the SP.
    assert msg.start_line() in (start, start + " ")


def check_parse(data: bytes) -> None:
    for strict in (False, True):
        try:
            msg = parse_message(data, strict=strict)
        except ParseError as exc:
            assert isinstance(exc.reason, str) and 100 <= exc.status <= 699
            assert all(" " <= c < "\x7f" for c in exc.reason)  # safe in a reason phrase
            continue
        assert isinstance(msg, (Request, Response))
        assert_faithful(msg, data)
        exercise(msg)


@SETTINGS
@given(st.binary(max_size=600))
@example(b"")
@example(b"\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\n\r\n")
def test_arbitrary_bytes(data: bytes) -> None:
    check_parse(data)


@SETTINGS
@given(st.sampled_from([b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b""]),
       st.lists(st.sampled_from([
           b"Via: SIP/2.0/UDP h;branch=z9hG4bK1", b"v:SIP/2.0/TCP [::1]:5", b"CSeq: 1 INVITE",
           b"From: <sip:x@y>;tag=1", b"t: sip:a@b", b"i: c", b"l: 0", b"Content-Length: 3",
           b"Max-Forwards: 9", b"Contact: *", b"Expires: 99999999999999999999", b" folded",
           b"Route: <sip:r;lr>,<sip:s>", b"m: \"q,\" <sip:a@b>", b"\t", b":", b"", b"x",
       ]), max_size=12),
       st.binary(max_size=20))  # fmt: skip
def test_header_soup(start: bytes, lines: list[bytes], tail: bytes) -> None:
    """Plausible pieces in random order reach much deeper than random bytes."""
    check_parse(start + b"\r\n".join(lines) + b"\r\n\r\n" + tail)


INTERESTING_OCTETS = [0, 9, 10, 13, 32, 34, 37, 44, 58, 59, 60, 62, 64, 92, 127, 128, 255]
INSERTIONS = [b"\r\n", b"\r\n ", b"\n", b"\r", b",", b";", b'"', b"<", b"%", b"\x00", b" ",
              b"9" * 30, b"\r\n\r\n"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] = draw(st.sampled_from([*INTERESTING_OCTETS, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[i:i] = draw(st.sampled_from([*INSERTIONS, draw(st.binary(max_size=8))]))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:  # duplicate a slice (a header line, a piece of one)
            j = draw(st.integers(i, min(len(data), i + 80)))
            data[j:j] = data[i:j]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    check_parse(data)


def test_seeds_parse() -> None:
    for seed in SEEDS:
        msg = parse_message(seed, strict=True)
        assert msg.to_bytes() == seed


def run_framer(chunks: list[bytes]) -> list[bytes]:
    framer = StreamFramer()
    out: list[bytes] = []
    try:
        for chunk in chunks:
            framer.feed(chunk)
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, RawMessage):
                    out.append(event.data)
    except FramingError:
        pass
    return out


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_framer_arbitrary_chunks(chunks: list[bytes]) -> None:
    run_framer(chunks)


@SETTINGS
@given(
    st.lists(st.one_of(mutated(), st.sampled_from([*SEEDS, b"\r\n", b"\r\n\r\n"])), max_size=5),
    st.data(),
)
def test_framer_mutated_stream(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for message in run_framer(chunks):
        check_parse(message)


@SETTINGS
@given(st.lists(st.sampled_from([*SEEDS, b"\r\n\r\n", b"\r\n"]), max_size=6), st.data())
def test_framer_valid_stream_any_chunking(pieces: list[bytes], data: st.DataObject) -> None:
    """Valid messages and keep-alives, cut anywhere: exactly the messages come out."""
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framed = run_framer(chunks)
    # Every seed has a Content-Length (FOLDED as "l: 5"), so each frames on a stream.
    assert framed == [p for p in pieces if p not in (b"\r\n", b"\r\n\r\n")]


# --- (b) round trips ---------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
tokens = st.text(TOKEN, min_size=1, max_size=10)
safe_tokens = st.text(UNRESERVED, min_size=1, max_size=10)  # also fine in URIs
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n)}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)
escaped = st.binary(min_size=1, max_size=3).map(lambda b: "".join(f"%{c:02X}" for c in b))
users = st.lists(st.one_of(st.text(UNRESERVED + "&=+$,;?/", min_size=1, max_size=6), escaped),
                 min_size=1, max_size=3).map("".join)  # fmt: skip
uri_params = st.lists(st.tuples(safe_tokens, st.none() | safe_tokens), max_size=3)
text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
header_text = text.map(lambda s: s.strip(" \t"))


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP"]))
    user = draw(st.none() | users)
    port = draw(ports)
    uri = f"{scheme}:{'' if user is None else user + '@'}{draw(hosts)}"
    uri += "" if port is None else f":{port}"
    uri += "".join(f";{k}" if v is None else f";{k}={v}" for k, v in draw(uri_params))
    return uri


def params(pairs: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in pairs)


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool = False) -> str:
    display = draw(st.one_of(
        st.just(""),
        st.lists(tokens, min_size=1, max_size=3).map(lambda ws: " ".join(ws) + " "),
        text.map(lambda s: quote(s) + draw(st.sampled_from(["", " "]))),
    ))  # fmt: skip
    value = f"{display}<{draw(sip_uris())}>"
    pairs = draw(st.lists(st.tuples(tokens, st.none() | tokens), max_size=2))
    if tag:
        pairs.append(("tag", draw(tokens)))
    return value + params(pairs)


@st.composite
def vias(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]))
    port = draw(ports)
    value = f"SIP/2.0/{transport} {draw(hosts)}" + ("" if port is None else f":{port}")
    pairs: list[tuple[str, str | None]] = [("branch", "z9hG4bK" + draw(tokens))]
    pairs += draw(st.lists(st.sampled_from([
        ("rport", None), ("rport", "5060"), ("received", "192.0.2.1"),
        ("received", "[2001:db8::1]"), ("maddr", "224.2.0.1"), ("ttl", "16"),
    ]), max_size=3, unique=True))  # fmt: skip
    return value + params(pairs)


@st.composite
def extension_headers(draw: st.DrawFn) -> tuple[str, str]:
    return "X-" + draw(tokens), draw(header_text)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    method = draw(
        st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "PRACK"]) | tokens
    )
    via_values = draw(st.lists(vias(), min_size=1, max_size=3))
    items: list[tuple[str, str]] = []
    if draw(st.booleans()):
        items.append(("Via", ", ".join(via_values)))
    else:
        items += [(draw(st.sampled_from(["Via", "v", "VIA"])), v) for v in via_values]
    items += [
        (draw(st.sampled_from(["From", "f"])), draw(name_addrs(tag=True))),
        (draw(st.sampled_from(["To", "t"])), draw(name_addrs())),
        ("Call-ID", draw(st.text(TOKEN + '()<>:\\"/[]?{}', min_size=1, max_size=20))),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
    ]
    optional: list[tuple[str, str]] = []
    if draw(st.booleans()):
        optional.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    if draw(st.booleans()):
        optional.append(
            ("Contact", ", ".join(draw(st.lists(name_addrs(), min_size=1, max_size=3))))
        )
    if draw(st.booleans()):
        optional.append(("Route", ", ".join(draw(st.lists(name_addrs(), min_size=1, max_size=2)))))
    if draw(st.booleans()):
        optional.append(("Supported", ", ".join(draw(st.lists(tokens, max_size=3)))))
    if draw(st.booleans()):
        optional.append(("Authorization", f'Digest username="{draw(safe_tokens)}", nc=00000001'))
    optional += draw(st.lists(extension_headers(), max_size=4))
    items += draw(st.permutations(optional))
    body = draw(st.binary(max_size=120))
    if body or draw(st.booleans()):
        items.append(("Content-Type", "application/octet-stream"))
    items.append((draw(st.sampled_from(["Content-Length", "l"])), str(len(body))))
    headers = Headers.of(items)
    if draw(st.booleans()):
        return Request(method, parse_uri(draw(sip_uris())), headers, body)
    reason = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\t"),
                          max_size=20))  # fmt: skip
    headers.set("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}")
    return Response(draw(st.integers(100, 699)), reason, headers, body)


@SETTINGS
@given(messages())
def test_generated_messages_round_trip(msg: Request | Response) -> None:
    data = msg.to_bytes()
    parsed = parse_message(data)
    assert parsed == msg
    assert parsed.to_bytes() == data
    strict = parse_message(data, strict=True)  # generated messages are valid
    assert strict == msg


# Wire-level variations that must all survive parse -> serialize byte for byte.
colons = st.sampled_from([":", ": ", " : ", ":\t", "\t:  ", ":   "])
trailing = st.sampled_from(["", " ", "\t", "  \t"])
folds = st.sampled_from([" ", "  ", "\r\n ", "\r\n\t", " \r\n   "])


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flags: "".join(
            c.upper() if f else c.lower() for c, f in zip(name, flags, strict=True)
        )
    )


@st.composite
def wire_messages(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    def line(name: str, value: str) -> str:
        return f"{draw(any_case(name))}{draw(colons)}{value}{draw(trailing)}"

    method = draw(st.sampled_from(["INVITE", "MESSAGE", "NOTIFY"]))
    words = draw(st.lists(st.text(string.ascii_letters + string.digits + ",;\"'", min_size=1,
                                  max_size=8), min_size=1, max_size=5))  # fmt: skip
    subject = words[0] + "".join(draw(folds) + w for w in words[1:])
    body = draw(st.binary(max_size=60))
    lines = [
        f"{method} {draw(sip_uris())} SIP/2.0",
        line(draw(st.sampled_from(["Via", "v"])),
             f"SIP/2.0/UDP{draw(folds)}{draw(hosts)};branch=z9hG4bK{draw(tokens)}"),
        line(draw(st.sampled_from(["From", "f"])), draw(name_addrs(tag=True))),
        line(draw(st.sampled_from(["To", "t"])), draw(name_addrs())),
        line(draw(st.sampled_from(["Call-ID", "i"])), draw(safe_tokens)),
        line("CSeq", f"{draw(st.integers(0, 99999))}{draw(folds)}{method}"),
        line(draw(st.sampled_from(["Subject", "s"])), subject),
        line("X-" + draw(tokens), draw(header_text)),
        line(draw(st.sampled_from(["Content-Length", "l"])), str(len(body))),
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, words


@SETTINGS
@given(wire_messages(), st.binary(max_size=20))
def test_valid_wire_text_round_trips(wire: tuple[bytes, list[str]], extra: bytes) -> None:
    data, words = wire
    for strict in (False, True):
        msg = parse_message(data + extra, strict=strict)  # octets after the body: ignored
        assert msg.to_bytes() == data
    subject = msg.headers.get("subject")
    assert subject is not None and "\r" not in subject and "\n" not in subject
    assert subject.split() == " ".join(words).split()  # unfolded, words intact
    assert parse_message(msg.to_bytes()) == msg
