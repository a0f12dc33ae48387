"""Answering a request we could not parse: `400 <reason>` built from what can be salvaged.

RFC 3261 section 8.2.6 needs Via, From, To, Call-ID and CSeq copied into a response. When the
parser rejected the message we pick those lines out leniently; without a Via there is no one to
answer, and responses are never answered, so both give None (the caller drops the message).
"""

from __future__ import annotations

import re

from services.sip.errors import ParseError

_LINE_RE = re.compile(
    rb"^(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)
_CANONICAL = {b"v": b"Via", b"f": b"From", b"t": b"To", b"i": b"Call-ID"}
_NAMES = {b"via": b"Via", b"from": b"From", b"to": b"To", b"call-id": b"Call-ID", b"cseq": b"CSeq"}


def rejection_for(data: bytes, error: ParseError) -> bytes | None:
    """The bytes of `<status> <reason>` answering the unparsable request `data`, or None."""
    if data.startswith(b"SIP/") or not data[:1].isalpha():
        return None
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[:head_end]
    lines: list[bytes] = []
    seen: set[bytes] = set()
    for m in _LINE_RE.finditer(head[:8192]):
        raw_name = m.group(1).lower()
        name = _CANONICAL.get(raw_name) or _NAMES[raw_name]
        if name != b"Via" and name in seen:
            continue
        seen.add(name)
        lines.append(name + b": " + m.group(2).strip())
    if b"Via" not in seen:
        return None
    status_line = f"SIP/2.0 {error.status} {error.reason}".encode()
    return b"\r\n".join([status_line, *lines, b"Content-Length: 0", b"", b""])
