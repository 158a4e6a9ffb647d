"""The bridge's OpenAPI document (`GET /openapi.json`): every public route, its parameters, its
request body and the answers it gives, errors included, in OpenAI's error shape (Anthropic's on
the Messages routes).

The routes read their bodies themselves (the core validates them), so FastAPI cannot see their
shapes: FastAPI lists the routes, and this module says what they take and give, keyed by method
and path. A route without a description here stops the bridge at start-up, so the document
cannot silently fall behind. Request schemas describe what Kyma itself checks (unknown fields
pass through to the upstream, so every object stays open); response schemas describe what the
bridge writes. The test suite runs schemathesis against a real bridge and core with this
document (tests/http_bridge/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

Schema = dict[str, Any]

_ERROR: Schema = {"$ref": "#/components/schemas/Error"}
_ANTHROPIC_ERROR: Schema = {"$ref": "#/components/schemas/AnthropicError"}
_NULLABLE_STRING: Schema = {"type": ["string", "null"]}
_NULLABLE_TIME: Schema = {"type": ["integer", "null"], "description": "Unix seconds"}
_USD: Schema = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{9}$", "description": "USD"}

_WHY = {
    400: "The request is malformed: the message and `param` say what to change.",
    401: "Missing, malformed or unknown API key.",
    402: "Not enough credit for the request's worst case (`insufficient_quota`).",
    403: "The account is suspended or banned.",
    404: "Unknown model, key or URL.",
    408: "The request line and headers did not arrive in time.",
    409: "The account already exists, or a key limit or idempotency key conflicts.",
    413: "The body is larger than the bridge accepts.",
    429: "Rate limited; `Retry-After` says when to retry.",
    431: "The request line and headers are too large, or too many.",
    502: "The model's upstreams (or the payment provider) failed.",
    503: "Unavailable: the upstreams, the core, the database, mail or billing.",
    504: "The model's upstreams timed out.",
}
# What any route may answer: bad input, an oversized or slow request, Kyma unavailable.
_ANY = (400, 408, 413, 431, 503)
_KEYED = (*_ANY, 401, 403, 429)
_INFERENCE = (*_KEYED, 402, 404, 502, 504)


def _errors(*statuses: int, shape: Schema = _ERROR) -> dict[str, Any]:
    return {
        str(status): {
            "description": _WHY[status],
            "content": {"application/json": {"schema": shape}},
        }
        for status in sorted(set(statuses))
    }


def _ok(schema: Schema, description: str = "OK", status: int = 200) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _body(schema: Schema, *, required: bool = True, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {"application/json": media}}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required)}


def _list(item: Schema, **extra: Schema) -> Schema:
    return _obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": item}, **extra},
        ("object", "data"),
    )


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# Requests. Only the fields Kyma reads or checks are described; the rest reach the upstream.
_MESSAGE: Schema = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"type": ["string", "array", "null"]},
        "name": {"type": "string"},
    },
    "required": ["role"],
}
_OUTPUT_LIMITS: dict[str, Schema] = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "n": {"type": "integer", "minimum": 1},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}
_MODEL: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
_CHAT_REQUEST = _obj(
    {
        "model": _MODEL,
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        **_OUTPUT_LIMITS,
    },
    ("model", "messages"),
)
_TEXT_INPUT: Schema = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": ["string", "integer", "array"]}},
    ]
}
_COMPLETION_REQUEST = _obj(
    {"model": _MODEL, "prompt": _TEXT_INPUT, **_OUTPUT_LIMITS}, ("model", "prompt")
)
_EMBEDDING_REQUEST = _obj({"model": _MODEL, "input": _TEXT_INPUT}, ("model", "input"))
_RESPONSES_REQUEST = _obj(
    {
        "model": _MODEL,
        "input": {"type": ["string", "array"], "items": {"type": "object"}},
        "instructions": _NULLABLE_STRING,
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean"},
        "previous_response_id": {"type": "string"},
        "tools": {"type": "array", "items": _obj({"type": {"type": "string"}}, ("type",))},
    },
    ("model", "input"),
)
_ANTHROPIC_MESSAGE: Schema = _obj(
    {
        "role": {"enum": ["user", "assistant", "system"]},
        "content": {
            "type": ["string", "array"],
            "items": _obj({"type": {"type": "string"}}, ("type",)),
        },
    },
    ("role", "content"),
)
_MESSAGES_FIELDS: dict[str, Schema] = {
    "model": _MODEL,
    "messages": {"type": "array", "items": _ANTHROPIC_MESSAGE, "minItems": 1},
    "system": {"type": ["string", "array"], "items": _obj({"type": {"type": "string"}}, ("type",))},
    "tools": {"type": "array", "items": {"type": "object"}},
}
_MESSAGES_REQUEST = _obj(
    {
        **_MESSAGES_FIELDS,
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
    },
    ("model", "max_tokens", "messages"),
)
_COUNT_TOKENS_REQUEST = _obj(_MESSAGES_FIELDS, ("model", "messages"))

# Answers.
_USAGE: Schema = {"type": "object", "description": "Tokens, and `cost` (decimal USD string)."}
_INFERENCE_OK: Schema = _obj(
    {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "data": {"type": "array"},
        "usage": _USAGE,
    },
    ("object",),
)
_RESPONSE_OBJECT = _obj(
    {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "status": {"type": "string"},
        "model": {"type": "string"},
        "output": {"type": "array"},
        "usage": _USAGE,
    },
    ("id", "object"),
)
_DELETED_RESPONSE = _obj(
    {"id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}},
    ("id", "object", "deleted"),
)
_ANTHROPIC_MESSAGE_OBJECT = _obj(
    {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": {"type": "string"},
        "content": {"type": "array"},
        "stop_reason": _NULLABLE_STRING,
        "usage": _USAGE,
    },
    ("type", "content"),
)
_TOKEN_COUNT = _obj({"input_tokens": {"type": "integer"}}, ("input_tokens",))
_PER_MILLION: Schema = {"type": "string", "description": "USD per million tokens, exact"}
_MODEL_OBJECT = _obj(
    {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "context_length": {"type": "integer"},
        "max_output_tokens": {"type": "integer"},
        "pricing": _obj(
            {
                "currency": {"const": "USD"},
                "input_per_million": _PER_MILLION,
                "cached_input_per_million": _PER_MILLION,
                "cache_write_per_million": _PER_MILLION,
                "output_per_million": _PER_MILLION,
            },
            ("currency", "input_per_million", "output_per_million"),
        ),
        "endpoints": {"type": "array", "items": {"type": "string"}},
        "dialects": {"type": "array", "items": {"type": "string"}},
        "capabilities": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "limits": {"type": "object", "description": "The caller's own limits for this model"},
    },
    ("id", "object", "created", "owned_by"),
)
_NULLABLE_USD: Schema = {"oneOf": [_USD, {"type": "null"}]}
_TERMS_STATE = {
    "accepted_version": _NULLABLE_STRING,
    "accepted_at": _NULLABLE_TIME,
    "current_version": {"type": "string"},
    "needs_acceptance": {"type": "boolean"},
    "in_use_version": _NULLABLE_STRING,
    "in_use_since": _NULLABLE_TIME,
}
_ACCOUNT = _obj(
    {
        "object": {"const": "account"},
        "id": {"type": "string"},
        "email": {"type": "string"},
        "status": {"enum": ["active", "suspended", "banned", "unknown"]},
        "status_reason": _NULLABLE_STRING,
        "suspended_until": _NULLABLE_TIME,
        "tier": {"type": "integer"},
        "created_at": _NULLABLE_TIME,
        "balance_usd": _USD,
        "held_usd": _USD,
        "available_usd": _USD,
        "total_purchased_usd": _USD,
        "limits": {"type": "object"},
        "notices": {"type": "array"},
        "referral_code": _NULLABLE_STRING,
        "referral_link": _NULLABLE_STRING,
        "terms": _obj(_TERMS_STATE, ("current_version", "needs_acceptance")),
        "low_balance_threshold_usd": _NULLABLE_USD,
    },
    ("object", "id", "email", "status", "tier", "balance_usd", "available_usd"),
)
_USAGE_ROW = _obj(
    {
        "day": {"type": "string"},
        "model": {"type": "string"},
        "requests": {"type": "integer"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "cached_tokens": {"type": "integer"},
        "cache_write_tokens": {"type": "integer"},
        "reasoning_tokens": {"type": "integer"},
        "cost_usd": _USD,
        "estimated_requests": {"type": "integer"},
    },
    ("day", "model", "requests", "cost_usd"),
)
_LEDGER_ENTRY = _obj(
    {
        "id": {"type": "integer"},
        "object": {"const": "ledger.entry"},
        "kind": {"type": "string"},
        "amount_usd": _USD,
        "reason": {"type": "string"},
        "reference": _NULLABLE_STRING,
        "created_at": _NULLABLE_TIME,
    },
    ("id", "object", "kind", "amount_usd"),
)
_REQUEST_RECORD = _obj(
    {
        "object": {"const": "request"},
        "id": {"type": "string"},
        "created_at": _NULLABLE_TIME,
        "endpoint": {"type": "string"},
        "model": {"type": "string"},
        "deployment": _NULLABLE_STRING,
        "status": {"type": "string"},
        "stream": {"type": "boolean"},
        "latency_ms": {"type": "number"},
        "usage": {"type": "object"},
        "cost_usd": _USD,
        "ledger_entries": {"type": "array", "items": _LEDGER_ENTRY},
    },
    ("object", "id", "model", "status", "cost_usd", "ledger_entries"),
)
_REFERRAL = _obj(
    {
        "id": {"type": "string"},
        "object": {"const": "referral"},
        "referred_email": {"type": "string"},
        "status": {"enum": ["pending", "under_review", "verified", "rejected", "unspecified"]},
        "tokens_used": {"type": "integer"},
        "tokens_required": {"type": "integer"},
        "created_at": _NULLABLE_TIME,
        "verified_at": _NULLABLE_TIME,
        "flagged": {"type": "boolean"},
    },
    ("id", "object", "status"),
)
_CAP_INTERVAL: Schema = {"enum": ["daily", "weekly", "monthly", None]}
_KEY = _obj(
    {
        "object": {"const": "api_key"},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "prefix": {"type": "string"},
        "created_at": _NULLABLE_TIME,
        "last_used_at": _NULLABLE_TIME,
        "revoked_at": _NULLABLE_TIME,
        "spend_cap_usd": _NULLABLE_USD,
        "cap_interval": _CAP_INTERVAL,
        "spent_usd": _USD,
        "held_usd": _USD,
        "cap_resets_at": _NULLABLE_TIME,
        "expires_at": _NULLABLE_TIME,
        "allowed_models": {"type": ["array", "null"], "items": {"type": "string"}},
    },
    ("object", "id", "name", "prefix"),
)
# What a key's owner may limit it by (null clears a limit).
_KEY_LIMITS: dict[str, Schema] = {
    "spend_cap_usd": {"type": ["string", "number", "null"], "description": "USD"},
    "cap_interval": _CAP_INTERVAL,
    "expires_at": {
        "type": ["integer", "string", "null"],
        "description": "Unix seconds or an RFC 3339 time",
    },
    "allowed_models": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1},
}
_SESSION = _obj(
    {
        "object": {"const": "session"},
        "id": {"type": "string"},
        "account_id": {"type": "string"},
        "email": {"type": "string"},
        "csrf_token": {"type": "string"},
        "created_at": _NULLABLE_TIME,
        "expires_at": _NULLABLE_TIME,
    },
    ("object", "account_id", "csrf_token"),
)
_SESSION_ENDED = _obj(
    {"object": {"const": "session.ended"}, "count": {"type": "integer"}}, ("object", "count")
)
_REQUEST_SUMMARY = _obj(
    {
        "object": {"const": "request"},
        "id": {"type": "string"},
        "created_at": _NULLABLE_TIME,
        "endpoint": {"type": "string"},
        "model": {"type": "string"},
        "status": {"type": "string"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "cost_usd": _USD,
        "estimated": {"type": "boolean"},
        "stream": {"type": "boolean"},
        "key_id": _NULLABLE_STRING,
    },
    ("object", "id", "model", "status", "cost_usd"),
)
_INCIDENT = _obj(
    {
        "object": {"const": "incident"},
        "id": {"type": ["integer", "string"]},
        "title": {"type": "string"},
        "status": {"type": "string"},
        "body": {"type": "string"},
        "created_at": _NULLABLE_TIME,
        "updated_at": _NULLABLE_TIME,
        "resolved_at": _NULLABLE_TIME,
    },
    ("object", "id", "title", "status"),
)
_AVAILABILITY: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_SERVICE_STATUS = _obj(
    {
        "object": {"const": "status"},
        "generated_at": _NULLABLE_TIME,
        "models": {
            "type": "array",
            "items": _obj(
                {
                    "id": {"type": "string"},
                    "availability_1h": _AVAILABILITY,
                    "availability_24h": _AVAILABILITY,
                    "requests_1h": {"type": "integer"},
                    "requests_24h": {"type": "integer"},
                    "state": {"type": "string"},
                },
                ("id", "state"),
            ),
        },
        "incidents": {"type": "array", "items": _INCIDENT},
    },
    ("object", "models", "incidents"),
)
_NEW_KEY = {
    **_KEY,
    "properties": {
        **_KEY["properties"],
        "key": {"type": "string"},
        "secret": {"type": "string"},
    },
}
_REVOKED_KEY = {**_KEY, "properties": {**_KEY["properties"], "deleted": {"const": True}}}
_STATUS = _obj({"status": {"type": "string"}}, ("status",))
_READY = _obj(
    {
        "status": {"enum": ["ready", "unavailable"]},
        "core": {"enum": ["serving", "unavailable"]},
        "rate_limits": {"enum": ["shared", "per-node", "local", "unknown"]},
    },
    ("status", "core", "rate_limits"),
)


def _inference(
    summary: str,
    request: Schema,
    example: dict[str, Any],
    *,
    streams: bool,
    answer: Schema = _INFERENCE_OK,
    errors: Schema = _ERROR,
    sse: str = 'data: {"choices": [...]}\n\ndata: [DONE]\n\n',
) -> dict[str, Any]:
    ok = _ok(answer)
    if streams:
        ok["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}, "example": sse}
        ok["200"]["description"] = "The upstream's answer; Server-Sent Events with `stream: true`."
    return {
        "summary": summary,
        # The example calls the built-in demo model, which every Kyma serves unless its
        # catalogue says otherwise.
        "requestBody": _body(request, example={"model": "kyma-demo", **example}),
        "responses": {**ok, **_errors(*_INFERENCE, shape=errors)},
    }


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): _inference(
        "Chat completion (OpenAI's API)",
        _CHAT_REQUEST,
        {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16},
        streams=True,
    ),
    ("post", "/v1/completions"): _inference(
        "Text completion (OpenAI's legacy API)",
        _COMPLETION_REQUEST,
        {"prompt": "Once upon a time", "max_tokens": 16},
        streams=True,
    ),
    ("post", "/v1/embeddings"): _inference(
        "Embeddings", _EMBEDDING_REQUEST, {"input": ["one", "two"]}, streams=False
    ),
    ("post", "/v1/responses"): _inference(
        "A model response (OpenAI's Responses API)",
        _RESPONSES_REQUEST,
        {"input": "Hello!", "max_output_tokens": 16},
        streams=True,
        answer=_RESPONSE_OBJECT,
        sse='event: response.created\ndata: {"type": "response.created", ...}\n\n',
    ),
    ("get", "/v1/responses/{response_id}"): {
        "summary": "A response the account stored",
        "responses": {**_ok(_RESPONSE_OBJECT), **_errors(*_KEYED, 404)},
    },
    ("delete", "/v1/responses/{response_id}"): {
        "summary": "Stop storing a response",
        "responses": {**_ok(_DELETED_RESPONSE), **_errors(*_KEYED, 404)},
    },
    ("post", "/v1/messages"): _inference(
        "A message (Anthropic's Messages API; the key may also come as x-api-key)",
        _MESSAGES_REQUEST,
        {"max_tokens": 16, "messages": [{"role": "user", "content": "Hello!"}]},
        streams=True,
        answer=_ANTHROPIC_MESSAGE_OBJECT,
        errors=_ANTHROPIC_ERROR,
        sse='event: message_start\ndata: {"type": "message_start", ...}\n\n',
    ),
    ("post", "/v1/messages/count_tokens"): {
        "summary": "Count a prompt's tokens (Anthropic's API; free)",
        "requestBody": _body(
            _COUNT_TOKENS_REQUEST,
            example={"model": "kyma-demo", "messages": [{"role": "user", "content": "Hello!"}]},
        ),
        "responses": {
            **_ok(_TOKEN_COUNT),
            **_errors(*_KEYED, 404, 502, 504, shape=_ANTHROPIC_ERROR),
        },
    },
    ("get", "/v1/models"): {
        "summary": "The models this key may call",
        "responses": {**_ok(_list(_MODEL_OBJECT)), **_errors(*_KEYED)},
    },
    ("get", "/v1/models/{model}"): {
        "summary": "One model",
        "responses": {**_ok(_MODEL_OBJECT), **_errors(*_KEYED, 404)},
    },
    ("get", "/v1/account"): {
        "summary": "The account: status, tier, limits, balance, notices, referral code",
        "responses": {**_ok(_ACCOUNT), **_errors(*_KEYED)},
    },
    ("get", "/v1/account/usage"): {
        "summary": "Usage per model and UTC day",
        "parameters": [
            _query("start_day", {"type": "string", "format": "date"}, "First day (YYYY-MM-DD)"),
            _query("end_day", {"type": "string", "format": "date"}, "Last day (YYYY-MM-DD)"),
        ],
        "responses": {**_ok(_list(_USAGE_ROW)), **_errors(*_KEYED)},
    },
    ("get", "/v1/account/ledger"): {
        "summary": "Ledger entries, newest first",
        "parameters": [
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size"),
            _query("page_token", {"type": "string"}, "`next_page_token` of the previous page"),
        ],
        "responses": {
            **_ok(
                _list(
                    _LEDGER_ENTRY,
                    has_more={"type": "boolean"},
                    next_page_token=_NULLABLE_STRING,
                )
            ),
            **_errors(*_KEYED),
        },
    },
    ("get", "/v1/account/requests/{request_id}"): {
        "summary": "One of the account's past requests: tokens, cost and its ledger entries",
        "responses": {**_ok(_REQUEST_RECORD), **_errors(*_KEYED, 404)},
    },
    ("get", "/v1/account/referrals"): {
        "summary": "The account's referrals and their state",
        "responses": {
            **_ok(
                _list(
                    _REFERRAL,
                    program_enabled={"type": "boolean"},
                    reward_usd=_USD,
                    tokens_required={"type": "integer"},
                )
            ),
            **_errors(*_KEYED),
        },
    },
    ("get", "/v1/account/keys"): {
        "summary": "The account's API keys (never the keys themselves)",
        "responses": {**_ok(_list(_KEY)), **_errors(*_KEYED)},
    },
    ("post", "/v1/account/keys"): {
        "summary": "A new API key, shown once",
        "requestBody": _body(
            _obj({"name": {"type": ["string", "null"], "maxLength": 100}, **_KEY_LIMITS}),
            required=False,
        ),
        "responses": {**_ok(_NEW_KEY, "Created", 201), **_errors(*_KEYED, 409)},
    },
    ("delete", "/v1/account/keys/{key_id}"): {
        "summary": "Revoke a key",
        "responses": {**_ok(_REVOKED_KEY), **_errors(*_KEYED, 404)},
    },
    ("post", "/v1/auth/signup"): {
        "summary": "Mail a one-time sign-up code",
        "security": [],
        "requestBody": _body(
            _obj(
                {"email": {"type": "string"}, "referral_code": {"type": ["string", "null"]}},
                ("email",),
            )
        ),
        "responses": {
            **_ok(
                _obj(
                    {
                        "object": {"const": "signup"},
                        "status": {"const": "code_sent"},
                        "email": {"type": "string"},
                        "expires_in": {"type": "integer"},
                    },
                    ("object", "status"),
                )
            ),
            **_errors(*_ANY, 409, 429),
        },
    },
    ("post", "/v1/auth/verify"): {
        "summary": "Create the account with the mailed code; returns its first key, once",
        "security": [],
        "requestBody": _body(
            _obj(
                {
                    "email": {"type": "string"},
                    "code": {"type": "string"},
                    "accepted_terms_version": {"type": ["string", "null"]},
                    "session": {"type": "boolean"},
                },
                ("email", "code"),
            )
        ),
        "responses": {
            **_ok(
                _obj(
                    {
                        "object": {"const": "account"},
                        "id": {"type": "string"},
                        "email": {"type": "string"},
                        "api_key": {"type": "string"},
                        "key": _KEY,
                    },
                    ("object", "id", "api_key"),
                ),
                "Created",
                201,
            ),
            **_ok(_SESSION, "With `session: true`: a web session (cookie), and no key"),
            **_errors(*_ANY, 409, 429),
        },
    },
    ("post", "/v1/billing/checkout"): {
        "summary": "Start buying credit: a Stripe Checkout Session",
        "requestBody": _body(
            _obj({"amount_usd": {"type": ["string", "number"]}}, ("amount_usd",)),
            example={"amount_usd": "25"},
        ),
        "responses": {
            **_ok(
                _obj(
                    {
                        "object": {"const": "checkout.session"},
                        "id": {"type": "string"},
                        "url": {"type": "string"},
                    },
                    ("object", "id", "url"),
                )
            ),
            **_errors(*_KEYED, 502),
        },
    },
    ("post", "/v1/billing/stripe/webhook"): {
        "summary": "Stripe's webhook (signed with the Stripe-Signature header; no API key)",
        "security": [],
        "parameters": [
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
            }
        ],
        "requestBody": _body({"type": "object", "description": "A Stripe event"}),
        "responses": {
            **_ok(
                _obj(
                    {
                        "received": {"const": True},
                        "outcome": {"enum": ["ignored", "credited", "already_credited", "unknown"]},
                    },
                    ("received", "outcome"),
                )
            ),
            **_errors(*_ANY),
        },
    },
    ("patch", "/v1/account"): {
        "summary": "Change the account's settings (the low-balance alert threshold)",
        "requestBody": _body(
            _obj({"low_balance_threshold_usd": {"type": ["string", "number", "null"]}}),
            example={"low_balance_threshold_usd": "5"},
        ),
        "responses": {**_ok(_ACCOUNT), **_errors(*_KEYED)},
    },
    ("post", "/v1/account/terms/accept"): {
        "summary": "Accept a version of the terms of service",
        "requestBody": _body(_obj({"version": {"type": "string"}}, ("version",))),
        "responses": {
            **_ok(_obj({"object": {"const": "terms.acceptance"}, **_TERMS_STATE}, ("object",))),
            **_errors(*_KEYED),
        },
    },
    ("get", "/v1/account/requests"): {
        "summary": "The account's past requests, newest first",
        "parameters": [
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size"),
            _query("page_token", {"type": "string"}, "`next_page_token` of the previous page"),
        ],
        "responses": {
            **_ok(
                _list(
                    _REQUEST_SUMMARY,
                    has_more={"type": "boolean"},
                    next_page_token=_NULLABLE_STRING,
                )
            ),
            **_errors(*_KEYED),
        },
    },
    ("patch", "/v1/account/keys/{key_id}"): {
        "summary": "Rename a key or change its limits (null clears one)",
        "requestBody": _body(
            _obj({"name": {"type": ["string", "null"], "maxLength": 100}, **_KEY_LIMITS}),
            example={"spend_cap_usd": "10", "cap_interval": "monthly"},
        ),
        "responses": {**_ok(_KEY), **_errors(*_KEYED, 404)},
    },
    ("post", "/v1/auth/signin"): {
        "summary": "Mail a one-time sign-in code (the same answer whether the account exists)",
        "security": [],
        "requestBody": _body(_obj({"email": {"type": "string"}}, ("email",))),
        "responses": {
            **_ok(
                _obj(
                    {
                        "object": {"const": "signin"},
                        "status": {"const": "code_sent"},
                        "email": {"type": "string"},
                        "expires_in": {"type": "integer"},
                    },
                    ("object", "status"),
                )
            ),
            **_errors(*_ANY, 429),
        },
    },
    ("post", "/v1/auth/signin/verify"): {
        "summary": "Sign in with the mailed code: a web session (cookie) and its CSRF token",
        "security": [],
        "requestBody": _body(
            _obj({"email": {"type": "string"}, "code": {"type": "string"}}, ("email", "code"))
        ),
        "responses": {**_ok(_SESSION), **_errors(*_ANY, 401, 403, 429)},
    },
    ("get", "/v1/auth/session"): {
        "summary": "The web session of the cookie sent, with its CSRF token",
        "security": [{"session": []}],
        "responses": {**_ok(_SESSION), **_errors(*_ANY, 401, 403)},
    },
    ("post", "/v1/auth/signout"): {
        "summary": "End this web session (needs the x-csrf-token header)",
        "security": [{"session": []}],
        "responses": {**_ok(_SESSION_ENDED), **_errors(*_ANY, 401, 403)},
    },
    ("post", "/v1/auth/signout-everywhere"): {
        "summary": "End every web session of the account (needs the x-csrf-token header)",
        "security": [{"session": []}],
        "responses": {**_ok(_SESSION_ENDED), **_errors(*_ANY, 401, 403)},
    },
    ("get", "/v1/terms"): {
        "summary": "The current terms of service and their version",
        "security": [],
        "responses": {
            **_ok(
                _obj(
                    {
                        "object": {"const": "terms"},
                        "version": {"type": "string"},
                        "published_at": _NULLABLE_TIME,
                        "text": {"type": "string"},
                    },
                    ("object", "version", "text"),
                )
            ),
            **_errors(*_ANY),
        },
    },
    ("get", "/v1/status"): {
        "summary": "Availability per model over the last hour and day, and incidents",
        "security": [],
        "responses": {**_ok(_SERVICE_STATUS), **_errors(*_ANY)},
    },
    ("get", "/healthz"): {
        "summary": "The bridge is up",
        "security": [],
        "responses": _ok(_STATUS),
    },
    ("get", "/readyz"): {
        "summary": "The bridge reaches a serving core (503 when not)",
        "security": [],
        "responses": {
            **_ok(_READY),
            "503": {
                "description": "The core is unreachable or its database is down.",
                "content": {"application/json": {"schema": _READY}},
            },
        },
    },
}

_COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": _NULLABLE_STRING,
                        "code": _NULLABLE_STRING,
                    },
                    ("message", "type", "param", "code"),
                )
            },
            ("error",),
        ),
        "AnthropicError": _obj(
            {
                "type": {"const": "error"},
                "error": _obj(
                    {"type": {"type": "string"}, "message": {"type": "string"}},
                    ("type", "message"),
                ),
                "request_id": {"type": "string"},
            },
            ("type", "error"),
        ),
    },
    "securitySchemes": {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "A Kyma API key (ky_…)"},
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": "kyma_session",
            "description": "A web session (sign-in by code); changes need the x-csrf-token header",
        },
    },
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The document for `app`'s routes; KeyError naming a route that is not described."""
    document = get_openapi(
        title="Kyma",
        version=app.version,
        summary="One OpenAI-compatible endpoint for open models, with exact prepaid credit.",
        routes=app.routes,
    )
    for path, item in document["paths"].items():
        for method, operation in item.items():
            described = OPERATIONS.get((method, path))
            if described is None:
                raise KeyError(
                    f"{method.upper()} {path} is not described in http_bridge/openapi.py"
                )
            # FastAPI's 422 does not exist here: path parameters are plain strings.
            operation["responses"] = described["responses"]
            operation["parameters"] = operation.get("parameters", []) + described.get(
                "parameters", []
            )
            for key in ("summary", "requestBody", "security"):
                if key in described:
                    operation[key] = described[key]
    document["components"] = _COMPONENTS
    document["security"] = [{"apiKey": []}]
    return document
