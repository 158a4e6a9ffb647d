"""Reading request bodies with a size limit, and OpenAI-style JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive

from http_bridge.core_client import new_request_id
from http_bridge.errors import OpenAIError


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    return await read_limited(request.receive, request.headers.get("content-length"), limit)


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body that `receive` delivers, at most `limit` bytes: BodyTooLarge as soon as the
    declared length (`Content-Length`) or what arrived is larger; ClientDisconnect if the
    client goes away before the body is whole."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413, f"The request body is larger than {limit} bytes.", code="request_too_large"
    )


def json_object(body: bytes) -> dict[str, Any] | OpenAIError:
    """The body as a JSON object, or the 400 to answer with."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error) or "ecursion limit" in str(error):
            # orjson's own bound (1,024 levels); the core refuses beyond 64 in the same words.
            return OpenAIError(400, "The request body is nested too deeply.")
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
