"""A cheap HTTP/1.1 load generator for scripts/bench: raw asyncio protocols on uvloop.

One keep-alive connection per concurrent worker; each worker sends a request, reads the whole
response (Content-Length or chunked, SSE streams to their end) and sends the next one. Given
several prepared requests (e.g. one per API key), worker i always sends request i mod their
number; given one, every worker sends it. The per request work is a few bytes operations, so
on a small machine the generator takes little CPU away from the processes it measures. It
talks to whatever `host:port` it is given (the bench uses 127.0.0.1 only).

A request counts as an error when the connection breaks, the status is not 200, or (for streams)
the decoded body does not end with `data: [DONE]\\n\\n`; for JSON answers, when the body has no
`"choices"`. Requests still in flight `drain_s` after the window's end are cut (their connections
closed): counted apart as `cut`, not as errors, with the chunks they carried.

For streams it also times the chunks, cheaply: on each read that completes SSE events (counted
as blank-line separators in the decoded body, one C-level `bytes.count` per read) it takes one
clock reading; the first event of that read gets the gap since the previous read's events, the
others of the same read a gap of 0 (they arrived together, as the client saw them). Time to
first token is the time from sending the request to the read that brought the first event with
non-empty `"content"`: searched for only until found, so a few searches per stream. (A stream
sent with a Content-Length, or until the connection closes, is timed only as a whole.)

A ramp (`ramp_s`) staggers the workers' starts and delays the measured window until they all
run: see run_load.
"""

from __future__ import annotations

import array
import asyncio
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench_stats import percentile

_HEADER_END = b"\r\n\r\n"
_DONE = b"data: [DONE]\n\n"
_EVENT_END = b"\n\n"
# The first token: a "content" string that is not empty (the role chunk's is "").
_FIRST_TOKEN = re.compile(rb'"content"\s*:\s*"(?!")')

__all__ = ["Result", "build_request", "percentile", "run_load"]


class _Broken(Exception):
    pass


class _Cut(Exception):
    """The request was still running when the window's drain time ran out."""


@dataclass
class Result:
    """What one phase of load produced. Latencies are in nanoseconds, successes only."""

    ok: int = 0
    errors: int = 0
    cut: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_byte_ns: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    # streams only: SSE events received (every request's, [DONE] included), of which [DONE]s
    events: int = 0
    done_events: int = 0
    first_token_ns: list[int] = field(default_factory=list)
    gaps_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    # perf_counter_ns when the measured window began (after the ramp, if any)
    measure_from_ns: int = 0

    @property
    def requests(self) -> int:
        """Every request started: answered, failed or cut."""
        return self.ok + self.errors + self.cut

    @property
    def chunks(self) -> int:
        """SSE chunks received, [DONE] not counted."""
        return self.events - self.done_events

    def error(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request()` sends a prepared request and resolves to
    (status, decoded body, time of the first body byte) once the response is complete."""

    def __init__(self, result: Result | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, int]] | None = None
        # streams are timed into this (None: not a stream)
        self._result = result
        self._sent_ns = 0
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers_done = False
        self._chunked = False
        self._length = -1
        self._close_after = False
        self._body = bytearray()
        self._pos = 0  # chunked parse position in _buf
        self._first_ns = 0
        self._last_event_ns = 0
        self._token_seen = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            # A body without a length ends with the connection.
            if self._headers_done and not self._chunked and self._length < 0:
                self._body = self._buf
                self._buf = bytearray()
                if self._result is not None:
                    self._timestamp_events(0)
                self._finish()
            else:
                self._waiter.set_exception(_Broken(f"connection closed mid-response ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except _Broken as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    # --- parsing ------------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._waiter is None or self._waiter.done():
            if self._buf:
                raise _Broken("unexpected bytes between responses")
            return
        buf = self._buf
        if not self._headers_done:
            end = buf.find(_HEADER_END)
            if end < 0:
                if len(buf) > 65536:
                    raise _Broken("response headers too large")
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            try:
                self._status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                raise _Broken(f"bad status line {head[0]!r}") from None
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self._length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self._chunked = True
                elif name == "connection" and "close" in value.lower():
                    self._close_after = True
            self._headers_done = True
            if 100 <= self._status < 200:  # an interim answer: read the real one
                self._reset()
                return self._parse()
            if self._status in (204, 304):
                self._length = 0
        if buf and not self._first_ns:
            self._first_ns = time.perf_counter_ns()
        if self._chunked:
            self._parse_chunks()
        elif self._length >= 0:
            if len(buf) >= self._length:
                self._body = buf[: self._length]
                del buf[: self._length]
                if self._result is not None:
                    self._timestamp_events(0)  # a stream sent whole: its events came at once
                self._finish()
        # else: read until the connection closes

    def _parse_chunks(self) -> None:
        buf = self._buf
        pos = self._pos
        before = len(self._body)
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            try:
                size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            except ValueError:
                raise _Broken("bad chunk size") from None
            if size == 0:
                # last chunk, no trailers expected: "0\r\n\r\n"
                if len(buf) < line_end + 4:
                    break
                pos = line_end + 4
                del buf[:pos]
                self._pos = 0
                if self._result is not None and len(self._body) > before:
                    self._timestamp_events(before)
                self._finish()
                return
            if len(buf) < line_end + 2 + size + 2:
                break
            self._body += buf[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
        # drop what has been consumed so the buffer stays small for long streams
        del buf[:pos]
        self._pos = 0
        if self._result is not None and len(self._body) > before:
            self._timestamp_events(before)

    def _timestamp_events(self, start: int) -> None:
        """Count the SSE events completed by the body bytes from `start` on and time them."""
        body = self._body
        events = body.count(_EVENT_END, max(0, start - 1))
        if not events and self._token_seen:
            return
        now = time.perf_counter_ns()
        result = self._result
        assert result is not None
        if not self._token_seen and _FIRST_TOKEN.search(body, max(0, start - 32)):
            self._token_seen = True
            if self._sent_ns >= result.measure_from_ns:
                result.first_token_ns.append(now - self._sent_ns)
        if not events:
            return
        if now < result.measure_from_ns:  # still ramping up
            self._last_event_ns = now
            return
        result.events += events
        gaps = result.gaps_ns
        if self._last_event_ns:  # no gap before a stream's first event
            gaps.append(now - self._last_event_ns)
        for _ in range(events - 1):
            gaps.append(0)
        self._last_event_ns = now

    def _finish(self) -> None:
        waiter = self._waiter
        result = (self._status, bytes(self._body), self._first_ns)
        close = self._close_after
        self._waiter = None
        self._reset()
        if close and self.transport is not None:
            self.transport.close()
            self.closed = True
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def time_out(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(_Broken("timed out"))
        if self.transport is not None:
            self.transport.close()

    # --- use ----------------------------------------------------------------------------------

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes, int]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._sent_ns = time.perf_counter_ns()
        self.transport.write(raw)
        return self._waiter

    def cut(self) -> None:
        """Abandon the request in flight (the window is over) and close the connection."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(_Cut())
        if self.transport is not None:
            self.transport.close()


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _connect(host: str, port: int, result: Result | None) -> _Connection:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(lambda: _Connection(result), host, port)
    return protocol


async def run_load(
    *,
    host: str,
    port: int,
    raw_request: bytes | Sequence[bytes],
    stream: bool,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 30.0,
    drain_s: float | None = None,
    ramp_s: float = 0.0,
    phase_s: float = 0.0,
    on_measure: Callable[[], None] | None = None,
) -> Result:
    """Keep `concurrency` requests in flight until `duration_s` passes or `max_requests` have
    been started; wait for the ones in flight to finish (for at most `drain_s` more seconds when
    given: then the rest are cut), and return what happened. With several prepared requests,
    worker i sends `raw_request[i % len(raw_request)]`.

    With `ramp_s`, worker i starts `i * ramp_s / concurrency` seconds late, and the measured
    window begins only when the ramp is over (`on_measure` is called then): long requests, such
    as paced streams, then start and end spread evenly over time, not all in step, and the
    window sees the full concurrency from its first moment. Requests sent during the ramp run
    (their later chunks count) but are not counted themselves, nor their time to first token;
    failures are counted whenever they happen.

    With `phase_s` (paced streams: one token interval), worker i's start is also offset by a
    fraction of `phase_s` drawn from a generator seeded with i, so streams paced at one
    interval do not tick in step, as independent users' streams do not: a ramp alone whose
    spacing is a multiple of half the interval (200 streams of 6 s at 50 tokens/s: 30 ms
    apart) puts them in two phase groups, 100 chunks arriving at once every 10 ms."""
    raws = [raw_request] if isinstance(raw_request, bytes) else list(raw_request)
    if not raws:
        raise ValueError("run_load needs at least one prepared request")
    result = Result()
    timed = result if stream else None
    started = 0
    loop = asyncio.get_running_loop()
    measure_at = loop.time() + ramp_s
    deadline = measure_at + duration_s
    result.measure_from_ns = time.perf_counter_ns() + int(ramp_s * 1e9)
    latencies = result.latencies_ns
    first_bytes = result.first_byte_ns
    in_flight: dict[int, _Connection] = {}
    cutting = False

    def cut_all() -> None:
        nonlocal cutting
        cutting = True
        for conn in list(in_flight.values()):
            conn.cut()

    async def worker(index: int) -> None:
        nonlocal started
        raw = raws[index % len(raws)]
        conn: _Connection | None = None
        if ramp_s or phase_s:
            offset = random.Random(index).random() * phase_s
            await asyncio.sleep(index * ramp_s / concurrency + offset)
        try:
            while loop.time() < deadline and started < max_requests:
                counted = loop.time() >= measure_at
                started += counted
                if conn is None or conn.closed:
                    try:
                        conn = await _connect(host, port, timed)
                    except OSError as exc:
                        result.error(f"connect: {exc!r}")
                        conn = None
                        await asyncio.sleep(0.05)
                        continue
                t0 = time.perf_counter_ns()
                # (not asyncio.wait_for: on Python 3.11 it can swallow a cancellation (Ctrl-C)
                # when the answer arrives in the same loop iteration, which here is common)
                pending = conn.request(raw)
                in_flight[index] = conn
                timer = loop.call_later(timeout_s, conn.time_out)
                try:
                    status, body, first = await pending
                except _Cut:
                    result.cut += 1
                    conn = None
                    continue
                except (_Broken, OSError) as exc:
                    if cutting:
                        result.cut += 1
                    else:
                        result.error(f"broken: {exc!r}"[:300])
                    if conn.transport is not None:
                        conn.transport.close()
                    conn = None
                    continue
                finally:
                    timer.cancel()
                    in_flight.pop(index, None)
                t1 = time.perf_counter_ns()
                if stream and body.endswith(_DONE) and t1 >= result.measure_from_ns:
                    result.done_events += 1
                if status != 200:
                    result.error(f"HTTP {status}: {body[:200]!r}")
                elif stream and not body.endswith(_DONE):
                    result.error(f"stream did not end with [DONE]: ...{body[-200:]!r}")
                elif not stream and b'"choices"' not in body:
                    result.error(f"no choices in body: {body[:200]!r}")
                elif counted:
                    result.ok += 1
                    latencies.append(t1 - t0)
                    first_bytes.append(first - t0 if first else t1 - t0)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    cutter = loop.call_at(deadline + drain_s, cut_all) if drain_s is not None else None
    marker = loop.call_at(measure_at, on_measure) if on_measure is not None else None
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for handle in (cutter, marker):
            if handle is not None:
                handle.cancel()
    result.elapsed_s = max(0.0, loop.time() - measure_at)
    return result
