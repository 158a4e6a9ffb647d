"""Reading Server-Sent Events from an upstream: only `data:` fields matter for OpenAI streams."""

from __future__ import annotations

from collections.abc import AsyncIterator


def _events_of(block: bytes, events: list[bytes]) -> None:
    """The data of the events in `block`, a run of whole lines ending at a blank line."""
    if block.startswith(b"data: ") and b"\n" not in block:
        events.append(block[6:])  # the common case: one event of one `data: ` line
        return
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            if data:
                events.append(b"\n".join(data))
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        events.append(b"\n".join(data))


async def iter_sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Yield, for each piece of bytes that arrives, the data of the events it completed (multi-
    line data joined with newlines), in order; pieces completing no event yield nothing.

    Events that arrive together stay together, so a fast upstream costs one hop per network
    read downstream rather than one per token. Works whatever the piece boundaries; accepts
    LF and CRLF line ends; ignores comments, `event:`/`id:`/`retry:` fields and empty events.
    A line cut off by the end of the stream is not an event (as the SSE spec says).

    The bytes are cut at blank lines (`bytes.split`, at C speed) over whole reads; only what
    follows the last blank line waits for the next piece.
    """
    buffer = b""
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\r" in chunk or buffer.endswith(b"\r"):
            # CRLF line ends (a CR at a piece's end may be half of one): LF from here on.
            buffer = buffer.replace(b"\r\n", b"\n")
            if buffer.endswith(b"\r"):
                head, buffer = buffer[:-1], b"\r"
                end = head.rfind(b"\n\n")
                if end < 0:
                    buffer = head + buffer
                    continue
                buffer = head[end + 2 :] + buffer
                head = head[:end]
            else:
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                head, buffer = buffer[:end], buffer[end + 2 :]
        else:
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            head, buffer = buffer[:end], buffer[end + 2 :]
        events: list[bytes] = []
        for block in head.split(b"\n\n"):
            _events_of(block, events)
        if events:
            yield events
    # The end of the stream: complete lines whose blank line never came are still an event;
    # a line cut off is not.
    tail = buffer.replace(b"\r\n", b"\n")
    cut = tail.rfind(b"\n")
    if cut >= 0:
        events = []
        _events_of(tail[:cut], events)
        if events:
            yield events


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each event, one at a time."""
    async for batch in iter_sse_batches(chunks):
        for event in batch:
            yield event
