"""Reading an OpenAI request body: just what policy needs (model, limits on output, a prompt
estimate); the body itself is forwarded as the client sent it, but for `model`."""

from __future__ import annotations

from typing import Any

import orjson

from core_service import tokens
from core_service.errors import InvalidRequest
from core_service.inference.validation import check_chat, check_completion, check_depth, too_deep
from core_service.values import Endpoint, InferenceRequest

# Longer than any model id in use (Hugging Face's are at most 96 characters); a longer one is
# refused before it is looked up or quoted in an error.
MAX_MODEL_CHARS = 256

# Upstream paths under a deployment's base URL.
UPSTREAM_PATHS: dict[Endpoint, str] = {
    "chat.completions": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
}


def _positive_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{field}' must be a positive integer.", param=field)
    return value


def _require(body: dict[str, Any], field: str, what: str) -> Any:
    value = body.get(field)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
    if isinstance(value, (str, list)) and len(value) == 0:
        raise InvalidRequest(f"'{field}' must not be empty.", param=field)
    if not isinstance(value, (str, list)) or (what == "list" and not isinstance(value, list)):
        raise InvalidRequest(f"'{field}' must be a {what}.", param=field)
    return value


def request_body(raw: bytes, *, missing_model: str) -> dict[str, Any]:
    """A client's JSON object body, nested no deeper than Kyma allows, naming a model (what
    `missing_model` says when it does not)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error) or "ecursion limit" in str(error):
            # orjson stops at 1,024 levels: the same answer as check_depth's below that.
            raise too_deep() from None
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_depth(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(missing_model, param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"'model' is longer than {MAX_MODEL_CHARS} characters; no model has such a name.",
            param="model",
        )
    return body


def parse_request(
    endpoint: Endpoint, raw: bytes, *, stream: bool | None = None
) -> InferenceRequest:
    """Parse and check `raw`. `stream` forces streaming on or off (the RPC decides, not the body)."""
    body = request_body(raw, missing_model="You must provide a model parameter.")
    model: str = body["model"]

    if endpoint == "chat.completions":
        messages = _require(body, "messages", "list")
        check_chat(body)
        prompt_estimate = tokens.count_chat_prompt(messages)
    elif endpoint == "completions":
        check_completion(body)
        prompt_estimate = tokens.count_text_inputs(_require(body, "prompt", "string or list"))
    else:
        prompt_estimate = tokens.count_text_inputs(_require(body, "input", "string or list"))

    wants_stream = body.get("stream", False)
    if not isinstance(wants_stream, bool) and wants_stream is not None:
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if endpoint == "embeddings" and (stream or wants_stream):
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream")

    max_output = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    choices = _positive_int(body, "n") or 1
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    return InferenceRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=bool(wants_stream) if stream is None else stream,
        max_output_tokens=None if max_output is None else max_output * choices,
        prompt_tokens_estimate=prompt_estimate,
        include_usage=bool(options and options.get("include_usage") is True),
        choices=choices,
    )
