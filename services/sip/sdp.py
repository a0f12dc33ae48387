"""SDP bodies (RFC 8866) for media anchoring: parse, inspect, rewrite for the relay, serialize.

The sbc never terminates media. For every offer or answer (RFC 3264) it reads the streams,
asks the media relay for ports (proto/volte/v1/media.proto: MediaStream in, RelayStream
out) and rewrites the body so that both sides send to the relay. So this module:

- keeps every line as received: unknown lines and attributes go back out byte for byte, and
  `serialize()` of an untouched description is its input (with CRLF line ends);
- parses strictly only what anchoring depends on: v=, o=, s=, t=, c= (IP literals only: a
  host name cannot be relayed), m=, and the attributes rtpmap, rtcp (RFC 3605), rtcp-mux,
  the direction attributes and ICE (RFC 8839). Malformed input raises
  `ParseError(reason, status=488)`, so the caller answers 488 Not Acceptable Here;
- rewrites with pure functions: `anchor()` points every stream at its relay endpoint and
  `continue_origin()` numbers the result for the leg it is sent on.

Every line must end with LF or CRLF, the last one included: an SDP that stops mid-line was
cut off somewhere, and forwarding half an attribute would be worse than a 488.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

from services.sip.errors import ParseError

NOT_ACCEPTABLE_HERE = 488
ENCODING = "utf-8"  # RFC 8866 section 5: the default charset; a=charset is not honoured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SdpLimits:
    """Bounds on untrusted input: a body beyond them is refused before it costs much."""

    max_size: int = 65535  # a SIP message carrying the body cannot be larger
    max_lines: int = 2048
    max_line_length: int = 8192
    max_media: int = 64


DEFAULT_SDP_LIMITS = SdpLimits()


def _error(reason: str) -> ParseError:
    return ParseError(reason, status=NOT_ACCEPTABLE_HERE)


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


# -- grammar ----------------------------------------------------------------------------------
# RFC 8866 section 9 token-char. Digits are spelled [0-9]: \d would accept other scripts' digits.
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
_PROTO_RE = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")
_MEDIA_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_PAYLOAD_TYPE_RE = re.compile(r"[0-9]{1,3}")
_NUMBER_RE = re.compile(r"[0-9]{1,20}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_RTPMAP_RE = re.compile(rf"([0-9]{{1,3}}) +({_TOKEN})/([0-9]{{1,10}})(?:/([0-9]{{1,3}}))? *")
_MULTICAST_SUFFIX = {
    "IP4": re.compile(r"/[0-9]{1,3}(?:/[0-9]{1,5})?"),
    "IP6": re.compile(r"/[0-9]{1,5}"),
}

# Line types that only exist at session level: one inside a media section means two
# descriptions were glued together or the body is garbage.
_SESSION_ONLY = frozenset("vosuepztr")
DIRECTION_ATTRIBUTES = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))
# The relay is not ICE-aware (it latches), so all of these are stripped when anchoring.
ICE_ATTRIBUTES = frozenset(
    (
        "candidate",
        "remote-candidates",
        "end-of-candidates",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "ice-pacing",
    )
)


def _fields(value: str) -> list[str]:
    # RFC 8866 separates fields with one SP; runs of spaces (and trailing ones, which some
    # UAs emit on m= lines) are tolerated. Tabs are not separators.
    return [f for f in value.split(" ") if f]


class Direction(StrEnum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


# RFC 2543 hold (c=0.0.0.0) takes away the holder's receive side only.
_WITHOUT_RECEIVE = {
    Direction.SENDRECV: Direction.SENDONLY,
    Direction.RECVONLY: Direction.INACTIVE,
    Direction.SENDONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}


# -- parsed values ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SdpLine:
    """One `<type>=<value>` line, value exactly as received (no line end)."""

    kind: str
    value: str

    @property
    def attribute_name(self) -> str | None:
        """`rtpmap` for `a=rtpmap:96 AMR-WB/16000`, `rtcp-mux` for `a=rtcp-mux`; None if not a=."""
        return self.value.partition(":")[0] if self.kind == "a" else None

    @property
    def attribute_value(self) -> str:
        """Text after the first ':' of an a= line; "" for a flag attribute."""
        return self.value.partition(":")[2]

    def render(self) -> str:
        return f"{self.kind}={self.value}"


@dataclass(frozen=True)
class Origin:
    """The o= line: `<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`."""

    username: str
    session_id: str
    session_version: int
    network_type: str
    address_type: str
    address: str

    def render(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.network_type} {self.address_type} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    """A c= line (or the address part of a=rtcp). `suffix` keeps a multicast /ttl[/count]."""

    address_type: str  # "IP4" or "IP6"
    address: str
    suffix: str = ""

    @classmethod
    def for_ip(cls, ip: str) -> Connection:
        addr = ipaddress.ip_address(ip)
        return cls("IP4" if addr.version == 4 else "IP6", str(addr))

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def is_unspecified(self) -> bool:
        """0.0.0.0 (or ::): the RFC 2543 hold form, or the trickle-ICE placeholder."""
        return self.ip.is_unspecified

    def same_place(self, other: Connection) -> bool:
        """Same address, however it is spelled (2001:DB8::1 == 2001:db8:0::1)."""
        return (self.address_type, self.ip, self.suffix) == (
            other.address_type,
            other.ip,
            other.suffix,
        )

    def render(self) -> str:
        return f"IN {self.address_type} {self.address}{self.suffix}"


@dataclass(frozen=True)
class MediaLine:
    """The m= line: `<media> <port>[/<count>] <proto> <fmt> ...`."""

    media: str
    port: int
    port_count: int  # ports of a layered-encoding block; 1 without /<count>
    proto: str
    formats: tuple[str, ...]

    @property
    def is_rtp(self) -> bool:
        """RTP/AVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF...: formats are RTP payload types."""
        return "RTP" in self.proto.split("/")

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(int(f) for f in self.formats) if self.is_rtp else ()

    def render(self) -> str:
        port = str(self.port) if self.port_count == 1 else f"{self.port}/{self.port_count}"
        return " ".join((self.media, port, self.proto, *self.formats))


@dataclass(frozen=True)
class RtpMap:
    """a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>], or a static payload type's default."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


# RFC 3551 section 6 (G722 really is 8000: the RTP clock, not the 16 kHz sampling rate).
STATIC_PAYLOAD_TYPES: Mapping[int, RtpMap] = MappingProxyType(
    {
        pt: RtpMap(pt, name, rate, channels)
        for pt, name, rate, channels in (
            (0, "PCMU", 8000, 1),
            (3, "GSM", 8000, 1),
            (4, "G723", 8000, 1),
            (5, "DVI4", 8000, 1),
            (6, "DVI4", 16000, 1),
            (7, "LPC", 8000, 1),
            (8, "PCMA", 8000, 1),
            (9, "G722", 8000, 1),
            (10, "L16", 44100, 2),
            (11, "L16", 44100, 1),
            (12, "QCELP", 8000, 1),
            (13, "CN", 8000, 1),
            (14, "MPA", 90000, None),
            (15, "G728", 8000, 1),
            (16, "DVI4", 11025, 1),
            (17, "DVI4", 22050, 1),
            (18, "G729", 8000, 1),
            (25, "CelB", 90000, None),
            (26, "JPEG", 90000, None),
            (28, "nv", 90000, None),
            (31, "H261", 90000, None),
            (32, "MPV", 90000, None),
            (33, "MP2T", 90000, None),
            (34, "H263", 90000, None),
        )
    }
)


@dataclass(frozen=True)
class Rtcp:
    """a=rtcp (RFC 3605): the RTCP port, and an address when it is not the c= one."""

    port: int
    connection: Connection | None = None

    def render(self) -> str:
        where = "" if self.connection is None else " " + self.connection.render()
        return f"rtcp:{self.port}{where}"


@dataclass(frozen=True)
class Ice:
    """ICE attributes (RFC 8839) in effect for one media section; candidates as written."""

    ufrag: str | None = None
    pwd: str | None = None
    options: tuple[str, ...] = ()
    lite: bool = False
    candidates: tuple[str, ...] = ()
    remote_candidates: tuple[str, ...] = ()
    end_of_candidates: bool = False

    @property
    def in_use(self) -> bool:
        return self.ufrag is not None or bool(self.candidates)


def _attribute_values(lines: Iterable[SdpLine], name: str) -> tuple[str, ...]:
    return tuple(line.attribute_value for line in lines if line.attribute_name == name)


def _has_attribute(lines: Iterable[SdpLine], name: str) -> bool:
    return any(line.attribute_name == name for line in lines)


def _direction(lines: Iterable[SdpLine]) -> Direction | None:
    for line in lines:
        name = line.attribute_name
        if name in DIRECTION_ATTRIBUTES:
            return Direction(name)
    return None


def _ice(lines: Sequence[SdpLine]) -> Ice:
    def single(name: str) -> str | None:
        values = _attribute_values(lines, name)
        return values[0] if values else None

    options = _attribute_values(lines, "ice-options")
    return Ice(
        ufrag=single("ice-ufrag"),
        pwd=single("ice-pwd"),
        options=tuple(opt for value in options for opt in _fields(value)),
        lite=_has_attribute(lines, "ice-lite"),
        candidates=_attribute_values(lines, "candidate"),
        remote_candidates=_attribute_values(lines, "remote-candidates"),
        end_of_candidates=_has_attribute(lines, "end-of-candidates"),
    )


# -- the description --------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaSection:
    """One m= line and the lines up to the next m=. Accessors give this level only."""

    lines: tuple[SdpLine, ...]  # lines[0] is the m= line

    @cached_property
    def media_line(self) -> MediaLine:
        return _parse_media_line(self.lines[0].value)

    @property
    def media(self) -> str:
        return self.media_line.media

    @property
    def port(self) -> int:
        return self.media_line.port

    @property
    def port_count(self) -> int:
        return self.media_line.port_count

    @property
    def proto(self) -> str:
        return self.media_line.proto

    @property
    def formats(self) -> tuple[str, ...]:
        return self.media_line.formats

    @property
    def payload_types(self) -> tuple[int, ...]:
        return self.media_line.payload_types

    @property
    def disabled(self) -> bool:
        """Port 0: the stream is rejected or removed (RFC 3264 section 8.2)."""
        return self.media_line.port == 0

    @property
    def connection(self) -> Connection | None:
        """This section's own c= (the first one, if layered multicast gives several)."""
        for line in self.lines:
            if line.kind == "c":
                return _parse_connection(line.value)
        return None

    @cached_property
    def rtpmap(self) -> Mapping[int, RtpMap]:
        """Explicit a=rtpmap lines by payload type."""
        maps = (_parse_rtpmap(v) for v in _attribute_values(self.lines, "rtpmap"))
        return MappingProxyType({m.payload_type: m for m in maps})

    @property
    def codecs(self) -> tuple[RtpMap, ...]:
        """Payload types of the m= line, in order, with a=rtpmap or the static default.

        A dynamic payload type without a=rtpmap has no known clock rate and is left out.
        """
        known = (self.rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt) for pt in self.payload_types)
        return tuple(codec for codec in known if codec is not None)

    def attributes(self, name: str) -> tuple[str, ...]:
        """Values of every a=<name>[:<value>] line of this section, in order."""
        return _attribute_values(self.lines, name)

    def has_attribute(self, name: str) -> bool:
        return _has_attribute(self.lines, name)

    @property
    def direction(self) -> Direction | None:
        """This section's own direction attribute, if any."""
        return _direction(self.lines)

    @property
    def rtcp(self) -> Rtcp | None:
        values = self.attributes("rtcp")
        return _parse_rtcp(values[0]) if values else None

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @property
    def ice(self) -> Ice:
        return _ice(self.lines)


@dataclass(frozen=True)
class SessionDescription:
    """A parsed SDP body: the session-level lines, then one MediaSection per m= line.

    Build one with `parse_sdp`; `anchor` and `continue_origin` keep it valid. Equality is
    line by line, so `parse_sdp(d.serialize()) == d`.
    """

    session_lines: tuple[SdpLine, ...]
    media_sections: tuple[MediaSection, ...] = ()

    @cached_property
    def origin(self) -> Origin:
        for line in self.session_lines:
            if line.kind == "o":
                return _parse_origin(line.value)
        raise _error("missing o= line")

    @property
    def connection(self) -> Connection | None:
        """The session-level c=, the default for media sections without their own."""
        for line in self.session_lines:
            if line.kind == "c":
                return _parse_connection(line.value)
        return None

    @property
    def direction(self) -> Direction | None:
        """The session-level direction attribute, if any."""
        return _direction(self.session_lines)

    @property
    def ice(self) -> Ice:
        """Session-level ICE attributes (ice-lite lives only here)."""
        return _ice(self.session_lines)

    def attributes(self, name: str) -> tuple[str, ...]:
        """Values of the session-level a=<name> lines."""
        return _attribute_values(self.session_lines, name)

    def connection_for(self, index: int) -> Connection | None:
        """Where stream `index` receives: its own c= or else the session one."""
        return self.media_sections[index].connection or self.connection

    def direction_for(self, index: int) -> Direction:
        """Effective direction of stream `index` as its sender means it.

        Media level overrides session level; the default is sendrecv (RFC 3264 section 5.1).
        An unspecified c= address (0.0.0.0) is the RFC 2543 hold: the sender gives no
        address to receive on, so it can at most send. With ICE it is instead the
        placeholder of an offer without candidates yet (RFC 8840), not a hold.
        """
        section = self.media_sections[index]
        declared = section.direction or self.direction or Direction.SENDRECV
        conn = self.connection_for(index)
        if conn is not None and conn.is_unspecified and not self.ice_for(index).in_use:
            return _WITHOUT_RECEIVE[declared]
        return declared

    def ice_for(self, index: int) -> Ice:
        """ICE attributes of stream `index`, media-level ufrag/pwd/options winning."""
        session, media = self.ice, self.media_sections[index].ice
        return Ice(
            ufrag=media.ufrag if media.ufrag is not None else session.ufrag,
            pwd=media.pwd if media.pwd is not None else session.pwd,
            options=media.options or session.options,
            lite=session.lite,
            candidates=media.candidates,
            remote_candidates=media.remote_candidates,
            end_of_candidates=media.end_of_candidates or session.end_of_candidates,
        )

    def lines(self) -> Iterator[SdpLine]:
        yield from self.session_lines
        for section in self.media_sections:
            yield from section.lines

    def serialize(self) -> bytes:
        return "".join(line.render() + "\r\n" for line in self.lines()).encode(ENCODING)

    __bytes__ = serialize


# -- parsing ----------------------------------------------------------------------------------
def parse_sdp(body: bytes, limits: SdpLimits = DEFAULT_SDP_LIMITS) -> SessionDescription:
    """Parse an SDP body; raise ParseError(reason, status=488) if it is malformed."""
    if len(body) > limits.max_size:
        raise _error(f"SDP body larger than {limits.max_size} bytes")
    try:
        text = bytes(body).decode(ENCODING)
    except UnicodeDecodeError:
        raise _error("SDP body is not UTF-8") from None
    if not text:
        raise _error("empty SDP body")
    if not text.endswith("\n"):
        raise _error("SDP truncated: last line has no line end")
    raw_lines = text[:-1].split("\n")
    if len(raw_lines) > limits.max_lines:
        raise _error(f"SDP has more than {limits.max_lines} lines")

    session: list[SdpLine] = []
    sections: list[list[SdpLine]] = []
    first_line_numbers: list[int] = []
    for number, raw in enumerate(raw_lines, start=1):
        line = _split_line(raw, number, limits)
        if line.kind == "m":
            if len(sections) == limits.max_media:
                raise _error(f"SDP has more than {limits.max_media} m= lines")
            sections.append([line])
            first_line_numbers.append(number)
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)

    has_session_connection = _check_session(session)
    for lines, first in zip(sections, first_line_numbers, strict=True):
        _check_media(lines, first, has_session_connection)
    return SessionDescription(tuple(session), tuple(MediaSection(tuple(s)) for s in sections))


def _split_line(raw: str, number: int, limits: SdpLimits) -> SdpLine:
    if raw.endswith("\r"):
        raw = raw[:-1]
    if len(raw) > limits.max_line_length:
        raise _error(f"line {number} longer than {limits.max_line_length} characters")
    if "\r" in raw or "\x00" in raw:
        raise _error(f"stray CR or NUL in line {number}")
    if not raw:
        raise _error(f"empty line {number}")
    if len(raw) < 2 or raw[1] != "=" or raw[0] not in string.ascii_letters:
        raise _error(f"line {number} is not <type>=<value>: {_excerpt(raw)}")
    return SdpLine(raw[0], raw[2:])


def _check_session(lines: list[SdpLine]) -> bool:
    """Validate the session-level lines; return whether there is a session c=."""
    if not lines or lines[0] != SdpLine("v", "0"):
        raise _error("SDP must start with v=0")
    if len(lines) < 2 or lines[1].kind != "o":
        raise _error("o= must follow v= (line 2)")
    seen = {"s": 0, "c": 0, "t": 0}
    directions: set[str] = set()
    for number, line in enumerate(lines, start=1):
        try:
            if line.kind in ("v", "o") and number > 2:
                raise _error(f"more than one {line.kind}= line")
            if line.kind in seen:
                seen[line.kind] += 1
            if line.kind == "o":
                _parse_origin(line.value)
            elif line.kind == "s" and seen["s"] > 1:
                raise _error("more than one s= line")
            elif line.kind == "c":
                if seen["c"] > 1:
                    raise _error("more than one session-level c= line")
                _parse_connection(line.value)
            elif line.kind == "t":
                _check_timing(line.value)
            elif line.kind == "a":
                _check_attribute(line, directions)
        except ParseError as exc:
            raise _error(f"{exc.reason} (line {number})") from None
    if seen["s"] == 0:
        raise _error("missing s= line")
    if seen["t"] == 0:
        raise _error("missing t= line")
    return seen["c"] > 0


def _check_media(lines: list[SdpLine], first: int, has_session_connection: bool) -> None:
    try:
        media_line = _parse_media_line(lines[0].value)
    except ParseError as exc:
        raise _error(f"{exc.reason} (line {first})") from None
    has_connection = False
    has_rtcp = False
    payload_types: set[int] = set()
    directions: set[str] = set()
    for offset, line in enumerate(lines[1:], start=1):
        try:
            if line.kind in _SESSION_ONLY:
                raise _error(f"{line.kind}= line inside a media section")
            elif line.kind == "c":
                _parse_connection(line.value)
                has_connection = True
            elif line.kind == "a":
                name = _check_attribute(line, directions)
                if name == "rtpmap":
                    pt = _parse_rtpmap(line.attribute_value).payload_type
                    if pt in payload_types:
                        raise _error(f"two a=rtpmap lines for payload type {pt}")
                    payload_types.add(pt)
                elif name == "rtcp":
                    if has_rtcp:
                        raise _error("more than one a=rtcp line")
                    _parse_rtcp(line.attribute_value)
                    has_rtcp = True
        except ParseError as exc:
            raise _error(f"{exc.reason} (line {first + offset})") from None
    if media_line.port != 0 and not (has_connection or has_session_connection):
        raise _error(f"m= line has no connection address (line {first})")
    if (
        media_line.is_rtp
        and media_line.port == 65535
        and not (has_rtcp or _has_attribute(lines, "rtcp-mux"))
    ):
        raise _error(f"RTP port 65535 leaves no port for RTCP (line {first})")


def _check_attribute(line: SdpLine, directions: set[str]) -> str:
    name = line.attribute_name or ""
    if not name:
        raise _error("a= line without attribute name")
    if name in DIRECTION_ATTRIBUTES:
        directions.add(name)
        if len(directions) > 1:
            raise _error("conflicting direction attributes: " + ", ".join(sorted(directions)))
    return name


def _check_timing(value: str) -> None:
    fields = _fields(value)
    if len(fields) != 2 or not all(_NUMBER_RE.fullmatch(f) for f in fields):
        raise _error(f"bad t= line: {_excerpt(value)}")


def _parse_origin(value: str) -> Origin:
    fields = _fields(value)
    if len(fields) != 6:
        raise _error("o= needs 6 fields")
    username, session_id, version, network_type, address_type, address = fields
    if _NUMBER_RE.fullmatch(version) is None:
        raise _error(f"bad o= session version: {_excerpt(version)}")
    return Origin(username, session_id, int(version), network_type, address_type, address)


def _parse_connection(value: str, what: str = "c=") -> Connection:
    """`IN IP4 <address>[/ttl[/count]]` or `IN IP6 <address>[/count]`, IP literals only."""
    fields = _fields(value)
    if len(fields) != 3:
        raise _error(f"{what} needs <nettype> <addrtype> <address>")
    network_type, address_type, where = fields
    if network_type != "IN":
        raise _error(f"{what} network type is not IN: {_excerpt(network_type)}")
    if address_type not in ("IP4", "IP6"):
        raise _error(f"{what} address type is not IP4 or IP6: {_excerpt(address_type)}")
    slash = where.find("/")
    address, suffix = (where, "") if slash < 0 else (where[:slash], where[slash:])
    if suffix and _MULTICAST_SUFFIX[address_type].fullmatch(suffix) is None:
        raise _error(f"bad {what} multicast suffix: {_excerpt(suffix)}")
    _check_ip(address, address_type, what)
    return Connection(address_type, address, suffix)


def _check_ip(address: str, address_type: str, what: str) -> None:
    try:
        if address_type == "IP4":
            ipaddress.IPv4Address(address)
        elif "%" in address:  # ipaddress accepts zone ids; SDP has no syntax for them
            raise ValueError(address)
        else:
            ipaddress.IPv6Address(address)
    except ValueError:
        raise _error(f"{what} address is not {address_type}: {_excerpt(address)}") from None


def _parse_media_line(value: str) -> MediaLine:
    fields = _fields(value)
    if len(fields) < 3:
        raise _error("m= needs <media> <port> <proto> <fmt>...")
    media, port_text, proto, *formats = fields
    if _TOKEN_RE.fullmatch(media) is None:
        raise _error(f"bad m= media type: {_excerpt(media)}")
    m = _MEDIA_PORT_RE.fullmatch(port_text)
    port = int(m.group(1)) if m else -1
    count = int(m.group(2)) if m and m.group(2) else 1
    if not (0 <= port <= 65535 and 1 <= count <= 65535):
        raise _error(f"bad m= port: {_excerpt(port_text)}")
    if _PROTO_RE.fullmatch(proto) is None:
        raise _error(f"bad m= transport protocol: {_excerpt(proto)}")
    # RFC 3264 keeps a format on rejected streams too, but some UAs drop it; port 0 is
    # never relayed, so that is tolerated.
    if not formats and port != 0:
        raise _error("m= line without formats")
    line = MediaLine(media, port, count, proto, tuple(formats))
    for fmt in formats:
        if _TOKEN_RE.fullmatch(fmt) is None:
            raise _error(f"bad m= format: {_excerpt(fmt)}")
        if line.is_rtp and (_PAYLOAD_TYPE_RE.fullmatch(fmt) is None or int(fmt) > 127):
            raise _error(f"bad RTP payload type: {_excerpt(fmt)}")
    return line


def _parse_rtpmap(value: str) -> RtpMap:
    m = _RTPMAP_RE.fullmatch(value)
    if m is None:
        raise _error(f"bad a=rtpmap: {_excerpt(value)}")
    pt, encoding, clock_rate, channels = m.groups()
    if int(pt) > 127 or int(clock_rate) == 0:
        raise _error(f"bad a=rtpmap: {_excerpt(value)}")
    return RtpMap(int(pt), encoding, int(clock_rate), int(channels) if channels else None)


def _parse_rtcp(value: str) -> Rtcp:
    fields = _fields(value)
    if len(fields) not in (1, 4) or _PORT_RE.fullmatch(fields[0]) is None:
        raise _error(f"bad a=rtcp: {_excerpt(value)}")
    port = int(fields[0])
    if port > 65535:
        raise _error(f"bad a=rtcp port: {_excerpt(fields[0])}")
    if len(fields) == 1:
        return Rtcp(port)
    connection = _parse_connection(" ".join(fields[1:]), "a=rtcp")
    if connection.suffix:
        raise _error("a=rtcp address with a multicast suffix")
    return Rtcp(port, connection)


# -- what the relay needs ---------------------------------------------------------------------
@dataclass(frozen=True)
class TransportAddress:
    """An IP literal (no brackets) and a port, like volte.v1.SocketAddress."""

    ip: str
    port: int


@dataclass(frozen=True)
class Stream:
    """One m= line reduced to what the relay needs (volte.v1.MediaStream, plus codecs)."""

    index: int  # position of the m= line, 0-based
    media: str
    rtp: TransportAddress  # ip is "" for a disabled stream without any c=
    rtcp: TransportAddress  # a=rtcp, else RTP port + 1; equal to rtp with a=rtcp-mux
    rtcp_mux: bool
    payload_types: tuple[int, ...]
    codecs: tuple[RtpMap, ...]  # payload types with a known clock rate, in m= order
    disabled: bool
    direction: Direction

    @property
    def clock_rates(self) -> dict[int, int]:
        return {codec.payload_type: codec.clock_rate for codec in self.codecs}


def streams(desc: SessionDescription) -> tuple[Stream, ...]:
    return tuple(_stream(desc, index) for index in range(len(desc.media_sections)))


def _stream(desc: SessionDescription, index: int) -> Stream:
    section = desc.media_sections[index]
    conn = desc.connection_for(index)
    rtp = TransportAddress(conn.address if conn else "", section.port)
    rtcp_attr = section.rtcp
    if section.rtcp_mux:
        rtcp = rtp
    elif rtcp_attr is not None:
        where = rtcp_attr.connection
        rtcp = TransportAddress(where.address if where else rtp.ip, rtcp_attr.port)
    else:
        rtcp = TransportAddress(rtp.ip, rtp.port + 1 if rtp.port else 0)
    return Stream(
        index=index,
        media=section.media,
        rtp=rtp,
        rtcp=rtcp,
        rtcp_mux=section.rtcp_mux,
        payload_types=section.payload_types,
        codecs=section.codecs,
        disabled=section.disabled,
        direction=desc.direction_for(index),
    )


def is_hold(desc: SessionDescription) -> bool:
    """True when every enabled stream is sendonly or inactive (a=sendonly/inactive or c=0.0.0.0).

    recvonly is not a hold: it is what the held side answers. No enabled stream, no hold.
    """
    enabled = [index for index, s in enumerate(desc.media_sections) if not s.disabled]
    held = (Direction.SENDONLY, Direction.INACTIVE)
    return bool(enabled) and all(desc.direction_for(index) in held for index in enabled)


# -- anchoring --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelayEndpoint:
    """Relay ports for m= line `index` (volte.v1.RelayStream). rtcp == rtp means rtcp-mux."""

    index: int
    rtp: TransportAddress
    rtcp: TransportAddress

    def __post_init__(self) -> None:
        # A bad relay answer is our side's bug: fail loudly rather than emit broken SDP.
        for what, addr in (("rtp", self.rtp), ("rtcp", self.rtcp)):
            ipaddress.ip_address(addr.ip)  # ValueError if not an IP literal
            if "%" in addr.ip:
                raise ValueError(f"relay {what} address has a zone id: {addr.ip}")
            if not 1 <= addr.port <= 65535:
                raise ValueError(f"relay {what} port out of range: {addr.port}")

    @property
    def rtcp_mux(self) -> bool:
        return (ipaddress.ip_address(self.rtcp.ip), self.rtcp.port) == (
            ipaddress.ip_address(self.rtp.ip),
            self.rtp.port,
        )


def anchor(desc: SessionDescription, relays: Iterable[RelayEndpoint]) -> SessionDescription:
    """Point every enabled stream at its relay endpoint, for the SDP sent to the other side.

    - m= port: the relay's RTP port (a /<count> is dropped: the relay gives one port pair).
    - c=: a media section with its own c= gets the relay address there (extra layered c=
      lines are dropped). The session c=, if any, gets the relay address of the first
      enabled stream that relies on it (else of the first enabled stream, so the peer's
      address never leaks); a stream relying on it whose relay address differs (another
      relay address, IPv4 next to IPv6) gets its own c= after m= (and i=).
    - An RFC 2543 hold (c=0.0.0.0 without ICE) keeps its 0.0.0.0: the other side must still
      see the hold. Its port and RTCP are rewritten all the same.
    - a=rtcp-mux is present exactly when the relay muxes (rtcp == rtp); then a=rtcp goes.
      Otherwise an existing a=rtcp is rewritten to the relay's RTCP, and one is added only
      when RTP port + 1 on the c= address would be wrong (RFC 3605).
    - ICE attributes go (session and media level): the relay is not ICE-aware, it latches.
    - Direction attributes, unknown lines and disabled streams (port 0) are left untouched.
    - The o= version goes up by one if any other line changed, and only then: anchoring an
      already anchored description with the same relays returns it unchanged. For the
      version sequence of a dialog leg, see `continue_origin`.

    `relays` must cover every enabled stream; entries for disabled streams are ignored.
    Raises ValueError for a missing, duplicate or out-of-range relay index.
    """
    relay_for = _relays_by_index(desc, relays)
    enabled = [i for i, s in enumerate(desc.media_sections) if not s.disabled]
    missing = [i for i in enabled if i not in relay_for]
    if missing:
        raise ValueError(f"no relay endpoint for m= line(s) {missing}")
    targets = {i: _target_connection(desc, i, relay_for[i]) for i in enabled}
    session_target = _session_target(desc, targets)
    anchored = SessionDescription(
        _anchor_session(desc.session_lines, session_target),
        tuple(
            section
            if section.disabled
            else _anchor_section(section, relay_for[i], targets[i], session_target)
            for i, section in enumerate(desc.media_sections)
        ),
    )
    if anchored == desc:
        return desc
    return _with_origin(
        anchored, replace(desc.origin, session_version=desc.origin.session_version + 1)
    )


def continue_origin(
    previous: SessionDescription | None, desc: SessionDescription
) -> SessionDescription:
    """Number `desc` as the next SDP after `previous` sent on the same leg (RFC 3264 sec. 8).

    Within a session every SDP a side sends keeps the o= line of its first one except the
    version, which goes up by one exactly when anything else changed. The sbc's two legs
    are independent sequences (the UE's re-offer may be unchanged while the relay ports
    moved), so the sbc keeps the last SDP sent on each leg and passes it here.
    """
    if previous is None:
        return desc
    before = previous.origin
    unchanged = _without_origin(previous) == _without_origin(desc)
    version = before.session_version if unchanged else before.session_version + 1
    return _with_origin(desc, replace(before, session_version=version))


def _relays_by_index(
    desc: SessionDescription, relays: Iterable[RelayEndpoint]
) -> dict[int, RelayEndpoint]:
    by_index: dict[int, RelayEndpoint] = {}
    for relay in relays:
        if not 0 <= relay.index < len(desc.media_sections):
            raise ValueError(f"relay endpoint for m= line {relay.index}, which does not exist")
        if relay.index in by_index:
            raise ValueError(f"two relay endpoints for m= line {relay.index}")
        by_index[relay.index] = relay
    return by_index


def _target_connection(desc: SessionDescription, index: int, relay: RelayEndpoint) -> Connection:
    current = desc.connection_for(index)
    if current is not None and current.is_unspecified and not desc.ice_for(index).in_use:
        return current  # RFC 2543 hold: the marker must reach the other side
    return Connection.for_ip(relay.rtp.ip)


def _session_target(desc: SessionDescription, targets: dict[int, Connection]) -> Connection | None:
    if desc.connection is None or not targets:
        return desc.connection
    relying = [i for i in sorted(targets) if desc.media_sections[i].connection is None]
    return targets[relying[0] if relying else min(targets)]


def _connection_line(line: SdpLine, target: Connection) -> SdpLine:
    # Keep the line as written when it already says the same (idempotence, byte-exactness).
    if _parse_connection(line.value).same_place(target):
        return line
    return SdpLine("c", target.render())


def _is_ice(line: SdpLine) -> bool:
    return line.attribute_name in ICE_ATTRIBUTES


def _anchor_session(lines: tuple[SdpLine, ...], target: Connection | None) -> tuple[SdpLine, ...]:
    anchored: list[SdpLine] = []
    for line in lines:
        if _is_ice(line):
            continue
        if line.kind == "c" and target is not None:
            line = _connection_line(line, target)
        anchored.append(line)
    return tuple(anchored)


def _anchor_section(
    section: MediaSection,
    relay: RelayEndpoint,
    target: Connection,
    session_target: Connection | None,
) -> MediaSection:
    # a=rtcp is written relative to the relay's RTP address, also for a held stream whose
    # c= stays 0.0.0.0: the hold then covers RTCP too, as it did before anchoring.
    reference = Connection.for_ip(relay.rtp.ip)
    media_line = section.media_line
    moved = replace(media_line, port=relay.rtp.port, port_count=1)
    lines = [section.lines[0] if moved == media_line else SdpLine("m", moved.render())]
    has_connection = has_rtcp = has_mux = False
    for line in section.lines[1:]:
        name = line.attribute_name
        if line.kind == "c":
            if not has_connection:
                lines.append(_connection_line(line, target))
            has_connection = True
        elif _is_ice(line):
            continue
        elif name == "rtcp":
            if not relay.rtcp_mux:
                lines.append(_rtcp_line(line, relay, reference))
                has_rtcp = True
        elif name == "rtcp-mux":
            if relay.rtcp_mux:
                lines.append(line)
                has_mux = True
        else:
            lines.append(line)
    if not has_connection and (session_target is None or not session_target.same_place(target)):
        position = 1
        while position < len(lines) and lines[position].kind == "i":
            position += 1
        lines.insert(position, SdpLine("c", target.render()))
    if relay.rtcp_mux and not has_mux:
        lines.append(SdpLine("a", "rtcp-mux"))
    rtcp_ip = ipaddress.ip_address(relay.rtcp.ip)
    default_rtcp = relay.rtcp.port == relay.rtp.port + 1 and rtcp_ip == reference.ip
    if not relay.rtcp_mux and not has_rtcp and not default_rtcp:
        lines.append(SdpLine("a", _relay_rtcp(relay, reference).render()))
    return MediaSection(tuple(lines))


def _relay_rtcp(relay: RelayEndpoint, reference: Connection) -> Rtcp:
    where = Connection.for_ip(relay.rtcp.ip)
    return Rtcp(relay.rtcp.port, None if where.same_place(reference) else where)


def _rtcp_line(line: SdpLine, relay: RelayEndpoint, reference: Connection) -> SdpLine:
    old = _parse_rtcp(line.attribute_value)
    old_ip = (old.connection or reference).ip
    if (old.port, old_ip) == (relay.rtcp.port, ipaddress.ip_address(relay.rtcp.ip)):
        return line
    return SdpLine("a", _relay_rtcp(relay, reference).render())


def _without_origin(
    desc: SessionDescription,
) -> tuple[tuple[SdpLine, ...], tuple[MediaSection, ...]]:
    return tuple(line for line in desc.session_lines if line.kind != "o"), desc.media_sections


def _with_origin(desc: SessionDescription, origin: Origin) -> SessionDescription:
    if desc.origin == origin:
        return desc
    line = SdpLine("o", origin.render())
    session = tuple(line if old.kind == "o" else old for old in desc.session_lines)
    return replace(desc, session_lines=session)
