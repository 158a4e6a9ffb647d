"""Writing request logs off the request path.

`record` only appends to a bounded in-memory buffer; a background task writes it out in
batches, one multi-row statement each (COPY on PostgreSQL, executemany on SQLite). When the
database is slow or down the buffer stops growing at `capacity` and further entries are
dropped and counted: logging never slows, blocks or fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.logs.entry import RequestLogEntry
from core_service.logs.retention import ensure_day_partitions, sqlite_timestamp

log = logging.getLogger(__name__)

_COLUMNS = tuple(field.name for field in fields(RequestLogEntry))
_SQLITE_INSERT = (
    f"INSERT INTO request_logs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 5.0
_MAX_BACKOFF_STOPPING = 0.5
_REPORT_EVERY = 10.0  # seconds between warnings about dropped entries
# PostgreSQL error classes that no retry can fix: data exceptions and constraint violations.
_BAD_DATA_SQLSTATE_CLASSES = ("22", "23")
_NO_PARTITION_SQLSTATE = "23514"


def _record(
    entry: RequestLogEntry, *, stamp: Callable[[datetime], Any], flag: Callable[[bool], Any]
) -> tuple[Any, ...]:
    """One row in column order; the backends differ only in how times and flags are stored."""
    return (
        entry.id,
        stamp(entry.created_at),
        entry.request_id,
        entry.account_id,
        entry.key_id,
        entry.endpoint,
        entry.model,
        entry.deployment,
        entry.status,
        float(entry.latency_ms),
        None if entry.ttft_ms is None else float(entry.ttft_ms),
        int(entry.prompt_tokens),
        int(entry.completion_tokens),
        int(entry.cost_nanos),
        flag(entry.estimated),
        flag(entry.stream),
        entry.request_body,
        entry.response_body,
        int(entry.cached_tokens),
        int(entry.cache_write_tokens),
        int(entry.reasoning_tokens),
        entry.hold_id,
    )


def _postgres_record(entry: RequestLogEntry) -> tuple[Any, ...]:
    return _record(entry, stamp=lambda t: t.astimezone(UTC).replace(tzinfo=None), flag=bool)


def _sqlite_record(entry: RequestLogEntry) -> tuple[Any, ...]:
    return _record(entry, stamp=sqlite_timestamp, flag=lambda value: 1 if value else 0)


def _causes(exc: BaseException) -> list[BaseException]:
    """The error and what it wraps (SQLAlchemy's `orig`, `__cause__`)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def _sqlstate(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def _is_bad_data(exc: BaseException) -> bool:
    """True when the rows themselves are at fault (retrying cannot help); False when the
    database is (down, locked, restarting), which a retry will get past."""
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in _BAD_DATA_SQLSTATE_CLASSES
    for cause in _causes(exc):
        # Client-side: a value the driver cannot encode (asyncpg's DataError is a ValueError).
        if isinstance(cause, (ValueError, OverflowError, TypeError)):
            return True
        if type(cause).__name__ in ("IntegrityError", "DataError"):  # sqlite3's and SQLAlchemy's
            return True
    return False


def _describe(exc: BaseException) -> str:
    """Names the error without its message: messages can quote row content."""
    state = _sqlstate(exc)
    names = " <- ".join(type(cause).__name__ for cause in _causes(exc))
    return f"{names} (SQLSTATE {state})" if state else names


def _sanitised(entry: RequestLogEntry) -> RequestLogEntry:
    """The entry with what no database can hold replaced: NUL (PostgreSQL text) and lone
    surrogates (not UTF-8)."""
    changes: dict[str, Any] = {}
    for name in _COLUMNS:
        value = getattr(entry, name)
        if isinstance(value, str):
            clean = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
            if clean != value:
                changes[name] = clean
    return replace(entry, **changes) if changes else entry


class RequestLogWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
    ) -> None:
        if capacity < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("capacity, batch_size and flush_interval must be positive")
        self._engine = engine
        self._clock = clock
        self._capacity = capacity
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._postgres = engine.dialect.name == "postgresql"
        self._buffer: deque[RequestLogEntry] = deque()
        # The batch being written: counted against capacity until it is in the database.
        self._inflight: list[RequestLogEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        # UTC days whose partition is known to exist (PostgreSQL); forgotten on any failure.
        self._days: set[date] = set()
        self._dropped = 0
        self._dropped_reported = 0
        self._dropped_reported_at: float | None = None
        self._written = 0
        self._failed_batches = 0
        self._rejected = 0

    @property
    def pending(self) -> int:
        """Entries recorded but not yet written (never more than capacity)."""
        return len(self._buffer) + len(self._inflight)

    @property
    def dropped(self) -> int:
        """Entries lost: recorded while the buffer was full, or still unwritten at stop."""
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    @property
    def failed_batches(self) -> int:
        """Write attempts that failed and were retried."""
        return self._failed_batches

    @property
    def rejected(self) -> int:
        """Entries the database refused even after sanitising (not retried)."""
        return self._rejected

    def record(self, entry: RequestLogEntry) -> None:
        """Queue `entry` for writing; never blocks or raises. Call from the event loop thread."""
        try:
            if self._closed or len(self._buffer) + len(self._inflight) >= self._capacity:
                self._dropped += 1
                return
            self._buffer.append(entry)
            if len(self._buffer) >= self._batch_size:
                self._wake.set()
        except Exception:  # never the caller's problem
            self._dropped += 1

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="request-log-writer"
            )
            self._task.add_done_callback(self._task_ended)

    async def stop(self, timeout: float) -> None:
        """Write everything recorded so far (retrying up to `timeout` seconds), then stop.
        What is still unwritten after that is counted as dropped."""
        if self._task is None and self.pending:
            await self.start()
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._closed = True
        lost = self.pending
        if lost:
            self._dropped += lost
            self._buffer.clear()
            self._inflight = []
            log.error("request log writer stopped with %d entries unwritten", lost)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("request log writer failed", exc_info=task.exception())

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        failing = False
        while True:
            if not self._inflight:
                if len(self._buffer) < self._batch_size and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._flush_interval)
                self._report_drops()
                if not self._buffer:
                    if self._stopping:
                        return
                    continue
                take = min(self._batch_size, len(self._buffer))
                self._inflight = [self._buffer.popleft() for _ in range(take)]
                # A wake-up is for a full batch not yet taken; `record` sets it again when one is.
                self._wake.clear()
            try:
                await self._write_inflight()
            except Exception as exc:
                self._failed_batches += 1
                self._days.clear()
                if not failing:
                    log.warning(
                        "writing %d request log entries failed (%s); retrying with backoff",
                        len(self._inflight),
                        _describe(exc),
                    )
                    failing = True
                await asyncio.sleep(
                    min(backoff, _MAX_BACKOFF_STOPPING) if self._stopping else backoff
                )
                backoff = min(backoff * 2, _MAX_BACKOFF)
                self._report_drops()
                continue
            if failing:
                log.info(
                    "request log writes recovered after %d failed attempts", self._failed_batches
                )
                failing = False
            backoff = _FIRST_BACKOFF

    async def _write_inflight(self) -> None:
        """Write the in-flight batch. Rows the database refuses are isolated by halving (one bad
        row costs O(log n) extra statements, not the batch); a transient error propagates with
        the unwritten rest left in flight for the retry."""
        stack = [self._inflight]
        try:
            while stack:
                part = stack[-1]
                try:
                    await self._insert(part)
                except Exception as exc:
                    if not _is_bad_data(exc):
                        raise
                    stack.pop()
                    if len(part) > 1:
                        middle = len(part) // 2
                        stack.append(part[middle:])
                        stack.append(part[:middle])
                    elif (clean := _sanitised(part[0])) != part[0]:
                        stack.append([clean])
                    else:
                        self._rejected += 1
                        log.warning(
                            "request log entry refused by the database (%s); skipped",
                            _describe(exc),
                        )
                    continue
                stack.pop()
                self._written += len(part)
        finally:
            self._inflight = [entry for part in reversed(stack) for entry in part]

    async def _insert(self, batch: list[RequestLogEntry]) -> None:
        if self._postgres:
            await self._insert_postgres(batch)
        else:
            records = [_sqlite_record(entry) for entry in batch]
            async with self._engine.begin() as conn:
                await conn.exec_driver_sql(_SQLITE_INSERT, records)

    async def _insert_postgres(self, batch: list[RequestLogEntry]) -> None:
        days = {entry.created_at.astimezone(UTC).date() for entry in batch}
        # Tomorrow too, so the day's partition exists before midnight rather than at it.
        days.add(self._clock.now().astimezone(UTC).date() + timedelta(days=1))
        await self._ensure_days(days)
        records = [_postgres_record(entry) for entry in batch]
        try:
            await self._copy(records)
        except Exception as exc:
            if _sqlstate(exc) != _NO_PARTITION_SQLSTATE:
                raise
            # A cached day was dropped since (purge, or by hand): create it again, once.
            self._days.clear()
            await self._ensure_days(days)
            await self._copy(records)

    async def _ensure_days(self, days: set[date]) -> None:
        missing = days - self._days
        if missing:
            await ensure_day_partitions(self._engine, missing)
            self._days |= missing

    async def _copy(self, records: list[tuple[Any, ...]]) -> None:
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # asyncpg's binary COPY: one round trip and no SQL parsing per row. COPY is atomic
            # on its own, so no transaction is opened around it.
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                "request_logs", records=records, columns=_COLUMNS
            )

    def _report_drops(self) -> None:
        if self._dropped == self._dropped_reported:
            return
        now = self._clock.monotonic()
        if (
            self._dropped_reported_at is not None
            and now - self._dropped_reported_at < _REPORT_EVERY
        ):
            return
        log.warning(
            "request log buffer full: %d entries dropped (%d in all)",
            self._dropped - self._dropped_reported,
            self._dropped,
        )
        self._dropped_reported = self._dropped
        self._dropped_reported_at = now
