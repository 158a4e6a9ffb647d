"""The one writer of a database's holds: every request's place, settle, release and checkpoint
goes through it, and it commits everything pending in one transaction (group commit, as
PostgreSQL and TigerBeetle batch). While a batch commits, the next gathers; there is no timer,
so a lone request waits for nothing but its own commit. (A store may commit a small batch
without suspending at all — SQLite's, when its write lock is free: `hold_store_sqlite.py`;
the operations that arrive meanwhile then gather while the event loop serves their callers.)

Failure semantics:

- **Database unavailable.** A batch that fails is not lost. Its settlements, releases,
  expiries and checkpoints stay queued, in order, and are retried (backing off up to
  `max_backoff`) until they land — a response that reached its client is billed however long
  the outage lasts. Its places are answered with ServiceUnavailable (the client gets a 503
  and retries); because a place whose COMMIT broke may still have happened, each of them is
  followed by a release, which ends the hold if it exists and does nothing if it does not.
  While the database is failing, new places are refused at once, without waiting for it.
- **Cancelled callers.** A caller that stops waiting (its client went away) changes nothing
  about what the writer does: a place the caller no longer waits for is released as soon as
  it is placed (see `Holds.place`).
- **Shutdown.** `stop` commits what is queued, retrying, for up to its timeout; what still
  could not land is logged at ERROR with each hold id, and is then ended by another node's
  expiry once this node's lease lapses (at the hold's last checkpoint).
- **Crash.** What was queued and not committed is lost with the process; the hold stays open
  until another node sees the lease of this one lapse, and ends it at its last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core_service.billing.hold_store import (
    Batch,
    BatchOutcome,
    Checkpoint,
    Ending,
    EndOrder,
    HoldStore,
    NewHold,
    Refusal,
)
from core_service.clock import Clock
from core_service.db.errors import is_unavailable
from core_service.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# An operation of a batch (None: a duplicate end) and the future its caller waits on.
_Waiter = tuple[object, "asyncio.Future[Any]"]

# Batches larger than this are split: a transaction's statements grow with it.
MAX_BATCH = 1000


@dataclass
class _Pending:
    ends: deque[tuple[EndOrder, asyncio.Future[int | None]]] = field(default_factory=deque)
    places: list[tuple[NewHold, asyncio.Future[Refusal | None]]] = field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ends) + len(self.places) + len(self.checkpoints)


@dataclass
class WriterStats:
    batches: int = 0
    operations: int = 0
    failures: int = 0


class HoldWriter:
    def __init__(
        self,
        store: HoldStore,
        clock: Clock,
        *,
        first_backoff: float = 0.05,
        max_backoff: float = 0.5,
    ) -> None:
        self._store = store
        self._clock = clock
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._isolating = False
        self._oldest_queued: float | None = None
        # Accounts whose balance a committed batch charged, for the low-balance check.
        self._charged: set[str] = set()
        self.stats = WriterStats()

    # -- what callers ask for -------------------------------------------------------------

    def place(self, hold: NewHold) -> asyncio.Future[Refusal | None]:
        """The hold, in the next batch: resolves to None when placed, or to why not (the
        available balance, or the key's cap, fell short). ServiceUnavailable while the
        database is failing."""
        future: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        if self._failing:
            future.set_exception(_unavailable())
            return future
        self._pending.places.append((hold, future))
        self._queued()
        return future

    def end(self, order: EndOrder) -> asyncio.Future[int | None]:
        """End a hold (settle, release or expire), retried until it lands: resolves to what
        was charged, or None when the hold was no longer open."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.ends.append((order, future))
        self._queued()
        return future

    def checkpoint(self, point: Checkpoint) -> None:
        """Record an open hold's usage so far; a newer checkpoint of the same hold replaces
        one still queued."""
        self._pending.checkpoints[point.hold_id] = point
        self._queued()

    # -- state ------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def oldest_age(self) -> float:
        """Seconds the oldest queued operation has waited (0 when none)."""
        if self._oldest_queued is None:
            return 0.0
        return max(0.0, self._clock.monotonic() - self._oldest_queued)

    @property
    def failing(self) -> bool:
        return self._failing

    def take_charged(self) -> set[str]:
        """The accounts charged since the last call (their balance went down)."""
        charged, self._charged = self._charged, set()
        return charged

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hold writer")

    async def stop(self, timeout: float) -> None:
        """Commit what is queued (retrying) for up to `timeout`, then stop."""
        if self._task is None:
            return
        if not await self.drain(timeout):
            self._report_unlanded()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued; False if the timeout came first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _queued(self) -> None:
        if self._oldest_queued is None:
            self._oldest_queued = self._clock.monotonic()
        self._idle.clear()
        self._wake.set()

    def _take(self, size: int) -> tuple[Batch, list[_Waiter]]:
        pending = self._pending
        batch = Batch()
        waiters: list[_Waiter] = []
        seen: set[str] = set()
        while pending.ends and len(batch) < size:
            order, future = pending.ends.popleft()
            if order.hold_id in seen:  # the first order for a hold decides; the rest find it ended
                waiters.append((None, future))
                continue
            seen.add(order.hold_id)
            batch.ends.append(order)
            waiters.append((order, future))
        room = max(0, size - len(batch))
        places, pending.places = pending.places[:room], pending.places[room:]
        for hold, place in places:
            batch.places.append(hold)
            waiters.append((hold, place))
        room = max(0, size - len(batch))
        for hold_id in list(pending.checkpoints)[:room]:
            point = pending.checkpoints.pop(hold_id)
            if hold_id not in seen:
                batch.checkpoints.append(point)
        return batch, waiters

    def _requeue(self, batch: Batch, waiters: list[_Waiter]) -> None:
        """Put a failed batch back as it was (its operations first, in order)."""
        pending = self._pending
        ends = [(o, f) for o, f in waiters if isinstance(o, EndOrder)]
        pending.ends.extendleft(reversed(ends))
        pending.places[:0] = [(h, f) for h, f in waiters if isinstance(h, NewHold)]
        for point in batch.checkpoints:
            pending.checkpoints.setdefault(point.hold_id, point)
        for old, future in waiters:
            if old is None and not future.done():
                future.set_result(None)

    @staticmethod
    def _drop(batch: Batch, waiters: list[_Waiter], error: Exception) -> None:
        """An operation the database refuses on its own (not an outage): no retry can land
        it. Said loudly; `kyma admin ledger verify` shows the hold it leaves open."""
        log.error("dropping a hold operation the database refuses: %s (%r)", batch, error)
        for _, future in waiters:
            if not future.done():
                future.set_exception(error)
                future.exception()  # its waiter, if any, sees it; none may be waiting

    async def _run(self) -> None:
        backoff = self._first_backoff
        while True:
            if not self._pending:
                self._oldest_queued = None
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, waiters = self._take(1 if self._isolating else MAX_BATCH)
            try:
                outcome = await self._store.commit(batch)
            except Exception as error:  # the database failed; nothing of the batch is lost
                self.stats.failures += 1
                if is_unavailable(error):
                    self._failed(batch, waiters, error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                elif len(batch) > 1:
                    # Not an outage: one operation is bad. Retry one at a time to find it.
                    log.error("a batch of %d failed (%r); retrying one by one", len(batch), error)
                    self._requeue(batch, waiters)
                    self._isolating = True
                else:
                    self._drop(batch, waiters, error)
                continue
            self._isolating = self._isolating and bool(self._pending)
            if self._failing:
                log.info("the database takes writes again: holds and settlements resume")
                self._failing = False
            backoff = self._first_backoff
            self.stats.batches += 1
            self.stats.operations += len(batch)
            self._charged.update(o.account_id for o in batch.ends if outcome.ended.get(o.hold_id))
            self._resolve(waiters, outcome)
            if self._pending:
                self._oldest_queued = self._clock.monotonic()

    def _failed(
        self,
        batch: Batch,
        waiters: list[_Waiter],
        error: Exception,
        backoff: float,
    ) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "the database refused a batch of %d (%s): retrying settlements every %.2gs or "
                "more; new requests get 503 until it answers",
                len(batch),
                type(error).__name__,
                backoff,
            )
        pending = self._pending
        # Ends and checkpoints go back to the front, in their order, with their waiters.
        self._requeue(
            Batch(checkpoints=batch.checkpoints),
            [w for w in waiters if not isinstance(w[0], NewHold)],
        )
        for hold, future in waiters:
            if isinstance(hold, NewHold):
                if not future.done():
                    future.set_exception(_unavailable())
                # The COMMIT may have happened after all: end it if it exists.
                pending.ends.append(
                    (
                        EndOrder(
                            hold.hold_id,
                            hold.account_id,
                            Ending.RELEASED,
                            self._clock.now(),
                            key_id=hold.key_id,
                        ),
                        asyncio.get_running_loop().create_future(),
                    )
                )
        # Already-failed places waiting behind this batch are refused at once too.
        for _hold, future in pending.places:
            if not future.done():
                future.set_exception(_unavailable())
        pending.places = []

    @staticmethod
    def _resolve(waiters: list[_Waiter], outcome: BatchOutcome) -> None:
        for item, future in waiters:
            if future.done():
                continue
            if isinstance(item, NewHold):
                future.set_result(outcome.placed[item.hold_id])
            elif isinstance(item, EndOrder):
                future.set_result(outcome.ended.get(item.hold_id))
            else:
                future.set_result(None)

    def _report_unlanded(self) -> None:
        holds = [order.hold_id for order, _ in self._pending.ends]
        log.error(
            "shutting down with %d hold endings not written (the database does not take them): "
            "%s; another node ends them at their last checkpoint once this node's lease lapses",
            len(holds),
            ", ".join(holds[:50]) + (" …" if len(holds) > 50 else ""),
        )


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Kyma cannot reach its database right now; nothing was charged. Retry in a moment.",
        retry_after_seconds=1,
    )
