"""Calling the core from a route handler: one gRPC call with the caller's credentials, whose
failure ends the handler with the matching OpenAI error response."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import Request
from google.protobuf import timestamp_pb2
from starlette.responses import Response

from http_bridge.core_client import call_metadata, new_request_id
from http_bridge.errors import from_grpc


def unix(value: timestamp_pb2.Timestamp) -> int | None:
    return value.seconds if value.seconds or value.nanos else None


async def call_core(
    request: Request,
    rpc: Callable[..., Awaitable[Any]],
    message: Any,
    *,
    extra: tuple[tuple[str, str], ...] = (),
    session: bool = True,
) -> tuple[Any, dict[str, str]]:
    """One call on the core with the caller's credentials (an API key; or, with `session`, the
    web session of the cookie); a failure ends the handler with the OpenAI error response
    (see `failed_response`)."""
    request_id = new_request_id()
    headers = {"x-request-id": request_id}
    metadata = call_metadata(request, request_id, session=session) + extra
    try:
        return await rpc(message, metadata=metadata), headers
    except grpc.aio.AioRpcError as error:
        raise _Failed(from_grpc(error).response(headers)) from None


class _Failed(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def failed_response(
    handler: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Let `call_core` end a handler with the core's error as an OpenAI error response."""

    @functools.wraps(handler)  # FastAPI reads the handler's parameters through this
    async def run(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except _Failed as failed:
            return failed.response

    return run
