"""The WatchEvents fan-out shared by the media relay and the eNB agent (services.common.events).
The streams run over real asyncio queues; the gRPC servicer context is a stand-in that records
the abort (the services' own tests run the same code behind real gRPC servers)."""

from __future__ import annotations

import grpc
import pytest

from services.common.events import WATCH_QUEUE, EventHub


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def test_each_stream_gets_what_its_filter_wants_until_the_hub_closes() -> None:
    hub: EventHub[int] = EventHub()
    evens, all_ = hub.subscribe(lambda e: e % 2 == 0), hub.subscribe(lambda e: True)
    for event in range(5):
        hub.publish(event)
    hub.close()
    assert [e async for e in evens.stream(Context())] == [0, 2, 4]
    assert [e async for e in all_.stream(Context(), last=lambda e: e == 3)] == [0, 1, 2, 3]
    late = hub.subscribe(lambda e: True)  # after close: ends at once
    assert [e async for e in late.stream(Context())] == []
    hub.unsubscribe(evens)
    assert hub.watchers == 2


async def test_a_stream_too_far_behind_is_cut_off_with_resource_exhausted() -> None:
    hub: EventHub[int] = EventHub()
    slow = hub.subscribe(lambda e: True)
    for event in range(WATCH_QUEUE + 5):
        hub.publish(event)
    assert slow.overflowed
    got = []
    with pytest.raises(Aborted) as error:
        async for event in slow.stream(Context()):
            got.append(event)
    assert got == list(range(WATCH_QUEUE))  # what was queued, then the end
    assert error.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
