"""Reading Server-Sent Events from an upstream: only `data:` fields matter for OpenAI streams."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the data of each event (multi-line data joined with newlines), in order.

    Works on raw byte chunks as they arrive, whatever their boundaries; accepts LF and CRLF
    line ends; ignores comments, `event:`/`id:`/`retry:` fields and empty events.
    """
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
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
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
