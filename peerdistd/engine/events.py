"""Status-change and stream events for ``GET /v1/events`` (DESIGN.md, "Reads are streams").

Each subscriber gets a bounded queue; a subscriber that falls behind loses its oldest events
rather than slowing the daemon down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class Subscription:
    """One subscriber's queue, registered at once so no event after subscribing is missed."""

    def __init__(self, bus: EventBus, first: Event | None) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        if first is not None:
            self._queue.put_nowait(first)
        bus._queues.add(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        self._bus._queues.discard(self._queue)


class EventBus:
    """Fan-out of events to any number of subscribers."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event | None]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, name: str, **data: Any) -> None:
        if not self._queues:
            return
        event = Event(name, data)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(self, first: Event | None = None) -> Subscription:
        """Events from now on until :meth:`close`; ``first`` is delivered before anything."""
        return Subscription(self, first)

    def close(self) -> None:
        """End every subscription (on shutdown)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
