"""The web session's cookie: set when the core makes a session, cleared when it ends, and read
only from requests the browser made from the bridge's own origin. Everything else about
sessions — what a token is worth, CSRF, expiry — is the core's.

The cookie is HttpOnly (page scripts never see the token), SameSite=Lax (browsers leave it off
other sites' subrequests and form posts), Secure when the request came over TLS or Kyma's
public URL is https, and lasts the session's absolute lifetime. A request that a page of
another origin makes — it names that origin in `Origin`, or the browser says
`Sec-Fetch-Site: cross-site` for anything but a top-level navigation — is treated as carrying
no cookie at all, so a session can never be used from another site, whatever CORS allows. (A
person following a link, or coming back from Stripe, navigates: that request keeps the
cookie; it can change nothing, since changes need the CSRF token.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb

COOKIE = "kyma_session"
CSRF_HEADER = "x-csrf-token"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """Whether the request may be the bridge's own pages' (a request that says nothing — not a
    browser, or a same-origin GET — counts as its own; so does a top-level navigation)."""
    headers = request.headers
    if (
        headers.get("sec-fetch-site", "").lower() == "cross-site"
        and headers.get("sec-fetch-mode", "").lower() != "navigate"
    ):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {_origin(str(request.base_url)), _origin(request.app.state.settings.public_base_url)}
    return origin.rstrip("/").lower() in own


def session_token(request: Request) -> str | None:
    """The session cookie's value, when the request may use it."""
    token = request.cookies.get(COOKIE)
    if not token or not same_origin(request):
        return None
    if not (token.isascii() and token.isprintable()):
        return None  # cannot be a token; gRPC metadata could not carry it either
    return token


def csrf_header(request: Request) -> str | None:
    value = request.headers.get(CSRF_HEADER)
    if value is None or not (value.isascii() and value.isprintable()):
        return None
    return value


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.public_base_url.startswith(
        "https:"
    )


def set_session_cookie(
    request: Request, response: Response, token: str, session: accounting_pb.Session
) -> None:
    """The cookie of a session just made: it lasts the session's lifetime."""
    max_age = max(0, session.expires_at.seconds - session.created_at.seconds)
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))


def session_object(session: accounting_pb.Session) -> dict[str, Any]:
    return {
        "object": "session",
        "id": session.id,
        "account_id": session.account_id,
        "email": session.email,
        "csrf_token": session.csrf_token,
        "created_at": session.created_at.seconds or None,
        "expires_at": session.expires_at.seconds or None,
    }
