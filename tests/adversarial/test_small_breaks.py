"""The small breaks of issue 12 (part 6), each against a real core and bridge, over HTTP and over
gRPC where both apply:

- JSON nested 256 to 1,024 levels (and far beyond) is a 400 / INVALID_ARGUMENT naming the
  nesting, never a 500 or "Recursion limit reached";
- a ledger page_token past int64 is a 400;
- a model name over 16 KB is a 400 naming `model`, and an Authorization header over 16 KB a
  431: never 429 with gRPC's words ("metadata size exceeds hard limit");
- slow clients (a byte every quarter second) are dropped when their head or body is late; a
  1 MB header, 5,000 headers or 101 headers get a 431 and the connection closed;
- a client that goes away is one INFO line, never an ERROR or a traceback;
- garbage protobuf over gRPC is INVALID_ARGUMENT naming the expected type, without the
  protobuf library's internals (no DecodeError).

Timing: the bridge here runs with a 1 s header and a 2 s body timeout; the tests assert only
that slow clients are dropped at all, within a liveness bound thirty times the limit, and count
what they managed to send — nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import httpx
import pytest
import pytest_asyncio

from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.accounting.v1 import accounting_service_pb2_grpc as accounting_grpc
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.inference.v1 import inference_service_pb2_grpc as inference_grpc
from kyma.routing.v1 import routing_service_pb2 as routing_pb
from kyma.routing.v1 import routing_service_pb2_grpc as routing_grpc
from tests.conftest import ADMIN_TOKEN, running_kyma  # type: ignore[import-not-found]

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
LIVENESS = 30 * HEADER_TIMEOUT  # a slow client still connected after this was not dropped
BYTE_EVERY = 0.25
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest_asyncio.fixture(scope="module")
async def bounded(upstream, tmp_path_factory):
    async with running_kyma(
        tmp_path_factory.mktemp("bounded"),
        None,
        upstream,
        "sqlite",
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_body_timeout_seconds=BODY_TIMEOUT,
    ) as kyma:
        kyma.key = (await kyma.create_account())[1]  # type: ignore[attr-defined]
        yield kyma
        await kyma.verify_ledger()


def auth(kyma) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {kyma.key}"),)


def nested(depth: int) -> bytes:
    return (
        b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


@pytest.mark.parametrize("depth", [256, 512, 1024, 1025, 100_000])
async def test_deep_json_is_refused_over_grpc_and_http(bounded, depth: int) -> None:
    stub = inference_grpc.InferenceServiceStub(bounded.channel)
    for call in (
        stub.CreateChatCompletion(
            inference_pb.CreateChatCompletionRequest(body=nested(depth)), metadata=auth(bounded)
        ),
        stub.StreamChatCompletion(
            inference_pb.StreamChatCompletionRequest(body=nested(depth)), metadata=auth(bounded)
        ).read(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nested" in refused.value.details() and "ecursion" not in refused.value.details()
    async with bounded.http() as http:
        reply = await http.post(
            "/v1/chat/completions",
            content=nested(depth),
            headers={"authorization": f"Bearer {bounded.key}"},
        )
    assert reply.status_code == 400 and "nested" in reply.json()["error"]["message"]


@pytest.mark.parametrize("token", [str(2**63), str(10**20), "-1", "1e3", "abc", "9" * 5000])
async def test_a_ledger_page_token_out_of_range_is_a_400(bounded, token: str) -> None:
    async with bounded.http() as http:
        reply = await http.get(
            "/v1/account/ledger",
            params={"page_token": token},
            headers={"authorization": f"Bearer {bounded.key}"},
        )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "page_token"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await accounting_grpc.AccountingServiceStub(bounded.channel).ListLedgerEntries(
            accounting_pb.ListLedgerEntriesRequest(page_token=token), metadata=auth(bounded)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _no_grpc_words(text: str) -> None:
    assert "metadata" not in text and "hard limit" not in text and "Stream removed" not in text


async def test_a_model_name_over_16_kb_is_a_400(bounded) -> None:
    model = "m" * 20_000
    async with bounded.http() as http:
        for path, body in (
            ("/v1/chat/completions", {**CHAT, "model": model}),
            ("/v1/chat/completions", {**CHAT, "model": model, "stream": True}),
            ("/v1/completions", {"model": model, "prompt": "hi"}),
            ("/v1/embeddings", {"model": model, "input": "hi"}),
        ):
            reply = await http.post(
                path, json=body, headers={"authorization": f"Bearer {bounded.key}"}
            )
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["param"] == "model"
            _no_grpc_words(reply.text)
    stub = inference_grpc.InferenceServiceStub(bounded.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateChatCompletion(
            inference_pb.CreateChatCompletionRequest(
                body=f'{{"model": "{model}", "messages": []}}'.encode()
            ),
            metadata=auth(bounded),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Looked up by id, an unknown model is a 404 whose message quotes only the name's start.
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await routing_grpc.RoutingServiceStub(bounded.channel).GetModel(
            routing_pb.GetModelRequest(id=model), metadata=auth(bounded)
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(unknown.value.details()) < 300


async def test_an_authorization_header_over_16_kb_is_a_431(bounded) -> None:
    async with bounded.http() as http:
        huge = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer " + "k" * 20_000}
        )
        assert huge.status_code == 431 and "headers" in huge.json()["error"]["message"]
        # Under the header limit but no key: the answer for a wrong key, not gRPC's refusal.
        for length in (2_000, 9_000, 16_000):
            wrong = await http.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"authorization": "Bearer " + "k" * length},
            )
            assert wrong.status_code in (401, 431), wrong.text
            _no_grpc_words(wrong.text)
    # Over gRPC, an oversized key is just a wrong key too, up to what gRPC itself carries:
    # beyond its soft limit (8 KiB of metadata) gRPC refuses some calls itself, at random.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await inference_grpc.InferenceServiceStub(bounded.channel).CreateChatCompletion(
            inference_pb.CreateChatCompletionRequest(body=nested(1)),
            metadata=(("authorization", "Bearer " + "k" * 4_000),),
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _open(kyma) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = kyma.http_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _trickle(kyma, head: bytes, then: bytes) -> tuple[int, bytes]:
    """Send `head` at once, then `then` a byte every BYTE_EVERY seconds until the server
    closes the connection; returns (bytes trickled, what the server answered)."""
    reader, writer = await _open(kyma)
    writer.write(head)
    sent = 0
    answer = asyncio.ensure_future(reader.read())
    try:
        async with asyncio.timeout(LIVENESS):
            for byte in then:
                done, _ = await asyncio.wait({answer}, timeout=BYTE_EVERY)
                if done:
                    break
                writer.write(bytes([byte]))
                sent += 1
            return sent, await answer
    finally:
        answer.cancel()
        writer.close()


async def test_slow_heads_and_slow_bodies_are_dropped(bounded) -> None:
    slow_head = [
        _trickle(bounded, b"", b"POST /v1/chat/completions HTTP/1.1\r\nx-slow: " + b"a" * 5000)
        for _ in range(40)
    ]
    slow_body = [
        _trickle(
            bounded,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: kyma\r\ncontent-length: 5000\r\n"
            b"authorization: Bearer " + bounded.key.encode() + b"\r\n\r\n",
            b"x" * 5000,
        )
        for _ in range(10)
    ]
    results = await asyncio.gather(*slow_head, *slow_body)
    heads, bodies = results[:40], results[40:]
    # Every one of them was cut off long before it could finish (the trickles are far longer
    # than the liveness bound), the slow heads with a 408.
    for sent, answer in heads:
        assert sent < LIVENESS / BYTE_EVERY
        assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive" in answer
    for sent, _ in bodies:
        assert sent < LIVENESS / BYTE_EVERY
    # The bridge still serves.
    async with bounded.http() as http:
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"x-big: " + b"a" * (1 << 20) + b"\r\n", id="a 1 MB header"),
        pytest.param(b"".join(b"x-h%d: v\r\n" % i for i in range(5000)), id="5000 headers"),
        pytest.param(b"".join(b"x-h%d: v\r\n" % i for i in range(101)), id="101 small headers"),
    ],
)
async def test_oversized_or_too_many_headers_are_a_431(bounded, headers: bytes) -> None:
    reader, writer = await _open(bounded)
    writer.write(b"GET /v1/models HTTP/1.1\r\nhost: kyma\r\n" + headers + b"\r\n")
    async with asyncio.timeout(LIVENESS):
        answer = await reader.read()  # the answer, then the server closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"error"' in answer


async def test_a_hundred_headers_are_still_served(bounded) -> None:
    headers = {f"x-h{i}": "v" for i in range(95)}
    async with bounded.http() as http:
        assert (await http.get("/healthz", headers=headers)).status_code == 200


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_client_going_away_is_one_info_line(bounded) -> None:
    """Unary, mid-stream, and mid-body: one INFO line each from the connection; no ERROR from
    anyone (uvicorn's loggers do not propagate to the root: listened to directly)."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(records)
    await bounded.upstream.control(latency_ms=400, tokens_per_second=20)
    key = {"authorization": f"Bearer {bounded.key}"}
    try:
        async with httpx.AsyncClient(base_url=bounded.http_url) as http:
            with pytest.raises(httpx.TimeoutException):  # unary: gives up before the answer
                await http.post("/v1/chat/completions", json=CHAT, headers=key, timeout=0.1)
            async with http.stream(  # streaming: leaves after the first chunk
                "POST",
                "/v1/chat/completions",
                json={**CHAT, "max_tokens": 200, "stream": True},
                headers=key,
            ) as stream:
                async for _ in stream.aiter_bytes():
                    break
        reader, writer = await _open(bounded)  # a body cut off half-way
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: kyma\r\ncontent-length: 100\r\n"
            b"authorization: Bearer " + bounded.key.encode() + b"\r\n\r\n{"
        )
        await writer.drain()
        writer.close()

        def gone() -> list[logging.LogRecord]:
            return [r for r in records.records if "went away" in r.getMessage()]

        async with asyncio.timeout(LIVENESS):
            while len(gone()) < 3:
                await asyncio.sleep(0.05)
        await bounded.settled()
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert [r.levelno for r in gone()] == [logging.INFO] * 3
    assert len({r.getMessage() for r in gone()}) == 3  # one line per disconnect, not more
    loud = [r for r in records.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in records.records)


@pytest.mark.parametrize(
    "method",
    [
        "/kyma.inference.v1.InferenceService/CreateChatCompletion",
        "/kyma.inference.v1.InferenceService/StreamChatCompletion",
        "/kyma.accounting.v1.AccountingService/ListLedgerEntries",
        "/kyma.billing.v1.BillingService/HandleStripeWebhook",
        "/kyma.admin.v1.AdminService/ListAccounts",
        "/grpc.health.v1.Health/Check",
    ],
)
async def test_garbage_protobuf_is_answered_without_internals(bounded, method, caplog) -> None:
    metadata = (("authorization", f"Bearer {ADMIN_TOKEN if 'Admin' in method else bounded.key}"),)
    if "Stream" in method:
        call = bounded.channel.unary_stream(method)(b"\xff\xff\xff\xffgarbage", metadata=metadata)
        answer = call.read()
    else:
        answer = bounded.channel.unary_unary(method)(b"\xff\xff\xff\xffgarbage", metadata=metadata)
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await answer
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "not a valid protobuf message" in details
    assert "DecodeError" not in details and "class" not in details
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
