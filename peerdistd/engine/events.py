"""Status-change and stream events for ``GET /v1/events`` (DESIGN.md, "Reads are streams").

Each subscriber gets a bounded queue; a subscriber that falls behind loses its oldest events
rather than slowing the daemon down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)


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

    async def subscribe(self, first: Event | None = None) -> AsyncIterator[Event]:
        """Yield events until :meth:`close`; ``first`` is delivered before anything else."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        if first is not None:
            queue.put_nowait(first)
        self._queues.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        """End every subscription (on shutdown)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
