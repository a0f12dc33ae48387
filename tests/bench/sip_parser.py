"""SIP parser throughput: proxy-path parse and full parse + serialize, messages per second.

The proxy path is what the sbc does for every message it relays: parse the start line, split
the header fields, and read the fields a transaction and a route need (top Via, CSeq,
Call-ID, Max-Forwards, Route). The full path validates every header we know, then writes
the message out again.

The parser remembers URIs and From/To/Contact values it has parsed (services.sip.grammar's
memoized); so that the figures are not those of one message parsed over and over, each run
cycles through VARIANTS copies of the message with their own From tag and Call-ID, more than
that memory holds (the same UEs' URIs and Contacts do repeat, as they do in real traffic).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services import native
from services.sip import parse_message
from tests.bench.messages import INVITE, OK_200

TARGET_PROXY_PER_SECOND = 40_000


def proxy_path(data: bytes) -> None:
    msg = parse_message(data)
    msg.top_via.branch  # noqa: B018
    msg.cseq  # noqa: B018
    msg.call_id  # noqa: B018
    msg.max_forwards  # noqa: B018
    msg.headers.first_value("route")


def full_path(data: bytes) -> None:
    msg = parse_message(data, strict=True)
    msg.to_bytes()


VARIANTS = 5000


def variants(data: bytes) -> list[bytes]:
    """`data` with VARIANTS different From tags and Call-IDs."""
    return [
        data.replace(b"tag=1928301774", b"tag=%d" % (1928301774 + i)).replace(
            b"Call-ID: a84b4c76e66710@", b"Call-ID: %d@" % i
        )
        for i in range(VARIANTS)
    ]


def rate(work: Callable[[bytes], None], data: bytes, seconds: float = 1.5) -> float:
    """Best of three runs of about `seconds` / 3 each: messages per second on one core."""
    best = 0.0
    messages = variants(data)
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for message in messages[n % VARIANTS : n % VARIANTS + 500]:
                work(message)
            n += 500
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def main() -> int:
    print(f"SIP parser, one core (messages/s, best of 3); {native.describe()}")
    print(f"{'path':<28}{'message':<18}{'bytes':>6}{'msg/s':>12}")
    ok = True
    for label, work in (("proxy (lazy parse)", proxy_path), ("full parse + serialize", full_path)):
        for name, data in (("INVITE with SDP", INVITE), ("200 OK with SDP", OK_200)):
            per_second = rate(work, data)
            print(f"{label:<28}{name:<18}{len(data):>6}{per_second:>12,.0f}")
            if work is proxy_path and per_second < TARGET_PROXY_PER_SECOND:
                ok = False
    verdict = "meets" if ok else "MISSES"
    print(f"proxy path {verdict} the target of {TARGET_PROXY_PER_SECOND:,} messages/s per core")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
