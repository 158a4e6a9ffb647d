"""What a gRPC call costs, measured alone: the CPU of one unary call, of a one-message
server stream, and of one request carried on a long-lived bidirectional stream (a multiplexed
bridge->core channel: InferenceRelay), on the client and on the server (another process),
with the trivial handlers below so that only gRPC's own cost is counted.

An experiment for issue 15 (is per-call gRPC setup worth a multiplexed channel?), not a test:
it prints CPU microseconds per request for each way, at concurrency 1 and 32.

    .venv/bin/python scripts/grpc_call_cost.py [--requests N] [--option NAME=INT]

Measured on a quiet 2-core machine (2026-12-06, 20000 requests): a unary call 203 us of client
CPU and 296 of server CPU at c=1 (109 + 134 at c=32); a one-message server stream 327 + 341
(164 + 145); one request on a multiplexed stream 112 + 107 (62 + 59). Counting the server's
side too, a multiplexed channel saves about 0.28 ms of a request's gateway CPU at c=1 and 0.12
at c=32, and 0.45 ms of a stream's fixed cost at c=1 — and in the product more, because answers
that are ready together share a message (see docs/performance.md). So the bridge carries its
inference calls that way (http_bridge/relay.py); the unary and streaming RPCs stay for
internal callers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import uvloop

_SERVICE = "bench.Echo"
_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}' * 4
_REPLY = b'{"id":"x","object":"chat.completion","choices":[]}' * 8
_CHUNK = b'{"id":"x","object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}]}'
_MESSAGES = 128
_METADATA = (("authorization", "Bearer sk-kyma-0123456789abcdef"), ("x-request-id", "req_1"))


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _REPLY


async def _one_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield _REPLY


async def _long_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(_MESSAGES):
        yield _CHUNK


async def _multiplexed(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    # Each request is an 8-byte tag then its body; the answer carries the tag back.
    async for request in requests:
        yield request[:8] + _REPLY


def _serve(port: int, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_one_stream),
            "Long": grpc.unary_stream_rpc_method_handler(_long_stream),
            "Mux": grpc.stream_stream_rpc_method_handler(_multiplexed),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


class _Mux:
    """Many requests over one bidi stream: a tag per request, a future per tag."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call = channel.stream_stream(f"/{_SERVICE}/Mux")(metadata=_METADATA)
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next = 0
        # gRPC takes one write at a time on a stream: one task writes them all, in order.
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._writer = loop.create_task(self._write())

    async def _write(self) -> None:
        while (message := await self._outbox.get()) is not None:
            await self._call.write(message)
        await self._call.done_writing()

    async def _read(self) -> None:
        while (message := await self._call.read()) is not grpc.aio.EOF:
            (tag,) = struct.unpack_from("<Q", message)
            self._waiting.pop(tag).set_result(message[8:])

    async def request(self, body: bytes) -> bytes:
        self._next += 1
        tag = self._next
        future = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        self._outbox.put_nowait(struct.pack("<Q", tag) + body)
        return await future

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        await self._writer
        await self._reader


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    label: str, one: Callable[[], Awaitable[object]], n: int, conc: int, server: int
) -> None:
    for _ in range(200):  # warm-up
        await one()
    per_worker = n // conc

    async def worker() -> None:
        for _ in range(per_worker):
            await one()

    cpu, wall, served = time.process_time(), time.perf_counter(), _cpu_of(server)
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    served = _cpu_of(server) - served
    done = per_worker * conc
    print(
        f"| {label} | {conc} | {done} | {1e6 * cpu / done:.1f} | {1e6 * served / done:.1f} "
        f"| {done / wall:.0f} |"
    )


async def _client(port: int, n: int, options: list[tuple[str, int]], server: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        await channel.channel_ready()
        unary = channel.unary_unary(f"/{_SERVICE}/Unary", _registered_method=True)
        stream = channel.unary_stream(f"/{_SERVICE}/Stream", _registered_method=True)

        async def unary_call() -> object:
            return await unary(_BODY, metadata=_METADATA)

        async def stream_call() -> object:
            call = stream(_BODY, metadata=_METADATA)
            first = await call.read()
            await call.read()  # EOF
            return first

        long = channel.unary_stream(f"/{_SERVICE}/Long", _registered_method=True)

        async def long_call() -> object:
            call = long(_BODY, metadata=_METADATA)
            while await call.read() is not grpc.aio.EOF:
                pass
            return None

        mux = _Mux(channel)
        print(
            "| way | conc | requests | client cpu us/request | server cpu us/request | requests/s |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for conc in (1, 32):
            await _measure("unary call", unary_call, n, conc, server)
            await _measure("server-streaming call (1 message)", stream_call, n, conc, server)
            multiplexed = "one bidi stream, multiplexed"
            await _measure(multiplexed, lambda: mux.request(_BODY), n, conc, server)
        # A stream of _MESSAGES messages: its cost per message (the call's own included).
        for conc in (1, 8):
            streams = max(conc, n // _MESSAGES // 2)

            async def streamer(count: int) -> None:
                for _ in range(count):
                    await long_call()

            cpu = time.process_time()
            await asyncio.gather(*(streamer(streams // conc) for _ in range(conc)))
            cpu = time.process_time() - cpu
            us = 1e6 * cpu / (streams // conc * conc * _MESSAGES)
            label = f"stream of {_MESSAGES} messages (per message)"
            print(f"| {label} | {conc} | {streams // conc * conc} | {us:.1f} | | |")
        await mux.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--option", action="append", default=[], help="a channel option NAME=INT (repeatable)"
    )
    args = parser.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", args.port))
        port = s.getsockname()[1]
    ready = multiprocessing.get_context("spawn").Event()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, ready))
    server.start()
    try:
        ready.wait(30)
        options = [(name, int(value)) for name, value in (o.split("=") for o in args.option)]
        assert server.pid is not None
        uvloop.run(_client(port, args.requests, options, server.pid))
    finally:
        server.terminate()
        server.join()
    print(f"(pid {os.getpid()}, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
