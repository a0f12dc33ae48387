"""A loadgen UE in its own process, for running inside a network namespace behind a NAT.

    ip netns exec NS python -m tests.interop.natted_ue --proxy 10.78.0.2:5060 \\
        --local 10.77.0.2 --number 100 call 101 --seconds 2
    ip netns exec NS python -m tests.interop.natted_ue ... answer --timeout 15

The UE binds its SIP and RTP sockets to `--local` (the private address, which is what its Via,
Contact and SDP say), registers through the proxy, then either places one call with media
(`call`) or answers one and waits for its BYE (`answer`). It prints one JSON object a line:
`{"event": "registered", ...}` once registered, then `{"event": "done", ...}` with what
happened (statuses, RTP sent and received, where RTP came from, the SDP it sent and got).
Every wait is bounded; the exit status is 0 when the call went through, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadgen.ue import Ue, sdp_destination


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def place(ue: Ue, number: str, seconds: float) -> dict[str, Any]:
    call = await ue.dial(number, rtp_seconds=seconds)
    if not call.answered:
        return {"status": call.result.status}
    await asyncio.sleep(seconds)
    result = await call.hang_up()
    return {
        "status": result.status, "ended": result.ended, "call_id": call.call_id,
        "rtp_sent": result.rtp_sent, "rtp_received": result.rtp_received,
        "rtp_sources": sorted(result.rtp_sources), "sdp_sent": call.sdp_sent[0].decode(),
        "sdp_received": call.sdp_received[0].decode(), "remote_media": result.remote_media,
    }


async def answer(ue: Ue, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while ue.byes_received == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not ue.answered:
        return {"status": 0}
    call_id, rtp = next(iter(ue.answered.items()))
    offer = ue.invites[call_id].body
    return {
        "status": 200, "ended": ue.byes_received > 0, "call_id": call_id,
        "rtp_sent": rtp.sent, "rtp_received": rtp.received, "rtp_sources": sorted(rtp.sources),
        "sdp_received": offer.decode(), "remote_media": sdp_destination(offer),
    }


async def run(args: argparse.Namespace) -> int:
    host, _, port = args.proxy.rpartition(":")
    ue = Ue(args.number, args.password, domain=args.domain, proxy=(host, int(port)))
    ue.media = True
    await ue.start(args.local)
    try:
        registered = await ue.register()
        emit(event="registered", status=registered.status, local=list(ue.local))
        if registered.status != 200:
            return 1
        if args.mode == "call":
            done = await place(ue, args.target, args.seconds)
        else:
            done = await answer(ue, args.timeout)
        emit(event="done", **done)
        return 0 if done.get("status") == 200 and done.get("ended") else 1
    finally:
        await ue.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.interop.natted_ue")
    parser.add_argument("--proxy", required=True, help="the sbc, host:port")
    parser.add_argument("--local", required=True, help="address to bind SIP and RTP to")
    parser.add_argument("--number", required=True)
    parser.add_argument("--password", default="pw")
    parser.add_argument("--domain", default="ims.local")
    modes = parser.add_subparsers(dest="mode", required=True)
    call = modes.add_parser("call", help="call TARGET, talk --seconds, hang up")
    call.add_argument("target")
    call.add_argument("--seconds", type=float, default=2.0)
    wait = modes.add_parser("answer", help="answer one call, wait for its BYE")
    wait.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    return asyncio.run(asyncio.wait_for(run(args), 30))


if __name__ == "__main__":
    sys.exit(main())
