"""The deterministic fake model: shapes match OpenAI's (checked with the SDK's own types), text is
reproducible, and usage is exact by Kyma's token counter."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core_service.simulators.fake_model import model as fake_openai
from core_service.simulators.fake_model.checks import FakeRequestError
from core_service.simulators.fake_model.http import (
    JsonReply,
    StreamReply,
    answer,
    encode_sse,
    is_token_chunk,
    resolve_endpoint,
)
from core_service.simulators.fake_model.model import FakeModel
from core_service.tokens import (
    count_chat_prompt,
    count_text_inputs,
    count_tokens,
    split_tokens,
)

MODEL = FakeModel(clock=lambda: 1_700_000_000.5)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about rivers."},
]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **extra}


def test_vocabulary_words_are_one_token_each() -> None:
    for word in fake_openai._WORDS:
        assert split_tokens(word) == [word]
        assert split_tokens(word.capitalize()) == [word.capitalize()]


def test_chat_completion_has_openai_shape_and_exact_usage() -> None:
    body = MODEL.chat_completion(chat(), model="public-name")
    parsed = ChatCompletion.model_validate(body)
    assert parsed.object == "chat.completion"
    assert parsed.model == "public-name"
    assert parsed.created == 1_700_000_000
    assert parsed.id.startswith("chatcmpl-")
    [choice] = parsed.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    content = choice.message.content
    assert content is not None and content.endswith(".")
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens == count_tokens(content) == MODEL.default_max_tokens
    assert parsed.usage.prompt_tokens == count_chat_prompt(MESSAGES)
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + parsed.usage.completion_tokens


def test_text_depends_only_on_the_prompt() -> None:
    first = MODEL.chat_completion(chat(temperature=0.3), model="a")
    second = MODEL.chat_completion(chat(), model="b")
    other = MODEL.chat_completion(
        chat(messages=[{"role": "user", "content": "Something else"}]), model="a"
    )
    reseeded = MODEL.chat_completion(chat(seed=42), model="a")
    text = first["choices"][0]["message"]["content"]
    assert second["choices"][0]["message"]["content"] == text
    assert other["choices"][0]["message"]["content"] != text
    assert reseeded["choices"][0]["message"]["content"] != text
    assert first["id"] != second["id"]


def test_max_tokens_sets_the_length_and_finish_reason() -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = MODEL.chat_completion(chat(**{field: 5}), model="m")
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        assert count_tokens(choice["message"]["content"]) == 5
        assert body["usage"]["completion_tokens"] == 5


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(max_size=200), limit=st.integers(min_value=1, max_value=300))
def test_usage_is_exact_for_any_prompt_and_limit(prompt: str, limit: int) -> None:
    request = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": limit,
        "stream": True,
    }
    body = MODEL.chat_completion({**request, "stream": False}, model="m")
    content = body["choices"][0]["message"]["content"]
    assert count_tokens(content) == limit == body["usage"]["completion_tokens"]
    streamed = "".join(
        chunk["choices"][0]["delta"].get("content", "")
        for chunk in MODEL.chat_chunks(request, model="m")
        if chunk["choices"]
    )
    assert streamed == content
    assert not content.startswith(" ") and not content.endswith(" ") and "  " not in content


def test_several_choices_differ_and_usage_sums_them() -> None:
    body = MODEL.chat_completion(chat(n=3, max_tokens=7), model="m")
    parsed = ChatCompletion.model_validate(body)
    assert [choice.index for choice in parsed.choices] == [0, 1, 2]
    texts = {choice.message.content for choice in parsed.choices}
    assert len(texts) == 3
    assert body["usage"]["completion_tokens"] == 21


def test_chat_chunks_stream_like_openai() -> None:
    chunks = list(
        MODEL.chat_chunks(chat(stream=True, stream_options={"include_usage": True}), model="m")
    )
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}
    last = chunks[-1]
    assert last["choices"] == []
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks[1:-2])
    assert last["usage"]["completion_tokens"] == count_tokens(text) == len(chunks) - 3
    assert text == MODEL.chat_completion(chat(), model="m")["choices"][0]["message"]["content"]


def test_chat_chunks_without_include_usage_carry_no_usage() -> None:
    chunks = list(MODEL.chat_chunks(chat(stream=True), model="m"))
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_chunks_interleave_several_choices() -> None:
    request = chat(stream=True, n=2, max_tokens=4)
    chunks = list(MODEL.chat_chunks(request, model="m"))
    indices = [chunk["choices"][0]["index"] for chunk in chunks]
    assert indices == [0, 1] + [0, 1] * 4 + [0, 1]
    whole = MODEL.chat_completion({**request, "stream": False}, model="m")
    for index in (0, 1):
        text = "".join(
            chunk["choices"][0]["delta"].get("content", "")
            for chunk in chunks
            if chunk["choices"][0]["index"] == index
        )
        assert text == whole["choices"][index]["message"]["content"]


def test_chunks_are_produced_lazily() -> None:
    iterator = MODEL.chat_chunks(chat(stream=True, max_tokens=5), model="m")
    assert next(iterator)["choices"][0]["delta"]["role"] == "assistant"
    assert is_token_chunk(next(iterator))


def test_completion_shape_and_usage() -> None:
    body = MODEL.completion(
        {"model": "m", "prompt": "Once upon a time", "max_tokens": 6}, model="m"
    )
    parsed = Completion.model_validate(body)
    assert parsed.object == "text_completion"
    assert parsed.id.startswith("cmpl-")
    assert parsed.choices[0].finish_reason == "length"
    assert count_tokens(parsed.choices[0].text) == 6
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == count_tokens("Once upon a time")
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + 6


@pytest.mark.parametrize(
    ("prompt", "choices"),
    [("text", 2), (["one", "two"], 4), ([1, 2, 3], 2), ([[1, 2], [3]], 4)],
)
def test_completion_prompts_of_every_shape(prompt: Any, choices: int) -> None:
    body = MODEL.completion({"prompt": prompt, "n": 2, "max_tokens": 3}, model="m")
    Completion.model_validate(body)
    assert [choice["index"] for choice in body["choices"]] == list(range(choices))
    assert body["usage"]["prompt_tokens"] == count_text_inputs(prompt)
    assert body["usage"]["completion_tokens"] == 3 * choices


def test_completion_chunks() -> None:
    request = {"prompt": "Hello", "stream": True, "stream_options": {"include_usage": True}}
    chunks = list(MODEL.completion_chunks(request, model="m"))
    # OpenAI streams `finish_reason: null` until the end, which the SDK's (non-streaming) type does
    # not admit, so only the closing chunks are checked against it.
    for chunk in chunks[-2:]:
        Completion.model_validate(chunk)
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert set(chunk) == {"id", "object", "created", "model", "choices", "usage"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks[:-1])
    assert text == MODEL.completion({"prompt": "Hello"}, model="m")["choices"][0]["text"]


def test_embeddings_are_deterministic_unit_vectors() -> None:
    body = MODEL.embeddings({"input": ["alpha", "beta", "alpha"]}, model="emb")
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert parsed.model == "emb"
    assert [item.index for item in parsed.data] == [0, 1, 2]
    vectors = [item.embedding for item in parsed.data]
    assert all(len(vector) == 256 for vector in vectors)
    assert all(
        math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5) for vector in vectors
    )
    assert vectors[0] == vectors[2] != vectors[1]
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == 3


def test_embedding_dimensions_shorten_like_openai() -> None:
    full = MODEL.embeddings({"input": "text"}, model="e")["data"][0]["embedding"]
    short = MODEL.embeddings({"input": "text", "dimensions": 8}, model="e")["data"][0]["embedding"]
    assert len(short) == 8
    norm = math.sqrt(math.fsum(v * v for v in full[:8]))
    assert all(
        math.isclose(a, b / norm, rel_tol=1e-5, abs_tol=1e-6)
        for a, b in zip(short, full[:8], strict=True)
    )


def test_embedding_base64_holds_the_same_float32_values() -> None:
    floats = MODEL.embeddings({"input": "text", "dimensions": 16}, model="e")["data"][0][
        "embedding"
    ]
    encoded = MODEL.embeddings(
        {"input": "text", "dimensions": 16, "encoding_format": "base64"}, model="e"
    )
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack("<16f", raw)) == floats


@pytest.mark.parametrize("value", ["one", ["one", "two"], [5, 6, 7], [[5, 6], [7]]])
def test_embedding_inputs_of_every_shape(value: Any) -> None:
    body = MODEL.embeddings({"input": value}, model="e")
    expected_items = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert len(body["data"]) == expected_items
    assert body["usage"]["prompt_tokens"] == count_text_inputs(value)


def _error(call: Any, request: dict[str, Any]) -> FakeRequestError:
    with pytest.raises(FakeRequestError) as caught:
        result = call(request, model="m")
        list(result) if not isinstance(result, dict) else None
    assert caught.value.status == 400
    body = caught.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return caught.value


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [3]}]}, "messages[0].content[0]"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": "5"}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": 10**9}, "max_tokens"),
        ({"messages": MESSAGES, "max_completion_tokens": -1}, "max_completion_tokens"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "n": 129}, "n"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MESSAGES, "n": 2, "max_tokens": 40_000}, "n"),
        ({"messages": MESSAGES, "n": 128, "max_tokens": 1024}, "n"),
    ],
)
def test_chat_validation_errors(request_body: dict[str, Any], param: str) -> None:
    assert _error(MODEL.chat_completion, request_body).param == param


def test_stream_validation_happens_before_the_first_chunk() -> None:
    with pytest.raises(FakeRequestError):
        MODEL.chat_chunks({"messages": [], "stream": True}, model="m")
    with pytest.raises(FakeRequestError):
        MODEL.chat_chunks(
            {"messages": MESSAGES, "stream": True, "stream_options": "yes"}, model="m"
        )


def test_assistant_turn_may_hold_only_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    body = MODEL.chat_completion({"messages": messages}, model="m")
    assert body["usage"]["prompt_tokens"] == count_chat_prompt(messages)


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["ok", 5]}, "prompt[1]"),
        ({"prompt": [[1], []]}, "prompt[1]"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": ["x"] * 100, "max_tokens": 1000}, "n"),
    ],
)
def test_completion_validation_errors(request_body: dict[str, Any], param: str) -> None:
    assert _error(MODEL.completion, request_body).param == param


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [-1]}, "input[0]"),
        ({"input": {"text": "a"}}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"input": ["a"] * 2048, "dimensions": 1024}, "input"),
    ],
)
def test_embedding_validation_errors(request_body: dict[str, Any], param: str) -> None:
    assert _error(MODEL.embeddings, request_body).param == param


def test_resolve_endpoint_under_a_root_and_under_any_prefix() -> None:
    assert resolve_endpoint("/v1/chat/completions", "/v1") == "/chat/completions"
    assert resolve_endpoint("/v1/completions", "/v1") == "/completions"
    assert resolve_endpoint("/v1/models/org/name", "/v1") == "/models/org/name"
    assert resolve_endpoint("/v2/chat/completions", "/v1") is None
    assert resolve_endpoint("/v1/models/", "/v1") is None
    assert resolve_endpoint("/v1/files", "/v1") is None
    assert resolve_endpoint("/openai/v1/chat/completions", None) == "/chat/completions"
    assert resolve_endpoint("/anything/completions", None) == "/completions"
    assert resolve_endpoint("/x/models/demo", None) == "/models/demo"
    assert resolve_endpoint("/x/files", None) is None


def _json_reply(reply: JsonReply | StreamReply) -> JsonReply:
    assert isinstance(reply, JsonReply)
    return reply


def test_answer_routes_and_refuses_in_openai_format() -> None:
    ok = _json_reply(answer(MODEL, "POST", "/v1/chat/completions", orjson.dumps(chat())))
    assert ok.status == 200 and ok.body["object"] == "chat.completion"
    streamed = answer(MODEL, "POST", "/v1/chat/completions", orjson.dumps(chat(stream=True)))
    assert isinstance(streamed, StreamReply)
    assert encode_sse(next(streamed.chunks)).startswith(b"data: {")

    cases = [
        ("POST", "/v1/nothing", b"{}", 404, None),
        ("GET", "/v1/chat/completions", b"", 405, None),
        ("POST", "/v1/models", b"", 405, None),
        ("POST", "/v1/chat/completions", b"{not json", 400, None),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "body"),
        ("POST", "/v1/chat/completions", orjson.dumps({"messages": MESSAGES}), 400, "model"),
        ("POST", "/v1/chat/completions", orjson.dumps({**chat(), "model": 7}), 400, "model"),
        ("POST", "/v1/chat/completions", orjson.dumps(chat(stream="yes")), 400, "stream"),
        (
            "POST",
            "/v1/embeddings",
            orjson.dumps({"model": "e", "input": "a", "stream": True}),
            400,
            "stream",
        ),
    ]
    for method, path, body, status, param in cases:
        reply = _json_reply(answer(MODEL, method, path, body))
        assert reply.status == status, (method, path, body)
        assert set(reply.body["error"]) == {"message", "type", "param", "code"}
        assert reply.body["error"]["param"] == param


def test_answer_lists_and_retrieves_models() -> None:
    listing = _json_reply(answer(MODEL, "GET", "/v1/models", b""))
    assert [Model.model_validate(item).id for item in listing.body["data"]] == ["fake-model"]
    one = _json_reply(answer(MODEL, "GET", "/v1/models/org/some-model", b""))
    assert Model.model_validate(one.body).id == "org/some-model"


def test_usage_reports_cached_and_reasoning_shares_when_asked() -> None:
    shares = {"cached_prompt_fraction": 0.5, "reasoning_fraction": 0.25}
    body = MODEL.chat_completion(chat(max_tokens=8, simulate_usage=shares), model="m")
    usage = ChatCompletion.model_validate(body).usage
    assert usage is not None and usage.prompt_tokens == count_chat_prompt(MESSAGES)
    # Parts of the totals, as OpenAI counts them, never added to them.
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens // 2  # type: ignore[union-attr]
    assert usage.completion_tokens == 8
    assert usage.completion_tokens_details.reasoning_tokens == 2  # type: ignore[union-attr]
    # A model's own defaults, which a request overrides; legacy completions too.
    reasoning = FakeModel(reasoning_fraction=0.5)
    plain = reasoning.completion({"model": "m", "prompt": "Once upon", "max_tokens": 4}, model="m")
    assert plain["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert "prompt_tokens_details" not in plain["usage"]
    chunks = list(
        reasoning.chat_chunks(
            chat(
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                simulate_usage={"reasoning_fraction": 0},
            ),
            model="m",
        )
    )
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize(
    "asked, param",
    [
        ("half", "simulate_usage"),
        ({"cached_prompt_fraction": 2}, "simulate_usage.cached_prompt_fraction"),
        ({"reasoning_fraction": True}, "simulate_usage.reasoning_fraction"),
        ({"cache_everything": 1}, "simulate_usage"),
    ],
)
def test_bad_usage_shares_are_refused(asked: Any, param: str) -> None:
    with pytest.raises(FakeRequestError) as refused:
        MODEL.chat_completion(chat(simulate_usage=asked), model="m")
    assert refused.value.status == 400 and refused.value.param == param
