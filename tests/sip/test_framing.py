"""StreamFramer: framing SIP messages out of a TCP/TLS byte stream (RFC 3261 18.3, RFC 5626)."""

from __future__ import annotations

import pytest

from services.sip import FramingError, ParseError, ParserLimits, Request, Response, parse_message
from services.sip.framing import (
    NEED_DATA,
    KeepAlivePing,
    KeepAlivePong,
    RawMessage,
    StreamEvent,
    StreamFramer,
)


def request(n: int, body: bytes = b"", cl_name: str = "Content-Length") -> bytes:
    return (
        f"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP client.example.com;branch=z9hG4bKf{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: framing-{n}@example.com\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Max-Forwards: 70\r\n"
        f"{cl_name}: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


def response(n: int, body: bytes = b"") -> bytes:
    return (
        f"SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/TCP client.example.com;branch=z9hG4bKf{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        f"To: <sip:bob@example.com>;tag=b{n}\r\n"
        f"Call-ID: framing-{n}@example.com\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Content-Type: text/plain\r\n"
        f"l: {len(body)}\r\n"
        f"\r\n"
    ).encode() + body


def drain(framer: StreamFramer) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    while (event := framer.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_empty_buffer_needs_data() -> None:
    framer = StreamFramer()
    assert framer.next_event() is NEED_DATA
    assert framer.buffered == 0


def test_several_messages_in_one_read() -> None:
    body = b"hello\r\n\r\nworld"  # a CRLF CRLF inside the body does not end anything
    msgs = [request(1), response(2, body), request(3, b"x" * 100)]
    framer = StreamFramer()
    framer.feed(b"".join(msgs))
    events = drain(framer)
    assert events == [RawMessage(m) for m in msgs]
    assert framer.buffered == 0
    parsed = [parse_message(e.data) for e in events if isinstance(e, RawMessage)]
    assert isinstance(parsed[0], Request)
    assert isinstance(parsed[1], Response) and parsed[1].body == body
    assert parsed[2].body == b"x" * 100


def test_one_message_byte_by_byte() -> None:
    data = request(7, b"v=0\r\n")
    framer = StreamFramer()
    for i, byte in enumerate(data):
        assert framer.next_event() is NEED_DATA
        framer.feed(bytes([byte]))
        if i < len(data) - 1:
            assert framer.next_event() is NEED_DATA
    assert framer.next_event() == RawMessage(data)
    assert framer.next_event() is NEED_DATA and framer.buffered == 0


def test_stream_of_messages_in_odd_chunks() -> None:
    msgs = [request(i, b"b" * i) for i in range(1, 6)] + [response(9, b"done")]
    stream = b"".join(msgs)
    for size in (1, 2, 3, 7, 64, 1000):
        framer = StreamFramer()
        events: list[StreamEvent] = []
        for i in range(0, len(stream), size):
            framer.feed(stream[i : i + size])
            events += drain(framer)
        assert events == [RawMessage(m) for m in msgs], size


def test_partial_body_waits() -> None:
    data = request(1, b"0123456789")
    framer = StreamFramer()
    framer.feed(data[:-3])
    assert framer.next_event() is NEED_DATA
    assert framer.buffered == len(data) - 3  # nothing consumed yet
    framer.feed(data[-3:])
    assert framer.next_event() == RawMessage(data)


def test_keepalive_ping_and_pong_between_messages() -> None:
    """RFC 5626 3.5.1: CRLF CRLF is a ping, a single CRLF the pong."""
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + request(1) + b"\r\n" + request(2) + b"\r\n\r\n\r\n")
    assert drain(framer) == [
        KeepAlivePing(),
        RawMessage(request(1)),
        KeepAlivePong(),
        RawMessage(request(2)),
        KeepAlivePing(),
    ]
    assert framer.buffered == 2  # a lone CRLF at the end could still become a ping
    framer.feed(request(3))
    assert drain(framer) == [KeepAlivePong(), RawMessage(request(3))]
    assert framer.buffered == 0


def test_keepalive_split_across_reads() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_event() is NEED_DATA  # could still become a ping
    framer.feed(b"\r")
    assert framer.next_event() is NEED_DATA
    framer.feed(b"\n")
    assert framer.next_event() == KeepAlivePing()
    framer.feed(b"\r\n")
    assert framer.next_event() is NEED_DATA
    framer.feed(b"OPT")  # a message starts: the CRLF was a pong
    assert framer.next_event() == KeepAlivePong()
    framer.feed(request(1)[3:])
    assert framer.next_event() == RawMessage(request(1))


def test_compact_and_case_insensitive_content_length() -> None:
    for name in ("l", "L", "content-length", "CONTENT-LENGTH", "Content-Length  "):
        data = request(1, b"abc", cl_name=name)
        framer = StreamFramer()
        framer.feed(data + request(2))
        assert drain(framer) == [RawMessage(data), RawMessage(request(2))], name


def test_duplicate_equal_content_length_is_fine() -> None:
    data = request(1, b"abc").replace(b"Max-Forwards", b"l: 3\r\nMax-Forwards")
    framer = StreamFramer()
    framer.feed(data)
    assert framer.next_event() == RawMessage(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (request(1).replace(b"Content-Length: 0\r\n", b""), "missing"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 5"), "conflicting"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: -1"), "negative"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: 1x"), "not a number"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: 0x10"), "hex"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: "), "empty"),
        (request(1).replace(b"Content-Length: 0", b"Content-Length: \xd9\xa3"), "non-ASCII digit"),
    ],
)
def test_bad_content_length_raises(data: bytes, why: str) -> None:
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(FramingError):
        framer.next_event()


def test_huge_content_length_raises() -> None:
    for digits in ("70000", "9" * 30, "1" * 5000):  # 5000: beyond int()'s 4300-digit limit
        framer = StreamFramer()
        framer.feed(request(1).replace(b"Content-Length: 0", f"Content-Length: {digits}".encode()))
        with pytest.raises(FramingError) as exc:
            framer.next_event()
        assert exc.value.status == 513


def test_leading_zeros_in_content_length() -> None:
    data = request(1, b"abc").replace(b"Content-Length: 3", b"Content-Length: " + b"0" * 40 + b"3")
    framer = StreamFramer()
    framer.feed(data)
    assert framer.next_event() == RawMessage(data)


def test_oversize_header_section_raises() -> None:
    framer = StreamFramer(ParserLimits(max_message_size=2000))
    framer.feed(b"OPTIONS sip:bob@example.com SIP/2.0\r\n")
    assert framer.next_event() is NEED_DATA
    framer.feed(b"X-Filler: " + b"y" * 2000 + b"\r\n")  # no end of headers in sight
    with pytest.raises(FramingError) as exc:
        framer.next_event()
    assert exc.value.status == 513


def test_oversize_message_raises_before_body_arrives() -> None:
    framer = StreamFramer(ParserLimits(max_message_size=1000))
    framer.feed(request(1).replace(b"Content-Length: 0", b"Content-Length: 900"))
    with pytest.raises(FramingError):
        framer.next_event()


def test_framing_error_is_a_parse_error() -> None:
    assert issubclass(FramingError, ParseError)


def test_malformed_message_with_intact_framing_costs_one_message() -> None:
    """A message that frames but does not parse is delivered; the next one still frames."""
    bad = b"GARBAGE\r\nContent-Length: 4\r\n\r\nabcd"
    framer = StreamFramer()
    framer.feed(bad + request(2))
    first, second = drain(framer)
    assert first == RawMessage(bad)
    assert isinstance(first, RawMessage)
    with pytest.raises(ParseError):
        parse_message(first.data)
    assert isinstance(second, RawMessage)
    assert isinstance(parse_message(second.data), Request)
