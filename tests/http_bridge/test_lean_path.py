"""The lean path for the inference endpoints (`http_bridge/app.py`): API clients' requests are
answered without FastAPI's layers, and nothing they can see differs from FastAPI's answer to
the same request (which a page with an Origin header still gets, through CORS)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

pytestmark = pytest.mark.asyncio

# An origin that is not allowed: CORS adds only `Vary: Origin`, as it does without one.
PAGE = {"origin": "https://not-allowed.example"}
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# Header values that differ between any two requests.
_VARYING = {"date", "x-request-id", "request-id", "x-kyma-cost", "content-length"}
_VARYING_PREFIX = "x-ratelimit-"


def _shape(response: httpx.Response) -> list[tuple[str, str]]:
    """The headers, in order, their values where they can be equal (CORS's own aside: a
    request with an Origin gets `access-control-expose-headers`, allowed or not)."""
    return [
        (name, "*" if name in _VARYING or name.startswith(_VARYING_PREFIX) else value)
        for name, value in response.headers.multi_items()
        if not name.startswith("access-control-")
    ]


async def _both(http: httpx.AsyncClient, path: str, **kwargs: Any) -> list[httpx.Response]:
    """The same request, lean (no Origin) then through FastAPI (with one)."""
    headers = kwargs.pop("headers", {})
    lean = await http.post(path, headers=headers, **kwargs)
    framework = await http.post(path, headers={**headers, **PAGE}, **kwargs)
    return [lean, framework]


async def test_lean_answers_are_framework_answers(kyma, account) -> None:
    key = {"authorization": f"Bearer {account[1]}"}
    anthropic_key = {"x-api-key": account[1], "anthropic-version": "2023-06-01"}
    messages = {
        "model": "test-model",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}],
    }
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"json": CHAT, "headers": key}),
        ("/v1/chat/completions", {"json": {**CHAT, "stream": True}, "headers": key}),
        ("/v1/chat/completions", {"json": CHAT, "headers": {"authorization": "Bearer nope"}}),
        ("/v1/chat/completions", {"content": b"{not json", "headers": key}),
        ("/v1/chat/completions", {"content": b"[1]", "headers": key}),
        ("/v1/chat/completions", {"content": b"[" * 2000 + b"]" * 2000, "headers": key}),
        (
            "/v1/chat/completions",
            {"content": b"x" * (kyma.settings.max_body_bytes + 1), "headers": key},
        ),
        ("/v1/completions", {"json": {"model": "nope", "prompt": "x"}, "headers": key}),
        ("/v1/embeddings", {"json": {"model": "test-model"}, "headers": {}}),
        ("/v1/messages", {"json": messages, "headers": anthropic_key}),
        ("/v1/messages", {"json": {**messages, "stream": True}, "headers": anthropic_key}),
        ("/v1/messages", {"json": messages, "headers": {"x-api-key": "nope"}}),
        ("/v1/messages/count_tokens", {"json": messages, "headers": anthropic_key}),
        ("/v1/responses", {"json": {"model": "test-model", "input": "hi"}, "headers": {}}),
    ]
    async with kyma.http() as http:
        for path, kwargs in cases:
            lean, framework = await _both(http, path, **kwargs)
            assert lean.status_code == framework.status_code, (path, kwargs.get("json"))
            assert _shape(lean) == _shape(framework), path
            assert lean.headers["vary"] == "Origin"
            if lean.status_code != 200:
                # Errors in the caller's dialect, word for word (the request id aside).
                body = lean.json()
                body.pop("request_id", None)
                other = framework.json()
                other.pop("request_id", None)
                assert body == other, path
                if path.startswith("/v1/messages"):
                    assert lean.json()["request_id"] == lean.headers["request-id"]
            elif lean.headers["content-type"].startswith("text/event-stream"):
                assert lean.text.count("data: ") == framework.text.count("data: ")
                assert lean.text.endswith("data: [DONE]\n\n") == framework.text.endswith(
                    "data: [DONE]\n\n"
                )


async def test_api_clients_skip_the_framework(kyma, account, monkeypatch) -> None:
    calls = 0
    framework = FastAPI.__call__

    async def counted(self: FastAPI, scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await framework(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counted)
    key = {"authorization": f"Bearer {account[1]}"}
    async with kyma.http() as http:
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=key)).status_code == 200
        stream = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=key)
        assert stream.text.endswith("data: [DONE]\n\n")
        assert calls == 0
        # A browser page's request, other routes and other methods: FastAPI's.
        await http.post("/v1/chat/completions", json=CHAT, headers={**key, **PAGE})
        await http.get("/v1/models", headers=key)
        assert (await http.get("/v1/chat/completions", headers=key)).status_code == 405
        assert calls == 3


async def test_an_unexpected_error_is_a_logged_500_both_ways(
    kyma, account, monkeypatch, caplog
) -> None:
    def broken(body: bytes) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("http_bridge.inference_routes.json_object", broken)
    key = {"authorization": f"Bearer {account[1]}"}
    for headers in (key, {**key, **PAGE}):
        caplog.clear()
        async with kyma.http() as http:
            reply = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert reply.status_code == 500
        assert reply.json()["error"]["type"] == "api_error"
        assert "vary" not in reply.headers  # answered outside CORS, as Starlette does
        assert any("unexpected bridge error: RuntimeError" in r.message for r in caplog.records)
