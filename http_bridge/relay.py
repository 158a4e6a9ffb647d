"""The bridge's inference calls carried on a few long-lived gRPC streams to the cores
(InferenceRelay, `protos/kyma/inference/v1/relay_service.proto`) instead of a gRPC call each:
a message on an open stream costs both processes a fraction of what a call costs (see
docs/performance.md), and answers that are ready together share a message.

`InferenceRelayStub` looks like InferenceService's stub to `inference_routes`: a method called
with a request message and metadata gives a call that can be awaited (unary) or read (a stream,
`grpc.aio.EOF` at its end) and cancelled, and that fails with `grpc.aio.AioRpcError` carrying
the core's status — so error mapping and the resend rule (`core_client.resendable`) are the
same for both ways.

Streams: up to `streams` are open at once, each on the core gRPC's balancing picked when it
opened; calls take them in turn. A stream older than `max_age` takes no more calls (a new one
opens in its place, so a core that joined or recovered gets its share), finishes the calls it
carries and closes.

Failure semantics:
- **A core stopping** sends `drain`: its streams take no more calls; a call started on one
  before the drain arrived is refused UNAVAILABLE with no reason (nothing was done: it is
  resent, `with_resends`).
- **A stream that breaks** (the core died, the connection broke) fails every call on it that
  had not ended as a call whose connection broke: UNAVAILABLE with no reason (CANCELLED if the
  core's server cancelled it). A call that had received nothing is then resent, one that had
  received part of its answer ends as it would have (`inference_routes`).
- **Cancelling** a call (the client went away) sends `cancel`: the core cancels it as it cancels
  a gRPC call whose client left, and its hold is released.
- **Flow control**: each call has a window (`WINDOW_BYTES`, RelayStart.window) of answer bytes
  the core may send ahead of what the route has read, as HTTP/2 gives a call of its own; the
  route's reads grant more. The stream's reader never waits for one call's reader (one slow
  client must not hold up the others): a client that stops reading stops its call at the core,
  and the bridge holds at most about a window of its answer.
- **A request too large** for one gRPC message fails alone, RESOURCE_EXHAUSTED, as gRPC refuses
  it on a call of its own, instead of breaking its stream and every call on it.
- **A core without the relay** (UNIMPLEMENTED: an older version in a rolling upgrade): the
  calls on that stream did nothing there and are resent, and from then on the bridge makes a
  gRPC call per request, as before the relay (logged once, at WARNING).

What the relay does not carry (`OWN_CALL`): methods whose answer is not bounded by a generation
limit — embeddings (a batch of inputs can answer tens of megabytes) and a stored response read
back. An answer is one message on its stream, and every other call's answers on that stream
wait behind it; on a call of its own, HTTP/2 interleaves it with the others frame by frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

import grpc

from http_bridge.errors import STATUS_DETAILS_KEY
from kyma.contract.v1.constants import MAX_MESSAGE_BYTES
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.inference.v1 import relay_service_pb2 as pb

log = logging.getLogger(__name__)

_SERVICE = inference_pb.DESCRIPTOR.services_by_name["InferenceService"]
_RELAY = "/" + pb.DESCRIPTOR.services_by_name["InferenceRelay"].full_name + "/Relay"
_BROKEN = "the relay stream to the core broke"
# Frames are batched into one message up to about this size.
_BATCH_BYTES = 1024 * 1024
# Each call's window (RelayStart.window): the bytes of its answers the core may send ahead of
# what the route has read; more is granted once half of it has been read.
WINDOW_BYTES = 1024 * 1024
# Room for a start's framing (method, metadata) within a gRPC message.
_LARGEST_REQUEST = MAX_MESSAGE_BYTES - 64 * 1024

Metadata = tuple[tuple[str, str], ...]


def _error(
    code: grpc.StatusCode, details: str, status_details: bytes = b""
) -> grpc.aio.AioRpcError:
    trailing = ((STATUS_DETAILS_KEY, status_details),) if status_details else ()
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CANCELLED = object()


class RelayedCall:
    """One call carried on a relay stream: awaitable for a unary method, `read()` for a
    streaming one, as grpc.aio's calls are (cancelling the task that waits on it cancels it)."""

    __slots__ = ("_stream", "_id", "_decode", "_answers", "_waiter", "_done", "_cancelled", "_read")

    def __init__(
        self, stream: _Stream | None, call_id: int, decode: Callable[[bytes], Any]
    ) -> None:
        self._stream = stream
        self._id = call_id
        self._decode = decode
        self._answers: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._cancelled = False
        self._read = 0  # bytes of answers read since the last grant

    @classmethod
    def failed(cls, error: grpc.aio.AioRpcError) -> RelayedCall:
        """A call that fails with `error` without being sent."""
        call = cls(None, 0, bytes)
        call.deliver(error)
        return call

    def deliver(self, answer: Any) -> None:
        """An answer of the core (bytes of a message, a RelayEnd) or the stream's failure."""
        if not isinstance(answer, bytes):
            self._done = True
        self._answers.append(answer)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> bool:
        if self._done or self._cancelled:
            return False
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel(self._id)
        self.deliver(_CANCELLED)
        return True

    def done(self) -> bool:
        return self._done

    async def read(self) -> Any:
        """The call's next message; grpc.aio.EOF once it ended well."""
        while not self._answers:
            if self._done:
                return grpc.aio.EOF
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()  # its reader was cancelled: so is the call, as in grpc.aio
                raise
            finally:
                self._waiter = None
        answer = self._answers[0]
        if isinstance(answer, bytes):
            self._answers.popleft()
            self._granting(len(answer))
            return self._decode(answer)
        # An end stays, so that reading again gives the same.
        if answer is _CANCELLED:
            raise asyncio.CancelledError()
        if isinstance(answer, grpc.aio.AioRpcError):
            raise answer
        if answer.code == 0:
            return grpc.aio.EOF
        code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
        raise _error(code, answer.details, answer.status_details)

    def _granting(self, size: int) -> None:
        self._read += size
        if self._read >= WINDOW_BYTES // 2 and not self._done and self._stream is not None:
            self._stream.grant(self._id, self._read)
            self._read = 0

    def __await__(self) -> Generator[Any, None, Any]:
        message = yield from self.read().__await__()
        if message is grpc.aio.EOF:
            raise _error(grpc.StatusCode.INTERNAL, "the core answered nothing")
        return message


class _Stream:
    """One Relay call: its writer sends the frames queued while its last write was under way
    as one message; its reader hands each answer to its call."""

    def __init__(self, channel: grpc.aio.Channel, born: float, on_end: Callable[[_Stream], None]):
        self.born = born
        self.open = True  # takes new calls
        self.unsupported = False  # the core answered UNIMPLEMENTED: it has no relay
        self._on_end = on_end
        self._call = channel.stream_stream(
            _RELAY,
            request_serializer=pb.RelayRequest.SerializeToString,
            response_deserializer=pb.RelayResponse.FromString,
        )()
        self._calls: dict[int, RelayedCall] = {}
        self._next = 0
        self._frames: list[pb.RelayFrame] = []
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        self._reader = loop.create_task(self._read())

    def start(self, method: str, request: bytes, metadata: Metadata, decode: Any) -> RelayedCall:
        self._next += 1
        call_id = self._next
        call = RelayedCall(self, call_id, decode)
        self._calls[call_id] = call
        start = pb.RelayStart(
            method=method,
            request=request,
            metadata=[pb.RelayMetadata(key=k, value=v) for k, v in metadata],
            window=WINDOW_BYTES,
        )
        self._frames.append(pb.RelayFrame(call=call_id, start=start))
        self._wake.set()
        return call

    def cancel(self, call_id: int) -> None:
        if self._calls.pop(call_id, None) is not None:
            self._frames.append(pb.RelayFrame(call=call_id, cancel=True))
            self._wake.set()

    def grant(self, call_id: int, size: int) -> None:
        if call_id in self._calls:
            self._frames.append(pb.RelayFrame(call=call_id, window=size))
            self._wake.set()

    def retire(self) -> None:
        """Take no more calls; close once the ones under way have ended."""
        self.open = False
        self._wake.set()

    def abort(self) -> None:
        self.open = False
        self._call.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)

    async def _write(self) -> None:
        call, wake = self._call, self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                while self._frames:
                    await call.write(pb.RelayRequest(frames=self._batch()))
                if not self.open and not self._calls:
                    await call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the stream ended: its reader fails what is left

    def _batch(self) -> list[pb.RelayFrame]:
        frames, size = self._frames, 0
        for count, frame in enumerate(frames):
            size += len(frame.start.request)
            if size > _BATCH_BYTES and count:
                self._frames = frames[count:]
                return frames[:count]
        self._frames = []
        return frames

    async def _read(self) -> None:
        failure = _error(grpc.StatusCode.UNAVAILABLE, _BROKEN)
        try:
            while (read := await self._call.read()) is not grpc.aio.EOF:
                response: pb.RelayResponse = read  # type: ignore[assignment]
                if response.drain:
                    self.retire()
                calls = self._calls
                for answer in response.answers:
                    call_id = answer.call
                    if answer.HasField("end"):
                        call = calls.pop(call_id, None)
                        if call is not None:
                            call.deliver(answer.end)
                    else:
                        call = calls.get(call_id)
                        if call is not None:
                            call.deliver(answer.message)
                if not self.open and not calls:
                    self._wake.set()  # the writer closes the stream
        except grpc.aio.AioRpcError as error:
            code = error.code()
            log.info("a relay stream to a core ended: %s %s", code.name, error.details())
            if code is grpc.StatusCode.CANCELLED:
                failure = _error(code, _BROKEN)
            elif code is grpc.StatusCode.UNIMPLEMENTED:
                # A core that does not serve the relay (an older version): nothing of these
                # calls was done; they are resent, and the bridge calls directly from now on.
                self.unsupported = True
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here: the calls fail, and the core hears of it
            log.exception("a relay stream failed")
            self._call.cancel()
        finally:
            self.open = False
            calls, self._calls = self._calls, {}
            for call in calls.values():
                call.deliver(failure)
            self._wake.set()
            self._on_end(self)


class InferenceRelay:
    """Up to `streams` relay streams on `channel`, handed out in turn. A core that does not
    serve the relay (UNIMPLEMENTED: an older version during a rolling upgrade) turns it off:
    `direct` then tells callers to make a gRPC call of their own, as before the relay."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        streams: int,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._size = streams
        self._max_age = max_age
        self._clock = clock
        self._open: list[_Stream] = []
        self._all: set[_Stream] = set()
        self._turn = 0
        self._closed = False
        self.direct = False

    def call(self, method: str, request: bytes, metadata: Metadata, decode: Any) -> RelayedCall:
        if self._closed:
            return RelayedCall.failed(_error(grpc.StatusCode.UNAVAILABLE, "the bridge is stopping"))
        if len(request) > _LARGEST_REQUEST:
            # As gRPC refuses a message over the limit on a call of its own: this call alone.
            details = (
                f"the request is larger than a gRPC message may be ({MAX_MESSAGE_BYTES} bytes)"
            )
            return RelayedCall.failed(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
        return self._stream().start(method, request, metadata, decode)

    def _stream(self) -> _Stream:
        now = self._clock()
        kept = [s for s in self._open if s.open and now - s.born < self._max_age]
        if len(kept) != len(self._open):
            for stream in self._open:
                if stream not in kept:
                    stream.retire()
            self._open = kept
        if len(kept) < self._size:
            stream = _Stream(self._channel, now, self._ended)
            self._open.append(stream)
            self._all.add(stream)
            return stream
        self._turn = (self._turn + 1) % len(kept)
        return kept[self._turn]

    def _ended(self, stream: _Stream) -> None:
        self._all.discard(stream)
        with contextlib.suppress(ValueError):
            self._open.remove(stream)
        if stream.unsupported and not self.direct:
            self.direct = True
            log.warning(
                "a core does not serve InferenceRelay (an older version?): calling the cores "
                "with a gRPC call per request from now on"
            )

    async def close(self, timeout: float = 5.0) -> None:
        """Retire every stream and wait (up to `timeout`) for their calls to end."""
        self._closed = True
        streams = list(self._all)
        for stream in streams:
            stream.retire()
        self._open = []
        try:
            async with asyncio.timeout(timeout):
                for stream in streams:
                    await stream.wait_closed()
        except TimeoutError:
            for stream in streams:
                stream.abort()
            for stream in streams:
                await stream.wait_closed()


# InferenceService's methods whose answers may be large: each gets a gRPC call of its own (above).
OWN_CALL = frozenset({"CreateEmbedding", "GetResponse"})


class InferenceRelayStub:
    """InferenceService's methods, each carried on the relay: `stub.CreateChatCompletion(
    request, metadata=...)` as on the gRPC stub — which `direct` answers instead once the relay
    turned out to be unserved, and always for the methods of `OWN_CALL`."""

    def __init__(self, relay: InferenceRelay, direct: Any = None) -> None:
        for method in _SERVICE.methods:
            fallback = getattr(direct, method.name, None)
            if method.name in OWN_CALL and fallback is not None:
                setattr(self, method.name, fallback)
                continue
            decode = getattr(inference_pb, method.output_type.name).FromString
            setattr(self, method.name, _Method(relay, method.name, decode, fallback))


class _Method:
    __slots__ = ("_relay", "_name", "_decode", "_direct")

    def __init__(self, relay: InferenceRelay, name: str, decode: Any, direct: Any) -> None:
        self._relay, self._name, self._decode, self._direct = relay, name, decode, direct

    def __call__(self, request: Any, *, metadata: Metadata = ()) -> Any:
        relay = self._relay
        if relay.direct and self._direct is not None:
            return self._direct(request, metadata=metadata)
        return relay.call(self._name, request.SerializeToString(), metadata, self._decode)
