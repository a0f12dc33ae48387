"""The one error the SIP parser raises."""

from __future__ import annotations


class ParseError(ValueError):
    """Malformed SIP input.

    `reason` is short, printable and safe to send back as the reason phrase of a
    `<status> <reason>` response (status 400 unless the problem calls for another,
    e.g. 505 for an unknown SIP version).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        # Never let the peer's bytes put CR/LF or control characters in our reason phrase.
        safe = "".join(c if " " <= c < "\x7f" else "?" for c in reason)[:120]
        super().__init__(safe)
        self.reason = safe
        self.status = status

    def __repr__(self) -> str:
        return f"ParseError({self.reason!r}, status={self.status})"


class FramingError(ParseError):
    """A stream can no longer be framed (bad Content-Length, oversize): close the connection."""
