"""A deterministic stand-in for an OpenAI model, shared by the built-in demo model and the test
upstream.

Replies are derived from a hash of the prompt, so the same request always gets the same text (tests
can compare what the gateway returns with what the upstream produced), and every count comes from
`core_service.tokens`, so reported usage is exact for the text produced. The only things that vary
between identical requests are the response `id` and `created`, as with OpenAI.

Request checks live in `fake_checks`, and the HTTP handling both front ends share (routing,
`answer`, SSE encoding) in `fake_http`, so the demo transport and the test server cannot drift apart
in what they accept or how they answer.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import secrets
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.simulators.fake_model.checks import (
    MAX_CHOICES,
    MAX_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_INPUTS,
    FakeRequestError,
    JsonObject,
    check_messages,
    check_prompt,
    missing,
    optional_int,
    text_inputs,
    usage_shares,
    wants_usage,
)
from core_service.tokens import count_chat_prompt, count_text_inputs

# Every word is at most six word characters, so `split_tokens` counts each as exactly one token.
_WORDS: tuple[str, ...] = (
    "river",
    "stone",
    "light",
    "quiet",
    "garden",
    "signal",
    "window",
    "amber",
    "cloud",
    "forest",
    "harbor",
    "valley",
    "copper",
    "meadow",
    "silver",
    "ember",
    "north",
    "summer",
    "winter",
    "autumn",
    "spring",
    "ocean",
    "desert",
    "island",
    "bridge",
    "tower",
    "market",
    "letter",
    "candle",
    "mirror",
    "shadow",
    "echo",
    "field",
    "orbit",
    "planet",
    "comet",
    "thread",
    "canvas",
    "marble",
    "velvet",
    "lemon",
    "cedar",
    "maple",
    "willow",
    "falcon",
    "otter",
    "heron",
    "fox",
    "moves",
    "holds",
    "rests",
    "turns",
    "glows",
    "waits",
    "sings",
    "drifts",
    "and",
    "with",
    "under",
    "over",
    "near",
    "the",
    "a",
    "of",
)
_PUNCTUATION = frozenset({",", "."})
_SENTENCE_WORDS = (6, 14)
_COMMA_CHANCE = 0.1


def _fingerprint(*parts: Any) -> bytes:
    """A stable digest of JSON-like values, independent of dict key order."""
    digest = hashlib.sha256()
    for part in parts:
        try:
            encoded = orjson.dumps(part, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            # Python callers may pass values JSON cannot hold (e.g. integers beyond 64 bits).
            encoded = repr(part).encode()
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.digest()


def _compose(seed: bytes, length: int, *, ends_sentence: bool) -> list[str]:
    """`length` token pieces of plausible-looking prose; with `ends_sentence` the last is a full stop."""
    rng = random.Random(int.from_bytes(seed, "big"))
    pieces: list[str] = []
    words_in_sentence = 0
    sentence_words = rng.randint(*_SENTENCE_WORDS)
    for position in range(length):
        remaining = length - position
        if ends_sentence and remaining == 1:
            pieces.append(".")
            break
        after_word = bool(pieces) and pieces[-1] not in _PUNCTUATION
        # Punctuation two places from a closing full stop would read ", ." or ". .".
        may_punctuate = after_word and (not ends_sentence or remaining > 2)
        if may_punctuate and words_in_sentence >= sentence_words:
            pieces.append(".")
            words_in_sentence = 0
            sentence_words = rng.randint(*_SENTENCE_WORDS)
            continue
        if may_punctuate and words_in_sentence >= 3 and rng.random() < _COMMA_CHANCE:
            pieces.append(",")
            continue
        word = _WORDS[rng.randrange(len(_WORDS))]
        pieces.append(word.capitalize() if words_in_sentence == 0 else word)
        words_in_sentence += 1
    return pieces


def _fragments(pieces: list[str]) -> list[str]:
    """What each streamed chunk carries: a piece plus the space before the next word, so that the
    fragments concatenate to exactly the non-streamed text."""
    fragments: list[str] = []
    for index, piece in enumerate(pieces):
        following = pieces[index + 1] if index + 1 < len(pieces) else None
        fragments.append(
            piece + " " if following is not None and following not in _PUNCTUATION else piece
        )
    return fragments


@dataclass(frozen=True, slots=True)
class _Reply:
    fragments: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.fragments)

    @property
    def tokens(self) -> int:
        return len(self.fragments)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything a response needs, settled before the first byte so that streaming can only fail
    with a validation error up front, never half-way."""

    response_id: str
    created: int
    model: str
    replies: list[_Reply]
    prompt_tokens: int
    include_usage: bool
    # The shares of the prompt reported as read from a prompt cache, and of the completion
    # reported as reasoning (part of completion_tokens, as OpenAI counts them).
    cached_share: float = 0.0
    reasoning_share: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return sum(reply.tokens for reply in self.replies)

    @property
    def cached_tokens(self) -> int:
        return int(self.prompt_tokens * self.cached_share)

    @property
    def reasoning_tokens(self) -> int:
        return int(self.completion_tokens * self.reasoning_share)


# --- embeddings -------------------------------------------------------------------------------


def _unit_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector from an extendable hash, so a shorter vector of the same input is a prefix of
    the longer one renormalised (as OpenAI's `dimensions` shortening behaves). Values are rounded to
    float32 so the float and base64 encodings carry identical numbers."""
    stream = hashlib.shake_256(_fingerprint(item)).digest(4 * dimensions)
    raw = struct.unpack(f"<{dimensions}I", stream)
    values = [(value / 0xFFFFFFFF) * 2.0 - 1.0 for value in raw]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return list(
        struct.unpack(
            f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))
        )
    )


# --- the model --------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class FakeModel:
    """Answers OpenAI requests with deterministic text. Any model name is accepted and reported
    back; `listed_models` is only what `GET /models` lists."""

    default_max_tokens: int = 16
    # Text is generated synchronously on the event loop (the demo runs inside the gateway), so one
    # request may ask for at most this many tokens over all its choices, and at most
    # `max_embedding_values` numbers: both cost well under a tenth of a second.
    max_output_tokens: int = 65_536
    max_embedding_values: int = 1 << 20
    embedding_dimensions: int = 256
    listed_models: tuple[str, ...] = ("fake-model",)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    # What usage reports beyond what is generated, unless a request's `simulate_usage` says
    # otherwise: the share of the prompt read from a (pretended) prompt cache, and the share of
    # the completion that was reasoning. Both are parts of the totals, never added to them.
    cached_prompt_fraction: float = 0.0
    reasoning_fraction: float = 0.0

    def _shares(self, request: Mapping[str, Any]) -> tuple[float, float]:
        return usage_shares(request, (self.cached_prompt_fraction, self.reasoning_fraction))

    # chat -------------------------------------------------------------------------------------

    def _chat_plan(self, request: Mapping[str, Any], model: str, stream: bool) -> _Plan:
        messages = check_messages(request)
        limit = optional_int(request, "max_completion_tokens", 1, self.max_output_tokens)
        if limit is None:
            limit = optional_int(request, "max_tokens", 1, self.max_output_tokens)
        n = optional_int(request, "n", 1, MAX_CHOICES) or 1
        seed = optional_int(request, "seed", -(2**63), 2**63 - 1)
        include_usage = wants_usage(request, stream)
        self._check_output_budget(n, limit, prompts=1)
        cached_share, reasoning_share = self._shares(request)
        prompt_key = _fingerprint(messages, seed)
        replies = [self._reply(prompt_key, index, limit) for index in range(n)]
        return _Plan(
            response_id=_new_id("chatcmpl"),
            created=int(self.clock()),
            model=model,
            replies=replies,
            prompt_tokens=count_chat_prompt(messages),
            include_usage=include_usage,
            cached_share=cached_share,
            reasoning_share=reasoning_share,
        )

    def _check_output_budget(self, n: int, limit: int | None, *, prompts: int) -> None:
        per_choice = self.default_max_tokens if limit is None else limit
        requested = per_choice * n * prompts
        if requested > self.max_output_tokens:
            raise FakeRequestError(
                400,
                f"This request asks for up to {requested} tokens over all its choices "
                f"({n} per prompt × {per_choice} tokens); this model writes at most "
                f"{self.max_output_tokens} per request. Lower 'n' or 'max_tokens'.",
                "n",
            )

    def _reply(self, prompt_key: bytes, index: int, limit: int | None) -> _Reply:
        seed = hashlib.sha256(prompt_key + index.to_bytes(4, "big")).digest()
        # With a limit the model runs into it (as a model asked for N tokens usually does); without
        # one it writes a complete default-length answer.
        if limit is None:
            pieces = _compose(seed, self.default_max_tokens, ends_sentence=True)
            return _Reply(_fragments(pieces), "stop")
        return _Reply(_fragments(_compose(seed, limit, ends_sentence=False)), "length")

    def chat_completion(self, request: Mapping[str, Any], *, model: str) -> JsonObject:
        plan = self._chat_plan(request, model, stream=False)
        return {
            "id": plan.response_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
                for index, reply in enumerate(plan.replies)
            ],
            "usage": _chat_usage(plan),
        }

    def chat_chunks(self, request: Mapping[str, Any], *, model: str) -> Iterator[JsonObject]:
        """`chat.completion.chunk` objects as OpenAI streams them. Validation happens on the call,
        chunks are produced lazily as the iterator is consumed."""
        plan = self._chat_plan(request, model, stream=True)
        return _chat_chunk_stream(plan)

    # legacy completions -----------------------------------------------------------------------

    def _completion_plan(self, request: Mapping[str, Any], model: str, stream: bool) -> _Plan:
        prompts = check_prompt(request)
        # Zero is valid here (OpenAI allows it to score a prompt without generating).
        limit = optional_int(request, "max_tokens", 0, self.max_output_tokens)
        n = optional_int(request, "n", 1, MAX_CHOICES) or 1
        seed = optional_int(request, "seed", -(2**63), 2**63 - 1)
        include_usage = wants_usage(request, stream)
        self._check_output_budget(n, limit, prompts=len(prompts))
        cached_share, reasoning_share = self._shares(request)
        replies: list[_Reply] = []
        for prompt in prompts:
            prompt_key = _fingerprint(prompt, seed)
            replies.extend(self._reply(prompt_key, index, limit) for index in range(n))
        return _Plan(
            response_id=_new_id("cmpl"),
            created=int(self.clock()),
            model=model,
            replies=replies,
            prompt_tokens=count_text_inputs(request["prompt"]),
            include_usage=include_usage,
            cached_share=cached_share,
            reasoning_share=reasoning_share,
        )

    def completion(self, request: Mapping[str, Any], *, model: str) -> JsonObject:
        plan = self._completion_plan(request, model, stream=False)
        return {
            "id": plan.response_id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "text": reply.text,
                    "index": index,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
                for index, reply in enumerate(plan.replies)
            ],
            "usage": _plain_usage(plan),
        }

    def completion_chunks(self, request: Mapping[str, Any], *, model: str) -> Iterator[JsonObject]:
        plan = self._completion_plan(request, model, stream=True)
        return _completion_chunk_stream(plan)

    # embeddings -------------------------------------------------------------------------------

    def embeddings(self, request: Mapping[str, Any], *, model: str) -> JsonObject:
        if "input" not in request or request["input"] is None:
            raise missing("input")
        items = text_inputs(request["input"], "input", allow_empty_text=False)
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise FakeRequestError(
                400,
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(items)} instead.",
                "input",
                code="array_above_max_length",
            )
        dimensions = (
            optional_int(request, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS)
            or self.embedding_dimensions
        )
        if len(items) * dimensions > self.max_embedding_values:
            raise FakeRequestError(
                400,
                f"This request asks for {len(items)} embeddings of {dimensions} dimensions; this "
                f"model returns at most {self.max_embedding_values} values per request. Send "
                "fewer inputs or fewer dimensions.",
                "input",
            )
        encoding = request.get("encoding_format")
        if encoding is None:
            encoding = "float"
        if encoding not in ("float", "base64"):
            raise FakeRequestError(
                400,
                f"Invalid value: {encoding!r}. Supported values are: 'float' and 'base64'.",
                "encoding_format",
                code="invalid_value",
            )
        data = []
        for index, item in enumerate(items):
            vector = _unit_vector(item, dimensions)
            embedding: list[float] | str
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode(
                    "ascii"
                )
            else:
                embedding = vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt_tokens = count_text_inputs(request["input"])
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    # models -----------------------------------------------------------------------------------

    def model_object(self, model_id: str) -> JsonObject:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "kyma"}

    def list_models(self) -> JsonObject:
        return {"object": "list", "data": [self.model_object(name) for name in self.listed_models]}


def _chat_usage(plan: _Plan) -> JsonObject:
    usage = _plain_usage(plan)
    usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens, "audio_tokens": 0}
    usage["completion_tokens_details"] = {
        "reasoning_tokens": plan.reasoning_tokens,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return usage


def _plain_usage(plan: _Plan) -> JsonObject:
    """Legacy completions' usage: the details only when there is something in them."""
    completion_tokens = plan.completion_tokens
    usage: JsonObject = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": plan.prompt_tokens + completion_tokens,
    }
    if plan.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
    if plan.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": plan.reasoning_tokens}
    return usage


def _interleaved(plan: _Plan) -> Iterator[tuple[int, str]]:
    """(choice index, fragment) in the order OpenAI streams several choices: position by position."""
    longest = max((reply.tokens for reply in plan.replies), default=0)
    for position in range(longest):
        for index, reply in enumerate(plan.replies):
            if position < reply.tokens:
                yield index, reply.fragments[position]


def _chat_chunk_stream(plan: _Plan) -> Iterator[JsonObject]:
    def chunk(choices: list[JsonObject]) -> JsonObject:
        body: JsonObject = {
            "id": plan.response_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
        # With include_usage OpenAI puts `"usage": null` on every chunk but the last.
        if plan.include_usage:
            body["usage"] = None
        return body

    for index in range(len(plan.replies)):
        delta = {"role": "assistant", "content": "", "refusal": None}
        yield chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])
    for index, fragment in _interleaved(plan):
        yield chunk(
            [
                {
                    "index": index,
                    "delta": {"content": fragment},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
    for index, reply in enumerate(plan.replies):
        yield chunk(
            [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}]
        )
    if plan.include_usage:
        last = chunk([])
        last["usage"] = _chat_usage(plan)
        yield last


def _completion_chunk_stream(plan: _Plan) -> Iterator[JsonObject]:
    def chunk(choices: list[JsonObject]) -> JsonObject:
        body: JsonObject = {
            "id": plan.response_id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
        if plan.include_usage:
            body["usage"] = None
        return body

    for index, fragment in _interleaved(plan):
        yield chunk([{"text": fragment, "index": index, "logprobs": None, "finish_reason": None}])
    for index, reply in enumerate(plan.replies):
        yield chunk(
            [{"text": "", "index": index, "logprobs": None, "finish_reason": reply.finish_reason}]
        )
    if plan.include_usage:
        last = chunk([])
        last["usage"] = _plain_usage(plan)
        yield last
