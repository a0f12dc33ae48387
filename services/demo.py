"""`volte demo`: the whole call flow on one machine, start to finish, in about ten seconds.

Starts redis-server, state and sbc (on free ports, in a temporary run directory, so it never
collides with a `volte up`), provisions subscribers, registers simulated UEs (loadgen's) with
digest auth, places calls between them through the sbc (INVITE/180/200/ACK/BYE), prints what
happened with setup times, and stops everything.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from loadgen.ue import Ue
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner

FIRST = 100000
PASSWORD = "demo-secret"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def place_calls(stack: Stack, pairs: int, calls: int, hold: float) -> int:
    config = stack.config
    proxy = (config.sip_host, config.sip_port)
    ues = [Ue(str(FIRST + i), PASSWORD, domain=config.domain, proxy=proxy)
           for i in range(2 * pairs)]
    for ue in ues:
        await ue.start()
    try:
        started = time.monotonic()
        registered = await asyncio.gather(*(ue.register() for ue in ues))
        ok = sum(r.status == 200 for r in registered)
        print(f"registered {ok}/{len(ues)} UEs with digest auth in "
              f"{(time.monotonic() - started) * 1000:.0f} ms")
        if ok != len(ues):
            return 1
        results = []
        for round_ in range(calls):
            batch = await asyncio.gather(
                *(ues[2 * i].call(ues[2 * i + 1].number, hold=hold) for i in range(pairs))
            )
            results += batch
            answered = sum(r.status == 200 and r.ended for r in batch)
            print(f"round {round_ + 1}: {answered}/{pairs} calls answered and hung up")
        good = [r for r in results if r.status == 200 and r.ended]
        ringing = [r.ringing_ms for r in good if r.ringing_ms is not None]
        answered_ms = [r.answered_ms for r in good if r.answered_ms is not None]
        print(f"\n{len(good)}/{len(results)} calls completed through the sbc")
        if ringing and answered_ms:
            print(f"INVITE -> 180: median {statistics.median(ringing):.1f} ms, "
                  f"p95 {percentile(ringing, 0.95):.1f} ms")
            print(f"INVITE -> 200: median {statistics.median(answered_ms):.1f} ms, "
                  f"p95 {percentile(answered_ms, 0.95):.1f} ms")
        return 0 if len(good) == len(results) else 1
    finally:
        for ue in ues:
            await ue.close()


def run_demo(pairs: int = 5, calls: int = 3, hold: float = 0.5) -> int:
    with tempfile.TemporaryDirectory(prefix="volte-demo-") as run_dir:
        config = StackConfig(
            sip_port=free_port(),
            redis_port=free_port(),
            state_grpc=f"127.0.0.1:{free_port()}",
            sbc_grpc=f"127.0.0.1:{free_port()}",
            run_dir=run_dir,
        )
        stack = Stack(config)
        started = time.monotonic()
        stack.start()
        try:
            print(f"stack up in {time.monotonic() - started:.1f} s: redis {stack.redis_url}, "
                  f"state {config.state_grpc}, sbc SIP {config.sip_host}:{config.sip_port} "
                  f"(UDP+TCP), domain {config.domain}")
            provisioner = Provisioner(config.state_grpc)
            provisioner.provision(2 * pairs, FIRST, config.domain, PASSWORD)
            provisioner.close()
            print(f"provisioned {2 * pairs} subscribers sip:{FIRST}@{config.domain} ...")
            return asyncio.run(place_calls(stack, pairs, calls, hold))
        finally:
            stack.stop()
            print("stack stopped")
