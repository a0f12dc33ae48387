"""The Redis data model: key names and how a record with an expiry is framed. Pure.

Every key starts with "volte:" and carries a Redis Cluster hash tag, so that all keys one
operation touches hash to one slot:

    volte:{subs}:sub:<impi>          hash  pb = Subscriber, impus = its IMPUs, one per line
    volte:{subs}:impu:<impu>         string  the IMPI owning this IMPU
    volte:{subs}:impis               sorted set of IMPIs, all score 0 (ordered by ZRANGEBYLEX)
    volte:{sNN}:reg:<aor>            hash  contact URI -> framed Binding
    volte:{sNN}:dlg:<call-id>        hash  "<from-tag> <to-tag>" -> framed Dialog
    volte:{sNN}:media:<session-id>   hash  "s" -> framed MediaSessionRecord
    volte:{sNN}:timers               sorted set  record key -> earliest deadline (ms) in it
    volte:{sNN}:nc:<impi>:<nonce>    string  last digest nonce-count seen (TTL: nonce lifetime)
    volte:{sNN}:src:<ip> <port>      string  AOR last registered from there (a hint, with TTL)

Subscribers share one slot ({subs}): provisioning is rare and must check IMPU ownership
atomically. Everything with an expiry lives in one of SHARDS shards, NN = crc32(name) % SHARDS:
a record and the timer set that expires it share a slot, so writing a record, arming its
timer and firing it are each one Lua script, atomic even on a cluster. Each sweeper visits
every shard's timer set.

A framed value is `<header>\\n<protobuf>`: the header is ASCII words separated by spaces, the
first being the deadline in milliseconds, so Lua can read what it needs without protobuf.
Bindings add `<cseq> <reg-id> <call-id> [<instance-id>]` for RFC 3261 section 10.3 step 7
and RFC 5626 replacement.
"""

from __future__ import annotations

import functools
import ipaddress
import zlib
from dataclasses import dataclass

PREFIX = "volte:"
SHARDS = 64
SUBS_TAG = "{subs}"
MEDIA_FIELD = "s"


def shard(name: str) -> str:
    """The hash tag of the shard `name` falls in, e.g. "{s07}"."""
    return f"{{s{zlib.crc32(name.encode('utf-8', 'surrogateescape')) % SHARDS:02d}}}"


def all_timer_keys() -> list[str]:
    return [f"{PREFIX}{{s{n:02d}}}:timers" for n in range(SHARDS)]


def timers_for(record_key: str) -> str:
    """The timer set in the same slot as `record_key`."""
    tag_end = record_key.index("}") + 1
    return record_key[:tag_end] + ":timers"


def subscriber(impi: str) -> str:
    return f"{PREFIX}{SUBS_TAG}:sub:{impi}"


def impu_prefix() -> str:
    return f"{PREFIX}{SUBS_TAG}:impu:"


def impu(impu_: str) -> str:
    return impu_prefix() + impu_


def impi_index() -> str:
    return f"{PREFIX}{SUBS_TAG}:impis"


def registration(aor: str) -> str:
    return f"{PREFIX}{shard(aor)}:reg:{aor}"


def dialogs(call_id: str) -> str:
    return f"{PREFIX}{shard(call_id)}:dlg:{call_id}"


def media(session_id: str) -> str:
    return f"{PREFIX}{shard(session_id)}:media:{session_id}"


def nonce_count(impi: str, nonce: str) -> str:
    return f"{PREFIX}{shard(impi)}:nc:{impi}:{nonce}"


@functools.lru_cache(maxsize=4096)  # Route compares every binding's address: parsed once
def normal_ip(ip: str) -> str:
    """One spelling per address ("2001:0db8::1" and "2001:db8::1" are one source)."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def source(ip: str, port: int) -> str:
    name = f"{normal_ip(ip)} {port}"
    return f"{PREFIX}{shard(name)}:src:{name}"


def kind_of(record_key: str) -> str:
    """"binding", "dialog" or "media" for a record key (a timer set's member)."""
    kind = record_key.split("}:", 1)[1].split(":", 1)[0]
    return {"reg": "binding", "dlg": "dialog", "media": "media"}.get(kind, kind)


def dialog_field(from_tag: str, to_tag: str) -> str:
    return f"{from_tag} {to_tag}"


def dialog_tags(field: str) -> tuple[str, str]:
    from_tag, _, to_tag = field.partition(" ")
    return from_tag, to_tag


# --- framed values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Framed:
    deadline_ms: int
    words: tuple[str, ...]
    payload: bytes


def frame(deadline_ms: int, payload: bytes, *words: str) -> bytes:
    header = " ".join([str(deadline_ms), *words])
    return header.encode("utf-8", "surrogateescape") + b"\n" + payload


def unframe(value: bytes) -> Framed:
    header, _, payload = value.partition(b"\n")
    first, *rest = header.decode("utf-8", "surrogateescape").split(" ")
    return Framed(int(first), tuple(rest), payload)


def frame_binding(
    deadline_ms: int, payload: bytes, *, cseq: int, reg_id: int, call_id: str, instance_id: str
) -> bytes:
    words = [str(cseq), str(reg_id), call_id]
    if instance_id:  # last, so Lua sees it as absent
        words.append(instance_id)
    return frame(deadline_ms, payload, *words)
