"""Flow tokens in our Record-Route URI: how any sbc instance routes in-dialog requests statelessly.

The Record-Route URI the sbc inserts carries where each side of the dialog is really reached
(the address its requests came from: NAT traversal), signed with the key all instances share
(as RFC 5626 flow tokens are). The INVITE's copy knows the caller; the copy in the 2xx sent to
the caller is rewritten (RFC 3261 section 16.7 step 4) to add the callee. An in-dialog request
then says by its own Route header where it goes, whichever instance receives it, without a
state lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from services.sip.transport import Address, Source


@dataclass(frozen=True)
class Hop:
    transport: str  # UDP or TCP
    address: Address
    # A UDP peer whose Contact names the very address its requests come from: no NAT in front
    # of it, so it takes datagrams from any port of ours (a worker may send from its own, and
    # the answers come straight back to that worker).
    open: bool = False

    def encode(self) -> str:
        raw = f"{self.transport}|{self.address[0]}|{self.address[1]}" + ("|o" if self.open else "")
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Hop | None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            transport, host, port, *flags = raw.split("|")
            if flags not in ([], ["o"]):
                return None
            return cls(transport, (host, int(port)), open=bool(flags))
        except (ValueError, UnicodeDecodeError):
            return None

    @classmethod
    def of(cls, source: Source, contact: Address | None = None) -> Hop:
        """The peer a request came from; `contact`: where its Contact header says it is."""
        return cls(source.transport, source.remote,
                   open=source.transport == "UDP" and contact == source.remote)

    def source(self, local: Address = ("", 0)) -> Source:
        """As a peer to send to; `local` picks our UDP socket to send from."""
        return Source(self.transport, self.address, local if self.transport == "UDP" else ("", 0))


@dataclass(frozen=True)
class FlowToken:
    """What our Record-Route remembers of a dialog: both sides' flows and its media session."""

    caller: Hop
    callee: Hop | None = None
    media: str = ""  # media relay session id, "" when the call is not anchored


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, ";".join(parts).encode(), hashlib.sha256).hexdigest()[:16]


_MEDIA_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def record_route_params(
    key: bytes, caller: Hop, callee: Hop | None = None, media: str = ""
) -> str:
    """The `;c=...;e=...;m=...;s=...` parameters of our Record-Route URI."""
    if not set(media) <= _MEDIA_ID_CHARS:
        raise ValueError(f"media session id {media!r} does not fit in a URI parameter")
    c = caller.encode()
    e = callee.encode() if callee else ""
    out = f";c={c}"
    if e:
        out += f";e={e}"
    if media:
        out += f";m={media}"
    return out + f";s={_mac(key, c, e, media)}"


def read_route_params(key: bytes, params: dict[str, str | None]) -> FlowToken | None:
    """The token in our Route URI's parameters; None when absent or forged."""
    c, e, s = params.get("c") or "", params.get("e") or "", params.get("s") or ""
    media = params.get("m") or ""
    if not c or not hmac.compare_digest(s, _mac(key, c, e, media)):
        return None
    caller = Hop.decode(c)
    callee = Hop.decode(e) if e else None
    if caller is None or (e and callee is None):
        return None
    return FlowToken(caller, callee, media)
