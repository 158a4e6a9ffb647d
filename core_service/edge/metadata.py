"""Reading call metadata: the caller's credentials (API key, or web session and CSRF token),
its request id and the end user's signals.

The keys are the contract's (`MetadataKey` in protos/kyma/contract/v1/contract.proto).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

import grpc

from core_service.accounts.callers import Credentials
from kyma.contract.v1.constants import REQUEST_ID_PATTERN, REQUEST_ID_PREFIX, MetadataKey

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

Metadata = Iterable[tuple[str, str | bytes]]


def value_in(metadata: Metadata | None, key: MetadataKey) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def metadata_value(context: grpc.aio.ServicerContext, key: MetadataKey) -> str | None:
    return value_in(context.invocation_metadata(), key)


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    return metadata_value(context, MetadataKey.AUTHORIZATION)


def new_request_id() -> str:
    return f"{REQUEST_ID_PREFIX}{secrets.token_hex(12)}"


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is a sane token, else a new one."""
    return request_id_in(context.invocation_metadata())


def request_id_in(metadata: Metadata | None) -> str:
    """`request_id` of a call's metadata (a relayed call has no gRPC context of its own)."""
    given = value_in(metadata, MetadataKey.REQUEST_ID)
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def credentials(context: grpc.aio.ServicerContext) -> Credentials:
    """The caller's API key, web session and CSRF token, as the call carries them."""
    return Credentials(
        authorization=metadata_value(context, MetadataKey.AUTHORIZATION),
        session=metadata_value(context, MetadataKey.SESSION),
        csrf=metadata_value(context, MetadataKey.CSRF_TOKEN),
    )
