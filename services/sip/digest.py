"""HTTP Digest for SIP (RFC 3261 section 22, RFC 7616, RFC 8760): MD5 and SHA-256, qop=auth.

Pure functions for both sides: the server challenges and verifies, the client (loadgen's UEs,
tests) answers a challenge. Nonces are self-validating (a timestamp signed with a shared
secret), so any sbc instance can verify a nonce another instance issued; replay protection by
nonce-count needs the last count seen per nonce, which the caller keeps in the state store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass
from enum import Enum

from services.sip.errors import ParseError
from services.sip.grammar import quote, unquote

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _h(algorithm: str, text: str) -> str:
    try:
        fn = ALGORITHMS[algorithm.upper()]
    except KeyError:
        raise ParseError(f"unsupported digest algorithm {algorithm}") from None
    return fn(text.encode("utf-8", "surrogateescape")).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password): what a subscriber record stores instead of the password."""
    return _h(algorithm, f"{username}:{realm}:{password}")


def response_digest(
    ha1_hex: str,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1_hex}:{nonce}:{ha2}")


# --- parsing the header values --------------------------------------------------------------

_AUTH_PARAM_RE = re.compile(
    r'\s*([A-Za-z0-9\-._!%*+`\'~]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)', re.DOTALL
)


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """`scheme k=v, k="v"` of WWW-Authenticate / Authorization (not split like list headers)."""
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        raise ParseError("empty authentication header")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _AUTH_PARAM_RE.match(rest, pos)
        if m is None:
            raise ParseError("bad authentication parameter")
        params[m.group(1).lower()] = unquote(m.group(2))
        pos = m.end()
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str = "auth"
    opaque: str | None = None
    stale: bool = False

    def header_value(self) -> str:
        parts = [
            f"realm={quote(self.realm)}",
            f"nonce={quote(self.nonce)}",
            f"algorithm={self.algorithm}",
            f"qop={quote(self.qop)}",
        ]
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        return "Digest " + ", ".join(parts)

    @classmethod
    def parse(cls, value: str) -> Challenge:
        scheme, p = parse_auth_header(value)
        if scheme.lower() != "digest" or "realm" not in p or "nonce" not in p:
            raise ParseError("not a Digest challenge")
        qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
        return cls(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=p.get("algorithm", "MD5").upper(),
            qop="auth" if "auth" in qops else (qops[0] if qops else ""),
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
        )


@dataclass(frozen=True)
class Credentials:
    """The parameters of an Authorization / Proxy-Authorization header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str = ""
    cnonce: str = ""
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        scheme, p = parse_auth_header(value)
        if scheme.lower() != "digest":
            raise ParseError("unsupported authorization scheme")
        try:
            creds = cls(
                username=p["username"],
                realm=p["realm"],
                nonce=p["nonce"],
                uri=p["uri"],
                response=p["response"].lower(),
                algorithm=p.get("algorithm", "MD5").upper(),
                qop=p.get("qop"),
                nc=p.get("nc", ""),
                cnonce=p.get("cnonce", ""),
                opaque=p.get("opaque"),
            )
        except KeyError as missing:
            raise ParseError(f"Authorization without {missing.args[0]}") from None
        bad_nc = re.fullmatch(r"[0-9a-fA-F]{8}", creds.nc) is None
        if creds.qop is not None and (bad_nc or not creds.cnonce):
            raise ParseError("qop=auth needs nc and cnonce")
        return creds

    @property
    def nonce_count(self) -> int:
        return int(self.nc, 16) if self.nc else 0

    def header_value(self) -> str:
        parts = [
            f"username={quote(self.username)}",
            f"realm={quote(self.realm)}",
            f"nonce={quote(self.nonce)}",
            f"uri={quote(self.uri)}",
            f"response={quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={quote(self.cnonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        return "Digest " + ", ".join(parts)

    def matches(self, ha1_hex: str, method: str) -> bool:
        expected = response_digest(
            ha1_hex,
            self.algorithm,
            method,
            self.uri,
            self.nonce,
            qop=self.qop,
            nc=self.nc,
            cnonce=self.cnonce,
        )
        return hmac.compare_digest(expected, self.response)


def answer(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> Credentials:
    """The client side: credentials answering `challenge`."""
    key = ha1(username, challenge.realm, password, challenge.algorithm)
    qop = "auth" if challenge.qop == "auth" else None
    nc_text = f"{nc:08x}" if qop else ""
    cnonce = (cnonce or os.urandom(8).hex()) if qop else ""
    response = response_digest(
        key, challenge.algorithm, method, uri, challenge.nonce, qop=qop, nc=nc_text, cnonce=cnonce
    )
    return Credentials(
        username, challenge.realm, challenge.nonce, uri, response, challenge.algorithm,
        qop, nc_text, cnonce, challenge.opaque,
    )


# --- nonces -----------------------------------------------------------------------------------


class NonceState(Enum):
    VALID = "valid"
    STALE = "stale"  # ours, but expired: challenge again with stale=TRUE
    INVALID = "invalid"


def make_nonce(secret: bytes, now: float) -> str:
    """A nonce any instance holding `secret` can check: 8-byte time + 8 random + 16-byte MAC."""
    body = struct.pack("!d", now) + os.urandom(8)
    mac = hmac.new(secret, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def check_nonce(secret: bytes, nonce: str, now: float, lifetime: float) -> NonceState:
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except ValueError:
        return NonceState.INVALID
    if len(raw) != 32:
        return NonceState.INVALID
    body, mac = raw[:16], raw[16:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:16]):
        return NonceState.INVALID
    (issued,) = struct.unpack("!d", body[:8])
    if not issued - 5.0 <= now <= issued + lifetime:  # small allowance for clock skew
        return NonceState.STALE
    return NonceState.VALID
