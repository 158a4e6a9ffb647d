"""A deterministic stand-in for an OpenAI model, shared by the built-in demo model and the test
upstream.

Replies are derived from a hash of the prompt, so the same request always gets the same text (tests
can compare what the gateway returns with what the upstream produced), and every count comes from
`core_service.tokens`, so reported usage is exact for the text produced. The only things that vary
between identical requests are the response `id` and `created`, as with OpenAI.

Besides the model itself this module holds the HTTP-level routing both front ends share
(`resolve_endpoint`, `answer`) and the SSE encoding, so the demo transport and the test server cannot
drift apart in what they accept or how they answer.
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

from core_service.tokens import count_chat_prompt, count_text_inputs

JsonObject = dict[str, Any]

# Every word is at most six word characters, so `split_tokens` counts each as exactly one token.
_WORDS: tuple[str, ...] = (
    "river", "stone", "light", "quiet", "garden", "signal", "window", "amber",
    "cloud", "forest", "harbor", "valley", "copper", "meadow", "silver", "ember",
    "north", "summer", "winter", "autumn", "spring", "ocean", "desert", "island",
    "bridge", "tower", "market", "letter", "candle", "mirror", "shadow", "echo",
    "field", "orbit", "planet", "comet", "thread", "canvas", "marble", "velvet",
    "lemon", "cedar", "maple", "willow", "falcon", "otter", "heron", "fox",
    "moves", "holds", "rests", "turns", "glows", "waits", "sings", "drifts",
    "and", "with", "under", "over", "near", "the", "a", "of",
)
_PUNCTUATION = frozenset({",", "."})
_SENTENCE_WORDS = (6, 14)
_COMMA_CHANCE = 0.1

# OpenAI's own limits on these parameters.
MAX_CHOICES = 128
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_DIMENSIONS = 4096

_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

SSE_DONE = b"data: [DONE]\n\n"


class FakeRequestError(Exception):
    """A request the fake model refuses, carrying the HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code

    def body(self) -> JsonObject:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JsonObject:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- reading requests -------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _wrong_type(param: str, expected: str, value: Any) -> FakeRequestError:
    return FakeRequestError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        code="invalid_type",
    )


def _missing(param: str) -> FakeRequestError:
    return FakeRequestError(
        400, f"Missing required parameter: '{param}'.", param, code="missing_required_parameter"
    )


def _optional_int(request: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python but not a JSON integer.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(name, "an integer", value)
    if value < low:
        raise FakeRequestError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            name,
            code="integer_below_min_value",
        )
    if value > high:
        raise FakeRequestError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            name,
            code="integer_above_max_value",
        )
    return value


def _optional_bool(request: Mapping[str, Any], name: str) -> bool:
    value = request.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def requested_model(request: Any) -> str:
    """The `model` a request names; what the fake reports back as the model that answered."""
    if not isinstance(request, dict):
        raise _wrong_type("body", "an object", request)
    model = request.get("model")
    if model is None or model == "":
        raise FakeRequestError(400, "you must provide a model parameter", "model")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    return model


def _include_usage(request: Mapping[str, Any], stream: bool) -> bool:
    options = request.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise FakeRequestError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    if not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)
    return _optional_bool(options, "include_usage")


def _check_messages(request: Mapping[str, Any]) -> list[Any]:
    if "messages" not in request or request["messages"] is None:
        raise _missing("messages")
    messages = request["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise FakeRequestError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in _CHAT_ROLES:
            raise FakeRequestError(
                400,
                f"Invalid value: {role!r}. Supported values are: "
                "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                f"{where}.role",
                code="invalid_value",
            )
        content = message.get("content")
        # An assistant turn may carry only tool calls; every other turn needs content.
        if content is None and role != "assistant":
            raise _missing(f"{where}.content")
        if content is not None and not isinstance(content, (str, list)):
            raise _wrong_type(f"{where}.content", "one of a string or array of objects", content)
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _wrong_type(f"{where}.content[{part_index}]", "an object with a 'type'", part)
    return messages


def _check_prompt(request: Mapping[str, Any]) -> list[str | list[int]]:
    """The prompts of a legacy completions request, one entry per prompt."""
    if "prompt" not in request or request["prompt"] is None:
        raise _missing("prompt")
    return _text_inputs(request["prompt"], "prompt", allow_empty_text=True)


def _text_inputs(value: Any, param: str, *, allow_empty_text: bool) -> list[str | list[int]]:
    """Splits OpenAI's four input shapes (str, list[str], list[int], list[list[int]]) into items."""
    expected = "a string, array of strings, array of integers, or array of arrays of integers"
    if isinstance(value, str):
        if not value and not allow_empty_text:
            raise FakeRequestError(400, f"'{param}' must not be empty.", param)
        return [value]
    if not isinstance(value, list):
        raise _wrong_type(param, expected, value)
    if not value:
        raise FakeRequestError(
            400,
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param,
            code="empty_array",
        )
    if all(_is_token_id(item) for item in value):
        return [list(value)]
    items: list[str | list[int]] = []
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(item, str):
            if not item and not allow_empty_text:
                raise FakeRequestError(400, f"'{where}' must not be empty.", where)
            items.append(item)
        elif isinstance(item, list) and item and all(_is_token_id(token) for token in item):
            items.append(list(item))
        else:
            raise _wrong_type(where, "a string or a non-empty array of non-negative integers", item)
    return items


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- producing text ---------------------------------------------------------------------------


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
        fragments.append(piece + " " if following is not None and following not in _PUNCTUATION else piece)
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

    @property
    def completion_tokens(self) -> int:
        return sum(reply.tokens for reply in self.replies)


# --- embeddings -------------------------------------------------------------------------------


def _unit_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector from an extendable hash, so a shorter vector of the same input is a prefix of
    the longer one renormalised (as OpenAI's `dimensions` shortening behaves). Values are rounded to
    float32 so the float and base64 encodings carry identical numbers."""
    stream = hashlib.shake_256(_fingerprint(item)).digest(4 * dimensions)
    raw = struct.unpack(f"<{dimensions}I", stream)
    values = [(value / 0xFFFFFFFF) * 2.0 - 1.0 for value in raw]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))))


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

    # chat -------------------------------------------------------------------------------------

    def _chat_plan(self, request: Mapping[str, Any], model: str, stream: bool) -> _Plan:
        messages = _check_messages(request)
        limit = _optional_int(request, "max_completion_tokens", 1, self.max_output_tokens)
        if limit is None:
            limit = _optional_int(request, "max_tokens", 1, self.max_output_tokens)
        n = _optional_int(request, "n", 1, MAX_CHOICES) or 1
        seed = _optional_int(request, "seed", -(2**63), 2**63 - 1)
        include_usage = _include_usage(request, stream)
        self._check_output_budget(n, limit, prompts=1)
        prompt_key = _fingerprint(messages, seed)
        replies = [self._reply(prompt_key, index, limit) for index in range(n)]
        return _Plan(
            response_id=_new_id("chatcmpl"),
            created=int(self.clock()),
            model=model,
            replies=replies,
            prompt_tokens=count_chat_prompt(messages),
            include_usage=include_usage,
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
                    "message": {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []},
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
        prompts = _check_prompt(request)
        # Zero is valid here (OpenAI allows it to score a prompt without generating).
        limit = _optional_int(request, "max_tokens", 0, self.max_output_tokens)
        n = _optional_int(request, "n", 1, MAX_CHOICES) or 1
        seed = _optional_int(request, "seed", -(2**63), 2**63 - 1)
        include_usage = _include_usage(request, stream)
        self._check_output_budget(n, limit, prompts=len(prompts))
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
        )

    def completion(self, request: Mapping[str, Any], *, model: str) -> JsonObject:
        plan = self._completion_plan(request, model, stream=False)
        return {
            "id": plan.response_id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {"text": reply.text, "index": index, "logprobs": None, "finish_reason": reply.finish_reason}
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
            raise _missing("input")
        items = _text_inputs(request["input"], "input", allow_empty_text=False)
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise FakeRequestError(
                400,
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(items)} instead.",
                "input",
                code="array_above_max_length",
            )
        dimensions = _optional_int(request, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS) or self.embedding_dimensions
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
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
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
    usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
    usage["completion_tokens_details"] = {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return usage


def _plain_usage(plan: _Plan) -> JsonObject:
    completion_tokens = plan.completion_tokens
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": plan.prompt_tokens + completion_tokens,
    }


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
        yield chunk([{"index": index, "delta": {"content": fragment}, "logprobs": None, "finish_reason": None}])
    for index, reply in enumerate(plan.replies):
        yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}])
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
        yield chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": reply.finish_reason}])
    if plan.include_usage:
        last = chunk([])
        last["usage"] = _plain_usage(plan)
        yield last


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
        rest = path[len(api_root):]
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
        return JsonReply(405, error_body(f"Method {method} is not allowed for {path}; use {expected_method}."))
    if endpoint == MODELS:
        return JsonReply(200, fake.list_models())
    if endpoint.startswith(MODELS + "/"):
        return JsonReply(200, fake.model_object(endpoint[len(MODELS) + 1:]))
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
        stream = _optional_bool(request, "stream")
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
