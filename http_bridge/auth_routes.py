"""Sign-up (`/v1/auth…`) and key management (`/v1/account/keys…`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from http_bridge.bodies import (
    BodyTooLarge,
    json_object,
    json_response,
    read_body,
    too_large,
)
from http_bridge.calls import call_core, failed_response, unix
from http_bridge.core_client import new_request_id, stubs
from http_bridge.errors import OpenAIError
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.accounting.v1 import signup_service_pb2 as signup_pb
from kyma.contract.v1.constants import MetadataKey

MAX_BODY = 16 * 1024
# Clients may identify their device; Kyma records it as a sign-up signal for abuse review.
FINGERPRINT_HEADER = "x-client-fingerprint"

router = APIRouter()


def key_object(key: accounting_pb.ApiKey) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "prefix": key.display_prefix,
        "created_at": unix(key.created_at),
        "last_used_at": unix(key.last_used_at),
        "revoked_at": unix(key.revoked_at),
    }


async def _fields(request: Request, *names: str) -> dict[str, str] | Response:
    """The named string fields of a small JSON body, or the 4xx to answer with."""
    headers = {"x-request-id": new_request_id()}
    try:
        body = await read_body(request, MAX_BODY)
    except BodyTooLarge:
        return too_large(MAX_BODY).response(headers)
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return parsed.response(headers)
    values = {}
    for name in names:
        value = parsed.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            return OpenAIError(400, f"'{name}' must be a string.", param=name).response(headers)
        values[name] = value
    return values


def _signals(request: Request) -> tuple[tuple[str, str], ...]:
    """The end user's address (through trusted proxies, see KYMA_FORWARDED_ALLOW_IPS) and
    fingerprint, with the bridge credential that makes the core believe them."""
    extra = []
    token = stubs(request).bridge_token
    if token:
        extra.append((MetadataKey.BRIDGE_TOKEN.value, token))
    if request.client is not None:
        extra.append((MetadataKey.CLIENT_IP.value, request.client.host))
    fingerprint = request.headers.get(FINGERPRINT_HEADER)
    if fingerprint and fingerprint.isascii() and fingerprint.isprintable():
        extra.append((MetadataKey.CLIENT_FINGERPRINT.value, fingerprint[:200]))
    return tuple(extra)


@router.post("/v1/auth/signup")
@failed_response
async def signup(request: Request) -> Response:
    fields = await _fields(request, "email", "referral_code")
    if isinstance(fields, Response):
        return fields
    message = signup_pb.StartSignupRequest(
        email=fields["email"], referral_code=fields["referral_code"]
    )
    reply, headers = await call_core(
        request, stubs(request).signup.StartSignup, message, extra=_signals(request)
    )
    return json_response(
        {
            "object": "signup",
            "status": "code_sent",
            "email": fields["email"].strip(),
            "expires_in": reply.expires_in_seconds,
        },
        headers,
    )


@router.post("/v1/auth/verify")
@failed_response
async def verify(request: Request) -> Response:
    fields = await _fields(request, "email", "code")
    if isinstance(fields, Response):
        return fields
    message = signup_pb.CompleteSignupRequest(email=fields["email"], code=fields["code"])
    reply, headers = await call_core(
        request, stubs(request).signup.CompleteSignup, message, extra=_signals(request)
    )
    return json_response(
        {
            "object": "account",
            "id": reply.account.id,
            "email": reply.account.email,
            "api_key": reply.api_key_secret,
            "key": key_object(reply.api_key),
        },
        headers,
        status=201,
    )


@router.get("/v1/account/keys")
@failed_response
async def list_keys(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).accounting.ListApiKeys, accounting_pb.ListApiKeysRequest()
    )
    return json_response({"object": "list", "data": [key_object(k) for k in reply.keys]}, headers)


@router.post("/v1/account/keys")
@failed_response
async def create_key(request: Request) -> Response:
    fields = await _fields(request, "name")
    if isinstance(fields, Response):
        return fields
    message = accounting_pb.CreateApiKeyRequest(name=fields["name"])
    reply, headers = await call_core(request, stubs(request).accounting.CreateApiKey, message)
    return json_response({**key_object(reply.key), "key": reply.secret}, headers, status=201)


@router.delete("/v1/account/keys/{key_id}")
@failed_response
async def revoke_key(key_id: str, request: Request) -> Response:
    message = accounting_pb.RevokeApiKeyRequest(id=key_id)
    reply, headers = await call_core(request, stubs(request).accounting.RevokeApiKey, message)
    return json_response({**key_object(reply.key), "deleted": True}, headers)
