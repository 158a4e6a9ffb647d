"""The contract between bridge and core (protos/kyma/contract/v1/contract.proto) is honoured on
both sides: every error reason maps to a gRPC code in the core and to an HTTP error in the
bridge, and every domain error declares a reason of the contract."""

from __future__ import annotations

import inspect

from core_service import errors
from core_service.edge.errors import GRPC_CODES
from http_bridge.anthropic import BY_REASON as ANTHROPIC_BY_REASON
from http_bridge.errors import BY_REASON
from kyma.contract.v1 import contract_pb2
from kyma.contract.v1.constants import ErrorReason, MetadataKey


def _domain_errors() -> list[type[errors.KymaError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.KymaError)
    ]


def test_every_reason_maps_in_the_core_and_in_the_bridge() -> None:
    assert set(GRPC_CODES) == set(ErrorReason)
    assert set(BY_REASON) == set(ErrorReason)
    # Anthropic's error shape too (its HTTP statuses are the OpenAI table's).
    assert set(ANTHROPIC_BY_REASON) == set(ErrorReason)


def test_the_python_enum_is_the_proto_enum() -> None:
    proto = {
        v.name.removeprefix("ERROR_REASON_")
        for v in contract_pb2.ErrorReason.DESCRIPTOR.values
        if v.number
    }
    assert {reason.value for reason in ErrorReason} == proto
    keys = {
        v.GetOptions().Extensions[contract_pb2.key]
        for v in contract_pb2.MetadataKey.DESCRIPTOR.values
        if v.number
    }
    assert {key.value for key in MetadataKey} == keys


def test_every_domain_error_declares_a_reason_of_the_contract() -> None:
    found = _domain_errors()
    assert len(found) > 10
    for cls in found:
        assert isinstance(cls.reason, ErrorReason), cls
    # No two errors are told apart only by their class: each reason is used once, but the
    # base class's INTERNAL.
    reasons = [cls.reason for cls in found if cls is not errors.KymaError]
    assert len(reasons) == len(set(reasons))
