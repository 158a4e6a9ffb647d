"""Sign-up, sign-in and web sessions (`/v1/auth…`), and the terms a sign-up accepts
(`/v1/terms`). The bridge only carries the session token between the cookie and the core."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from http_bridge.bodies import bad_field, json_response, small_json
from http_bridge.calls import call_core, failed_response, unix
from http_bridge.cookies import clear_session_cookie, session_object, set_session_cookie
from http_bridge.core_client import stubs
from http_bridge.key_routes import key_object
from kyma.accounting.v1 import session_service_pb2 as session_pb
from kyma.accounting.v1 import signup_service_pb2 as signup_pb
from kyma.contract.v1.constants import MetadataKey

MAX_BODY = 16 * 1024
# Clients may identify their device; Kyma records it as a sign-up signal for abuse review.
FINGERPRINT_HEADER = "x-client-fingerprint"

router = APIRouter()


def _strings(body: dict[str, Any], *names: str) -> dict[str, str] | Response:
    """The named string fields of a JSON body (absent or null: ""), or the 400 to answer."""
    values = {}
    for name in names:
        value = body.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            return bad_field(name, f"'{name}' must be a string.")
        values[name] = value
    return values


async def _fields(request: Request, *names: str) -> dict[str, str] | Response:
    body = await small_json(request, MAX_BODY)
    return body if isinstance(body, Response) else _strings(body, *names)


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
        request, stubs(request).signup.StartSignup, message, extra=_signals(request), session=False
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
    body = await small_json(request, MAX_BODY)
    if isinstance(body, Response):
        return body
    fields = _strings(body, "email", "code", "accepted_terms_version")
    if isinstance(fields, Response):
        return fields
    session = body.get("session", False)
    if not isinstance(session, bool):
        return bad_field("session", "'session' must be true or false.")
    message = signup_pb.CompleteSignupRequest(
        email=fields["email"],
        code=fields["code"],
        session=session,
        accepted_terms_version=fields["accepted_terms_version"],
    )
    reply, headers = await call_core(
        request,
        stubs(request).signup.CompleteSignup,
        message,
        extra=_signals(request),
        session=False,
    )
    if session:
        response = json_response(session_object(reply.session), headers)
        set_session_cookie(request, response, reply.session_token, reply.session)
        return response
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


@router.post("/v1/auth/signin")
@failed_response
async def signin(request: Request) -> Response:
    fields = await _fields(request, "email")
    if isinstance(fields, Response):
        return fields
    reply, headers = await call_core(
        request,
        stubs(request).sessions.StartSignIn,
        session_pb.StartSignInRequest(email=fields["email"]),
        extra=_signals(request),
        session=False,
    )
    return json_response(
        {
            "object": "signin",
            "status": "code_sent",
            "email": fields["email"].strip(),
            "expires_in": reply.expires_in_seconds,
        },
        headers,
    )


@router.post("/v1/auth/signin/verify")
@failed_response
async def signin_verify(request: Request) -> Response:
    fields = await _fields(request, "email", "code")
    if isinstance(fields, Response):
        return fields
    # The cookie the browser had (if any) goes along only so the core can end that session:
    # the session made here is always new.
    reply, headers = await call_core(
        request,
        stubs(request).sessions.CompleteSignIn,
        session_pb.CompleteSignInRequest(email=fields["email"], code=fields["code"]),
        extra=_signals(request),
    )
    response = json_response(session_object(reply.session), headers)
    set_session_cookie(request, response, reply.session_token, reply.session)
    return response


@router.get("/v1/auth/session")
@failed_response
async def get_session(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).sessions.GetSession, session_pb.GetSessionRequest()
    )
    return json_response(session_object(reply.session), headers)


@router.post("/v1/auth/signout")
@failed_response
async def signout(request: Request) -> Response:
    _, headers = await call_core(
        request, stubs(request).sessions.EndSession, session_pb.EndSessionRequest()
    )
    response = json_response({"object": "session.ended", "count": 1}, headers)
    clear_session_cookie(request, response)
    return response


@router.post("/v1/auth/signout-everywhere")
@failed_response
async def signout_everywhere(request: Request) -> Response:
    reply, headers = await call_core(
        request,
        stubs(request).sessions.EndAllSessions,
        session_pb.EndAllSessionsRequest(),
        extra=_signals(request),
    )
    response = json_response({"object": "session.ended", "count": reply.ended}, headers)
    clear_session_cookie(request, response)
    return response


@router.get("/v1/terms")
@failed_response
async def get_terms(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).signup.GetTerms, signup_pb.GetTermsRequest(), session=False
    )
    return json_response(
        {
            "object": "terms",
            "version": reply.version,
            "published_at": unix(reply.published_at),
            "text": reply.text,
        },
        headers,
    )
