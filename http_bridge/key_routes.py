"""Key management (`/v1/account/keys…`): list, create (the secret shown once), change limits,
revoke. With a web session, the changes need the CSRF header (the core checks it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import field_mask_pb2
from starlette.responses import Response

from http_bridge.bodies import bad_field, json_response, small_json
from http_bridge.calls import call_core, failed_response, unix
from http_bridge.core_client import stubs
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb

MAX_BODY = 64 * 1024
LIMIT_FIELDS = ("spend_cap_usd", "cap_interval", "expires_at", "allowed_models")
_INTERVALS = {
    "daily": accounting_pb.CAP_INTERVAL_DAILY,
    "weekly": accounting_pb.CAP_INTERVAL_WEEKLY,
    "monthly": accounting_pb.CAP_INTERVAL_MONTHLY,
}
_INTERVAL_NAMES = {value: name for name, value in _INTERVALS.items()}

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
        "spend_cap_usd": key.spend_cap.usd if key.HasField("spend_cap") else None,
        "cap_interval": _INTERVAL_NAMES.get(key.cap_interval),
        "spent_usd": key.spent.usd or "0.000000000",
        "held_usd": key.held.usd or "0.000000000",
        "cap_resets_at": unix(key.cap_resets_at),
        "expires_at": unix(key.expires_at),
        "allowed_models": list(key.allowed_models) or None,
    }


def _limits(body: dict[str, Any]) -> tuple[accounting_pb.KeyLimitsInput, list[str]] | Response:
    """The limit fields the body names, as the core takes them, and their names (null: clear)."""
    limits = accounting_pb.KeyLimitsInput()
    named = []
    for name in LIMIT_FIELDS:
        if name not in body:
            continue
        named.append(name)
        value = body[name]
        if value is None:
            continue
        if name == "spend_cap_usd":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                return bad_field(name, "'spend_cap_usd' is a decimal amount of USD, e.g. \"10\".")
            limits.spend_cap_usd = str(value)
        elif name == "cap_interval":
            if value not in _INTERVALS:
                return bad_field(name, "'cap_interval' is daily, weekly, monthly or null.")
            limits.cap_interval = _INTERVALS[value]
        elif name == "expires_at":
            moment = _time(value)
            if moment is None:
                return bad_field(
                    name, "'expires_at' is a Unix time in seconds or an RFC 3339 time, or null."
                )
            limits.expires_at.FromDatetime(moment)
        else:
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                return bad_field(name, "'allowed_models' is a list of model names, or null.")
            if not value:
                return bad_field(
                    name, "'allowed_models' names at least one model (null allows every model)."
                )
            limits.allowed_models.extend(value)
    return limits, named


def _time(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):
        return None
    return None


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
    body = await small_json(request, MAX_BODY)
    if isinstance(body, Response):
        return body
    name = body.get("name") or ""
    if not isinstance(name, str):
        return bad_field("name", "'name' must be a string.")
    limits = _limits(body)
    if isinstance(limits, Response):
        return limits
    message = accounting_pb.CreateApiKeyRequest(name=name, limits=limits[0])
    reply, headers = await call_core(request, stubs(request).accounting.CreateApiKey, message)
    return json_response(
        {**key_object(reply.key), "key": reply.secret, "secret": reply.secret}, headers, status=201
    )


@router.patch("/v1/account/keys/{key_id}")
@failed_response
async def update_key(key_id: str, request: Request) -> Response:
    body = await small_json(request, MAX_BODY)
    if isinstance(body, Response):
        return body
    limits = _limits(body)
    if isinstance(limits, Response):
        return limits
    paths = list(limits[1])
    name = ""
    if "name" in body:
        name = body["name"] or ""
        if not isinstance(name, str):
            return bad_field("name", "'name' must be a string.")
        paths.append("name")
    message = accounting_pb.UpdateApiKeyRequest(
        id=key_id, name=name, limits=limits[0], update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    reply, headers = await call_core(request, stubs(request).accounting.UpdateApiKey, message)
    return json_response(key_object(reply.key), headers)


@router.delete("/v1/account/keys/{key_id}")
@failed_response
async def revoke_key(key_id: str, request: Request) -> Response:
    message = accounting_pb.RevokeApiKeyRequest(id=key_id)
    reply, headers = await call_core(request, stubs(request).accounting.RevokeApiKey, message)
    return json_response({**key_object(reply.key), "deleted": True}, headers)
