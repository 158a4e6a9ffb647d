"""Reading request bodies with a size limit, and OpenAI-style JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from http_bridge.core_client import new_request_id
from http_bridge.errors import OpenAIError


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413, f"The request body is larger than {limit} bytes.", code="request_too_large"
    )


def json_object(body: bytes) -> dict[str, Any] | OpenAIError:
    """The body as a JSON object, or the 400 to answer with."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return OpenAIError(
            400, "We could not parse the JSON body of your request. Send a valid JSON object."
        )
    if not isinstance(parsed, dict):
        return OpenAIError(400, "The request body must be a JSON object.")
    return parsed


def json_response(body: Any, headers: dict[str, str], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


async def small_json(request: Request, limit: int) -> dict[str, Any] | Response:
    """A small JSON object body, or the 4xx response to answer with."""
    headers = {"x-request-id": new_request_id()}
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return too_large(limit).response(headers)
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return parsed.response(headers)
    return parsed


def bad_field(name: str, message: str) -> Response:
    return OpenAIError(400, message, param=name).response({"x-request-id": new_request_id()})
