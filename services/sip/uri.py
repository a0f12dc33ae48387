"""SIP, SIPS and tel URIs (RFC 3261 section 19.1 and 25, RFC 3966), other schemes kept opaque."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from services.sip.errors import ParseError
from services.sip.grammar import Params, check_escapes, memoized, render_params, unescape

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3261: user = 1*( unreserved / escaped / user-unreserved )
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_PASSWORD_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-_.]*[A-Za-z0-9.])?")
_PARAMCHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+")
_HEADERCHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]*")
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW%]+")
_OPAQUE_BAD = frozenset(' \t\r\n<>"')


@dataclass(frozen=True, eq=False)
class URI:
    """A parsed URI. `raw` is the text it was parsed from; str() gives it back unchanged."""

    scheme: str  # lower-case
    user: str | None = None  # as written (escaped); see user_unescaped
    password: str | None = None
    host: str = ""  # as written, IPv6 with its brackets
    port: int | None = None
    params: Params = field(default_factory=dict)  # names lower-case, values as written
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None  # the part after "scheme:" for schemes we do not interpret
    raw: str = ""

    def __str__(self) -> str:
        return self.raw or self.render()

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    @property
    def host_lower(self) -> str:
        return self.host.lower()

    def param(self, name: str) -> str | None:
        value = self.params.get(self._param_key(name))
        return None if value is None else unescape(value)

    def has_param(self, name: str) -> bool:
        return self._param_key(name) in self.params

    def _param_key(self, name: str) -> str:
        """The key of parameter `name` in self.params, whose names may be %-escaped
        (`;%6C%72` is `;lr`, RFC 3261 section 19.1.4)."""
        key = name.lower()
        if key not in self.params:
            for k in self.params:
                if "%" in k and unescape(k).lower() == key:
                    return k
        return key

    def render(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{render_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(render_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def replace(self, **changes: object) -> URI:
        """A copy with fields changed, rendered afresh."""
        new = replace(self, raw="", **changes)  # type: ignore[arg-type]
        return replace(new, raw=new.render())

    def equals(self, other: URI) -> bool:
        """URI comparison (RFC 3261 section 19.1.4), good enough for routing and matching."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if self.user_unescaped != other.user_unescaped:
            return False
        if (self.password is None) != (other.password is None) or (
            self.password is not None and unescape(self.password) != unescape(other.password or "")
        ):
            return False
        if self.host_lower != other.host_lower or self.port != other.port:
            return False
        for name in ("user", "ttl", "method", "maddr", "transport"):
            a, b = self.param(name), other.param(name)
            if (a or "").lower() != (b or "").lower():
                return False
        names = {unescape(n).lower() for n in self.params}
        common = names & {unescape(n).lower() for n in other.params}
        if not all((self.param(n) or "").lower() == (other.param(n) or "").lower() for n in common):
            return False
        # Header components are never ignored: same set, escapes resolved, any order.
        return sorted((unescape(k).lower(), unescape(v)) for k, v in self.headers) == sorted(
            (unescape(k).lower(), unescape(v)) for k, v in other.headers
        )


@memoized()
def parse_uri(text: str) -> URI:
    scheme, sep, rest = text.partition(":")
    if not sep or _SCHEME_RE.fullmatch(scheme) is None:
        raise ParseError("bad URI scheme")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        return _parse_tel(rest, text)
    if not rest or any(c in _OPAQUE_BAD or c < " " for c in rest):
        raise ParseError("bad URI")
    return URI(scheme=scheme, opaque=rest, raw=text)


def _parse_sip(scheme: str, rest: str, text: str) -> URI:
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        if "@" in rest:
            raise ParseError("bad URI: more than one '@'")
        user, colon, pw = userinfo.partition(":")
        if _USER_RE.fullmatch(user) is None:
            raise ParseError("bad URI user part")
        check_escapes(user, "URI user")
        if colon:
            if _PASSWORD_RE.fullmatch(pw) is None:
                raise ParseError("bad URI password")
            check_escapes(pw, "URI password")
            password = pw
    # hostport ends where parameters or headers begin
    cut = len(rest)
    for sep in (";", "?"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    hostport, tail = rest[:cut], rest[cut:]
    host, port = parse_hostport(hostport, "URI")
    params: Params = {}
    headers: tuple[tuple[str, str], ...] = ()
    param_text, qmark, header_text = tail.partition("?")
    if param_text:
        params = _parse_uri_params(param_text[1:], "URI parameter")
    if qmark:
        pairs = []
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq or _HEADERCHARS_RE.fullmatch(name + value) is None:
                raise ParseError("bad URI header")
            check_escapes(item, "URI header")
            pairs.append((name, value))
        headers = tuple(pairs)
    return URI(scheme, user, password, host, port, params, headers, None, text)


def parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """`host [":" port]`; IPv6 references keep their brackets."""
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ParseError(f"bad IPv6 reference in {what}")
        host = text[: close + 1]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ParseError(f"bad IPv6 reference in {what}") from None
        after = text[close + 1 :]
        if after:
            if not after.startswith(":"):
                raise ParseError(f"bad host in {what}")
            port_text = after[1:]
    else:
        host, colon, after = text.partition(":")
        if colon:
            port_text = after
        if _HOSTNAME_RE.fullmatch(host) is None:
            raise ParseError(f"bad host in {what}")
    port: int | None = None
    if port_text is not None:
        if (
            not port_text.isdigit()
            or not port_text.isascii()
            or len(port_text) > 5
            or int(port_text) > 65535
        ):
            raise ParseError(f"bad port in {what}")
        port = int(port_text)
    return host, port


def _parse_tel(rest: str, text: str) -> URI:
    number, _, param_text = rest.partition(";")
    if _TEL_NUMBER_RE.fullmatch(number) is None:
        raise ParseError("bad tel URI")
    params = _parse_uri_params(param_text, "tel URI parameter") if param_text else {}
    return URI("tel", user=number, params=params, raw=text)


def _parse_uri_params(text: str, what: str) -> Params:
    """`name[=value]` items separated by ';' (the leading ';' already stripped)."""
    params: Params = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if _PARAMCHARS_RE.fullmatch(name) is None or (
            eq and _PARAMCHARS_RE.fullmatch(value) is None
        ):
            raise ParseError(f"bad {what}")
        check_escapes(item, what)
        params[name.lower()] = value if eq else None
    return params
