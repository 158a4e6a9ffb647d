"""Internal services calling the core over gRPC get the same policy and typed errors."""

from __future__ import annotations

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kyma.accounting.v1 import accounting_service_pb2, accounting_service_pb2_grpc
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in error.trailing_metadata():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError("no ErrorInfo in the status")


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_unary_chat_over_grpc(kyma, account) -> None:
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    body = orjson.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    reply = await stub.CreateChatCompletion(
        pb.CreateChatCompletionRequest(body=body),
        metadata=(*auth(account[1]), ("x-request-id", "req_mine")),
    )
    assert orjson.loads(reply.body)["model"] == "test-model"
    assert reply.usage.completion_tokens == 4 and not reply.usage.estimated
    assert reply.usage.cost_nanos > 0 and reply.usage.cost_usd.startswith("0.0000")
    assert reply.request_id == "req_mine"


async def test_stream_over_grpc_ends_with_usage(kyma, account) -> None:
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    body = orjson.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    messages = [
        m
        async for m in stub.StreamChatCompletion(
            pb.StreamChatCompletionRequest(body=body), metadata=auth(account[1])
        )
    ]
    assert messages[0].request_id.startswith("req_")
    chunks = [orjson.loads(c) for m in messages for c in m.chunks]
    assert all(c["model"] == "test-model" for c in chunks)
    assert messages[-1].usage.completion_tokens == 3


async def test_typed_errors_over_grpc(kyma, account) -> None:
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(
            pb.CreateChatCompletionRequest(body=b"{}"), metadata=auth("ky_nope")
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "INVALID_API_KEY"

    body = orjson.dumps({"model": "missing", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(
            pb.CreateChatCompletionRequest(body=body), metadata=auth(account[1])
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info.reason == "MODEL_NOT_FOUND" and info.metadata["param"] == "model"


async def test_get_account(kyma) -> None:
    account_id, key = await kyma.create_account("Grace.Hopper@Example.com")
    stub = accounting_service_pb2_grpc.AccountingServiceStub(kyma.channel)
    reply = await stub.GetAccount(accounting_service_pb2.GetAccountRequest(), metadata=auth(key))
    assert reply.account.id == account_id
    assert reply.account.status == accounting_service_pb2.ACCOUNT_STATUS_ACTIVE


async def test_admin_needs_the_admin_token(kyma) -> None:
    stub = admin_service_pb2_grpc.AdminServiceStub(kyma.channel)
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateAccount(
                admin_service_pb2.CreateAccountRequest(email="x@example.com"), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_same_person_cannot_have_two_accounts(kyma) -> None:
    await kyma.create_account("ada.lovelace@gmail.com")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await kyma.create_account("Ada.Love.Lace+kyma@googlemail.com")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_invalid_email_refused(kyma) -> None:
    for email in ("not-an-email", "a@b", "x" * 300 + "@example.com", "' OR 1=1 --@example.com"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kyma.create_account(email)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(kyma) -> None:
    health = health_pb2_grpc.HealthStub(kyma.channel)
    for service in ("", "kyma.inference.v1.InferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(kyma.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert "kyma.inference.v1.InferenceService" in names and "grpc.health.v1.Health" in names


async def test_the_other_dialects_over_grpc(kyma, account) -> None:
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    body = orjson.dumps({"model": "native-model", "input": "hi", "max_output_tokens": 3})
    reply = await stub.CreateResponse(
        pb.CreateResponseRequest(body=body), metadata=auth(account[1])
    )
    response = orjson.loads(reply.body)
    assert response["object"] == "response" and response["usage"]["output_tokens"] == 3
    assert response["usage"]["cost"] == reply.usage.cost_usd
    fetched = await stub.GetResponse(
        pb.GetResponseRequest(id=response["id"]), metadata=auth(account[1])
    )
    assert orjson.loads(fetched.body)["id"] == response["id"]

    body = orjson.dumps(
        {"model": "test-model", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    )
    messages = [
        m
        async for m in stub.StreamMessage(
            pb.StreamMessageRequest(body=body), metadata=auth(account[1])
        )
    ]
    events = [(e.type, orjson.loads(e.data)) for m in messages for e in m.events]
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert all(name == data["type"] for name, data in events)
    assert messages[-1].usage.completion_tokens == 3

    counted = await stub.CountMessageTokens(
        pb.CountMessageTokensRequest(body=body), metadata=auth(account[1])
    )
    assert orjson.loads(counted.body)["input_tokens"] > 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetResponse(pb.GetResponseRequest(id="resp_nope"), metadata=auth(account[1]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
