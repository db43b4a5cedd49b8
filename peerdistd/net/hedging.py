"""When to ask a second holder for a block the first has not delivered: hedged requests.

The delay is learned: twice the 95th percentile of recent block latencies (from asking to
a verified block, winners only), clamped, so a slow or trickling peer costs a read at most
about that much per block it was asked first while a good holder exists ("The Tail at
Scale", Dean and Barroso, 2013: hedged requests after the p95 latency).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

WINDOW: Final = 256  # recent latencies kept
MIN_SAMPLES: Final = 16  # below this, HEDGE_DEFAULT
HEDGE_FLOOR: Final = 0.02  # seconds; a LAN round trip and some, so hedges stay rare
HEDGE_CEILING: Final = 1.0  # half the [MS-PCCRR] 2 s request timer
HEDGE_DEFAULT: Final = 0.05  # before MIN_SAMPLES: a LAN connect, round trip and disk read
_RECOMPUTE_EVERY: Final = 8


class LatencyWindow:
    """The last WINDOW block latencies and the hedge delay they give."""

    def __init__(self, size: int = WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._p95: float | None = None
        self._fresh = 0  # samples added since the percentile was computed

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._fresh += 1

    def p95(self) -> float | None:
        """The 95th percentile (nearest rank), or None with fewer than MIN_SAMPLES."""
        count = len(self._samples)
        if count < MIN_SAMPLES:
            return None
        if self._p95 is None or self._fresh >= _RECOMPUTE_EVERY:
            ranked = sorted(self._samples)
            self._p95 = ranked[math.ceil(0.95 * count) - 1]
            self._fresh = 0
        return self._p95

    def hedge_delay(self) -> float:
        p95 = self.p95()
        if p95 is None:
            return HEDGE_DEFAULT
        return min(max(2.0 * p95, HEDGE_FLOOR), HEDGE_CEILING)
