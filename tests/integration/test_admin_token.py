"""Every AdminService RPC, enumerated from the service descriptor (not from a hand list),
refuses a call without the admin token, with a wrong one, and with an account's API key —
before the servicer runs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory

from core_service.edge.admin.service import SERVICE
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from tests.conftest import ADMIN_TOKEN, Kyma

_METHODS = [method.name for method in SERVICE.methods]


def test_the_service_has_the_rpcs_we_think() -> None:
    assert len(_METHODS) >= 19 and "CreateAccount" in _METHODS


def _empty_request(method: str) -> object:
    descriptor = SERVICE.methods_by_name[method].input_type
    return message_factory.GetMessageClass(descriptor)()


@pytest.mark.parametrize("method", _METHODS)
async def test_every_admin_rpc_needs_the_admin_token(kyma: Kyma, method: str) -> None:
    _, api_key = await kyma.create_account()
    stub = admin_service_pb2_grpc.AdminServiceStub(kyma.channel)
    call = getattr(stub, method)
    for metadata in (
        (),
        (("authorization", "Bearer kyadm_wrong"),),
        (("authorization", ADMIN_TOKEN),),  # no scheme
        (("authorization", f"Bearer {api_key}"),),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(_empty_request(method), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
        assert "admin token" in (refused.value.details() or "")


async def test_the_admin_token_opens_them(kyma: Kyma) -> None:
    stub = admin_service_pb2_grpc.AdminServiceStub(kyma.channel)
    reply = await stub.ListAccounts(
        admin_service_pb2.ListAccountsRequest(page_size=1),
        metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
    )
    assert len(reply.accounts) <= 1
