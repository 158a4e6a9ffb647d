"""Reading Server-Sent Events from an upstream: only `data:` fields matter for OpenAI streams."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def iter_sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Yield, for each piece of bytes that arrives, the data of the events it completed (multi-
    line data joined with newlines), in order; pieces completing no event yield nothing.

    Events that arrive together stay together, so a fast upstream costs one hop per network
    read downstream rather than one per token. Works whatever the piece boundaries; accepts
    LF and CRLF line ends; ignores comments, `event:`/`id:`/`retry:` fields and empty events.
    A line cut off by the end of the stream is not an event (as the SSE spec says).
    """
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        events: list[bytes] = []
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line = buffer[:newline]
            buffer = buffer[newline + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    events.append(b"\n".join(data))
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        if events:
            yield events
    if data:
        yield [b"\n".join(data)]


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each event, one at a time."""
    async for batch in iter_sse_batches(chunks):
        for event in batch:
            yield event
