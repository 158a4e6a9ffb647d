"""Reading call metadata: the caller's credentials and request id."""

from __future__ import annotations

import re
import secrets

import grpc

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is a sane token, else a new one."""
    given = metadata_value(context, "x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"req_{secrets.token_hex(12)}"
