"""What every dialect does with an upstream's bytes: read JSON that may be slightly wrong, and
name the things Kyma makes (response and item ids)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import orjson

from core_service.errors import UpstreamError


def json_object(reply: bytes) -> dict[str, Any]:
    """An upstream's JSON object reply, or UpstreamError."""
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        # Some servers write NaN or Infinity (not JSON, but the stdlib reads them); the answer
        # is still worth relaying, and usage that is not a whole number is estimated anyway.
        try:
            parsed = json.loads(reply)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError("The model's upstream sent a malformed response.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError("The model's upstream sent a malformed response.")
    return parsed


def stream_event(data: bytes) -> dict[str, Any]:
    """One upstream stream event's data, or UpstreamError (malformed, or an error report)."""
    try:
        event: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The model's upstream sent a malformed stream event.") from None
    if not isinstance(event, dict):
        raise UpstreamError("The model's upstream sent a malformed stream event.")
    return event


def upstream_failure(event: dict[str, Any]) -> UpstreamError:
    """The error an upstream reported in its stream."""
    error = event.get("error")
    if not isinstance(error, dict):
        response = event.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamError(f"The model's upstream failed mid-stream: {message or 'error'}")


def new_id(prefix: str) -> str:
    """An id of Kyma's making, in the dialect's style: `resp_…`, `msg_…`, `fc_…`."""
    return f"{prefix}_{secrets.token_hex(16)}"
