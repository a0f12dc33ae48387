"""Small RFC 3261 section 25 grammar helpers shared by the URI and header parsers.

Everything here works on already unfolded header values (str); errors are ParseError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from services.sip.errors import ParseError

T = TypeVar("T")

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(f"[{TOKEN_CHARS}]+")
WORD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+")
QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)

# One `;name[=value]` parameter with the LWS the grammar allows around `;` and `=`.
# A value is a token, a host (which may hold ':' and '[]') or a quoted string.
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{TOKEN_CHARS}]+)"
    r'(?:[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,"\s]+))?[ \t]*',
    re.DOTALL,
)

Params = dict[str, str | None]


def is_token(text: str) -> bool:
    return TOKEN_RE.fullmatch(text) is not None


def parse_params(text: str, pos: int = 0, what: str = "header") -> Params:
    """Parse `*( SEMI generic-param )` from `text[pos:]` to the end.

    Names are case-insensitive (stored lower-case); values are kept as written
    (a quoted-string keeps its quotes, so rendering gives back the same text).
    """
    params: Params = {}
    end = len(text)
    while pos < end:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise ParseError(f"bad {what} parameter")
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def render_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def quoted_string_end(text: str, start: int) -> int:
    """Index just past the quoted string that opens at text[start] == '"'."""
    m = QUOTED_RE.match(text, start)
    if m is None:
        raise ParseError("unterminated quoted string")
    return m.end()


def unquote(text: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved; tokens pass unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements.

    Commas inside quoted strings and inside `<...>` (a URI) do not split.
    """
    if "," not in value:
        return [value.strip(" \t")]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i = quoted_string_end(value, i)
            continue
        if c == "<":
            close = value.find(">", i)
            if close < 0:
                raise ParseError("unterminated <URI>")
            i = close + 1
            continue
        if c == ",":
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(" \t"))
    return parts


_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE_RE = re.compile(rb"%([0-9A-Fa-f]{2})")


def check_escapes(text: str, what: str) -> None:
    """Every '%' must start a %HH escape."""
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        raise ParseError(f"bad %-escape in {what}")


def unescape(text: str) -> str:
    """Resolve %HH escapes (as UTF-8 where they form it; other octets stay undecodable)."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    raw = _ESCAPE_RE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return raw.decode("utf-8", "surrogateescape")


def memoized(size: int = 4096) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Remembers a parser's results by the text parsed, forgetting all at `size` entries (the
    texts come from peers: bounded). For parsers of immutable values (frozen dataclasses whose
    params no one changes): the same URI or From header is parsed once, not in every message
    of every call. A text that does not parse raises each time."""

    def wrap(parse: Callable[[str], T]) -> Callable[[str], T]:
        cache: dict[str, T] = {}

        def cached(text: str) -> T:
            value = cache.get(text)
            if value is None:
                value = parse(text)
                if len(cache) >= size:
                    cache.clear()
                cache[text] = value
            return value

        cached.__doc__, cached.__name__ = parse.__doc__, parse.__name__
        return cached

    return wrap
