"""Header fields: the ordered field list and the typed values parsed out of them on demand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from services.sip.errors import ParseError
from services.sip.grammar import (
    TOKEN_CHARS,
    Params,
    is_token,
    memoized,
    parse_params,
    quote,
    quoted_string_end,
    render_params,
    split_commas,
    unquote,
)
from services.sip.uri import URI, parse_hostport, parse_uri

# RFC 3261 section 7.3.3 and later RFCs' compact forms -> canonical lower-case names.
COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "n": "identity-info",
}

# How we write names we render ourselves.
CANONICAL_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-charging-vector": "P-Charging-Vector",
    "p-preferred-identity": "P-Preferred-Identity",
    "rack": "RAck",
    "rseq": "RSeq",
    "mime-version": "MIME-Version",
}

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1). Not in this set:
# WWW-Authenticate, Authorization, Proxy-Authenticate and friends, whose values hold commas.
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "contact", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "content-encoding", "content-language", "in-reply-to", "alert-info", "call-info",
        "error-info", "warning", "path", "service-route", "p-asserted-identity",
        "p-preferred-identity", "allow-events", "reason", "security-client",
        "security-server", "security-verify", "p-associated-uri",
    }
)

# Headers whose single value holds commas that do not separate list elements (credentials,
# challenges, dates). values()/first_value() and friends never split them: each field line is
# one value (RFC 3261 section 7.3.1: these are never combined into one line).
NO_SPLIT_HEADERS = frozenset(
    {
        "www-authenticate", "authorization", "proxy-authenticate", "proxy-authorization",
        "authentication-info", "date",
    }
)

# Headers that may appear once (RFC 3261 table 2/3 and section 7.3.1).
SINGLE_HEADERS = frozenset(
    {
        "call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type",
        "expires", "min-expires", "date", "mime-version",
    }
)

# Lower-case keys callers use often, so lookups can skip normalising them.
_KEYS = frozenset(("via", "cseq", "call-id", "from", "to", "max-forwards", "route", "contact"))


def canonical_name(name: str) -> str:
    """The lower-case key of a header name, compact forms expanded."""
    lname = name.lower()
    return COMPACT_FORMS.get(lname, lname)


def display_name(lname: str) -> str:
    return CANONICAL_NAMES.get(lname) or "-".join(p.capitalize() for p in lname.split("-"))


# One header field line: (key, the name as written, the unfolded value, the raw text). `raw`
# is the original line(s) exactly as received, so an untouched field is re-sent byte for
# byte; it is None for fields we created. A plain tuple of strings rather than a class: the
# garbage collector stops tracking it after one look, and copies of the headers share it.
# (Transactions keep their messages for 32 s; with a class, most of the sbc's heap was
# header fields the collector walked again and again: ~7 % of its CPU in collections.)
HeaderField = tuple[str, str, str, str | None]


def render_field(field: HeaderField) -> str:
    _, name, value, raw = field
    return raw if raw is not None else f"{name}: {value}"


class Headers:
    """Ordered header fields with case-insensitive, compact-form-aware access."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[HeaderField] | None = None) -> None:
        self._fields: list[HeaderField] = fields if fields is not None else []

    @classmethod
    def of(cls, items: list[tuple[str, str]]) -> Headers:
        return cls([(canonical_name(n), n, v, None) for n, v in items])

    def __iter__(self) -> Iterator[HeaderField]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: str) -> bool:
        key = canonical_name(name)
        return any(f[0] == key for f in self._fields)

    def copy(self) -> Headers:
        return Headers(self._fields.copy())  # the fields are immutable: shared

    def get(self, name: str) -> str | None:
        """The value of the first field of that name."""
        key = name if name in _KEYS else canonical_name(name)
        for f in self._fields:
            if f[0] == key:
                return f[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """The values of every field of that name, one per field line."""
        key = canonical_name(name)
        return [f[2] for f in self._fields if f[0] == key]

    def values(self, name: str) -> list[str]:
        """List elements across all fields of a comma-separated list header."""
        if canonical_name(name) in NO_SPLIT_HEADERS:
            return self.get_all(name)
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(split_commas(value))
        return out

    def first_value(self, name: str) -> str | None:
        """The first list element (the top Via, the first Route) without splitting the rest."""
        value = self.get(name)
        if value is None:
            return None
        if "," not in value or canonical_name(name) in NO_SPLIT_HEADERS:
            return value
        return split_commas(value)[0]

    def count(self, name: str) -> int:
        key = canonical_name(name)
        return sum(1 for f in self._fields if f[0] == key)

    def add(self, name: str, value: str) -> None:
        """Append a field after the last one."""
        self._fields.append((canonical_name(name), name, value, None))

    def add_first(self, name: str, value: str) -> None:
        """Insert a field before all fields of that name (a new top Via or Record-Route)."""
        key = canonical_name(name)
        for i, f in enumerate(self._fields):
            if f[0] == key:
                self._fields.insert(i, (key, name, value, None))
                return
        self._fields.append((key, name, value, None))

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name with one field, where the first one was."""
        key = canonical_name(name)
        for i, f in enumerate(self._fields):
            if f[0] == key:
                self._fields[i] = (key, name, value, None)
                self._fields[i + 1 :] = [g for g in self._fields[i + 1 :] if g[0] != key]
                return
        self._fields.append((key, name, value, None))

    def remove(self, name: str) -> int:
        key = canonical_name(name)
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0] != key]
        return before - len(self._fields)

    def pop_first_value(self, name: str) -> str | None:
        """Remove the first list element (our own Via, a Route we consumed)."""
        key = canonical_name(name)
        for i, (k, written, value, _) in enumerate(self._fields):
            if k == key:
                parts = [value] if key in NO_SPLIT_HEADERS else split_commas(value)
                if len(parts) == 1:
                    del self._fields[i]
                else:
                    self._fields[i] = (key, written, ", ".join(parts[1:]), None)
                return parts[0]
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first list element (e.g. add received/rport to the top Via)."""
        key = canonical_name(name)
        for i, (k, written, old, _) in enumerate(self._fields):
            if k == key:
                parts = [old] if key in NO_SPLIT_HEADERS else split_commas(old)
                parts[0] = value
                self._fields[i] = (key, written, ", ".join(parts), None)
                return
        raise KeyError(name)

    def render(self) -> str:
        return "".join(render_field(f) + "\r\n" for f in self._fields)

    def items(self) -> list[tuple[str, str]]:
        return [(f[0], f[2]) for f in self._fields]


# --- typed values -------------------------------------------------------------------------


@dataclass(frozen=True)
class NameAddr:
    """`[display-name] <uri>` or a bare addr-spec, with header parameters (From, To, Contact...)."""

    uri: URI
    display: str | None = None  # as written: a quoted-string keeps its quotes
    params: Params = field(default_factory=dict)

    @property
    def display_name(self) -> str | None:
        return None if self.display is None else unquote(self.display)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_params(self, **params: str | None) -> NameAddr:
        return replace(self, params={**self.params, **params})

    def __str__(self) -> str:
        head = f"{self.display} " if self.display else ""
        return f"{head}<{self.uri}>{render_params(self.params)}"


def make_display(text: str) -> str:
    return text if all(is_token(t) for t in text.split(" ")) else quote(text)


_DISPLAY_TOKENS_RE = re.compile(rf"[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*")


@memoized()
def parse_name_addr(value: str) -> NameAddr:
    v = value.strip(" \t")
    display: str | None = None
    if v.startswith('"'):
        end = quoted_string_end(v, 0)
        display = v[:end]
        rest = v[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise ParseError("quoted display name without <URI>")
    else:
        lt = v.find("<")
        if lt < 0:
            return _parse_addr_spec(v)
        text = v[:lt].strip(" \t")
        if text:
            if _DISPLAY_TOKENS_RE.fullmatch(text) is None:
                raise ParseError("bad display name")
            display = text
        rest = v[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise ParseError("unterminated <URI>")
    uri_text = rest[1:gt]
    if not uri_text or uri_text != uri_text.strip() or " " in uri_text or "\t" in uri_text:
        raise ParseError("whitespace in addr-spec")
    return NameAddr(parse_uri(uri_text), display, parse_params(rest, gt + 1))


def _parse_addr_spec(v: str) -> NameAddr:
    uri_text, semi, _ = v.partition(";")
    uri_text = uri_text.rstrip(" \t")
    # RFC 3261 section 20: a URI with ',', '?' or ';' must be enclosed in <> here.
    if not uri_text or any(c in uri_text for c in " \t,?"):
        raise ParseError("URI with special characters not enclosed in <>")
    params = parse_params(v, len(uri_text)) if semi else {}
    return NameAddr(parse_uri(uri_text), None, params)


# RFC 3261 section 8.1.1.7: branches that start with it are unique per transaction. At module
# level: Via is compiled by mypyc (services/native.py), whose classes hold only their fields.
MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 section 20.42)."""

    transport: str  # upper-case: UDP, TCP, TLS, SCTP, WS, ...
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def has_rfc3261_branch(self) -> bool:
        b = self.branch
        return b is not None and b.startswith(MAGIC_COOKIE) and len(b) > len(MAGIC_COOKIE)

    def with_params(self, **params: str | None) -> Via:
        return replace(self, params={**self.params, **params})

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{render_params(self.params)}"


_VIA_RE = re.compile(
    rf"([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?:[ \t]*:[ \t]*([0-9]+))?[ \t]*"
)


def parse_via(value: str) -> Via:
    """One Via element (already split at commas)."""
    m = _VIA_RE.match(value)
    if m is None:
        raise ParseError("bad Via")
    name, version, transport, host, port_text = m.groups()
    if name.upper() != "SIP":
        raise ParseError("bad Via protocol")
    port: int | None = None
    if host[0] == "[" or port_text is not None:
        host, port = parse_hostport(host if port_text is None else f"{host}:{port_text}", "Via")
    params = parse_params(value, m.end(), "Via") if m.end() < len(value) else {}
    return Via(transport.upper(), host, port, params, f"SIP/{version}")


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+([{TOKEN_CHARS}]+)")
MAX_CSEQ = 2**32 - 1


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise ParseError("bad CSeq")
    if len(m.group(1)) > 10 and len(m.group(1).lstrip("0")) > 10:
        raise ParseError("CSeq number too large")  # before int(): it raises past 4300 digits
    seq = int(m.group(1))
    if seq > MAX_CSEQ:
        raise ParseError("CSeq number too large")
    return CSeq(seq, m.group(2))


def parse_uint(value: str, what: str, limit: int, *, clamp: bool = False) -> int:
    """A decimal number <= limit; beyond it ParseError, or `limit` itself with clamp=True."""
    if not value.isdigit() or not value.isascii():
        raise ParseError(f"bad {what}")
    # Peers send any number of digits: compare lengths before int(), which is quadratic and
    # raises ValueError (not ParseError) beyond 4300 digits.
    if len(value) > 18 and len(value.lstrip("0")) > len(str(limit)):
        if clamp:
            return limit
        raise ParseError(f"{what} too large")
    n = int(value)
    if n > limit:
        if clamp:
            return limit
        raise ParseError(f"{what} too large")
    return n


def parse_contacts(value_list: list[str]) -> list[NameAddr] | None:
    """Contact values; None means the wildcard `*` (only valid alone)."""
    if [v.strip() for v in value_list] == ["*"]:
        return None
    return [parse_name_addr(v) for v in value_list]
