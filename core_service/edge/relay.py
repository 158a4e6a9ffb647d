"""InferenceRelay: many InferenceService calls carried on one long-lived gRPC stream (the
bridge's way to call the core; the contract is `protos/kyma/inference/v1/relay_service.proto`).

Each call carried here runs the InferenceService servicer's own method behind the same error
translation as a call of its own (`ErrorTranslation.guarded`), in a task of its own, with a
context that answers what the servicer asks of a gRPC context (the call's metadata; its abort).
So a relayed call is the same call: same policy, same answers, same statuses.

The stream's answers are written by one loop, which sends everything that became ready while
its previous write was in flight as one message: under load, chunks of many streams and the
answers of many requests share a message and a socket write.

Failure semantics:
- **A call cancelled** by its caller (a `cancel` frame) is cancelled as gRPC cancels the task of
  a call whose client went away: the pipeline releases its hold, exactly as for a client that
  left. Its end (CANCELLED) is still sent; the caller has forgotten it.
- **The stream broken** (the bridge died, the connection broke) cancels every call under way on
  it, each as above.
- **Shutdown** (`drain`), and likewise **the database unavailable** (`serving`): every open stream is sent `drain`; a start that arrives after it is
  refused UNAVAILABLE with no status details, having done nothing (the bridge sends it to
  another core); the calls under way finish, and then the stream ends. The server's own grace
  bounds how long that may take: past it gRPC cancels the stream, and with it the calls.
- **An answer too large** for one gRPC message ends its call RESOURCE_EXHAUSTED, as gRPC would
  refuse to send it on a call of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc

from core_service.edge.errors import STATUS_DETAILS_KEY, internal_status
from core_service.edge.interceptors import ErrorTranslation, tolerant
from core_service.edge.metadata import request_id_in
from kyma.contract.v1.constants import MAX_MESSAGE_BYTES
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.inference.v1 import relay_service_pb2 as pb
from kyma.inference.v1 import relay_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_SERVICE = inference_pb.DESCRIPTOR.services_by_name["InferenceService"]
# Room left in a gRPC message for the relay's own framing around one answer.
_LARGEST_ANSWER = MAX_MESSAGE_BYTES - 64 * 1024
# Answers are batched into one message up to about this size.
_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Method:
    decode: Callable[[bytes], Any]
    behaviour: Callable[..., Any]
    streaming: bool


def inference_methods(servicer: object, translation: ErrorTranslation) -> dict[str, _Method]:
    """Every InferenceService method of `servicer`, by name, guarded as its gRPC calls are."""
    methods = {}
    for method in _SERVICE.methods:
        request_type = getattr(inference_pb, method.input_type.name)
        decode = tolerant(request_type.FromString)
        assert decode is not None
        path = f"/{_SERVICE.full_name}/{method.name}"
        behaviour = getattr(servicer, method.name)
        streaming = method.server_streaming
        methods[method.name] = _Method(
            decode, translation.guarded(path, behaviour, streaming), streaming
        )
    return methods


class RelayedContext:
    """What the servicer and the error translation ask of a gRPC context, for a relayed call:
    its metadata, and `abort_with_status` (the translation's only way to end a call)."""

    __slots__ = ("_metadata", "status")

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


def _end(status: grpc.Status) -> pb.RelayEnd:
    details = b""
    for key, value in status.trailing_metadata or ():
        if key == STATUS_DETAILS_KEY:
            details = value if isinstance(value, bytes) else value.encode("latin-1")
    return pb.RelayEnd(
        code=status.code.value[0], details=status.details or "", status_details=details
    )


_OK = pb.RelayEnd(code=0)
_CANCELLED = pb.RelayEnd(code=grpc.StatusCode.CANCELLED.value[0], details="Cancelled")
_SHUTTING_DOWN = pb.RelayEnd(
    code=grpc.StatusCode.UNAVAILABLE.value[0], details="the core is shutting down"
)


class InferenceRelayServicer(pb_grpc.InferenceRelayServicer):
    def __init__(self, methods: dict[str, _Method]) -> None:
        self._methods = methods
        self._streams: set[_RelayStream] = set()
        self._draining = False
        self._unhealthy = False
        self.streams_opened = 0

    def drain(self) -> None:
        """Shutdown has begun: every stream is told, and starts no more calls."""
        self._draining = True
        for stream in self._streams:
            stream.drain()

    def serving(self, ok: bool) -> None:
        """The core's overall health changed. While it does not serve (its database does not
        answer), its streams drain as for a shutdown, and so does every stream opened to it:
        the bridges open new ones, which their health-checked balancing places on cores that
        serve — as it places calls of their own."""
        self._unhealthy = not ok
        if not ok:
            for stream in self._streams:
                stream.drain()

    async def Relay(  # type: ignore[override]  # writes with context.write, yields nothing
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: grpc.aio.ServicerContext
    ) -> None:
        stream = _RelayStream(self._methods, context)
        self.streams_opened += 1
        self._streams.add(stream)
        if self._draining or self._unhealthy:
            stream.drain()
        try:
            await stream.run(request_iterator)
        finally:
            self._streams.discard(stream)


class _Call:
    """A call under way on a stream: its task, and the room left in its window."""

    __slots__ = ("task", "window", "more")

    def __init__(self, window: int) -> None:
        self.task: asyncio.Task[pb.RelayEnd] | None = None
        # Bytes of answers the core may still send; None: no limit (a start without a window).
        self.window: int | None = window or None
        self.more: asyncio.Future[None] | None = None

    def grant(self, size: int) -> None:
        if self.window is None:
            return
        self.window += size
        if self.more is not None and not self.more.done():
            self.more.set_result(None)


class _RelayStream:
    def __init__(self, methods: dict[str, _Method], context: grpc.aio.ServicerContext) -> None:
        self._methods = methods
        self._context = context
        self._calls: dict[int, _Call] = {}
        # Answers waiting for the writer, each with its size.
        self._answers: list[tuple[pb.RelayAnswer, int]] = []
        self._wake = asyncio.Event()
        self._draining = False
        self._drain_sent = False
        self._input_closed = False
        self._ending = False

    def drain(self) -> None:
        self._draining = True
        self._wake.set()

    async def run(self, requests: AsyncIterator[pb.RelayRequest]) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            await self._write()
        except Exception as error:  # noqa: BLE001 - the stream's end, whatever gRPC raised
            # A write to a bridge that went away (its connection broke): nobody is left to
            # answer, and the calls are cancelled below as for a client that left.
            log.info("a relay stream ended while writing to it: %s", type(error).__name__)
        finally:
            self._ending = True
            reader.cancel()
            for call in self._calls.values():
                if call.task is not None:
                    call.task.cancel()

    async def _read(self, requests: AsyncIterator[pb.RelayRequest]) -> None:
        try:
            async for request in requests:
                if not isinstance(request, pb.RelayRequest):  # undecodable (ErrorTranslation)
                    log.warning("a relay stream sent a message that is not a RelayRequest")
                    return
                for frame in request.frames:
                    kind = frame.WhichOneof("kind")
                    if kind == "start":
                        self._start(frame.call, frame.start)
                        continue
                    call = self._calls.get(frame.call)
                    if call is None:
                        continue  # ended meanwhile: nothing to do
                    if kind == "window":
                        call.grant(frame.window)
                    elif kind == "cancel" and call.task is not None:
                        call.task.cancel()
        finally:
            self._input_closed = True
            self._wake.set()

    async def _write(self) -> None:
        context, wake = self._context, self._wake
        while True:
            await wake.wait()
            # One turn of the loop first, so that what this turn made ready joins the write:
            # above all a call's end, which its task's done-callback queues just after the
            # call's last answer woke the writer (a unary call would otherwise cost two
            # messages each way instead of one).
            await asyncio.sleep(0)
            wake.clear()
            # Every answer queued, also those queued while the drain was written, before the
            # stream may end: an answer left behind would be a call the bridge resends.
            while self._answers or (self._draining and not self._drain_sent):
                if self._answers:
                    await context.write(pb.RelayResponse(answers=self._batch()))
                else:
                    self._drain_sent = True
                    await context.write(pb.RelayResponse(drain=True))
            if not self._calls and (self._input_closed or self._draining):
                return

    def _batch(self) -> list[pb.RelayAnswer]:
        queued, size = self._answers, 0
        for count, (_, answer_size) in enumerate(queued):
            size += answer_size
            if size > _BATCH_BYTES and count:
                self._answers = queued[count:]
                return [answer for answer, _ in queued[:count]]
        self._answers = []
        return [answer for answer, _ in queued]

    def _answer(self, answer: pb.RelayAnswer, size: int = 16) -> None:
        self._answers.append((answer, size))
        self._wake.set()

    def _start(self, number: int, start: pb.RelayStart) -> None:
        if number in self._calls:
            return  # a number already under way: the caller's mistake, ignored
        method = self._methods.get(start.method)
        if method is None:
            end = pb.RelayEnd(
                code=grpc.StatusCode.UNIMPLEMENTED.value[0],
                details=f"InferenceService has no method {start.method!r}",
            )
            return self._answer(pb.RelayAnswer(call=number, end=end))
        if self._draining:
            return self._answer(pb.RelayAnswer(call=number, end=_SHUTTING_DOWN))
        metadata = tuple((m.key, m.value) for m in start.metadata)
        call = _Call(start.window)
        call.task = asyncio.get_running_loop().create_task(
            self._run(number, call, method, start.request, metadata)
        )
        self._calls[number] = call
        call.task.add_done_callback(lambda task: self._finished(number, call, task))

    def _finished(self, number: int, call: _Call, task: asyncio.Task[pb.RelayEnd]) -> None:
        """A call's task is over, whether it ran or was cancelled before it began (then `_run`
        never ran at all): it is no longer under way, and its end is sent unless the stream
        itself is ending."""
        if self._calls.get(number) is call:
            del self._calls[number]
        if not task.cancelled():
            self._answer(pb.RelayAnswer(call=number, end=task.result()))
        elif not self._ending:
            # By its caller, or by anything else that cancelled it: either way it ends.
            self._answer(pb.RelayAnswer(call=number, end=_CANCELLED))
        else:
            self._wake.set()  # the writer sees the stream's calls all gone

    async def _run(
        self,
        number: int,
        call: _Call,
        method: _Method,
        request: bytes,
        metadata: tuple[tuple[str, str], ...],
    ) -> pb.RelayEnd:
        context = RelayedContext(metadata)
        try:
            decoded = method.decode(request)
            if not method.streaming:
                message = await method.behaviour(decoded, context)
                return _OK if await self._send(number, call, message) else _too_large()
            async with aclosing(method.behaviour(decoded, context)) as messages:
                async for message in messages:
                    if not await self._send(number, call, message):
                        return _too_large()
            return _OK
        except grpc.aio.AbortError:
            if context.status is not None:
                return _end(context.status)
            log.error("relayed call %s was aborted without a status", number)
        except Exception:  # the guard turns every error into a status; this is a bug here
            log.exception("relayed call %s failed", number)
        # Still an error in Kyma's own shape, with the request id the client is told to quote.
        return _end(internal_status(request_id_in(context.invocation_metadata())))

    async def _send(self, number: int, call: _Call, message: Any) -> bool:
        """Queue one message of the call, once its window has room (HTTP/2's flow control, per
        call): a caller that does not read holds the call here, not in anyone's memory."""
        data = message.SerializeToString()
        if len(data) > _LARGEST_ANSWER:
            return False
        if call.window is not None:
            while call.window <= 0:
                call.more = asyncio.get_running_loop().create_future()
                await call.more
            call.window -= len(data)
        self._answer(pb.RelayAnswer(call=number, message=data), len(data))
        return True


def _too_large() -> pb.RelayEnd:
    return pb.RelayEnd(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        details=f"the answer is larger than a gRPC message may be ({MAX_MESSAGE_BYTES} bytes)",
    )
