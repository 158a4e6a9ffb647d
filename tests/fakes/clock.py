"""A clock for a whole running core that moves only when the test moves it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class FrozenClock:
    """Wall time and monotonic time that both stand still until `advance` (breaker cool-downs,
    key caches, the retry budget's floor and Redis retry intervals then depend on the test's
    steps, never on how fast the machine runs them). Timeouts inside the core still run on the
    event loop's own clock."""

    def __init__(self) -> None:
        # Mid-second, so no step smaller than half a second crosses a window boundary.
        self._start = datetime.now(UTC).replace(microsecond=500_000)
        self._monotonic = time.monotonic()
        self.offset = 0.0

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return self._monotonic + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
