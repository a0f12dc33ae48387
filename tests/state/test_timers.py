"""Expiry timers on a fake clock: bindings, dialogs (session, stale early, terminated) and
media sessions; several sweepers at once; a sweeper outliving the instance that armed it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration

from services.state import keys
from services.state.store import RedisStore
from tests.state.helpers import Api, FakeClock, change
from volte.v1 import common_pb2, state_pb2

pytestmark = pytest.mark.interop
AOR = "sip:+15550000001@ims.local"


@pytest.fixture
async def store(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisStore]:
    """Timers are the state service's: on its client, redis-py (the tests look at keys)."""
    s = RedisStore.from_url(redis_url, clock=clock)
    yield s
    await s.close()


def peek(store: RedisStore) -> aioredis.Redis:
    assert isinstance(store.redis, aioredis.Redis)
    return store.redis


async def contacts(store: RedisStore, aor: str = AOR) -> list[str]:
    return [b.contact_uri for b in await store.lookup_bindings(aor)]


async def raw_fields(store: RedisStore, key: str) -> int:
    count: int = await peek(store).hlen(key)
    return count


async def test_binding_expires(store: RedisStore, clock: FakeClock):
    await store.save_binding(change(AOR, "sip:a@h", expires=60))
    await store.save_binding(change(AOR, "sip:b@h", expires=120))
    clock.advance(61)
    # Hidden from reads before any sweep ...
    assert await contacts(store) == ["sip:b@h"]
    assert await raw_fields(store, keys.registration(AOR)) == 2
    # ... and removed by it.
    assert (await store.sweep())["binding"] == 1
    assert await raw_fields(store, keys.registration(AOR)) == 1
    clock.advance(60)
    assert (await store.sweep())["binding"] == 1
    assert not await peek(store).exists(keys.registration(AOR))
    assert await peek(store).zcard(keys.timers_for(keys.registration(AOR))) == 0


async def test_refresh_before_expiry_keeps_the_binding(store: RedisStore, clock: FakeClock):
    await store.save_binding(change(AOR, expires=60, cseq=1))
    clock.advance(50)
    await store.save_binding(change(AOR, expires=60, cseq=2))
    clock.advance(20)  # past the first expiry, not the refreshed one
    assert (await store.sweep())["binding"] == 0
    assert await contacts(store) == ["sip:ue@192.0.2.10:5060"]
    clock.advance(41)
    assert (await store.sweep())["binding"] == 1
    assert await contacts(store) == []


async def test_two_sweepers_never_fire_one_timer_twice(redis_url: str, clock: FakeClock):
    a = RedisStore.from_url(redis_url, clock=clock)
    b = RedisStore.from_url(redis_url, clock=clock)
    n = 300
    for i in range(n):
        await a.save_binding(change(f"sip:user{i}@ims.local", expires=30))
    clock.advance(31)
    fired = await asyncio.gather(*(s.sweep(limit=2) for s in (a, b, a, b, a, b)))
    assert sum(f["binding"] for f in fired) == n
    assert [k async for k in peek(a).scan_iter(match="volte:*:reg:*")] == []
    await a.close()
    await b.close()


async def test_timers_outlive_the_instance_that_armed_them(redis_url: str, clock: FakeClock):
    a = RedisStore.from_url(redis_url, clock=clock)
    await a.save_binding(change(AOR, expires=30))
    await a.close()  # instance A is gone
    b = RedisStore.from_url(redis_url, clock=clock)
    clock.advance(31)
    assert (await b.sweep())["binding"] == 1
    assert not await peek(b).exists(keys.registration(AOR))
    await b.close()


def dialog(state: state_pb2.Dialog.State, to_tag: str = "tagB") -> state_pb2.Dialog:
    return state_pb2.Dialog(
        id=common_pb2.DialogId(call_id="call-1", from_tag="tagA", to_tag=to_tag), state=state
    )


async def test_dialog_timers(store: RedisStore, clock: FakeClock):
    early = state_pb2.Dialog.STATE_EARLY
    confirmed = state_pb2.Dialog.STATE_CONFIRMED
    terminated = state_pb2.Dialog.STATE_TERMINATED
    # A call still ringing after 180 s is stale, whatever its session expiry.
    await store.put_dialog(dialog(early, "t1"), Duration(seconds=3600))
    await store.put_dialog(dialog(early, "t2"), Duration(seconds=3600))
    clock.advance(100)
    await store.put_dialog(dialog(confirmed, "t2"), Duration(seconds=0))  # keeps its expiry
    clock.advance(81)
    assert (await store.sweep())["dialog"] == 1
    found = await store.get_dialog(dialog(confirmed, "t2").id)
    assert found is not None and found.expires_at.seconds == 1_700_000_000 + 3600
    # A terminated dialog lingers 32 s for retransmissions.
    await store.put_dialog(dialog(terminated, "t2"), Duration(seconds=0))
    clock.advance(31)
    assert await store.get_dialog(dialog(terminated, "t2").id) is not None
    clock.advance(2)
    assert await store.get_dialog(dialog(terminated, "t2").id) is None
    assert (await store.sweep())["dialog"] == 1
    # A confirmed dialog ends at its session expiry unless refreshed.
    await store.put_dialog(dialog(confirmed, "t3"), Duration(seconds=90))
    clock.advance(60)
    await store.put_dialog(dialog(confirmed, "t3"), Duration(seconds=90))
    clock.advance(60)
    assert (await store.sweep())["dialog"] == 0
    clock.advance(31)
    assert (await store.sweep())["dialog"] == 1
    assert not await peek(store).exists(keys.dialogs("call-1"))


async def test_media_session_expires(store: RedisStore, clock: FakeClock):
    record = state_pb2.MediaSessionRecord(session_id="m-1", media_instance="media-0")
    await store.put_media_session(record, Duration(seconds=10))
    clock.advance(11)
    assert await store.get_media_session("m-1") is None
    assert (await store.sweep())["media"] == 1


async def test_the_server_sweeps_by_itself(api: Api, store: RedisStore, clock: FakeClock):
    await api.stub.SaveBinding(change(AOR, expires=5))
    clock.advance(6)
    key = keys.registration(AOR)
    for _ in range(100):
        if not await peek(store).exists(key):
            break
        await asyncio.sleep(0.02)
    assert not await peek(store).exists(key)


async def test_redis_ttl_is_only_a_safety_net(store: RedisStore, redis_url: str):
    await store.save_binding(change(AOR, expires=60))
    async with aioredis.from_url(redis_url) as client:
        ttl = await client.pttl(keys.registration(AOR))
    assert 60_000 < ttl <= 120_000  # the deadline plus a minute of grace
