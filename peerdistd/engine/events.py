"""Status-change and stream events for ``GET /v1/events`` (DESIGN.md, "Reads are streams").

Each subscriber gets a bounded queue; a subscriber that falls behind loses its oldest events
rather than slowing the daemon down.

Events go only to the uid they concern: an event about a content handle (it names
``handle``) reaches the handle's owner and root, never another uid, so nobody learns
another user's handle ids, read ids or results. Status changes concern everybody. An event
naming a handle whose owner is no longer known (closed meanwhile) goes to root only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1024
ROOT_UID = 0


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None  # the uid it concerns (root sees it too); None: everybody


class Subscription:
    """One subscriber's queue, registered at once so no event after subscribing is missed."""

    def __init__(self, bus: EventBus, first: Event | None, uid: int) -> None:
        self._bus = bus
        self.uid = uid
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        if first is not None:
            self._queue.put_nowait(first)
        bus._subscriptions.add(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def wants(self, event: Event) -> bool:
        return event.uid is None or self.uid in (event.uid, ROOT_UID)

    def put(self, event: Event | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(event)

    def close(self) -> None:
        self._bus._subscriptions.discard(self)


class EventBus:
    """Fan-out of events to any number of subscribers, each seeing what concerns its uid.

    ``owner`` tells the uid that owns a handle id (None if it is not open).
    """

    def __init__(self, owner: Callable[[str], int | None] | None = None) -> None:
        self._subscriptions: set[Subscription] = set()
        self._owner = owner

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def publish(self, name: str, *, uid: int | None = None, **data: Any) -> None:
        """Send an event; one naming ``handle`` concerns that handle's owner (``uid`` if given)."""
        if not self._subscriptions:
            return
        handle = data.get("handle")
        if uid is None and handle is not None:
            owner = self._owner(str(handle)) if self._owner is not None else None
            uid = ROOT_UID if owner is None else owner
        event = Event(name, data, uid)
        for sub in self._subscriptions:
            if sub.wants(event):
                sub.put(event)

    def subscribe(self, first: Event | None = None, *, uid: int = ROOT_UID) -> Subscription:
        """Events for ``uid`` from now on until :meth:`close`; ``first`` comes before any."""
        return Subscription(self, first, uid)

    def close(self) -> None:
        """End every subscription (on shutdown)."""
        for sub in self._subscriptions:
            sub.put(None)
