"""Work that must finish but need not delay a response (settling holds, writing logs): tracked,
retried on failure, and drained on shutdown so nothing is lost by a graceful stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self, *, attempts: int = 6, first_delay: float = 0.1) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attempts = attempts
        self._first_delay = first_delay

    def spawn(self, name: str, work: Callable[[], Awaitable[Any]]) -> None:
        """Run `work()` soon; retry it with backoff when it raises (it must be idempotent)."""
        task = asyncio.get_running_loop().create_task(self._run(name, work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, name: str, work: Callable[[], Awaitable[Any]]) -> None:
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            try:
                await work()
                return
            except Exception:
                if attempt == self._attempts:
                    log.exception("background work %s failed %d times; giving up", name, attempt)
                    return
                log.warning(
                    "background work %s failed (attempt %d); retrying", name, attempt, exc_info=True
                )
                await asyncio.sleep(delay)
                delay *= 2

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait for every spawned task (and what they spawn) to finish, up to `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.error("%d background tasks still running at shutdown", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)


async def cancel_safe(work: Awaitable[T], undo: Callable[[T], object]) -> T:
    """Await `work`; if the caller is cancelled meanwhile, `work` still runs to its end and
    what it produced is undone with `undo` (e.g. a rate-limit admission given back), so a
    client that leaves at any moment never leaves something taken."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def undo_when_done(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        task.add_done_callback(undo_when_done)
        raise
