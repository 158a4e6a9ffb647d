"""What every call on the core goes through, whatever its service: the admin-token check on
AdminService, and the translation of domain errors into gRPC status.

Servicers therefore neither check the admin token nor catch errors: a KymaError raised
anywhere below a servicer ends its call with the status of the error's reason, and anything
unexpected ends it as INTERNAL (logged here with its traceback, never sent).

A request that is not a valid protobuf message of its method's type is INVALID_ARGUMENT saying
which type was expected — never gRPC's own answer to a failed decode (UNKNOWN, naming the
protobuf library's exception class, with an ERROR traceback in the log for each such call).
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from pydantic import SecretStr

from core_service import errors
from core_service.accounts.auth import bearer_token
from core_service.db.errors import configuration_hint, is_unavailable
from core_service.edge.errors import internal_status, to_status
from core_service.edge.metadata import request_id, value_in
from kyma.contract.v1.constants import MetadataKey

log = logging.getLogger(__name__)

_DATABASE_UNAVAILABLE = errors.ServiceUnavailable(
    "Kyma cannot reach its database right now; nothing was charged. Retry in a moment.",
    retry_after_seconds=1,
)

Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class Undecodable:
    """What a request that failed to decode is handed to the behaviour as, instead of gRPC's
    deserializer raising where nothing of ours could answer it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            # FromString is a bound classmethod of the message class: its name for the answer.
            owner = getattr(deserializer, "__self__", None)
            descriptor = getattr(owner, "DESCRIPTOR", None)
            return Undecodable(getattr(descriptor, "full_name", "the method's request"))

    return decode


def undecodable(request: Any) -> errors.InvalidRequest | None:
    if not isinstance(request, Undecodable):
        return None
    return errors.InvalidRequest(
        f"The request is not a valid protobuf message of type {request.type_name}."
    )


def _rewrap(handler: Handler, unary: Any, stream: Any) -> Handler:
    """The same handler (kind, serializers) with its behaviour replaced: `unary(inner)` for a
    unary-response method, `stream(inner)` for a streaming one."""
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary(handler.unary_unary))  # type: ignore[attr-defined, no-any-return]
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=stream(handler.unary_stream))  # type: ignore[attr-defined, no-any-return]
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=unary(handler.stream_unary))  # type: ignore[attr-defined, no-any-return]
    return handler._replace(stream_stream=stream(handler.stream_stream))  # type: ignore[attr-defined, no-any-return]


class ErrorTranslation(grpc.aio.ServerInterceptor):
    """KymaError → its status; anything unexpected → INTERNAL with the request id."""

    def __init__(self) -> None:
        # The wrapped handler of each method, made once: the registered handlers never change.
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            # Every method of Kyma takes one request message (none streams its requests).
            decoding = handler._replace(  # type: ignore[attr-defined]
                request_deserializer=tolerant(handler.request_deserializer)
            )
            wrapped = self._wrapped[method] = _rewrap(
                decoding, self._unary(method), self._stream(method)
            )
        return wrapped

    def guarded(self, method: str, behaviour: Callable[..., Any], streaming: bool) -> Any:
        """`behaviour` (a servicer method of `method`, the full path) as a call of it would
        run behind this interceptor: for callers that run it without a gRPC call of its own
        (the relay, `relay.py`)."""
        return self._stream(method)(behaviour) if streaming else self._unary(method)(behaviour)

    @staticmethod
    async def _fail(error: Exception, method: str, context: grpc.aio.ServicerContext) -> None:
        if isinstance(error, errors.KymaError):
            await context.abort_with_status(to_status(error))
        if is_unavailable(error):
            # An outage, not a bug: the caller is told to retry (503 over HTTP).
            log.warning("%s: the database is unavailable (%s)", method, type(error).__name__)
            await context.abort_with_status(to_status(_DATABASE_UNAVAILABLE))
        hint = configuration_hint(error)
        if hint:
            log.error("%s failed: %s", method, hint)
        log.error("unexpected error in %s", method, exc_info=error)
        await context.abort_with_status(internal_status(request_id(context)))

    def _unary(self, method: str) -> Callable[[Any], Any]:
        def wrap(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    refused = undecodable(request)
                    if refused is not None:
                        raise refused
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._fail(error, method, context)

            return behaviour

        return wrap

    def _stream(self, method: str) -> Callable[[Any], Any]:
        def wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(inner):
                # A handler that writes its messages with context.write (gRPC health's
                # Watch, which health-checked balancing streams) is a plain coroutine.
                writes: Callable[..., Any] = self._unary(method)(inner)
                return writes

            async def behaviour(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    refused = undecodable(request)
                    if refused is not None:
                        raise refused
                    async for message in inner(request, context):
                        yield message
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._fail(error, method, context)

            return behaviour

        return wrap


class AdminToken(grpc.aio.ServerInterceptor):
    """Every method of the admin services needs `authorization: Bearer <admin token>`, checked
    in constant time before the servicer runs. The methods are found by service name, so an
    RPC added to AdminService is covered without anyone remembering to check."""

    def __init__(self, token: SecretStr, services: Iterable[str]) -> None:
        self._token = token.get_secret_value().encode()
        self._prefixes = tuple(f"/{service}/" for service in services)

    def authorized(self, authorization: str | None) -> bool:
        try:
            given = bearer_token(authorization).encode()
        except errors.Unauthenticated:
            return False
        return hmac.compare_digest(given, self._token)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        authorization = value_in(
            handler_call_details.invocation_metadata, MetadataKey.AUTHORIZATION
        )
        if self.authorized(authorization):
            return handler
        message = (
            "Admin calls need 'authorization: Bearer <admin token>'."
            if not authorization
            else "The admin token is not valid."
        )
        status = to_status(errors.AdminUnauthenticated(message))
        return _rewrap(handler, _refusing_unary(status), _refusing_stream(status))


def _refusing_unary(status: grpc.Status) -> Callable[[Any], Any]:
    def wrap(_inner: Any) -> Callable[..., Awaitable[Any]]:
        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort_with_status(status)

        return refuse

    return wrap


def _refusing_stream(status: grpc.Status) -> Callable[[Any], Any]:
    def wrap(_inner: Any) -> Callable[..., AsyncIterator[Any]]:
        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort_with_status(status)
            yield  # never reached: the abort ends the call

        return refuse

    return wrap
