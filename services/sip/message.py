"""SIP messages: parse (lazily), validate (strictly, on demand), build and serialize.

`parse_message` does what every SIP element needs before it can act: frame the message,
parse the start line, split the header fields, and check the fields that identify a
transaction (top Via, CSeq, Call-ID, From, To present). Everything else is parsed when
asked for; `validate()` parses every header we know, for input from untrusted peers.
Unknown headers and the body are kept as received and re-sent byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from services.sip.errors import ParseError
from services.sip.grammar import TOKEN_RE, WORD_RE, is_token, split_commas
from services.sip.headers import (
    LIST_HEADERS,
    SINGLE_HEADERS,
    CSeq,
    HeaderField,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    parse_contacts,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
)
from services.sip.uri import URI, parse_uri

T = TypeVar("T")
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # any octet survives decode/encode unchanged


@dataclass(frozen=True)
class ParserLimits:
    max_message_size: int = 65535
    max_headers: int = 256
    max_line_length: int = 8192


DEFAULT_LIMITS = ParserLimits()

_HEADER_NAME_RE = TOKEN_RE
_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
MAX_EXPIRES = 2**32 - 1
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")
_REASON_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # Reason-Phrase allows HTAB
# List headers whose grammar allows an empty value: "Supported:" means no extensions,
# "Accept:" no formats (RFC 3261 sections 20.1-20.5, 20.37).
_MAY_BE_EMPTY = frozenset(("supported", "allow", "accept", "accept-encoding", "accept-language"))


def _parse_one_contact(value: str) -> list[NameAddr] | None:
    return parse_contacts([value])


# Vias we put on top of requests we send, by their text: the responses come back with that
# text on top, and are matched to their transaction without parsing it again. Bounded (a
# response later than this many requests is parsed as usual).
_OWN_VIAS: dict[str, Via] = {}
_OWN_VIAS_SIZE = 2048


def _parse_top_via(value: str) -> Via:
    own = _OWN_VIAS.get(value)
    if own is not None:
        return own
    return parse_via(value if "," not in value else split_commas(value)[0])


class Message:
    """Common part of requests and responses."""

    __slots__ = ("_parsed", "body", "headers")

    def __init__(self, headers: Headers, body: bytes = b"") -> None:
        self.headers = headers
        self.body = body
        # key -> (the header text it was parsed from, the parsed value); a changed header
        # has a new text object, so a stale entry is never returned.
        self._parsed: dict[str, tuple[str, Any]] = {}

    def push_via(self, via: Via) -> None:
        """Put `via` on top (a proxy's own Via), already parsed for whoever reads it next."""
        text = str(via)
        self.headers.add_first("Via", text)
        self._parsed["via"] = (text, via)
        if len(_OWN_VIAS) >= _OWN_VIAS_SIZE:
            _OWN_VIAS.clear()
        _OWN_VIAS[text] = via

    def replace_top_via(self, via: Via) -> None:
        """Replace the top Via (received and rport added), already parsed."""
        self.headers.replace_first_value("via", str(via))
        self._parsed["via"] = (self.headers.get("via") or "", via)

    def forget_parsed(self) -> None:
        """Drop the values parsed out of the headers (a message kept long but seldom read)."""
        self._parsed = {}

    def _cached(self, key: str, text: str, parse: Callable[[str], T]) -> T:
        hit = self._parsed.get(key)
        if hit is not None and hit[0] is text:
            return cast(T, hit[1])
        value = parse(text)
        self._parsed[key] = (text, value)
        return value

    # -- the fields everyone needs ------------------------------------------------------------
    @property
    def top_via(self) -> Via:
        value = self.headers.get("via")
        if value is None:
            raise ParseError("missing Via")
        return self._cached("via", value, _parse_top_via)

    @property
    def vias(self) -> list[Via]:
        values = self.headers.values("via")
        if not values:
            return []
        return [self.top_via, *map(parse_via, values[1:])]  # the top one is parsed already

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("cseq")
        if value is None:
            raise ParseError("missing CSeq")
        return self._cached("cseq", value, parse_cseq)

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if value is None:
            raise ParseError("missing Call-ID")
        return value

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    def _name_addr(self, key: str) -> NameAddr:
        value = self.headers.get(key)
        if value is None:
            raise ParseError(f"missing {key.title()}")
        return self._cached(key, value, parse_name_addr)

    @property
    def contacts(self) -> list[NameAddr] | None:
        """Contact values; None for the wildcard `*`. One Contact header (the usual case) is
        parsed once; treat the list as read-only."""
        values = self.headers.values("contact")
        if len(values) == 1:
            return self._cached("contact", values[0], _parse_one_contact)
        return parse_contacts(values)

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Route, Record-Route, Path, Service-Route, P-Asserted-Identity..."""
        return [parse_name_addr(v) for v in self.headers.values(name)]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        return None if value is None else parse_uint(value, "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        """Expires header; values beyond 2**32-1 are clamped (RFC 4475 section 3.1.2.4)."""
        value = self.headers.get("expires")
        if value is None:
            return None
        return parse_uint(value, "Expires", MAX_EXPIRES, clamp=True)

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        self.body = body
        self.headers.set("Content-Length", str(len(body)))
        if content_type is not None:
            self.headers.set("Content-Type", content_type)

    # -- serialization ------------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        head = self.start_line() + "\r\n" + self.headers.render() + "\r\n"
        return head.encode(ENCODING, ERRORS) + self.body

    def __bytes__(self) -> bytes:  # a method, not an alias of to_bytes: mypyc compiles this
        return self.to_bytes()

    def validate(self) -> None:
        """Parse every header we know; raise ParseError on the first malformed one."""
        h = self.headers
        # One pass over the fields for the checks that look at all of them (this runs on
        # every request from a UE): repeated single headers first, then empty list headers.
        seen: set[str] = set()  # every key present: headers absent are not looked for below
        repeated: str | None = None
        empty: HeaderField | None = None
        for f in h:
            key = f[0]
            if key in SINGLE_HEADERS:
                if key in seen and repeated is None:
                    repeated = key
            elif (
                empty is None and f[2] == "" and key in LIST_HEADERS
                and key not in _MAY_BE_EMPTY
            ):
                empty = f
            seen.add(key)
        if repeated is not None:
            raise ParseError(f"more than one {repeated.title()} header")
        if empty is not None:
            raise ParseError(f"empty {empty[1]} header")
        self.vias, self.from_, self.to, self.cseq  # noqa: B018 - parsing is the check
        word, at, host = self.call_id.partition("@")
        if WORD_RE.fullmatch(word) is None or (at and WORD_RE.fullmatch(host) is None):
            raise ParseError("bad Call-ID")
        self.max_forwards  # noqa: B018
        self.expires  # noqa: B018
        for name in ("route", "record-route", "path", "service-route", "p-asserted-identity"):
            if name in seen:
                self.name_addrs(name)
        contacts = self.contacts if "contact" in seen else []
        for contact in contacts or []:
            expires = contact.params.get("expires")
            if expires is not None and not expires.isdigit():
                raise ParseError("bad Contact expires")
        date = h.get("date") if "date" in seen else None
        if date is not None and _DATE_RE.fullmatch(date) is None:
            raise ParseError("bad Date")
        for name in ("require", "proxy-require", "supported", "allow", "unsupported"):
            for value in h.get_all(name) if name in seen else ():
                if value == "" and name in _MAY_BE_EMPTY:
                    continue
                if not all(is_token(token) for token in split_commas(value)):
                    raise ParseError(f"bad {name.title()} header")
        ctype = h.get("content-type") if "content-type" in seen else None
        if ctype is not None and "/" not in ctype:
            raise ParseError("bad Content-Type")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Message)
            and type(self) is type(other)
            and self.start_line() == other.start_line()
            and self.headers.items() == other.headers.items()
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]


class Request(Message):
    __slots__ = ("_uri", "method", "uri_text", "version")

    def __init__(
        self,
        method: str,
        uri: str | URI,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body)
        self.method = method
        self.uri_text = str(uri)
        self.version = version
        self._uri: URI | None = uri if isinstance(uri, URI) else None

    @property
    def uri(self) -> URI:
        """The Request-URI, parsed on first use."""
        if self._uri is None:
            uri = parse_uri(self.uri_text)
            if uri.headers:
                raise ParseError("headers not allowed in Request-URI")
            self._uri = uri
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self.uri_text = str(value)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    def validate(self) -> None:
        self.uri  # noqa: B018
        super().validate()

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "Unknown") if reason is None else reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- parsing --------------------------------------------------------------------------------

_MANDATORY = frozenset(("via", "from", "to", "call-id", "cseq"))


def parse_message(
    data: bytes, *, strict: bool = False, limits: ParserLimits = DEFAULT_LIMITS
) -> Request | Response:
    """Parse one message from a datagram or a framed stream chunk.

    Octets after Content-Length are ignored (RFC 3261 section 18.3); a datagram shorter than
    its Content-Length is an error. With strict=True every known header is validated too.
    """
    try:
        msg = _parse(data, limits)
        if strict:
            msg.validate()
        return msg
    except ParseError:
        raise
    except (ValueError, IndexError, UnicodeError, OverflowError) as exc:  # belt and braces
        raise ParseError(f"malformed message ({type(exc).__name__})") from None


def _parse(data: bytes, limits: ParserLimits) -> Request | Response:
    if len(data) > limits.max_message_size:
        raise ParseError("message too large", 513)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ParseError("no end of header section")
    head = data[: end + 2].decode(ENCODING, ERRORS)
    start, _, rest = head.partition("\r\n")
    if len(start) > limits.max_line_length:
        raise ParseError("start line too long")
    if rest.count("\r\n") > limits.max_headers:
        raise ParseError("too many header lines")
    headers = Headers(_split_fields(rest, limits))

    cl_values = headers.get_all("content-length")
    body_start = end + 4
    if cl_values:
        if len(cl_values) > 1 and len(set(cl_values)) > 1:
            raise ParseError("conflicting Content-Length headers")
        length = parse_uint(cl_values[0], "Content-Length", limits.max_message_size)
        if body_start + length > len(data):
            raise ParseError("Content-Length larger than message")
        body = data[body_start : body_start + length]
    else:
        body = data[body_start:]

    msg: Request | Response
    if start.startswith("SIP/"):
        msg = _parse_status_line(start, headers, body)
    else:
        msg = _parse_request_line(start, headers, body)

    keys = {f[0] for f in headers}
    if not keys >= _MANDATORY:
        missing = sorted(_MANDATORY - keys)
        raise ParseError(f"missing {', '.join(k.title() for k in missing)} header")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise ParseError("CSeq method does not match request method")
    msg.top_via  # noqa: B018 - every element needs it to find the transaction
    return msg


# One whole unfolded field line: (raw, name, value). Trailing whitespace stays in raw only.
# A match must start at a line start: findall() would otherwise skip junk before a name
# ("X Via: ..." or "Subject: a\nVia: ..." read as a Via), and the line count would still agree.
_FIELD_RE = re.compile(r"(?:(?<=\r\n)|\A)(([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*([^\r\n]*))\r\n")
_KEY_CACHE: dict[str, str] = {}


def _key(name: str) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        key = canonical_name(name)
        if len(_KEY_CACHE) < 4096:  # bounded: header names come from peers
            _KEY_CACHE[name] = key
    return key


def _split_fields(rest: str, limits: ParserLimits) -> list[HeaderField]:
    """Header fields from the header section after the start line (ends with CRLF)."""
    if "\r\n " not in rest and "\r\n\t" not in rest:
        found = _FIELD_RE.findall(rest)
        if len(found) == rest.count("\r\n"):
            fields = [(_key(n), n, v.rstrip(" \t"), r) for r, n, v in found]
            if len(rest) > limits.max_line_length and any(
                len(r) > limits.max_line_length for r, _, _ in found
            ):
                raise ParseError("header line too long")
            return fields
    return _split_fields_slow(rest.split("\r\n")[:-1], limits)


def _split_fields_slow(lines: list[str], limits: ParserLimits) -> list[HeaderField]:
    """Line by line, unfolding continuations and naming the first bad line's problem."""
    fields: list[HeaderField] = []
    max_len = limits.max_line_length
    for line in lines:
        if len(line) > max_len:
            raise ParseError("header line too long")
        if "\r" in line or "\n" in line:  # another element may end the line there
            raise ParseError("bare CR or LF in header")
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 section 7.3.1)
            if not fields:
                raise ParseError("continuation line before the first header")
            key, name, value, raw = fields[-1]
            value = (value + " " + line.strip(" \t")).strip(" \t")
            fields[-1] = (key, name, value, f"{raw}\r\n{line}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("header line without ':'")
        name = name.rstrip(" \t")
        if _HEADER_NAME_RE.fullmatch(name) is None:
            raise ParseError("bad header name")
        fields.append((_key(name), name, value.strip(" \t"), line))
    return fields


def _parse_request_line(start: str, headers: Headers, body: bytes) -> Request:
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("bad request line")
    method, uri, version = parts
    if _HEADER_NAME_RE.fullmatch(method) is None:
        raise ParseError("bad method")
    _check_version(version)
    if uri.startswith("<") or _CTL_RE.search(uri):
        raise ParseError("bad Request-URI")
    return Request(method, uri, headers, body, version)


def _parse_status_line(start: str, headers: Headers, body: bytes) -> Response:
    version, _, rest = start.partition(" ")
    _check_version(version)
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or not "100" <= code <= "699":
        raise ParseError("bad status code")
    if _REASON_BAD_RE.search(reason):
        raise ParseError("control character in reason phrase")
    return Response(int(code), reason, headers, body, version)


def _check_version(version: str) -> None:
    if version.upper() == "SIP/2.0":
        return
    if re.fullmatch(r"SIP/[0-9]+\.[0-9]+", version, re.IGNORECASE):
        raise ParseError("Version Not Supported", 505)
    raise ParseError("bad SIP version")


# --- building ---------------------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to `request` (RFC 3261 section 8.2.6): Vias, From, Call-ID, CSeq copied;
    To copied with `to_tag` added unless it already has one (never for 100 Trying)."""
    h = request.headers
    out = Headers()
    for key, name, value, _ in h:
        if key == "via":
            out.add(name, value)
    to_value = h.get("to") or ""
    if to_tag and status != 100 and "tag" not in request.to.params:
        to_value = f"{to_value};tag={to_tag}"
    out.add("From", h.get("from") or "")
    out.add("To", to_value)
    out.add("Call-ID", h.get("call-id") or "")
    out.add("CSeq", h.get("cseq") or "")
    if status == 100 and (ts := h.get("timestamp")) is not None:
        out.add("Timestamp", ts)
    for name, value in extra or []:
        out.add(name, value)
    resp = Response(status, reason, out)
    resp.set_body(body, content_type if body else None)
    return resp


REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
}
