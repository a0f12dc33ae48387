"""Server-streamed events for the services' WatchEvents RPCs: a hub fans each event out to the
streams whose filter wants it; a stream that falls more than WATCH_QUEUE events behind is cut
off with RESOURCE_EXHAUSTED (its watcher must know it missed events), and closing the hub ends
every stream (so a stopping server need not wait for them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc

E = TypeVar("E")
WATCH_QUEUE = 10_000  # events buffered per WatchEvents stream before it is cut off


class Watcher(Generic[E]):
    """One WatchEvents stream: the events its filter wants, None at the end."""

    def __init__(self, wants: Callable[[E], bool]) -> None:
        self.wants = wants
        self.queue: asyncio.Queue[E | None] = asyncio.Queue(WATCH_QUEUE + 1)
        self.overflowed = False

    def put(self, event: E | None) -> None:
        if self.overflowed:
            return
        if event is not None and self.queue.qsize() >= WATCH_QUEUE:
            self.overflowed = True
            event = None  # end the stream: the watcher must know it missed events
        self.queue.put_nowait(event)

    async def stream(self, context: Any, last: Callable[[E], bool] = lambda _: False
                     ) -> AsyncIterator[E]:
        """The events until the hub closes, or `last` says one was the last."""
        while True:
            event = await self.queue.get()
            if event is None:
                if self.overflowed:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"watcher too slow: more than {WATCH_QUEUE} events queued; "
                        "events were lost, watch again",
                    )
                return
            yield event
            if last(event):
                return


class EventHub(Generic[E]):
    """Fans events out to the WatchEvents streams."""

    def __init__(self) -> None:
        self._watchers: set[Watcher[E]] = set()
        self.closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def subscribe(self, wants: Callable[[E], bool]) -> Watcher[E]:
        watcher = Watcher(wants)
        self._watchers.add(watcher)
        if self.closed:
            watcher.put(None)
        return watcher

    def unsubscribe(self, watcher: Watcher[E]) -> None:
        self._watchers.discard(watcher)

    def publish(self, event: E) -> None:
        for watcher in self._watchers:
            if watcher.wants(event):
                watcher.put(event)

    def close(self) -> None:
        self.closed = True
        for watcher in self._watchers:
            watcher.put(None)
