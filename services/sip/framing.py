"""Framing SIP messages out of a byte stream (TCP, TLS): RFC 3261 section 18.3, RFC 5626.

Sans-IO in the h11 manner: `feed()` bytes in, `next_event()` events out. Each message is
returned as its raw bytes; parsing it is a separate step, so one malformed message (whose
framing is intact) does not cost the connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.sip.errors import FramingError
from services.sip.message import DEFAULT_LIMITS, ParserLimits


@dataclass(frozen=True, slots=True)
class RawMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A double CRLF: the peer wants a single CRLF back (RFC 5626 section 3.5.1)."""


@dataclass(frozen=True, slots=True)
class KeepAlivePong:
    """A single CRLF between messages: the answer to our ping."""


class NeedData:
    """Marker: no complete event buffered."""


NEED_DATA = NeedData()
StreamEvent = RawMessage | KeepAlivePing | KeepAlivePong | NeedData

_CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)


class StreamFramer:
    def __init__(self, limits: ParserLimits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._limits = limits

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> StreamEvent:
        """The next event, or NEED_DATA. Raises FramingError when the stream cannot be framed."""
        buf = self._buf
        if buf[:4] == b"\r\n\r\n":
            del buf[:4]
            return KeepAlivePing()
        if buf[:2] == b"\r\n":
            if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return NEED_DATA  # could still become a ping
            del buf[:2]
            return KeepAlivePong()
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._limits.max_message_size:
                raise FramingError("header section too large", 513)
            return NEED_DATA
        head = bytes(buf[:end])
        lengths = {m.group(1).strip() for m in _CONTENT_LENGTH_RE.finditer(head)}
        if len(lengths) != 1:
            raise FramingError("missing or conflicting Content-Length on a stream")
        text = lengths.pop()
        if not text.isdigit():
            raise FramingError("bad Content-Length on a stream")
        if len(text) > 18 and len(text.lstrip(b"0")) > 18:  # int() raises past 4300 digits
            raise FramingError("message too large", 513)
        total = end + 4 + int(text)
        if total > self._limits.max_message_size:
            raise FramingError("message too large", 513)
        if len(buf) < total:
            return NEED_DATA
        data = bytes(buf[:total])
        del buf[:total]
        return RawMessage(data)
