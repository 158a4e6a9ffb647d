"""A client gone at any point never leaves a hold or a rate-limit admission open.

The sweep: start one request, let the event loop run k steps, cancel it, for k = 0, 1, 2, …
until the request finishes before it can be cancelled (several times in a row). Every await
of the admission path (the key lookup, the limiter, the hold's batch on the writer, the
deployment gate, the upstream call) is thereby hit by a cancellation at some k. After each,
once the writer has drained: no hold of the account is open, and its rate-limit counters
hold none of the tokens it was admitted for (the prompt estimate and its max_tokens) — at
most one request, when the call to an upstream had begun, and the tokens a stream had
delivered.

Run at three depths — the pipeline itself, the gRPC service, and HTTP through the bridge —
streaming and not. Every request runs in this test's event loop beside the core and the
bridge, so "k steps" is exact at the pipeline, and covers the remote paths too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

import grpc
import httpx
import orjson
import pytest
from sqlalchemy import func, select

from core_service.db.models import CreditHold, UsageDaily
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc
from kyma.ratelimit.v1 import ratelimit_service_pb2, ratelimit_service_pb2_grpc
from tests.conftest import Kyma

_REQUEST_NUMBERS = itertools.count()


def _request_id() -> str:
    """A request id of its own per call, as the bridge gives (the ledger check pairs each
    request log row with its hold by it)."""
    return f"req_sweep_{next(_REQUEST_NUMBERS)}"


BODY = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
# Consecutive steps at which the request finished uncancelled before the sweep stops.
FINISHED_IN_A_ROW = 3
MAX_STEPS = 1_000_000


def _schedule() -> list[int]:
    """Every step count up to 64 (the awaits of admission come first and fast), then ever
    larger ones (an upstream call spans many loop steps)."""
    steps = list(range(65))
    while steps[-1] < MAX_STEPS:
        steps.append(int(steps[-1] * 1.3) + 1)
    return steps


async def _open_holds(kyma: Kyma, account_id: str) -> int:
    async with kyma.core.storage.reads.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count())
                .select_from(CreditHold)
                .where(CreditHold.account_id == account_id, CreditHold.status == "open")
            )
            or 0
        )


async def _tokens_used(kyma: Kyma, account_id: str) -> int:
    async with kyma.core.storage.reads.connect() as conn:
        return int(
            await conn.scalar(
                select(
                    func.coalesce(
                        func.sum(UsageDaily.prompt_tokens + UsageDaily.completion_tokens), 0
                    )
                ).where(UsageDaily.account_id == account_id)
            )
            or 0
        )


async def _limits(kyma: Kyma, key: str) -> ratelimit_service_pb2.GetRateLimitStatusResponse:
    stub = ratelimit_service_pb2_grpc.RateLimitServiceStub(kyma.channel)
    return await stub.GetRateLimitStatus(
        ratelimit_service_pb2.GetRateLimitStatusRequest(model="test-model"),
        metadata=(("authorization", f"Bearer {key}"),),
    )


async def _upstream_calls(kyma: Kyma) -> int:
    stats = await kyma.upstream.stats()
    return int(stats["requests_by_path"].get("/v1/chat/completions", 0))


async def _quiet(kyma: Kyma, account_id: str, key: str, before: int) -> str | None:
    """What is still wrong (None: nothing) once the core is done with the request."""
    await kyma.settled()
    if await _open_holds(kyma, account_id):
        return "a hold is open"
    limits = await _limits(kyma, key)
    status, tier = limits.status, limits.limits
    # Cancelled before any upstream was sent it: nothing counted. Once the call to one began
    # (the upstream may not have seen it yet), it counts as one request.
    if status.remaining_requests < status.limit_requests - 1:
        return f"{status.limit_requests - status.remaining_requests} requests counted"
    taken = tier.tpm - status.remaining_tokens
    if await _upstream_calls(kyma) == before:
        return f"{taken} tokens left taken" if taken else None
    # Trued up to what it used (a stream cut mid-way is billed for what it delivered).
    used = await _tokens_used(kyma, account_id)
    return None if taken == used else f"{taken} tokens taken but {used} used"


async def _sweep(kyma: Kyma, make: Callable[[str], Awaitable[object]]) -> int:
    """Cancel `make(key)` after k loop steps for every k; returns how many were cancelled.

    Over gRPC and HTTP the core may learn of the cancellation (or even of the request) a
    moment after the client gave up, so each check is of the state the core converges to: it
    must be right once the core is done, within a liveness bound."""
    cancelled = finished_in_a_row = 0
    for steps in _schedule():
        account_id, key = await kyma.create_account()
        await _limits(kyma, key)  # the key is looked up and cached, like a warm client's
        before = await _upstream_calls(kyma)
        task = asyncio.ensure_future(make(key))
        for _ in range(steps):
            await asyncio.sleep(0)
        finished = task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, httpx.HTTPError):
            await task
        problem = await _quiet(kyma, account_id, key, before)
        for _ in range(300):
            if problem is None:
                break
            await asyncio.sleep(0.1)
            problem = await _quiet(kyma, account_id, key, before)
        assert problem is None, f"cancelled after {steps} steps: {problem}"
        if finished:
            finished_in_a_row += 1
            if finished_in_a_row >= FINISHED_IN_A_ROW:
                return cancelled
            continue
        finished_in_a_row = 0
        cancelled += 1
    pytest.fail(f"the request never finished within {MAX_STEPS} loop steps")


@pytest.fixture
async def slow_upstream(kyma: Kyma) -> None:
    # Long enough that cancellations also land while the upstream call is under way.
    await kyma.upstream.control(latency_ms=30, tokens_per_second=400)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_cancel_at_every_step_of_the_pipeline(kyma: Kyma, slow_upstream, stream) -> None:
    raw = orjson.dumps(BODY)

    async def request(key: str) -> object:
        pipeline = kyma.core.pipeline
        if not stream:
            return await pipeline.complete("chat.completions", raw, f"Bearer {key}", _request_id())
        async with contextlib.aclosing(
            pipeline.stream("chat.completions", raw, f"Bearer {key}", _request_id())
        ) as events:
            return [event async for event in events]

    assert await _sweep(kyma, request) > 5


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_cancel_at_every_step_over_grpc(kyma: Kyma, slow_upstream, stream) -> None:
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    body = orjson.dumps(BODY)

    async def request(key: str) -> object:
        metadata = (("authorization", f"Bearer {key}"),)
        if not stream:
            return await stub.CreateChatCompletion(
                pb.CreateChatCompletionRequest(body=body), metadata=metadata
            )
        call = stub.StreamChatCompletion(
            pb.StreamChatCompletionRequest(body=body), metadata=metadata
        )
        try:
            return [message async for message in call]
        finally:
            call.cancel()

    assert await _sweep(kyma, request) > 5


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_cancel_at_every_step_over_http(kyma: Kyma, slow_upstream, stream) -> None:
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=30) as http:
        await http.get("/healthz")  # the connection exists before the sweep

        async def request(key: str) -> object:
            headers = {"authorization": f"Bearer {key}"}
            if not stream:
                return await http.post("/v1/chat/completions", json=BODY, headers=headers)
            async with http.stream(
                "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
            ) as reply:
                return [line async for line in reply.aiter_lines()]

        assert await _sweep(kyma, request) > 5
