from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _reference(stream: bytes) -> list[bytes]:
    """The SSE rules, line by line (what the reader must agree with however bytes arrive)."""
    events, data = [], []
    lines = stream.split(b"\n")
    for line in lines[:-1]:  # the last is cut off by the end (or empty)
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if data:
                events.append(b"\n".join(data))
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        events.append(b"\n".join(data))
    return events


_LINES = st.sampled_from(
    [
        b'data: {"a":1}',
        b"data:x",
        b"data: ",
        b"data:",
        b": keep-alive",
        b"event: e",
        b"id: 1",
        b"",
        b"data: a\rb",
        b"data: [DONE]",
        b"retry: 5",
        b"data:  two spaces",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINES, max_size=12),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
    tail=st.sampled_from([b"", b"data: cut", b"\r", b"data: x\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
async def test_agrees_with_the_rules_however_the_bytes_arrive(lines, ends, tail, cuts) -> None:
    stream = b"".join(line + end for line, end in zip(lines, ends, strict=False)) + tail
    points = sorted({min(cut, len(stream)) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert await _collect(*[piece for piece in pieces if piece]) == _reference(stream)
