"""The console's pages: HTML shells rendered from Jinja2 templates, one script each.

A page holds no account data. Its script (static/js/) reads and changes the account through
the public HTTP API with the session cookie — the console can do nothing a person with curl
could not — so the bridge stays thin: it renders templates and serves assets, and never calls
the core for a page.

- Pages for a signed-in person answer a request that carries no session cookie at all with a
  redirect to `/signin?next=…`; whether a cookie is still good is the API's to say, and the
  page's script goes to `/signin` when the API answers 401.
- Every page is sent with a Content-Security-Policy that allows scripts, styles and
  connections from this origin only (no inline script or style), and may not be framed.
- Stripe sends the buyer back to `/console/billing?checkout=success|cancelled[&session_id=…]`
  (or, the older defaults, `/billing/success?session_id=…` and `/billing/cancelled`): each
  redirects to the console page that shows the outcome.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from http_bridge.console.assets import URL_PREFIX, Assets
from http_bridge.cookies import COOKIE
from http_bridge.core_client import new_request_id
from http_bridge.errors import OpenAIError

TEMPLATES_DIR = pathlib.Path(__file__).parent / "templates"
SESSION_COOKIE = COOKIE
# What Stripe puts in {CHECKOUT_SESSION_ID}; anything else is not passed on to the page.
_CHECKOUT_SESSION_ID = re.compile(r"cs_[A-Za-z0-9_]{1,250}")
_REFERRAL_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # A referral code or a Checkout Session id in a URL is nobody else's business.
    "referrer-policy": "same-origin",
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class Page:
    path: str
    template: str
    title: str
    signed_in: bool  # needs a session; shown in the signed-in navigation
    nav: str | None = None  # its label in the navigation, if it has one


PAGES = (
    Page("/", "dashboard.html", "Dashboard", True, "Dashboard"),
    Page("/keys", "keys.html", "API keys", True, "Keys"),
    Page("/billing", "billing.html", "Buy credits", True, "Buy credits"),
    Page("/referrals", "referrals.html", "Referrals", True, "Referrals"),
    Page("/playground", "playground.html", "Playground", True, "Playground"),
    Page("/account", "account.html", "Account", True, "Account"),
    Page("/signup", "signup.html", "Sign up", False),
    Page("/signin", "signin.html", "Sign in", False),
    Page("/terms", "terms.html", "Terms of service", False),
    Page("/status", "status.html", "Status", False),
)


def _environment(assets: Assets) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = assets.url
    env.globals["nav"] = [p for p in PAGES if p.nav]
    return env


def checkout_returned(request: Request) -> Response:
    """Back from Stripe Checkout: to the dashboard, which waits for the purchase to land
    (`purchase` names the Checkout Session when Stripe said which; else the page knows it)."""
    session_id = request.query_params.get("session_id", "")
    known = _CHECKOUT_SESSION_ID.fullmatch(session_id)
    return RedirectResponse("/?purchase=" + (quote(session_id) if known else ""), 303, PAGE_HEADERS)


def console_router(assets: Assets | None = None) -> APIRouter:
    """The routes of the console's pages and assets."""
    assets = assets or Assets()
    env = _environment(assets)
    router = APIRouter()

    def render(page: Page, request: Request, **context: object) -> Response:
        html = env.get_template(page.template).render(
            page=page,
            # A public page offers the way back to the dashboard to a signed-in browser.
            has_session=bool(request.cookies.get(SESSION_COOKIE)),
            current=request.url.path,
            script=page.template.removesuffix(".html"),
            **context,
        )
        return HTMLResponse(html, headers=PAGE_HEADERS)

    def add(page: Page) -> None:
        async def show(request: Request) -> Response:
            if page.signed_in and not request.cookies.get(SESSION_COOKIE):
                return RedirectResponse(
                    "/signin?" + urlencode({"next": request.url.path}), 303, PAGE_HEADERS
                )
            if page.path == "/signup":
                ref = request.query_params.get("ref", "").strip()
                return render(page, request, ref=ref if _REFERRAL_CODE.fullmatch(ref) else "")
            return render(page, request)

        router.add_api_route(page.path, show, methods=["GET"], include_in_schema=False)

    for page in PAGES:
        add(page)

    @router.get("/console/billing", include_in_schema=False)
    async def checkout_outcome(request: Request) -> Response:
        outcome = request.query_params.get("checkout")
        if outcome == "success":
            return checkout_returned(request)
        if outcome == "cancelled":
            return RedirectResponse("/billing?cancelled=1", 303, PAGE_HEADERS)
        return RedirectResponse("/billing", 303, PAGE_HEADERS)

    @router.get("/billing/success", include_in_schema=False)
    async def billing_success(request: Request) -> Response:
        return checkout_returned(request)

    @router.get("/billing/cancelled", include_in_schema=False)
    async def billing_cancelled() -> Response:
        return RedirectResponse("/billing?cancelled=1", 303, PAGE_HEADERS)

    @router.get(URL_PREFIX + "{name:path}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        found = assets.response(name, request)
        if found is None:
            return OpenAIError(404, "No such file in the console's assets.").response(
                {"x-request-id": new_request_id()}
            )
        return found

    return router
