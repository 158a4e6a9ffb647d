"""The bridge's HTTP/1.1 connections: uvicorn's httptools protocol, with bounds on what a request
may cost before the app ever sees it, and one INFO line for each client that leaves early.

uvicorn bounds neither the size nor the duration of a request's head, and its parser buffers a
header value whole before handing it over, so without these a client could hold a connection
open forever a byte a second, or make the bridge buffer a megabyte of one header. Bounds:

- The request line and headers: at most `max_header_bytes` and `max_headers` fields, else 431
  and the connection closed. The bytes are counted as they arrive, before the parser buffers
  them, so what one request's head can occupy is the limit plus one read (64 KiB at most).
- They must arrive within `header_timeout` of the request's first byte (or of the connection's
  opening, for its first request): else 408 and the connection closed. Between requests on a
  kept-alive connection, uvicorn's keep-alive timeout (5 s) applies.
- The body must arrive within `body_timeout` after the headers: else the connection is closed
  (the app sees the client go; a response already started cannot become a 408).

A client that goes away before its response is complete is logged as one INFO line here (the
app answers such a request quietly: see `http_bridge/disconnects.py`), never as an ERROR.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from http_bridge.errors import OpenAIError

log = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"
# How long a refused connection is drained before it is closed (nginx's lingering_time is 30 s;
# a client that is still sending after 2 s is sending something we would not read anyway).
_LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Use `bounded_protocol(limits)`: uvicorn makes the protocol itself, so the limits ride on
    a subclass."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, for a terminator split across reads
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._dropped: str | None = None  # why we closed the connection, if we did
        self._lingering = False

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._dropped is not None:
            log.info("closed a connection from %s: %s", self._peer(), self._dropped)
        elif self.cycle is not None and not self.cycle.response_complete:
            log.info(
                "client %s went away before its response was complete (%s %s)",
                self._peer(),
                self.scope.get("method", "?"),
                self.scope.get("path", "?"),
            )
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            return  # refused: what still comes is dropped, never parsed or kept
        if self._reading_head:
            self._count_head(data)
            if self._dropped is not None:
                return
        super().data_received(data)

    # Parser callbacks: once refused, the rest of what was read is parsed and ignored (raising
    # here would make uvicorn answer a 400 of its own after ours).

    def on_message_begin(self) -> None:
        if self._dropped is not None:
            return
        super().on_message_begin()
        self._reading_head = True
        self._header_count = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        if self._dropped is None:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._dropped is not None:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"A request may carry at most {self.limits.max_headers} headers.")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._dropped is not None:
            return
        self._reading_head = False
        self._head_bytes = 0
        self._head_tail = b""
        self._arm(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._dropped is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._dropped is not None:
            return
        self._disarm()
        # Whatever this connection sends next starts the next request's head.
        self._reading_head = True
        super().on_message_complete()

    # The bounds

    def _count_head(self, data: bytes) -> None:
        """Count the head's bytes as they arrive (only up to its end: what follows is body)."""
        seen = self._head_tail + data
        end = seen.find(_HEAD_END)
        counted = len(data) if end < 0 else max(0, end + len(_HEAD_END) - len(self._head_tail))
        self._head_bytes += counted
        self._head_tail = seen[-(len(_HEAD_END) - 1) :] if end < 0 else b""
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(
                431,
                f"The request line and headers are larger than "
                f"{self.limits.max_header_bytes} bytes.",
            )

    def _head_too_slow(self) -> None:
        self._deadline = None
        self._refuse(
            408,
            f"The request line and headers did not arrive within "
            f"{self.limits.header_timeout:g} seconds.",
        )

    def _body_too_slow(self) -> None:
        self._deadline = None
        self._dropped = (
            f"its request body did not arrive within {self.limits.body_timeout:g} seconds"
        )
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` (if no response has started on this connection) and close it."""
        self._disarm()
        self._dropped = f"{status}: {message}"
        if self.transport.is_closing() or self._lingering:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: it cannot become this answer
            return
        body = OpenAIError(status, message).body()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # A lingering close, as nginx does: closing at once with the client's unread bytes in
        # our buffer would reset the connection and lose the answer. So the answer is sent, our
        # side shut, and what the client still sends is read and dropped (never kept) until it
        # closes or `_LINGER_SECONDS` pass.
        self.transport.write_eof()
        self._lingering = True
        self._arm(_LINGER_SECONDS, self.transport.close)

    def _arm(self, seconds: float, expired: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
