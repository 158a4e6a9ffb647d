"""The HTTP handling the demo transport and the test server share: which endpoint a path
addresses, the answer to a request (JSON or a chunk stream), and SSE encoding."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core_service.simulators.fake_model.checks import (
    FakeRequestError,
    error_body,
    optional_bool,
    requested_model,
)
from core_service.simulators.fake_model.model import FakeModel, JsonObject

SSE_DONE = b"data: [DONE]\n\n"


def is_token_chunk(chunk: Mapping[str, Any]) -> bool:
    """Whether a streamed chunk carries generated text (what pacing and stream cuts count)."""
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def encode_sse(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# --- HTTP routing shared by the demo transport and the test server ----------------------------

CHAT_COMPLETIONS = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"
MODELS = "/models"
_POST_ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS)


def resolve_endpoint(path: str, api_root: str | None) -> str | None:
    """The endpoint a URL path addresses ("/chat/completions", "/models/<id>", ...), or None.

    With `api_root` (e.g. "/v1") the path must sit directly under it; without, any prefix is
    accepted, which lets the demo transport serve whatever base URL it is mounted on.
    """
    if api_root is not None:
        if not path.startswith(api_root + "/"):
            return None
        rest = path[len(api_root) :]
        if rest in _POST_ENDPOINTS or rest == MODELS:
            return rest
        if rest.startswith(MODELS + "/") and len(rest) > len(MODELS) + 1:
            return rest
        return None
    for endpoint in (*_POST_ENDPOINTS, MODELS):
        if path.endswith(endpoint):
            return endpoint
    marker = path.find(MODELS + "/")
    if marker >= 0 and len(path) > marker + len(MODELS) + 1:
        return path[marker:]
    return None


@dataclass(frozen=True, slots=True)
class JsonReply:
    status: int
    body: JsonObject


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A 200 `text/event-stream`: each chunk is sent as `encode_sse(chunk)`, then `SSE_DONE`."""

    chunks: Iterator[JsonObject]


def answer(
    fake: FakeModel, method: str, path: str, body: bytes, *, api_root: str | None = "/v1"
) -> JsonReply | StreamReply:
    """The whole response to one OpenAI HTTP request. Never raises for anything a client sends:
    every refusal is an OpenAI error body."""
    endpoint = resolve_endpoint(path, api_root)
    if endpoint is None:
        return JsonReply(404, error_body(f"Invalid URL ({method} {path})"))
    expected_method = "POST" if endpoint in _POST_ENDPOINTS else "GET"
    if method != expected_method:
        return JsonReply(
            405, error_body(f"Method {method} is not allowed for {path}; use {expected_method}.")
        )
    if endpoint == MODELS:
        return JsonReply(200, fake.list_models())
    if endpoint.startswith(MODELS + "/"):
        return JsonReply(200, fake.model_object(endpoint[len(MODELS) + 1 :]))
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return JsonReply(
            400,
            error_body(
                "We could not parse the JSON body of your request. The API expects a JSON payload."
            ),
        )
    try:
        model = requested_model(request)
        stream = optional_bool(request, "stream")
        if endpoint == CHAT_COMPLETIONS:
            if stream:
                return StreamReply(fake.chat_chunks(request, model=model))
            return JsonReply(200, fake.chat_completion(request, model=model))
        if endpoint == COMPLETIONS:
            if stream:
                return StreamReply(fake.completion_chunks(request, model=model))
            return JsonReply(200, fake.completion(request, model=model))
        if stream:
            raise FakeRequestError(400, "Embeddings cannot be streamed.", "stream")
        return JsonReply(200, fake.embeddings(request, model=model))
    except FakeRequestError as error:
        return JsonReply(error.status, error.body())
