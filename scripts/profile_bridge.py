"""The bridge's own cost per request and per streamed chunk, repeatably: the bridge app (as
`kyma serve bridge` wraps it, metrics included) driven through ASGI in this process, against a
fake core in another process that answers at once. No HTTP server (uvicorn's parsing is the same
either way) and no upstream, so the figures are the bridge's work and gRPC's alone.

Prints CPU microseconds per request (non-streaming) and per stream and per chunk. For counts that
a loaded machine does not change, run it under callgrind with two sizes and take the difference
(the start-up cancels out):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python scripts/profile_bridge.py --requests 50
    (the same with --requests 550; instructions per request = difference / 500)

A tool for issue 15's measurements, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from core_service.settings import Settings
from http_bridge.app import create_app
from http_bridge.metrics import BridgeMetrics
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

_REPLY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0}]}' * 4
_CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"content":"a"}}]}'
)
_BODY = b'{"model":"test-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'


def _limits(message: Any) -> None:
    limits = message.rate_limit
    limits.limit_requests, limits.remaining_requests, limits.reset_requests_ms = 600, 599, 100
    limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens_ms = 10**6, 10**6, 100


class _FakeCore(pb_grpc.InferenceServiceServicer):
    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    async def CreateChatCompletion(self, request: Any, context: Any) -> Any:  # noqa: N802
        reply = pb.CreateChatCompletionResponse(body=_REPLY, request_id="req_1")
        reply.usage.cost_usd = "0.000012"
        _limits(reply)
        return reply

    async def StreamChatCompletion(  # noqa: N802
        self, request: Any, context: Any
    ) -> AsyncIterator[Any]:
        first = pb.StreamChatCompletionResponse(chunks=[_CHUNK], request_id="req_1")
        _limits(first)
        yield first
        for _ in range(self.chunks - 1):
            yield pb.StreamChatCompletionResponse(chunks=[_CHUNK])
        last = pb.StreamChatCompletionResponse()
        last.usage.cost_usd = "0.000012"
        yield last


def _serve(port: int, chunks: int, ready: Any) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_InferenceServiceServicer_to_server(_FakeCore(chunks), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"profile"),
            (b"accept", b"*/*"),
            (b"authorization", b"Bearer sk-kyma-0123456789abcdef0123456789abcdef"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _request(app: Any, body: bytes) -> int:
    """One request through the app; the bytes of the response body."""
    done = asyncio.Event()
    sent = [False]
    size = 0

    async def receive() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal size
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        else:
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(_scope(body), receive, send)
    return size


async def _run(port: int, requests: int, streams: int, chunks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await channel.channel_ready()
        bridge = create_app(settings, channel=channel)
        app = BridgeMetrics().middleware(bridge)
        stream_body = _BODY[:-1] + b',"stream":true}'
        async with bridge.router.lifespan_context(bridge):
            for _ in range(20):  # warm-up
                await _request(app, _BODY)
                await _request(app, stream_body)
            cpu = time.process_time()
            for _ in range(requests):
                await _request(app, _BODY)
            unary = time.process_time() - cpu
            cpu = time.process_time()
            for _ in range(streams):
                await _request(app, stream_body)
            streamed = time.process_time() - cpu
        await channel.close()
    if requests:
        print(f"non-streaming: {1e6 * unary / requests:.0f} us CPU per request ({requests})")
    if streams:
        per_stream = 1e6 * streamed / streams
        print(f"streams of {chunks} chunks: {per_stream:.0f} us CPU per stream ({streams})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming requests")
    parser.add_argument("--streams", type=int, default=0, help="streams (default: none)")
    parser.add_argument("--chunks", type=int, default=64, help="chunks per stream, one a message")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    server = spawn.Process(target=_serve, args=(port, args.chunks, ready), daemon=True)
    server.start()
    try:
        ready.wait(60)
        uvloop.run(_run(port, args.requests, args.streams, args.chunks))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
