from __future__ import annotations

import pytest

from core_service.upstream.sse import iter_sse_batches, iter_sse_data

pytestmark = pytest.mark.asyncio


async def _collect(*chunks: bytes) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    return [data async for data in iter_sse_data(source())]


async def test_events_split_anywhere() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\nevent: x\ndata: [DONE]\n\n'
    expected = [b'{"a":1}', b'{"b":2}', b"[DONE]"]
    assert await _collect(stream) == expected
    assert await _collect(*[stream[i : i + 1] for i in range(len(stream))]) == expected


async def test_multiline_data_and_unterminated_tail() -> None:
    # A line cut off by the end of the stream is not an event (as the SSE spec says); a
    # complete line whose blank terminator never came still is.
    assert await _collect(b"data: a\ndata: b\n\ndata:c") == [b"a\nb"]
    assert await _collect(b"data: x\n") == [b"x"]


async def test_events_arriving_together_stay_together() -> None:
    async def source():
        yield b"data: 1\n\ndata: 2\n\ndata: 3"
        yield b"\n\n"
        yield b": keep-alive\n\n"

    batches = [batch async for batch in iter_sse_batches(source())]
    assert batches == [[b"1", b"2"], [b"3"]]
