"""InferenceRelay end to end, with no database: the core's `InferenceRelayServicer` on a real
grpc.aio server (behind the same `ErrorTranslation` as the core's, beside a direct
InferenceService registration of the same servicer), a fake InferenceService servicer behind it,
and the bridge's `InferenceRelay` pool and `InferenceRelayStub` as the client.

Every wait is for an event (a call entered the servicer, a stream ended) under a generous
liveness bound; nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio

from core_service import errors
from core_service.edge.interceptors import ErrorTranslation
from core_service.edge.metadata import request_id
from core_service.edge.relay import InferenceRelayServicer, inference_methods
from http_bridge import relay as relay_module
from http_bridge.core_client import resendable, with_resends
from http_bridge.errors import OpenAIError, from_grpc
from http_bridge.relay import OWN_CALL, InferenceRelay, InferenceRelayStub
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.inference.v1 import inference_service_pb2_grpc as inference_grpc
from kyma.inference.v1 import relay_service_pb2 as pb
from kyma.inference.v1 import relay_service_pb2_grpc as pb_grpc

# A safety bound on every test's waits, never a measure of speed.
LIVENESS = 10.0
RELAY = "/kyma.inference.v1.InferenceRelay/Relay"
STATUS_DETAILS = "grpc-status-details-bin"
MAX_AGE = 60.0

Chat = inference_pb.CreateChatCompletionRequest
StreamChat = inference_pb.StreamChatCompletionRequest


class FakeInference(inference_grpc.InferenceServiceServicer):
    """InferenceService as the relay finds it by name (the methods these tests do not use are
    the generated base class's). The chat methods answer by the request's body: a body with a
    gate waits for it (a stream after its first message), one with an error raises it once past
    the gate; what each call saw, and whether it was cancelled, is recorded by body."""

    def __init__(self) -> None:
        self.gates: dict[bytes, asyncio.Event] = {}
        self.raises: dict[bytes, Exception] = {}
        self.entered: collections.defaultdict[bytes, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )
        self.cancelled: collections.defaultdict[bytes, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )
        self.metadata: dict[bytes, tuple[tuple[str, str | bytes], ...]] = {}
        self.request_ids: dict[bytes, str] = {}
        self.calls = 0
        # StreamCompletion: messages produced so far (it yields FLOOD messages of 64 KiB).
        self.produced = 0

    def gate(self, body: bytes) -> asyncio.Event:
        gate = self.gates[body] = asyncio.Event()
        return gate

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()

    async def _behave(self, body: bytes, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        self.metadata[body] = tuple(context.invocation_metadata() or ())
        self.request_ids[body] = request_id(context)
        self.entered[body].set()
        gate = self.gates.get(body)
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled[body].set()
                raise
        error = self.raises.get(body)
        if error is not None:
            raise error

    async def CreateChatCompletion(
        self, request: inference_pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb.CreateChatCompletionResponse:
        await self._behave(request.body, context)
        return inference_pb.CreateChatCompletionResponse(body=b"answer to " + request.body)

    async def StreamChatCompletion(
        self, request: inference_pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb.StreamChatCompletionResponse]:
        yield inference_pb.StreamChatCompletionResponse(chunks=[request.body + b" 1"])
        await self._behave(request.body, context)
        yield inference_pb.StreamChatCompletionResponse(chunks=[request.body + b" 2"])

    async def CreateEmbedding(
        self, request: inference_pb.CreateEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb.CreateEmbeddingResponse:
        await self._behave(request.body, context)
        # a large batch's answer (within the rig's 4 MiB message limit)
        return inference_pb.CreateEmbeddingResponse(body=b"e" * (1 << 20))

    async def StreamCompletion(
        self, request: inference_pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb.StreamCompletionResponse]:
        for _ in range(FLOOD):
            self.produced += 1
            yield inference_pb.StreamCompletionResponse(chunks=[b"x" * 65536])


FLOOD = 40


class _Counted:
    """A stream's requests, counted as the core reads them."""

    def __init__(self, requests: AsyncIterator[Any], front: RelayFront) -> None:
        self._requests = aiter(requests)
        self._front = front

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> Any:
        request = await anext(self._requests)
        self._front.requests += 1
        return request


class _Writes:
    """A stream's context, its writes recorded (every RelayResponse the client then reads)."""

    def __init__(self, context: grpc.aio.ServicerContext, front: RelayFront) -> None:
        self._context = context
        self._front = front

    async def write(self, message: pb.RelayResponse) -> None:
        self._front.responses.append(message)
        if self._front.fail_writes:
            raise asyncio.InvalidStateError("RPC already finished.")  # as grpc.aio says it
        if message.drain and self._front.before_drain is not None:
            await self._front.before_drain()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class RelayFront(pb_grpc.InferenceRelayServicer):
    """The core's InferenceRelayServicer (`core`: replaceable, as a new core behind the same
    address), counting the streams it opened and ended and the messages each way."""

    def __init__(self, core: InferenceRelayServicer) -> None:
        self.core = core
        # One event per stream opened, in order; set once that stream ended.
        self.ended: list[asyncio.Event] = []
        # How many streams ended cancelled (cut by the bridge, or by the server stopping)
        # instead of ending by the protocol.
        self.cut = 0
        self.requests = 0
        self.responses: list[pb.RelayResponse] = []
        # Awaited just before the drain is written (the write's own await, made longer).
        self.before_drain: Callable[[], Awaitable[None]] | None = None
        # Every write fails as gRPC's does once the bridge has gone.
        self.fail_writes = False

    @property
    def opened(self) -> int:
        return len(self.ended)

    async def Relay(  # type: ignore[override]  # writes with context.write, as the core's does
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: grpc.aio.ServicerContext
    ) -> None:
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            await self.core.Relay(
                _Counted(request_iterator, self),
                cast(grpc.aio.ServicerContext, _Writes(context, self)),
            )
        except asyncio.CancelledError:
            self.cut += 1
            raise
        finally:
            ended.set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    fake: FakeInference
    translation: ErrorTranslation
    front: RelayFront
    clock: FakeClock
    # One stream, retired after MAX_AGE on `clock`.
    relay: InferenceRelay
    # InferenceRelayStub (its methods are set by name, so untyped) and the direct stub.
    stub: Any
    direct: Any
    target: str

    def new_core(self) -> InferenceRelayServicer:
        return InferenceRelayServicer(inference_methods(self.fake, self.translation))


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    # The generated stub marks every method abstract; those unused here are the base class's.
    fake = FakeInference()  # type: ignore[abstract]
    translation = ErrorTranslation()
    front = RelayFront(InferenceRelayServicer(inference_methods(fake, translation)))
    # Wired as the core wires it: both services behind one ErrorTranslation.
    server = grpc.aio.server(interceptors=[translation])
    inference_grpc.add_InferenceServiceServicer_to_server(fake, server)
    pb_grpc.add_InferenceRelayServicer_to_server(front, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    clock = FakeClock()
    relay = InferenceRelay(channel, streams=1, max_age=MAX_AGE, clock=clock)
    try:
        yield Rig(
            server=server,
            channel=channel,
            fake=fake,
            translation=translation,
            front=front,
            clock=clock,
            relay=relay,
            stub=InferenceRelayStub(relay),
            direct=inference_grpc.InferenceServiceStub(channel),
            target=f"127.0.0.1:{port}",
        )
    finally:
        fake.release_all()
        await relay.close(timeout=LIVENESS)
        await channel.close()
        await server.stop(None)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (callers bound the wait with their liveness timeout)."""
    while not condition():
        await asyncio.sleep(0.01)


def streams_taking_calls(relay: InferenceRelay) -> int:
    """How many of the relay's streams take new calls (its private state: the drain's arrival
    is visible nowhere else)."""
    return sum(stream.open for stream in relay._all)


def status_details(error: grpc.aio.AioRpcError) -> bytes | None:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS:
            return cast(bytes, value)
    return None


def mapped(error: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    found: OpenAIError = from_grpc(error)
    return (found.status, found.type, found.code, found.message, found.param, found.retry_after)


def raw_relay(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall[Any, Any]:
    """A Relay stream written frame by frame, as no well-behaved bridge would."""
    return channel.stream_stream(
        RELAY,
        request_serializer=pb.RelayRequest.SerializeToString,
        response_deserializer=pb.RelayResponse.FromString,
    )()


def start(call: int, method: str, request: bytes) -> pb.RelayFrame:
    return pb.RelayFrame(call=call, start=pb.RelayStart(method=method, request=request))


async def answers_until_end(call: grpc.aio.StreamStreamCall[Any, Any], call_id: int) -> list[Any]:
    """The answers for `call_id` read from a raw stream, up to and with its end."""
    got: list[pb.RelayAnswer] = []
    while True:
        response = await call.read()
        assert isinstance(response, pb.RelayResponse), "the stream ended before the call did"
        got.extend(answer for answer in response.answers if answer.call == call_id)
        if got and got[-1].HasField("end"):
            return got


async def test_calls_of_both_kinds_on_one_stream_each_get_their_own_answers(rig: Rig) -> None:
    """Two streaming calls and several unary calls, all open at once on ONE relay stream, each
    get their own answers in order (routed by call id) however their answers interleave; a
    streaming call's end reads as grpc.aio.EOF, and reading again gives EOF again."""
    gate_a, gate_b = rig.fake.gate(b"stream a"), rig.fake.gate(b"stream b")
    async with asyncio.timeout(LIVENESS):
        a = rig.stub.StreamChatCompletion(StreamChat(body=b"stream a"))
        b = rig.stub.StreamChatCompletion(StreamChat(body=b"stream b"))
        assert list((await b.read()).chunks) == [b"stream b 1"]
        assert list((await a.read()).chunks) == [b"stream a 1"]
        await rig.fake.entered[b"stream a"].wait()
        await rig.fake.entered[b"stream b"].wait()
        # While both streams wait in the servicer, unary calls come and go beside them.
        unary = [rig.stub.CreateChatCompletion(Chat(body=b"unary %d" % i)) for i in range(5)]
        answers = await asyncio.gather(*unary)
        assert [answer.body for answer in answers] == [b"answer to unary %d" % i for i in range(5)]
        gate_b.set()
        assert list((await b.read()).chunks) == [b"stream b 2"]
        assert await b.read() is grpc.aio.EOF
        assert await b.read() is grpc.aio.EOF
        gate_a.set()
        assert list((await a.read()).chunks) == [b"stream a 2"]
        assert await a.read() is grpc.aio.EOF
    assert a.done() and b.done()
    assert rig.front.opened == 1


async def test_the_servicer_reads_the_calls_metadata_as_given(rig: Rig) -> None:
    """A relayed call's context gives the servicer exactly the metadata the caller passed
    (authorization, x-request-id), for unary and streaming calls alike, and the same values a
    direct gRPC call of the same metadata gives it."""
    metadata = (("authorization", "Bearer kyma-relay-test"), ("x-request-id", "req_relay-md-1"))
    async with asyncio.timeout(LIVENESS):
        await rig.stub.CreateChatCompletion(Chat(body=b"unary"), metadata=metadata)
        streaming = rig.stub.StreamChatCompletion(StreamChat(body=b"stream"), metadata=metadata)
        while await streaming.read() is not grpc.aio.EOF:
            pass
        await rig.direct.CreateChatCompletion(Chat(body=b"direct"), metadata=metadata)
    assert rig.fake.metadata[b"unary"] == metadata
    assert rig.fake.metadata[b"stream"] == metadata
    direct = rig.fake.metadata[b"direct"]
    assert [(k, v) for k, v in direct if k in dict(metadata)] == list(metadata)
    assert rig.fake.request_ids == dict.fromkeys((b"unary", b"stream", b"direct"), "req_relay-md-1")


@pytest.mark.parametrize(
    ("make", "http_status", "openai_code"),
    [
        (
            lambda: errors.RateLimited("Slow down.", retry_after_seconds=7),
            429,
            "rate_limit_exceeded",
        ),
        (lambda: errors.InsufficientCredits("Top up to go on."), 402, "insufficient_quota"),
        (lambda: errors.InvalidRequest("'messages' is missing.", param="messages"), 400, None),
    ],
    ids=["rate-limited", "insufficient-credits", "invalid-request"],
)
async def test_a_domain_error_reaches_the_client_as_a_direct_call_gives_it(
    rig: Rig, make: Callable[[], errors.KymaError], http_status: int, openai_code: str | None
) -> None:
    """A KymaError raised in the servicer ends the relayed call as grpc.aio.AioRpcError with the
    code, details and `grpc-status-details-bin` trailer a direct call gets, so `from_grpc`
    maps both to the same OpenAI error (HTTP status, code, param, Retry-After); it is a core's
    reason, never resent."""
    rig.fake.raises[b"relayed"] = make()
    rig.fake.raises[b"direct"] = make()
    async with asyncio.timeout(LIVENESS):
        with pytest.raises(grpc.aio.AioRpcError) as relayed_info:
            await rig.stub.CreateChatCompletion(Chat(body=b"relayed"))
        with pytest.raises(grpc.aio.AioRpcError) as direct_info:
            await rig.direct.CreateChatCompletion(Chat(body=b"direct"))
    relayed, direct = relayed_info.value, direct_info.value
    assert relayed.code() == direct.code()
    assert relayed.details() == direct.details()
    assert status_details(relayed)
    assert status_details(relayed) == status_details(direct)
    assert mapped(relayed) == mapped(direct)
    found = from_grpc(relayed)
    assert (found.status, found.code) == (http_status, openai_code)
    assert not resendable(relayed)


async def test_a_domain_error_after_a_streams_first_message_is_a_direct_calls_error(
    rig: Rig,
) -> None:
    """A streaming call that fails after its first message: the client reads that message, then
    the read raises the error a direct call's read raises (a core's UNAVAILABLE carries its
    reason, so it is not resendable)."""
    rig.fake.raises[b"relayed"] = errors.UpstreamUnavailable("No upstream.", retry_after_seconds=2)
    rig.fake.raises[b"direct"] = errors.UpstreamUnavailable("No upstream.", retry_after_seconds=2)
    async with asyncio.timeout(LIVENESS):
        relayed_call = rig.stub.StreamChatCompletion(StreamChat(body=b"relayed"))
        assert list((await relayed_call.read()).chunks) == [b"relayed 1"]
        with pytest.raises(grpc.aio.AioRpcError) as relayed_info:
            await relayed_call.read()
        direct_call = rig.direct.StreamChatCompletion(StreamChat(body=b"direct"))
        assert list((await direct_call.read()).chunks) == [b"direct 1"]
        with pytest.raises(grpc.aio.AioRpcError) as direct_info:
            await direct_call.read()
    relayed, direct = relayed_info.value, direct_info.value
    assert relayed.code() == direct.code() == grpc.StatusCode.UNAVAILABLE
    assert relayed.details() == direct.details()
    assert status_details(relayed) == status_details(direct)
    assert mapped(relayed) == mapped(direct)
    assert (from_grpc(relayed).status, from_grpc(relayed).code) == (503, "upstream_unavailable")
    assert not resendable(relayed)


async def test_an_unexpected_error_is_internal_without_its_text(rig: Rig) -> None:
    """An exception the servicer did not mean ends the call INTERNAL with the request id: no
    traceback, exception type or message reaches the client."""
    rig.fake.raises[b"boom"] = RuntimeError("secret internals of the core")
    metadata = (("x-request-id", "req_relay-internal-1"),)
    async with asyncio.timeout(LIVENESS):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rig.stub.CreateChatCompletion(Chat(body=b"boom"), metadata=metadata)
    error = info.value
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details() or ""
    assert "req_relay-internal-1" in details
    for leak in ("secret", "RuntimeError", "Traceback", "File "):
        assert leak not in details
    assert (from_grpc(error).status, from_grpc(error).code) == (500, "internal_error")
    assert not resendable(error)


async def test_a_call_that_escapes_the_guard_still_ends_in_kymas_shape(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A relayed call that ends in a way the error translation did not make (here an abort
    with no status: only a bug can do that) ends INTERNAL as the guard would end it, with its
    request id and Kyma's error details, and the relay logs it."""
    rig.fake.raises[b"bare abort"] = grpc.aio.AbortError()
    metadata = (("x-request-id", "req_relay-bare-1"),)
    async with asyncio.timeout(LIVENESS):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rig.stub.CreateChatCompletion(Chat(body=b"bare abort"), metadata=metadata)
    error = info.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "req_relay-bare-1" in (error.details() or "")
    assert (from_grpc(error).status, from_grpc(error).code) == (500, "internal_error")
    assert status_details(error)
    assert "aborted without a status" in caplog.text


async def test_an_undecodable_request_is_invalid_argument(rig: Rig) -> None:
    """A start whose request is not a valid message of its method's type ends INVALID_ARGUMENT
    naming the type (400 over HTTP), unary or streaming, without the servicer running."""
    garbage = b"\xff\xff garbage"
    async with asyncio.timeout(LIVENESS):
        unary = rig.relay.call(
            "CreateChatCompletion",
            garbage,
            (),
            inference_pb.CreateChatCompletionResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as unary_info:
            await unary
        streaming = rig.relay.call(
            "StreamChatCompletion",
            garbage,
            (),
            inference_pb.StreamChatCompletionResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as stream_info:
            await streaming.read()
    for error, type_name in (
        (unary_info.value, "kyma.inference.v1.CreateChatCompletionRequest"),
        (stream_info.value, "kyma.inference.v1.StreamChatCompletionRequest"),
    ):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert type_name in (error.details() or "")
        assert from_grpc(error).status == 400
    assert rig.fake.calls == 0


async def test_an_unknown_method_is_unimplemented(rig: Rig) -> None:
    """A start naming no InferenceService method ends UNIMPLEMENTED with no status details, and
    the stream carries the calls that follow; a relayed stub call of such a name fails the
    same way."""
    async with asyncio.timeout(LIVENESS):
        call = raw_relay(rig.channel)
        await call.write(pb.RelayRequest(frames=[start(7, "DeleteEverything", b"")]))
        [answer] = await answers_until_end(call, 7)
        assert answer.end.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert "DeleteEverything" in answer.end.details
        assert answer.end.status_details == b""
        request = Chat(body=b"after").SerializeToString()
        await call.write(pb.RelayRequest(frames=[start(8, "CreateChatCompletion", request)]))
        message, end = await answers_until_end(call, 8)
        reply = inference_pb.CreateChatCompletionResponse.FromString(message.message)
        assert reply.body == b"answer to after"
        assert end.end.code == 0
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        relayed = rig.relay.call("DeleteEverything", b"", (), bytes)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await relayed
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
async def test_cancelling_a_call_cancels_the_servicers_task(rig: Rig, streaming: bool) -> None:
    """RelayedCall.cancel() while the servicer is blocked in the call: the servicer's task sees
    CancelledError, the client's await/read raises asyncio.CancelledError, and the stream goes
    on carrying other calls."""
    body = b"abandoned"
    gate = rig.fake.gate(body)
    async with asyncio.timeout(LIVENESS):
        if streaming:
            call = rig.stub.StreamChatCompletion(StreamChat(body=body))
            assert list((await call.read()).chunks) == [body + b" 1"]
        else:
            call = rig.stub.CreateChatCompletion(Chat(body=body))
        await rig.fake.entered[body].wait()
        assert call.cancel()
        assert not call.cancel()  # once
        await rig.fake.cancelled[body].wait()
        with pytest.raises(asyncio.CancelledError):
            if streaming:
                await call.read()
            else:
                await call
        assert (await rig.stub.CreateChatCompletion(Chat(body=b"next"))).body == b"answer to next"
    assert not gate.is_set()
    assert rig.front.opened == 1


async def test_a_call_started_and_cancelled_in_one_message_lets_its_stream_end(rig: Rig) -> None:
    """A caller that cancels a call before its start was sent (the client left at once) sends
    the start and the cancel in one message, so the core cancels the call's task before it
    ever ran. That call must not stay counted as under way: once the caller closes its side,
    the stream ends (as it does when no call is left)."""
    async with asyncio.timeout(LIVENESS):
        call = raw_relay(rig.channel)
        request = Chat(body=b"gone at once").SerializeToString()
        await call.write(
            pb.RelayRequest(
                frames=[
                    start(1, "CreateChatCompletion", request),
                    pb.RelayFrame(call=1, cancel=True),
                    start(2, "CreateChatCompletion", Chat(body=b"kept").SerializeToString()),
                ]
            )
        )
        message, _ = await answers_until_end(call, 2)
        assert inference_pb.CreateChatCompletionResponse.FromString(message.message).body == (
            b"answer to kept"
        )
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    await rig.front.ended[0].wait()


async def test_a_call_the_bridge_cancels_at_once_does_not_hold_up_close(rig: Rig) -> None:
    """The same through the bridge's client: a call cancelled right after it was made (before
    the stream's writer ran: its start and cancel travel together), then another call; close()
    then ends the stream by the protocol as soon as no call is left, instead of waiting out
    its timeout and cutting the stream."""
    async with asyncio.timeout(2 * LIVENESS):
        gone = rig.stub.CreateChatCompletion(Chat(body=b"gone at once"))
        assert gone.cancel()
        assert (await rig.stub.CreateChatCompletion(Chat(body=b"kept"))).body == b"answer to kept"
        await rig.relay.close(timeout=LIVENESS)
        await rig.front.ended[0].wait()
    assert rig.front.cut == 0


async def test_answers_of_calls_ready_together_share_messages(rig: Rig) -> None:
    """50 unary calls made at once on one stream are all answered correctly, and travel in
    fewer than 50 messages each way: the starts share the bridge's messages and the answers
    that became ready together share the core's."""
    calls = 50
    bodies = [b"batched %d" % i for i in range(calls)]
    gate = asyncio.Event()
    for body in bodies:
        rig.fake.gates[body] = gate  # all in the servicer at once, released together
    async with asyncio.timeout(LIVENESS):
        pending = [rig.stub.CreateChatCompletion(Chat(body=body)) for body in bodies]
        await asyncio.gather(*(rig.fake.entered[body].wait() for body in bodies))
        gate.set()
        answers = await asyncio.gather(*pending)
        # A unary call is answered by its message; the ends may still be on their way (a
        # later write of the core's, when its writer ran between the answers and their ends).
        await until(lambda: sum(len(r.answers) for r in rig.front.responses) == 2 * calls)
    assert [answer.body for answer in answers] == [b"answer to " + body for body in bodies]
    with_answers = [response for response in rig.front.responses if response.answers]
    assert sum(len(response.answers) for response in with_answers) == 2 * calls  # message + end
    assert len(with_answers) < calls
    assert rig.front.requests < calls
    assert rig.front.opened == 1


async def test_a_drain_refuses_new_calls_resendably_and_finishes_those_under_way(
    rig: Rig,
) -> None:
    """The core drains while a streaming call is under way: a call started after the drain
    reached the bridge fails UNAVAILABLE with no status details (resendable; the servicer never
    saw it), the call under way completes normally, its stream then ends, and once a core takes
    calls again the relay opens a new stream for the next call."""
    body = b"in flight"
    gate = rig.fake.gate(body)
    async with asyncio.timeout(LIVENESS):
        streaming = rig.stub.StreamChatCompletion(StreamChat(body=body))
        assert list((await streaming.read()).chunks) == [body + b" 1"]
        await rig.fake.entered[body].wait()

        rig.front.core.drain()
        await until(lambda: streams_taking_calls(rig.relay) == 0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rig.stub.CreateChatCompletion(Chat(body=b"after the drain"))
        error = info.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert status_details(error) is None
        assert resendable(error)
        assert from_grpc(error).status == 503
        assert b"after the drain" not in rig.fake.entered

        gate.set()
        assert list((await streaming.read()).chunks) == [body + b" 2"]
        assert await streaming.read() is grpc.aio.EOF
        await rig.front.ended[0].wait()
        drains = [response for response in rig.front.responses if response.drain]
        assert drains and all(not response.answers for response in drains)

        # Every stream to the draining core has ended; a core that takes calls (a new one
        # behind the same address) gets the next call on a stream of its own.
        await until(lambda: all(ended.is_set() for ended in rig.front.ended))
        await until(lambda: streams_taking_calls(rig.relay) == 0)
        rig.front.core = rig.new_core()
        opened = rig.front.opened
        answer = await rig.stub.CreateChatCompletion(Chat(body=b"next core"))
    assert answer.body == b"answer to next core"
    assert rig.front.opened == opened + 1


async def test_a_start_after_the_drain_is_refused_unavailable_on_the_wire(rig: Rig) -> None:
    """On a stream kept open by a call under way, the core sends `drain` once, alone; a start
    that arrives after it ends UNAVAILABLE with no status details and never reaches the
    servicer; the call under way still ends OK, and then the stream ends."""
    gate = rig.fake.gate(b"kept")
    async with asyncio.timeout(LIVENESS):
        call = raw_relay(rig.channel)
        request = Chat(body=b"kept").SerializeToString()
        await call.write(pb.RelayRequest(frames=[start(1, "CreateChatCompletion", request)]))
        await rig.fake.entered[b"kept"].wait()
        rig.front.core.drain()
        drain = await call.read()
        assert isinstance(drain, pb.RelayResponse)
        assert drain.drain and not drain.answers
        late = Chat(body=b"late").SerializeToString()
        await call.write(pb.RelayRequest(frames=[start(2, "CreateChatCompletion", late)]))
        [refused] = await answers_until_end(call, 2)
        assert refused.end.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert refused.end.status_details == b""
        gate.set()
        message, end = await answers_until_end(call, 1)
        assert inference_pb.CreateChatCompletionResponse.FromString(message.message).body == (
            b"answer to kept"
        )
        assert end.end.code == 0
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert b"late" not in rig.fake.entered
    assert sum(response.drain for response in rig.front.responses) == 1


async def test_a_core_killed_mid_call_fails_its_calls_resendably(rig: Rig) -> None:
    """The core's server stops at once while a unary and a streaming call are in the servicer:
    both fail with AioRpcError UNAVAILABLE or CANCELLED and no status details (resendable), and
    the servicer's tasks are cancelled."""
    gate_unary, gate_stream = rig.fake.gate(b"unary"), rig.fake.gate(b"stream")
    async with asyncio.timeout(LIVENESS):
        unary = rig.stub.CreateChatCompletion(Chat(body=b"unary"))
        streaming = rig.stub.StreamChatCompletion(StreamChat(body=b"stream"))
        assert list((await streaming.read()).chunks) == [b"stream 1"]
        await rig.fake.entered[b"unary"].wait()
        await rig.fake.entered[b"stream"].wait()
        await rig.server.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as unary_info:
            await unary
        with pytest.raises(grpc.aio.AioRpcError) as stream_info:
            await streaming.read()
        await rig.fake.cancelled[b"unary"].wait()
        await rig.fake.cancelled[b"stream"].wait()
    for error in (unary_info.value, stream_info.value):
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert status_details(error) is None
        assert resendable(error)
    assert not gate_unary.is_set() and not gate_stream.is_set()


@pytest.mark.parametrize("how", ["relay-close", "channel-close"])
async def test_the_bridges_stream_cancelled_cancels_the_servicers_task(rig: Rig, how: str) -> None:
    """The bridge's side of the relay stream goes away while the servicer is in a call (close
    giving up on a call that never ends, or the channel closed): the core cancels that call's
    task, as gRPC cancels a call whose client left, and the call fails resendably."""
    body = b"left behind"
    rig.fake.gate(body)
    async with asyncio.timeout(LIVENESS):
        call = rig.stub.CreateChatCompletion(Chat(body=body))
        await rig.fake.entered[body].wait()
        if how == "relay-close":
            # The call never ends: close gives up at once and cancels the stream.
            await rig.relay.close(timeout=0.01)
        else:
            await rig.channel.close()
        await rig.fake.cancelled[body].wait()
        await rig.front.ended[0].wait()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert resendable(info.value)
    assert rig.front.cut == 1


async def test_a_stream_past_its_max_age_takes_no_new_calls_and_ends_after_its_last(
    rig: Rig,
) -> None:
    """With the relay's clock moved past max_age, the next call goes on a NEW stream (the core
    sees a second Relay stream opened); the old stream finishes the call it carries and then
    ends, and the new one takes the calls that follow."""
    body = b"old"
    gate = rig.fake.gate(body)
    async with asyncio.timeout(LIVENESS):
        old = rig.stub.StreamChatCompletion(StreamChat(body=body))
        assert list((await old.read()).chunks) == [b"old 1"]
        await rig.fake.entered[body].wait()
        rig.clock.now = MAX_AGE - 1
        assert (await rig.stub.CreateChatCompletion(Chat(body=b"young"))).body == b"answer to young"
        assert rig.front.opened == 1

        rig.clock.now = MAX_AGE + 1
        answer = await rig.stub.CreateChatCompletion(Chat(body=b"new"))
        assert answer.body == b"answer to new"
        assert rig.front.opened == 2
        assert not rig.front.ended[0].is_set()  # it still carries the old call

        gate.set()
        assert list((await old.read()).chunks) == [b"old 2"]
        assert await old.read() is grpc.aio.EOF
        await rig.front.ended[0].wait()
        assert (await rig.stub.CreateChatCompletion(Chat(body=b"newer"))).body == (
            b"answer to newer"
        )
    assert rig.front.opened == 2
    assert not rig.front.ended[1].is_set()


async def test_close_waits_for_a_call_in_flight(rig: Rig) -> None:
    """InferenceRelay.close() retires its streams but lets a call under way finish (within its
    timeout): the call gets its answer, and then close returns with the stream ended."""
    body = b"finishing"
    gate = rig.fake.gate(body)
    async with asyncio.timeout(LIVENESS):
        call = rig.stub.CreateChatCompletion(Chat(body=body))
        await rig.fake.entered[body].wait()
        closing = asyncio.create_task(rig.relay.close(timeout=LIVENESS))
        for _ in range(50):  # give close every chance to return early (it must not)
            await asyncio.sleep(0)
        assert not closing.done()
        assert not rig.front.ended[0].is_set()
        gate.set()
        assert (await call).body == b"answer to finishing"
        await closing
        await rig.front.ended[0].wait()
    assert rig.fake.cancelled.get(body) is None
    assert rig.front.cut == 0


async def test_a_message_that_is_not_a_relay_request_ends_only_its_stream(rig: Rig) -> None:
    """Bytes that are no RelayRequest end the stream that sent them (no call was started), and
    the core serves other streams as before."""
    async with asyncio.timeout(LIVENESS):
        raw: grpc.aio.StreamStreamCall[bytes, pb.RelayResponse] = rig.channel.stream_stream(
            RELAY, response_deserializer=pb.RelayResponse.FromString
        )()
        await raw.write(b"\xff\xff garbage")
        assert await raw.read() is grpc.aio.EOF
        assert await raw.code() == grpc.StatusCode.OK
        answer = await rig.stub.CreateChatCompletion(Chat(body=b"fine"))
    assert answer.body == b"answer to fine"
    assert rig.fake.calls == 1


async def test_a_call_that_ends_while_the_drain_is_written_still_gets_its_answer(rig: Rig) -> None:
    """The drain's write is an await like any other: a call that finishes during it has its
    answer queued after the writer last looked, and the stream must not end without sending
    it (the bridge would take the call for undone and resend a call that was charged)."""
    gate = rig.fake.gate(b"late")

    async def finish_the_call_meanwhile() -> None:
        gate.set()
        for _ in range(50):  # loop steps, not time: the call returns and queues its answer
            await asyncio.sleep(0)

    async with asyncio.timeout(LIVENESS):
        call = rig.stub.CreateChatCompletion(Chat(body=b"late"))
        await rig.fake.entered[b"late"].wait()
        rig.front.before_drain = finish_the_call_meanwhile
        rig.front.core.drain()
        assert (await call).body == b"answer to late"
        await rig.front.ended[0].wait()
    assert rig.front.cut == 0


async def test_cancelling_the_task_that_awaits_a_call_cancels_the_call(rig: Rig) -> None:
    """As with grpc.aio's calls: a route's task cancelled while it awaits a relayed call (the
    server's shutdown timing out, say) cancels the call at the core, which then charges
    nothing, instead of leaving it running with nobody waiting."""
    rig.fake.gate(b"abandoned")

    async def route() -> Any:
        return await rig.stub.CreateChatCompletion(Chat(body=b"abandoned"))

    async with asyncio.timeout(LIVENESS):
        task = asyncio.create_task(route())
        await rig.fake.entered[b"abandoned"].wait()
        task.cancel()
        await rig.fake.cancelled[b"abandoned"].wait()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_request_too_large_for_a_message_fails_alone(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request over the gRPC message limit fails RESOURCE_EXHAUSTED, not resendable, as gRPC
    refuses it on a call of its own — and the stream and the calls on it carry on (sent, it
    would have broken the stream and every call on it)."""
    monkeypatch.setattr(relay_module, "_LARGEST_REQUEST", 1000)
    gate = rig.fake.gate(b"beside")
    async with asyncio.timeout(LIVENESS):
        beside = rig.stub.StreamChatCompletion(StreamChat(body=b"beside"))
        assert list((await beside.read()).chunks) == [b"beside 1"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rig.stub.CreateChatCompletion(Chat(body=b"x" * 2000))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not resendable(refused.value)
        gate.set()
        assert list((await beside.read()).chunks) == [b"beside 2"]
        assert await beside.read() is grpc.aio.EOF
        assert (await rig.stub.CreateChatCompletion(Chat(body=b"after"))).body == b"answer to after"
    assert rig.front.opened == 1


async def test_a_caller_that_does_not_read_holds_its_call_at_the_core(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flow control per call, as HTTP/2 gives a call of its own: the core sends a call's
    answers only as far as its window, and a caller that stops reading stops the call there
    (nothing piles up in the bridge); reading on grants more, and everything arrives."""
    monkeypatch.setattr(relay_module, "WINDOW_BYTES", 256 * 1024)
    core = rig.front.core

    def waiting_for_room() -> bool:
        streams = core._streams
        return any(
            call.more is not None and not call.more.done()
            for stream in streams
            for call in stream._calls.values()
        )

    async with asyncio.timeout(LIVENESS):
        flood = rig.stub.StreamCompletion(inference_pb.StreamCompletionRequest(body=b"flood"))
        first = await flood.read()
        assert len(first.chunks[0]) == 65536
        await until(waiting_for_room)
        # 256 KiB of room, one 64 KiB message more when any is left, and the one read.
        assert rig.fake.produced <= 6
        read = 1
        while await flood.read() is not grpc.aio.EOF:
            read += 1
    assert read == FLOOD == rig.fake.produced


async def test_a_call_cancelled_by_anything_else_still_ends(rig: Rig) -> None:
    """A call whose task ends cancelled though nobody sent a cancel (the servicer let a
    CancelledError out) still ends, CANCELLED, as gRPC ends such a call; its stream is not
    left waiting for it, and closes when asked."""
    rig.fake.raises[b"stray"] = asyncio.CancelledError()
    async with asyncio.timeout(LIVENESS):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await rig.stub.CreateChatCompletion(Chat(body=b"stray"))
        assert ended.value.code() is grpc.StatusCode.CANCELLED
        await rig.relay.close(timeout=LIVENESS)
        await rig.front.ended[0].wait()
    assert rig.front.cut == 0


async def test_a_core_without_the_relay_is_called_directly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A core of an older version, which does not serve InferenceRelay (UNIMPLEMENTED): the
    call is resent as the resend rule allows (the core did nothing), and from then on the
    bridge makes a gRPC call per request — logged once, at WARNING."""
    fake = FakeInference()  # type: ignore[abstract]
    server = grpc.aio.server(interceptors=[ErrorTranslation()])
    inference_grpc.add_InferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    relay = InferenceRelay(channel, streams=1, max_age=MAX_AGE)
    stub: Any = InferenceRelayStub(relay, inference_grpc.InferenceServiceStub(channel))
    try:
        async with asyncio.timeout(LIVENESS):
            answer = await with_resends(lambda: stub.CreateChatCompletion(Chat(body=b"old")))
            assert answer.body == b"answer to old"
            assert relay.direct
            again = await stub.CreateChatCompletion(Chat(body=b"again"))
            assert again.body == b"answer to again"
    finally:
        await relay.close(timeout=LIVENESS)
        await channel.close()
        await server.stop(None)
    warnings = [r for r in caplog.records if "InferenceRelay" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]


async def test_a_bridge_gone_mid_stream_logs_no_error_at_the_core(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge that goes away while the core writes to it (gRPC's write then raises) is a
    client that left, as for a call of its own: its calls are cancelled, and there is no
    ERROR, no traceback in the core's log."""
    gate = rig.fake.gate(b"gone")
    async with asyncio.timeout(LIVENESS):
        call = rig.stub.StreamChatCompletion(StreamChat(body=b"gone"))
        assert list((await call.read()).chunks) == [b"gone 1"]
        rig.front.fail_writes = True
        gate.set()  # its next message is written: the write fails
        await rig.front.ended[0].wait()
    assert not rig.fake.cancelled[b"gone"].is_set()  # it had passed its gate: it ended
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_answer_that_may_be_large_gets_a_call_of_its_own(rig: Rig) -> None:
    """Embeddings (and a stored response read back) are not carried on the relay: their answer
    can be megabytes, one message that every other answer on its stream would wait behind; on a
    call of its own HTTP/2 interleaves it with the others. Chat on the same stub is relayed."""
    stub: Any = InferenceRelayStub(rig.relay, rig.direct)
    assert OWN_CALL == {"CreateEmbedding", "GetResponse"}
    async with asyncio.timeout(LIVENESS):
        gate = rig.fake.gate(b"held")
        held = stub.StreamChatCompletion(StreamChat(body=b"held"))
        assert list((await held.read()).chunks) == [b"held 1"]
        assert rig.front.opened == 1
        requests = rig.front.requests
        answer = await stub.CreateEmbedding(inference_pb.CreateEmbeddingRequest(body=b"batch"))
        assert len(answer.body) == 1 << 20
        assert rig.front.requests == requests and rig.front.opened == 1  # not on the relay
        gate.set()
        assert list((await held.read()).chunks) == [b"held 2"]
        chat = await stub.CreateChatCompletion(Chat(body=b"after"))
        assert chat.body == b"answer to after"
        assert rig.front.requests > requests


async def test_a_unary_answer_and_its_end_travel_in_one_message(rig: Rig) -> None:
    """The end is queued by the call's done-callback, a turn after the answer: the writer waits
    that turn, so a unary call costs one message from the core, not two."""
    async with asyncio.timeout(LIVENESS):
        answer = await rig.stub.CreateChatCompletion(Chat(body=b"one"))
        assert answer.body == b"answer to one"
        await until(lambda: sum(len(r.answers) for r in rig.front.responses) == 2)
    [response] = [r for r in rig.front.responses if r.answers]
    assert [a.WhichOneof("kind") for a in response.answers] == ["message", "end"]
