"""The bench's load generator (scripts/bench_client.py): how it counts and times SSE chunks, and
how it cuts what is still running when a window's drain time is over. Counts only, no timings."""

from __future__ import annotations

import asyncio

from bench_client import Result, _Connection, run_load

EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content": "lo"}}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


async def test_chunks_are_counted_and_timed_whatever_the_reads() -> None:
    # one HTTP chunk per event, except an event split over two chunks (inside its "\n\n"), and
    # the wire cut into reads at awkward places
    split = EVENTS[2][:-1], EVENTS[2][-1:]
    wire = HEAD + chunked(EVENTS[0], EVENTS[1], *split, EVENTS[3] + EVENTS[4])
    result = Result()
    conn = _Connection(result)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    answer = conn.request(b"POST / HTTP/1.1\r\n\r\n")
    for start in range(0, len(wire), 7):
        conn.data_received(wire[start : start + 7])
    status, body, _first = await answer
    assert status == 200 and body == b"".join(EVENTS)
    assert result.events == len(EVENTS)
    assert len(result.first_token_ns) == 1  # the role chunk's empty content is no token
    assert len(result.gaps_ns) == len(EVENTS) - 1  # one per event after a stream's first


async def test_streams_still_running_after_the_drain_are_cut_not_failed() -> None:
    async def endless_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"%x\r\n%s\r\n" % (len(EVENTS[1]), EVENTS[1]))
        await writer.drain()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(endless_stream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_load(
            host="127.0.0.1",
            port=port,
            raw_request=b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            stream=True,
            concurrency=3,
            duration_s=0.5,  # time enough to start all three, even on a loaded machine
            max_requests=3,
            drain_s=0.1,
        )
    finally:
        server.close()
        await server.wait_closed()
    assert (result.ok, result.errors, result.cut) == (0, 0, 3)
    assert result.requests == 3 and result.chunks == 3
    assert len(result.first_token_ns) == 3


async def test_a_stream_sent_whole_is_counted_at_once() -> None:
    body = b"".join(EVENTS)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
    result = Result()
    conn = _Connection(result)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    answer = conn.request(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(head % len(body) + body)
    assert (await answer)[1] == body
    assert result.events == len(EVENTS) and len(result.first_token_ns) == 1
    assert list(result.gaps_ns) == [0] * (len(EVENTS) - 1)
