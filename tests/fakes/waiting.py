"""Waiting in tests for something that happens elsewhere (another process, a chore), bounded
only for liveness: how long it takes is never what a test measures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

LIVENESS = 60.0  # seconds a start, a stop or an awaited event may take before a test gives up


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for `condition` (a liveness bound, not a measure of speed)."""
    deadline = time.monotonic() + LIVENESS
    while not await condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.05)
