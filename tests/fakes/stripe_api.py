"""A fake of the slice of Stripe that Kyma uses, for tests.

- `FakeStripeApi`: a raw ASGI app serving `POST /v1/checkout/sessions` the way Stripe does
  (form-encoded parameters, `Authorization: Bearer sk_test_…`, a `checkout.session` object in
  reply) and recording every request; `running_fake_stripe()` serves it with uvicorn on
  127.0.0.1, port 0, in the caller's event loop.
- `checkout_session()`, `webhook_event()` and `sign()`: webhook deliveries as Stripe signs them
  (`Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>" under the endpoint secret>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_KEY = "sk_test_kyma_fake_stripe_key"
WEBHOOK_SECRET = "whsec_kyma_fake_signing_secret"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]  # Stripe's flattened form keys, e.g. "metadata[account_id]"


@dataclass
class FakeStripeApi:
    api_key: str = API_KEY
    requests: list[RecordedRequest] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set to an HTTP status to make the next calls fail the way Stripe fails.
    fail_with: int | None = None

    def reset(self) -> None:
        self.requests.clear()
        self.sessions.clear()
        self.fail_with = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        self.requests.append(RecordedRequest(scope["method"], scope["path"], headers, form))
        status, reply = self._answer(scope["method"], scope["path"], headers, form)
        await _send_json(send, status, reply)

    def _answer(
        self, method: str, path: str, headers: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            shown = headers.get("authorization", "").removeprefix("Bearer ")[-4:]
            # Stripe quotes the key's tail in this message: callers must not pass it on.
            return 401, _error(
                "invalid_request_error", f"Invalid API Key provided: sk_test_****{shown}"
            )
        if self.fail_with is not None:
            return self.fail_with, _error("api_error", "Something went wrong on Stripe's end.")
        if (method, path) != ("POST", "/v1/checkout/sessions"):
            return 404, _error(
                "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
            )
        missing = [
            name
            for name in ("mode", "line_items[0][price_data][unit_amount]", "success_url")
            if name not in form
        ]
        if missing:
            return 400, _error("invalid_request_error", f"Missing required param: {missing[0]}.")
        session = self._new_session(form)
        self.sessions[session["id"]] = session
        return 200, session

    @staticmethod
    def _new_session(form: dict[str, str]) -> dict[str, Any]:
        unit_amount = int(form["line_items[0][price_data][unit_amount]"])
        amount = unit_amount * int(form.get("line_items[0][quantity]", "1"))
        metadata = {
            key[len("metadata[") : -1]: value
            for key, value in form.items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        session_id = "cs_test_" + secrets.token_hex(28)
        return checkout_session(
            session_id=session_id,
            account_id=form.get("client_reference_id"),
            amount_total=amount,
            currency=form.get("line_items[0][price_data][currency]", "usd"),
            metadata=metadata,
            customer_email=form.get("customer_email"),
            success_url=form.get("success_url"),
            cancel_url=form.get("cancel_url"),
            url=f"https://checkout.stripe.com/c/pay/{session_id}#fid" + secrets.token_hex(8),
        )


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


async def _send_json(send: Send, status: int, reply: dict[str, Any]) -> None:
    body = json.dumps(reply, indent=2).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", f"req_{secrets.token_hex(7)}".encode()),
    ]
    if status >= 500:
        # Stripe says this when a retry would not help; it also keeps failure tests fast.
        headers.append((b"stripe-should-retry", b"false"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass
class RunningFakeStripe:
    api: FakeStripeApi
    url: str  # e.g. http://127.0.0.1:PORT


@contextlib.asynccontextmanager
async def running_fake_stripe(api: FakeStripeApi | None = None) -> AsyncIterator[RunningFakeStripe]:
    api = api or FakeStripeApi()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(api, log_level="warning", access_log=False, lifespan="on")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()  # raises why it did not start
        await asyncio.sleep(0.005)
    try:
        yield RunningFakeStripe(api=api, url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        await serving
        sock.close()


def checkout_session(
    *,
    session_id: str | None = None,
    account_id: str | None,
    amount_total: int | None,
    currency: str = "usd",
    payment_status: str = "unpaid",
    status: str = "open",
    metadata: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `checkout.session` object shaped like Stripe's (the fields Kyma reads, and some more)."""
    session_id = session_id or "cs_test_" + secrets.token_hex(28)
    now = int(time.time())
    return {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "cancel_url": None,
        "client_reference_id": account_id,
        "created": now,
        "currency": currency,
        "customer": None,
        "customer_email": None,
        "expires_at": now + 86_400,
        "livemode": False,
        "metadata": metadata if metadata is not None else {"account_id": account_id or ""},
        "mode": "payment",
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "status": status,
        "success_url": None,
        "url": None,
        **extra,
    }


def webhook_event(
    event_type: str, session: dict[str, Any], **session_changes: Any
) -> dict[str, Any]:
    """A Stripe `event` delivering `session` (with `session_changes` applied)."""
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": int(time.time()),
        "data": {"object": {**session, **session_changes}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def sign(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for `payload`, signed at `timestamp` (default: now)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signed_delivery(
    event: dict[str, Any], secret: str, *, timestamp: int | None = None
) -> tuple[bytes, str]:
    """(body, Stripe-Signature header) of one webhook delivery, serialised as Stripe does."""
    payload = json.dumps(event, indent=2).encode()
    return payload, sign(payload, secret, timestamp=timestamp)
