"""`SqliteRateLimitStore`: the rolling window of `store.py` in a small SQLite file, shared by the
worker processes of one machine (`kyma serve` with several workers and no Redis).

Exactness: every `admit` and `acquire_slot` is one ``BEGIN IMMEDIATE`` transaction, which takes
the file's write lock before it reads the counters, so the check and the write are one atomic
step across every process that opens the file (they wait their turn, up to the busy timeout).
The window arithmetic is `store.py`'s, shared with the other stores; the proof given there
(admissions serialized, each counting every bucket of its window) holds as it is.

Cost: the file holds only counters that are rebuilt within a minute, so it runs with
``synchronous=OFF`` in WAL mode (no fsync; a machine crash may lose the last counts, which errs
on the permissive side for at most one window, as a restart of the in-process store does). A check
reads each counter's window as one aggregate (`_WINDOW`: SQLite sums at most 60 rows of the
primary key's range; no bucket becomes a Python object), where `store.py`'s running total would
cost an extra row per counter to keep; only a refusal reads the buckets, for its Retry-After. A
call runs on the event loop when the write lock is free at that instant (a transaction of a few
statements, tens of microseconds: less than a hop to a thread), and never waits for it there:
when another worker holds the lock, the call is queued for the store's own thread, which takes
every call queued meanwhile in one transaction (each in a savepoint) when the lock comes free.

Failure: a call that cannot get the lock within the busy timeout (another process holding it
that long: it is stuck) raises `sqlite3.OperationalError`, as a database fault does elsewhere;
the limiter's callers then fail the request (no silent admission). Rows of buckets that have
left the window are deleted at most once a window per process; expired slots on access.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from core_service.clock import Clock
from core_service.db.sqlite_transactions import open_wal, transaction
from core_service.ratelimit.store import (
    WINDOW_S,
    Decision,
    Limit,
    LimitState,
    limit_state,
    now_ms,
    retry_after_s,
    window_floor,
)

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS buckets (key TEXT NOT NULL, second INTEGER NOT NULL, "
    "count INTEGER NOT NULL, PRIMARY KEY (key, second)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS buckets_by_second ON buckets (second)",
    "CREATE TABLE IF NOT EXISTS slots (key TEXT NOT NULL, token TEXT NOT NULL, "
    "expires REAL NOT NULL, PRIMARY KEY (key, token)) WITHOUT ROWID",
)
_BUCKETS = "SELECT second, count FROM buckets WHERE key = ? AND second >= ? ORDER BY second"
# What a check needs of a counter: its sum over the window and its newest bucket, computed by
# SQLite over the primary key's range (at most 60 rows), none of them brought into Python.
_WINDOW = "SELECT coalesce(sum(count), 0), max(second) FROM buckets WHERE key = ? AND second >= ?"
_ADD = (
    "INSERT INTO buckets (key, second, count) VALUES (?, ?, ?) "
    "ON CONFLICT (key, second) DO UPDATE SET count = count + excluded.count"
)


class SqliteRateLimitStore:
    def __init__(self, path: pathlib.Path, clock: Clock, *, busy_timeout_s: float = 10.0) -> None:
        self._path = path
        self._clock = clock
        self._timeout = busy_timeout_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kyma-ratelimit")
        self._db: sqlite3.Connection | None = None
        self._fast: sqlite3.Connection | None = None
        self._schema_lock = threading.Lock()
        self._schema_made = False
        self._pruned_at = 0
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        at_ms = now_ms(self._clock)
        return await self._run(lambda db: self._admit(db, limits, at_ms))

    async def adjust(self, key: str, second: int, delta: int) -> None:
        floor = window_floor(now_ms(self._clock) // 1000)
        if second < floor or not delta:
            return
        await self._run(lambda db: _adjust(db, key, second, delta))

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        at_ms = now_ms(self._clock)
        floor = window_floor(at_ms // 1000)

        def read(db: sqlite3.Connection) -> tuple[LimitState, ...]:
            states = []
            for limit in limits:
                used, newest = db.execute(_WINDOW, (limit.key, floor)).fetchone()
                states.append(
                    limit_state(limit.key, limit.limit, used=used, newest=newest, at_ms=at_ms)
                )
            return tuple(states)

        return await self._run(read)

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        now = now_ms(self._clock) / 1000

        def acquire(db: sqlite3.Connection) -> str | None:
            db.execute("DELETE FROM slots WHERE key = ? AND expires <= ?", (key, now))
            (held,) = db.execute("SELECT count(*) FROM slots WHERE key = ?", (key,)).fetchone()
            if held >= limit:
                return None
            token = secrets.token_urlsafe(12)
            db.execute("INSERT INTO slots VALUES (?, ?, ?)", (key, token, now + ttl_s))
            return token

        return await self._run(acquire)

    async def release_slot(self, key: str, token: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM slots WHERE key = ? AND token = ?", (key, token)),
        )

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher

        if self._fast is not None:
            self._fast.close()
            self._fast = None

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)

    # On the store's thread.

    def _connection(self) -> sqlite3.Connection:
        """The thread's connection, which waits for the lock up to the busy timeout."""
        if self._db is None:
            self._db = self._open(self._timeout)
        return self._db

    def _loop_connection(self) -> sqlite3.Connection:
        """The event loop's connection, which never waits for the lock."""
        if self._fast is None:
            self._fast = self._open(0)
        return self._fast

    def _open(self, timeout: float) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # WAL mode: on a new file, the event loop's connection (no timeout) may be refused.
        db = open_wal(self._path, timeout=timeout, synchronous="OFF")
        try:
            with self._schema_lock:
                if not self._schema_made:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    self._schema_made = True
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` as one transaction: right here if the write lock is free this instant (and
        nothing is queued before it), else in the next batch on the store's thread: one hop
        and one transaction for all the calls made meanwhile, each in a savepoint of its own
        (one that fails takes nothing of the others with it)."""
        if not self._queue and (self._flusher is None or self._flusher.done()):
            ran = self._now(work)
            if ran is not None:
                return ran[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((work, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    def _now(self, work: Callable[[sqlite3.Connection], T]) -> tuple[T] | None:
        """`work` on the event loop's own connection if the write lock is free this instant:
        a transaction of a few statements on a file that is never synced costs less than the
        hop to the thread. None when another process holds the lock (never waited for here)."""
        try:
            # Opening sets the journal mode, which needs the lock too while a new file is not
            # yet in WAL mode (every worker starting at once on it): never waited for here.
            db = self._loop_connection()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return None
        return (transaction(db, work, begun=True),)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            works = [work for work, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._thread, self._transaction, works)
            except Exception as error:  # the batch failed whole: no lock within the timeout
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():  # its caller gave up; what it did stands
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _transaction(
        self, works: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        db = self._connection()
        outcomes: list[tuple[bool, Any]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for work in works:
                db.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, work(db)))
                except Exception as error:
                    db.execute("ROLLBACK TO op")
                    outcomes.append((False, error))
                db.execute("RELEASE op")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    def _admit(self, db: sqlite3.Connection, limits: Sequence[Limit], at_ms: int) -> Decision:
        second = at_ms // 1000
        floor = window_floor(second)
        if second - self._pruned_at >= WINDOW_S:
            db.execute("DELETE FROM buckets WHERE second < ?", (floor,))
            self._pruned_at = second
        totals: dict[str, int] = {}
        for limit in limits:
            totals[limit.key] = totals.get(limit.key, 0) + limit.cost
        used: dict[str, int] = {}
        newest: dict[str, int | None] = {}
        for key in totals:
            used[key], newest[key] = db.execute(_WINDOW, (key, floor)).fetchone()
        admitted = all(used[limit.key] + totals[limit.key] <= limit.limit for limit in limits)
        if admitted:
            for key, total in totals.items():
                if total:
                    db.execute(_ADD, (key, second, total))
                    used[key] += total
                    newest[key] = max(second, newest[key] or second)
        states = []
        for limit in limits:
            retry = 0
            if not admitted:
                excess = used[limit.key] + totals[limit.key] - limit.limit
                if excess > 0:
                    # Only a refusal reads the buckets themselves: when does enough leave?
                    rows = db.execute(_BUCKETS, (limit.key, floor))
                    retry = retry_after_s(rows, second, excess, totals[limit.key], limit.limit)
            states.append(
                limit_state(
                    limit.key,
                    limit.limit,
                    used=used[limit.key],
                    newest=newest[limit.key],
                    at_ms=at_ms,
                    refused_retry_s=retry,
                )
            )
        return Decision(admitted=admitted, second=second, states=tuple(states))


def _adjust(db: sqlite3.Connection, key: str, second: int, delta: int) -> None:
    """Add `delta` to bucket `second`, never below zero; an emptied bucket is removed."""
    if delta > 0:
        db.execute(_ADD, (key, second, delta))
        return
    db.execute(
        "UPDATE buckets SET count = max(0, count + ?) WHERE key = ? AND second = ?",
        (delta, key, second),
    )
    db.execute("DELETE FROM buckets WHERE key = ? AND second = ? AND count = 0", (key, second))
