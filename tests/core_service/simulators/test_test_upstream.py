"""The standalone test upstream, run as a real process: OpenAI compatibility through the official
SDK, every fault, the control and statistics endpoints, and clean stopping."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest

from core_service.simulators.test_upstream.server import UpstreamConfig, build_app
from core_service.tokens import count_tokens

LISTENING = "test-upstream listening on "
STARTUP_TIMEOUT_SECONDS = 15.0


@dataclass
class RunningUpstream:
    process: subprocess.Popen[str]
    url: str

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_upstream(*flags: str) -> RunningUpstream:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core_service.simulators.test_upstream.server",
            "--port",
            "0",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A server that never announces itself must fail the test, not hang it.
    watchdog = threading.Timer(STARTUP_TIMEOUT_SECONDS, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline() if process.stdout else ""
    finally:
        watchdog.cancel()
    if not line.startswith(LISTENING):
        process.kill()
        _, errors = process.communicate()
        raise RuntimeError(f"test upstream did not start: {line!r} {errors}")
    return RunningUpstream(process, line[len(LISTENING) :].strip())


@pytest.fixture(scope="session")
def upstream_process() -> Iterator[RunningUpstream]:
    running = start_upstream("--seed", "1")
    yield running
    assert running.stop() == 0


@pytest.fixture
def clean_upstream(upstream_process: RunningUpstream) -> Iterator[RunningUpstream]:
    """The shared upstream with default faults and zeroed counters, restored afterwards."""
    defaults = {
        "latency_ms": 0,
        "tokens_per_second": 0,
        "error_rate": 0,
        "error_status": 500,
        "rate_limit_rate": 0,
        "hang_rate": 0,
        "drop_stream_after": None,
        "require_api_key": None,
        "cached_prompt_fraction": 0,
        "reasoning_fraction": 0,
        "seed": 1,
    }
    with httpx.Client(base_url=upstream_process.url) as client:
        client.post("/_control", json=defaults).raise_for_status()
        client.post("/_stats/reset").raise_for_status()
        yield upstream_process
        client.post("/_control", json=defaults).raise_for_status()


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., RunningUpstream]]:
    started: list[RunningUpstream] = []

    def start(*flags: str) -> RunningUpstream:
        running = start_upstream(*flags)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


MESSAGES = [{"role": "user", "content": "Hello there"}]
CHAT = {"model": "m", "messages": MESSAGES}


@pytest.fixture
async def http(clean_upstream: RunningUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=clean_upstream.url, timeout=5) as client:
        yield client


@pytest.fixture
async def sdk(clean_upstream: RunningUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=clean_upstream.api_base, api_key="sk-client", max_retries=0
    ) as client:
        yield client


async def control(http: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    response = await http.post("/_control", json=settings)
    assert response.status_code == 200, response.text
    return response.json()


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    return (await http.get("/_stats")).json()


async def wait_for_stats(
    http: httpx.AsyncClient, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Server-side counters settle a moment after the client gives up (liveness bound only)."""
    deadline = time.monotonic() + 30
    while True:
        current = await stats(http)
        if check(current) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.02)


# --- OpenAI compatibility ---------------------------------------------------------------------


async def test_sdk_chat_completion(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    assert completion.model == "m"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (
        completion.usage.completion_tokens
        == count_tokens(completion.choices[0].message.content or "")
        == 12
    )


async def test_sdk_streaming_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(text) == 16


async def test_sdk_completions_embeddings_and_models(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    completion = await sdk.completions.create(model="m", prompt="Once", max_tokens=4)
    assert count_tokens(completion.choices[0].text) == 4

    embedding = await sdk.embeddings.create(model="e", input=["a", "b"])
    assert (await stats(http))["last_request"]["body"]["encoding_format"] == "base64"
    floats = await sdk.embeddings.create(model="e", input=["a", "b"], encoding_format="float")
    assert [item.embedding for item in embedding.data] == [item.embedding for item in floats.data]

    listing = await sdk.models.list()
    assert [model.id for model in listing.data] == ["test-model"]
    assert (await sdk.models.retrieve("org/any-model")).id == "org/any-model"


async def test_raw_sse_framing(http: httpx.AsyncClient) -> None:
    async with http.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 2}
    ) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = await response.aread()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(event.startswith(b"data: {") for event in events[:-2])


async def test_bad_requests_get_openai_errors(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model="m", messages=[])
    for method, path, content, status in [
        ("POST", "/v1/chat/completions", b"{nope", 400),
        ("POST", "/v1/embeddings", b'{"model": "e"}', 400),
        ("GET", "/v1/chat/completions", b"", 405),
        ("POST", "/v1/unknown", b"{}", 404),
        ("GET", "/elsewhere", b"", 404),
        ("GET", "/_nothing", b"", 404),
    ]:
        response = await http.request(method, path, content=content)
        assert response.status_code == status, path
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- control and statistics -------------------------------------------------------------------


async def test_stats_show_what_was_forwarded(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={"vendor_knob": {"nested": [1, 2]}, "top_k": 5},
        extra_headers={"X-Trace": "abc"},
    )
    await http.get("/v1/models")
    current = await stats(http)
    assert current["requests_total"] == 2
    assert current["requests_by_path"] == {"/v1/chat/completions": 1, "/v1/models": 1}
    assert current["responses_by_status"] == {"200": 2}
    assert current["in_flight"] == 0
    last = current["last_request"]
    assert last["method"] == "GET" and last["path"] == "/v1/models"

    await sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        extra_body={"vendor_knob": {"nested": [1, 2]}, "top_k": 5},  # type: ignore[arg-type]
    )
    last = (await stats(http))["last_request"]
    assert last["body"]["vendor_knob"] == {"nested": [1, 2]} and last["body"]["top_k"] == 5
    assert last["headers"]["authorization"] == "Bearer sk-client"

    reset = (await http.post("/_stats/reset")).json()
    assert reset["requests_total"] == 0 and reset["last_request"]["body"] is None


async def test_control_reads_updates_and_validates(http: httpx.AsyncClient) -> None:
    current = (await http.get("/_control")).json()
    assert current == UpstreamConfig(seed=1).as_json()
    updated = await control(http, latency_ms=5, error_status=503)
    assert (
        updated["latency_ms"] == 5 and updated["error_status"] == 503 and updated["error_rate"] == 0
    )
    for bad in (
        b"{not json",
        b"[1]",
        b'{"no_such_fault": 1}',
        b'{"error_rate": 2}',
        b'{"error_rate": 0.6, "hang_rate": 0.6}',
        b'{"error_status": 200}',
        b'{"latency_ms": "slow"}',
        b'{"drop_stream_after": -1}',
        b'{"tokens_per_second": true}',
        b'{"cached_prompt_fraction": 1.5}',
        b'{"reasoning_fraction": "most"}',
        b'{"dialects": ["chat", "smoke-signals"]}',
    ):
        response = await http.post("/_control", content=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await http.get("/_control")).json() == updated


async def test_control_sets_the_cached_and_reasoning_shares(http: httpx.AsyncClient) -> None:
    await control(http, cached_prompt_fraction=0.5, reasoning_fraction=0.5)
    body = {"model": "m", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 4}
    usage = (await http.post("/v1/chat/completions", json=body)).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2
    body["simulate_usage"] = {"cached_prompt_fraction": 0}
    usage = (await http.post("/v1/chat/completions", json=body)).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


# --- faults -----------------------------------------------------------------------------------


async def test_latency_delays_the_headers(http: httpx.AsyncClient) -> None:
    await control(http, latency_ms=250)
    started = time.monotonic()
    response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    # A lower bound only: a slow machine makes the wait longer, never shorter.
    assert time.monotonic() - started >= 0.24


async def test_error_rate_answers_with_the_error_status(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await control(http, error_rate=1, error_status=503)
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == 503
    assert (await stats(http))["injected_errors"] == 1


async def test_rate_limit_rate_answers_429_with_retry_after(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await control(http, rate_limit_rate=1)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"


async def test_fault_shares_are_reproducible_by_seed(http: httpx.AsyncClient) -> None:
    async def statuses() -> list[int]:
        return [
            (await http.post("/v1/embeddings", json={"model": "e", "input": "x"})).status_code
            for _ in range(40)
        ]

    await control(http, error_rate=0.3, rate_limit_rate=0.2, seed=7)
    first = await statuses()
    await control(http, seed=7)
    assert await statuses() == first
    assert 5 <= first.count(500) <= 20 and 2 <= first.count(429) <= 15 and 200 in first


async def test_hang_rate_never_answers(http: httpx.AsyncClient) -> None:
    await control(http, hang_rate=1)
    asking = asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT, timeout=30))
    # Once the server holds it (a short client timeout could expire before it got there).
    await wait_for_stats(http, lambda s: s["injected_hangs"] == 1)
    await asyncio.sleep(0.1)
    assert not asking.done()  # no answer, no error
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    current = await wait_for_stats(http, lambda s: s["cancelled"] == 1)
    assert (
        current["injected_hangs"] == 1 and current["cancelled"] == 1 and current["in_flight"] == 0
    )


async def test_drop_stream_after_breaks_the_connection(http: httpx.AsyncClient) -> None:
    await control(http, drop_stream_after=3)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as response:
            assert response.status_code == 200
            async for piece in response.aiter_bytes():
                received += piece
    events = [orjson.loads(event[6:]) for event in received.split(b"\n\n") if event]
    assert len(events) == 4  # the role chunk and three tokens
    assert b"[DONE]" not in received
    assert (await stats(http))["dropped_streams"] == 1
    # The server itself carries on.
    assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_drop_stream_through_the_sdk(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await control(http, drop_stream_after=2)
    stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
        async for _ in stream:
            pass


async def test_tokens_per_second_paces_streams(http: httpx.AsyncClient) -> None:
    await control(http, tokens_per_second=50)
    started = time.monotonic()
    async with http.stream(
        "POST",
        "/v1/completions",
        json={"model": "m", "prompt": "x", "stream": True, "max_tokens": 10},
    ) as response:
        raw = await response.aread()
    elapsed = time.monotonic() - started
    assert raw.endswith(b"data: [DONE]\n\n")
    # Ten tokens at 50 a second cannot arrive in less than ~0.2 s: the lower bound is the
    # pacing, and a slow machine only adds to it. The upper bound is a generous liveness bound
    # (25 times the 0.2 s); the exact rate would need a sleep injected into the server.
    assert 0.18 <= elapsed < 5.0


async def test_client_disconnect_stops_the_stream(http: httpx.AsyncClient) -> None:
    await control(http, tokens_per_second=20)
    request = {**CHAT, "stream": True, "max_tokens": 5000}
    async with http.stream("POST", "/v1/chat/completions", json=request) as response:
        async for _ in response.aiter_lines():
            if (await stats(http))["in_flight"] == 1:
                break
    current = await wait_for_stats(http, lambda s: s["cancelled"] == 1 and s["in_flight"] == 0)
    assert current["cancelled"] == 1 and current["in_flight"] == 0
    assert current["responses_by_status"] == {"499": 1}


async def test_require_api_key(http: httpx.AsyncClient, clean_upstream: RunningUpstream) -> None:
    await control(http, require_api_key="sk-upstream")
    async with openai.AsyncOpenAI(
        base_url=clean_upstream.api_base, api_key="wrong", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
    async with openai.AsyncOpenAI(
        base_url=clean_upstream.api_base, api_key="sk-upstream", max_retries=0
    ) as right:
        assert (await right.models.list()).data
    assert (await http.get("/v1/models")).status_code == 401


# --- the process ------------------------------------------------------------------------------


def test_flags_set_the_initial_faults(upstream_factory: Callable[..., RunningUpstream]) -> None:
    running = upstream_factory(
        "--latency-ms",
        "20",
        "--tokens-per-second",
        "100",
        "--error-rate",
        "0.1",
        "--error-status",
        "502",
        "--rate-limit-rate",
        "0.2",
        "--hang-rate",
        "0.05",
        "--drop-stream-after",
        "7",
        "--require-api-key",
        "k",
        "--cached-prompt-fraction",
        "0.5",
        "--reasoning-fraction",
        "0.25",
        "--dialects",
        "chat",
        "--seed",
        "3",
    )
    config = httpx.get(f"{running.url}/_control").json()
    assert config == {
        "latency_ms": 20.0,
        "tokens_per_second": 100.0,
        "error_rate": 0.1,
        "error_status": 502,
        "rate_limit_rate": 0.2,
        "hang_rate": 0.05,
        "drop_stream_after": 7,
        "require_api_key": "k",
        "fail_on_text": None,
        "overrun_tokens": 0,
        "omit_usage": False,
        "cached_prompt_fraction": 0.5,
        "reasoning_fraction": 0.25,
        "reply_tokens": None,
        "dialects": ["chat"],
        "seed": 3,
    }
    assert running.stop() == 0


def test_sigint_stops_cleanly(upstream_factory: Callable[..., RunningUpstream]) -> None:
    running = upstream_factory()
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=10) == 0
    assert running.process.stderr is not None and running.process.stderr.read() == ""


def test_invalid_flags_are_refused() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "core_service.simulators.test_upstream.server",
            "--error-rate",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 2
    assert "error_rate" in result.stderr


async def test_app_runs_in_process() -> None:
    app = build_app(UpstreamConfig(seed=0))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://upstream"
    ) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 16
    assert app.stats.requests_total == 1
