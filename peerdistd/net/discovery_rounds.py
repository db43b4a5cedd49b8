"""Discovery rounds in flight, by segment: a segment being asked about is not asked again.

The swarm asks the LAN about a content's segments a window at a time (:mod:`holders` says
why). A read that needs a segment some round in flight already asks about waits for that
round's answer instead of sending a probe of its own. Bounded by the rounds in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Sequence
from typing import Any

Round = asyncio.Task[Any]


class Rounds:
    """Segment id -> the discovery round asking about it right now."""

    def __init__(self) -> None:
        self._by_segment: dict[bytes, Round] = {}
        self.tasks: set[Round] = set()

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._by_segment

    def of(self, segment_id: bytes) -> Round | None:
        return self._by_segment.get(segment_id)

    def start(self, segment_ids: Sequence[bytes], probe: Coroutine[Any, Any, Any]) -> Round:
        """Run ``probe`` (a round asking about ``segment_ids``) in the background."""
        task = asyncio.ensure_future(probe)
        ids = list(segment_ids)
        for sid in ids:
            self._by_segment[sid] = task
        self.tasks.add(task)

        def done(_task: Round) -> None:
            self.tasks.discard(task)
            for sid in ids:
                if self._by_segment.get(sid) is task:
                    del self._by_segment[sid]

        task.add_done_callback(done)
        return task


async def wait_for(rounds: Collection[Round], timeout: float) -> None:
    """Until ``rounds`` have ended, at most ``timeout`` seconds; they go on either way (other
    readers may wait for them too)."""
    if rounds:
        await asyncio.wait(rounds, timeout=max(0.0, timeout))
