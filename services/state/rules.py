"""The state store's rules, free of Redis and gRPC: argument checks, digest verification,
binding order, dialog matching and expiry. Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from google.protobuf.duration_pb2 import Duration

from services.sip.digest import Credentials
from services.state import keys
from volte.v1 import common_pb2, state_pb2

MAX_EXPIRES_S = 366 * 86400
MAX_NONCE_LIFETIME_S = 86400
_TOKEN = re.compile(r"[^\s\x00-\x1f\x7f]{1,1024}")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_HEX = {"ha1_md5": re.compile(r"[0-9a-f]{32}"), "ha1_sha256": re.compile(r"[0-9a-f]{64}")}


class InvalidArgument(ValueError):
    """A request the caller should not have sent (gRPC INVALID_ARGUMENT)."""


class Conflict(Exception):
    """The request contradicts stored state (gRPC ALREADY_EXISTS)."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise InvalidArgument(message)


def check_token(value: str, name: str, *, required: bool = True) -> None:
    """An identity, tag or URI: no spaces or control characters, at most 1024 characters."""
    if not value:
        require(not required, f"{name} is required")
        return
    require(_TOKEN.fullmatch(value), f"{name} must be 1-1024 characters without spaces")


def duration_ms(value: Duration, name: str, maximum_s: int) -> int:
    ms = value.seconds * 1000 + value.nanos // 1_000_000
    require(value.seconds >= 0 and value.nanos >= 0, f"{name} must not be negative")
    require(value.seconds <= maximum_s, f"{name} must be at most {maximum_s} s")
    return ms


def to_ms(seconds: float) -> int:
    return int(seconds * 1000)


# --- subscribers ------------------------------------------------------------------------------


def check_subscriber(sub: state_pb2.Subscriber) -> None:
    check_token(sub.impi, "subscriber.impi")
    require(sub.impus, "subscriber.impus needs at least one IMPU")
    for impu in sub.impus:
        check_token(impu, "subscriber.impus[]")
    require(len(set(sub.impus)) == len(sub.impus), "subscriber.impus has duplicates")
    require(
        not sub.imsi or re.fullmatch(r"\d{14,15}", sub.imsi), "subscriber.imsi: 14-15 digits"
    )
    require(
        not sub.msisdn or re.fullmatch(r"\d{1,15}", sub.msisdn), "subscriber.msisdn: E.164 digits"
    )
    creds = sub.credentials
    check_token(creds.realm, "subscriber.credentials.realm")
    creds.ha1_md5 = creds.ha1_md5.lower()
    creds.ha1_sha256 = creds.ha1_sha256.lower()
    for name, pattern in _HEX.items():
        value = getattr(creds, name)
        require(not value or pattern.fullmatch(value), f"subscriber.credentials.{name}: bad hex")
    require(creds.ha1_md5 or creds.ha1_sha256, "subscriber.credentials needs an HA1")


def public_view(sub: state_pb2.Subscriber) -> state_pb2.Subscriber:
    """The subscriber without its HA1s, for answers that do not need them."""
    view = state_pb2.Subscriber()
    view.CopyFrom(sub)
    view.credentials.ha1_md5 = ""
    view.credentials.ha1_sha256 = ""
    return view


# --- digest -----------------------------------------------------------------------------------


def check_answer(auth: state_pb2.DigestAnswer) -> int:
    """Structural checks (the sbc's job); answers the nonce lifetime in ms."""
    for name in ("username", "nonce", "response", "method"):
        require(getattr(auth, name), f"auth.{name} is required")
    require(auth.HasField("nonce_lifetime"), "auth.nonce_lifetime is required")
    lifetime = duration_ms(auth.nonce_lifetime, "auth.nonce_lifetime", MAX_NONCE_LIFETIME_S)
    require(lifetime > 0, "auth.nonce_lifetime must be positive")
    return lifetime


def answer_nonce_count(auth: state_pb2.DigestAnswer) -> int | None:
    """The nonce-count of a well-formed answer (0 without qop), None for a malformed one."""
    if not auth.qop:
        return 0
    if auth.qop.lower() != "auth" or not _HEX8.fullmatch(auth.nc) or not auth.cnonce:
        return None
    return int(auth.nc, 16)


def verify_answer(sub: state_pb2.Subscriber, auth: state_pb2.DigestAnswer) -> bool:
    """Does the digest response match the subscriber's HA1 for the answer's algorithm?"""
    creds = sub.credentials
    algorithm = (auth.algorithm or "MD5").upper()
    ha1 = {"MD5": creds.ha1_md5, "SHA-256": creds.ha1_sha256}.get(algorithm, "")
    if not ha1 or auth.realm != creds.realm or auth.username != sub.impi:
        return False
    answer = Credentials(
        username=auth.username,
        realm=auth.realm,
        nonce=auth.nonce,
        uri=auth.uri,
        response=auth.response.lower(),
        algorithm=algorithm,
        qop=auth.qop.lower() or None,
        nc=auth.nc,
        cnonce=auth.cnonce,
    )
    return answer.matches(ha1, auth.method)


# --- bindings ---------------------------------------------------------------------------------


def check_binding_change(change: state_pb2.SaveBindingRequest, aor: str) -> int:
    """Checks a contact change for AOR `aor`; answers its lifetime in ms (0 removes)."""
    b = change.binding
    if b.impu:
        require(b.impu == aor, f"binding.impu {b.impu!r} is not the AOR {aor!r}")
    check_token(b.contact_uri, "binding.contact_uri")
    check_token(b.call_id, "binding.call_id")
    check_token(b.instance_id, "binding.instance_id", required=False)
    require(b.q_milli <= 1000, "binding.q_milli must be 0..1000")
    require(b.received.port <= 65535, "binding.received.port must be 0..65535")
    require(change.HasField("expires"), "expires is required (0 removes the binding)")
    return duration_ms(change.expires, "expires", MAX_EXPIRES_S)


def binding_order(bindings: Iterable[state_pb2.Binding]) -> list[state_pb2.Binding]:
    """Highest q-value first, then the most recently refreshed (latest expiry)."""
    return sorted(bindings, key=lambda b: (-b.q_milli, -b.expires_at.ToMilliseconds()))


def same_source(
    a: common_pb2.SocketAddress, b: common_pb2.SocketAddress, *, ip_only: bool = False
) -> bool:
    """Same IP and port (the transport is not compared: a UE may switch UDP/TCP).

    `ip_only` for requests over TCP/TLS: a UE opens connections from ephemeral ports, so
    only its address can be checked (without RFC 5626 outbound flows).
    """
    same_port = ip_only or a.port == b.port
    return bool(a.ip) and same_port and keys.normal_ip(a.ip) == keys.normal_ip(b.ip)


# --- dialogs ----------------------------------------------------------------------------------


def check_dialog_id(dialog_id: common_pb2.DialogId, name: str = "id") -> None:
    check_token(dialog_id.call_id, f"{name}.call_id")
    check_token(dialog_id.from_tag, f"{name}.from_tag")
    check_token(dialog_id.to_tag, f"{name}.to_tag", required=False)


def select_dialog(
    stored: Mapping[str, state_pb2.Dialog], from_tag: str, to_tag: str
) -> str | None:
    """The field of the dialog a request with these tags belongs to, if any.

    A request from the callee has the tags swapped; one without a To tag (or one arriving
    before the To tag was stored) finds the early dialog of the caller's tag, preferring a
    confirmed one, then the most recent.
    """
    for field in dialog_candidates(from_tag, to_tag):
        if field in stored:
            return field
    if to_tag:
        return None
    forks = [f for f in stored if keys.dialog_tags(f)[0] == from_tag]
    if not forks:
        return None
    confirmed = state_pb2.Dialog.STATE_CONFIRMED

    def rank(f: str) -> tuple[bool, int]:
        d = stored[f]
        return d.state == confirmed, d.created_at.ToMilliseconds()

    return max(forks, key=rank)


def stored_dialog(stored: Mapping[str, state_pb2.Dialog], from_tag: str, to_tag: str) -> str | None:
    """The field a PutDialog with these tags updates: the same dialog from either side, or,
    once the To tag is known, the early dialog stored without it. Never another fork."""
    return next((f for f in stored_dialog_candidates(from_tag, to_tag) if f in stored), None)


def dialog_candidates(from_tag: str, to_tag: str) -> list[str]:
    """The fields select_dialog tries, in order, before it looks at the forks (a request from
    either side, or the early dialog of the caller's tag)."""
    if not to_tag:
        return [keys.dialog_field(from_tag, "")]
    return [
        keys.dialog_field(from_tag, to_tag),
        keys.dialog_field(to_tag, from_tag),
        keys.dialog_field(from_tag, ""),
        keys.dialog_field(to_tag, ""),
    ]


def stored_dialog_candidates(from_tag: str, to_tag: str) -> list[str]:
    """The fields stored_dialog tries, in order: select_dialog's but the callee's early one."""
    return dialog_candidates(from_tag, to_tag)[:3]


def unconfirmed_forks(stored: Mapping[str, state_pb2.Dialog], from_tag: str) -> list[str]:
    """The caller's dialogs not (yet) confirmed: what a CANCEL or a failure response ends."""
    confirmed = state_pb2.Dialog.STATE_CONFIRMED
    return [
        f for f, d in stored.items() if keys.dialog_tags(f)[0] == from_tag and d.state != confirmed
    ]


def dialog_deadline(
    dialog: state_pb2.Dialog, now_ms: int, *, early_ms: int, linger_ms: int
) -> int:
    """When the store drops the dialog: its session expiry, but an EARLY dialog early_ms
    after it was created (a stale call) and a TERMINATED one after linger_ms."""
    deadline = dialog.expires_at.ToMilliseconds()
    if dialog.state == state_pb2.Dialog.STATE_EARLY:
        return min(deadline, dialog.created_at.ToMilliseconds() + early_ms)
    if dialog.state == state_pb2.Dialog.STATE_TERMINATED:
        return min(deadline, now_ms + linger_ms)
    return deadline
