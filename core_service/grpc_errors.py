"""Domain errors → gRPC status, in one place.

Every error carries a google.rpc.Status with an ErrorInfo (domain "kyma.ai", the error's
reason, and `param` when it concerns one field) and, for rate limits, a RetryInfo. Unexpected
exceptions are logged here with their traceback and reach the caller as INTERNAL with the
request id only: never a stack trace, never a key.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core_service import errors
from core_service.grpc_metadata import metadata_value

log = logging.getLogger(__name__)

DOMAIN = "kyma.ai"

_CODES: list[tuple[type[errors.KymaError], int]] = [
    (errors.InvalidRequest, code_pb2.INVALID_ARGUMENT),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.AdminUnauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.AccountSuspended, code_pb2.PERMISSION_DENIED),
    (errors.AccountBanned, code_pb2.PERMISSION_DENIED),
    (errors.InsufficientCredits, code_pb2.FAILED_PRECONDITION),
    (errors.ModelNotFound, code_pb2.NOT_FOUND),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.RateLimited, code_pb2.RESOURCE_EXHAUSTED),
    (errors.UpstreamTimeout, code_pb2.DEADLINE_EXCEEDED),
    (errors.UpstreamUnavailable, code_pb2.UNAVAILABLE),
    (errors.UpstreamError, code_pb2.UNAVAILABLE),
]


def _code_for(error: errors.KymaError) -> int:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return code_pb2.INTERNAL


def to_status(error: errors.KymaError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if error.param:
        info.metadata["param"] = error.param
    until = getattr(error, "until", None)
    if until is not None:
        info.metadata["until"] = until.isoformat()
    details = [info]
    if isinstance(error, errors.RateLimited) and error.snapshot is not None:
        info.metadata.update(error.snapshot.as_metadata())
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        )
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    status = status_pb2.Status(code=_code_for(error), message=error.message, details=packed)
    return rpc_status.to_status(status)


def _internal(request_id: str) -> grpc.Status:
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"Kyma had an internal error; the request id is {request_id}.",
        )
    )


def _request_id(context: grpc.aio.ServicerContext) -> str:
    return metadata_value(context, "x-request-id") or "unknown"


def translated(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (coroutine or async generator) so that a KymaError ends the call
    with its status and anything unexpected ends it as INTERNAL."""

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except errors.KymaError as error:
                await context.abort_with_status(to_status(error))
            except Exception:
                log.exception("unexpected error in %s", method.__qualname__)
                await context.abort_with_status(_internal(_request_id(context)))

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.KymaError as error:
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort_with_status(_internal(_request_id(context)))

    return unary_wrapper
