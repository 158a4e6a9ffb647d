"""The HTTP handling the demo transport and the test server share: which endpoint a path
addresses, the answer to a request (JSON or a chunk stream), and SSE encoding.

Three dialects are served: OpenAI's chat completions (with legacy completions, embeddings and
models), OpenAI's Responses and Anthropic's Messages. A server may be told to speak only some
of them (`dialects`): the others' paths are unknown URLs to it, as to a real server that does
not speak them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core_service.simulators.fake_model import messages as anthropic
from core_service.simulators.fake_model import responses
from core_service.simulators.fake_model.checks import (
    FakeRequestError,
    error_body,
    optional_bool,
    requested_model,
)
from core_service.simulators.fake_model.model import FakeModel, JsonObject

SSE_DONE = b"data: [DONE]\n\n"
DIALECTS = frozenset({"chat", "responses", "messages"})


def is_token_chunk(chunk: Mapping[str, Any]) -> bool:
    """Whether a streamed chunk or event carries generated output (what pacing and stream cuts
    count): text, reasoning or tool-call arguments, in any dialect."""
    if "type" in chunk:
        return responses.is_token_event(chunk) or anthropic.is_token_event(chunk)
    for choice in chunk.get("choices") or ():
        if choice.get("text"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


def encode_sse(chunk: Mapping[str, Any], *, named: bool = False) -> bytes:
    """One SSE event; `named` ones (Responses, Messages) carry their type as the event name."""
    data = b"data: " + orjson.dumps(chunk) + b"\n\n"
    if named:
        return b"event: " + str(chunk["type"]).encode() + b"\n" + data
    return data


# --- HTTP routing shared by the demo transport and the test server ----------------------------

CHAT_COMPLETIONS = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"
RESPONSES = "/responses"
MESSAGES = "/messages"
COUNT_TOKENS = "/messages/count_tokens"
MODELS = "/models"
# Longest first: a path is matched by the first endpoint it ends with.
_POST_ENDPOINTS = (COUNT_TOKENS, CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES)
_DIALECT_OF = {RESPONSES: "responses", MESSAGES: "messages", COUNT_TOKENS: "messages"}


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
    """A 200 `text/event-stream`: each chunk is sent as `encode_sse(chunk)`, then `SSE_DONE`
    (named streams, Responses' and Messages', end with their last event instead)."""

    chunks: Iterator[JsonObject]
    named: bool = False

    @property
    def end(self) -> bytes:
        return b"" if self.named else SSE_DONE


def answer(
    fake: FakeModel,
    method: str,
    path: str,
    body: bytes,
    *,
    api_root: str | None = "/v1",
    dialects: frozenset[str] = DIALECTS,
) -> JsonReply | StreamReply:
    """The whole response to one HTTP request. Never raises for anything a client sends: every
    refusal is an error body in the endpoint's dialect."""
    endpoint = resolve_endpoint(path, api_root)
    if endpoint is not None and _DIALECT_OF.get(endpoint, "chat") not in dialects:
        endpoint = None
    if endpoint is None:
        return JsonReply(404, error_body(f"Invalid URL ({method} {path})"))
    anthropic_shape = endpoint in (MESSAGES, COUNT_TOKENS)
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
        message = (
            "We could not parse the JSON body of your request. The API expects a JSON payload."
        )
        if anthropic_shape:
            return JsonReply(400, anthropic.error_body(message))
        return JsonReply(400, error_body(message))
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
        if endpoint == RESPONSES:
            if stream:
                return StreamReply(responses.response_events(fake, request, model=model), True)
            return JsonReply(200, responses.response(fake, request, model=model))
        if endpoint == MESSAGES:
            if stream:
                return StreamReply(anthropic.message_events(fake, request, model=model), True)
            return JsonReply(200, anthropic.message(fake, request, model=model))
        if endpoint == COUNT_TOKENS:
            return JsonReply(200, anthropic.count(fake, request, model=model))
        if stream:
            raise FakeRequestError(400, "Embeddings cannot be streamed.", "stream")
        return JsonReply(200, fake.embeddings(request, model=model))
    except FakeRequestError as error:
        if anthropic_shape:
            return JsonReply(error.status, anthropic.error_body(error.message))
        return JsonReply(error.status, error.body())
