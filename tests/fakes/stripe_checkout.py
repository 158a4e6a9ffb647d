"""A fake of Stripe's hosted Checkout page, for browser tests.

Kyma sends the buyer to the `url` of the Checkout Session it created on the fake Stripe API
(`stripe_api.FakeStripeApi`), which is on https://checkout.stripe.com. A browser test routes
that origin here (Playwright's `page.route`): the page shows the session's amount and a Pay
button; paying marks the session paid and sends the browser to the session's `success_url`,
as Stripe does. The webhook is NOT delivered here: the test delivers it when it chooses
(`paid_event`), so it can show what the console does while the payment is unconfirmed.
"""

from __future__ import annotations

import html
from typing import Any

from playwright.async_api import Route

from tests.fakes.stripe_api import FakeStripeApi, webhook_event

CHECKOUT_ORIGIN = "https://checkout.stripe.com"


class FakeCheckoutPage:
    def __init__(self, api: FakeStripeApi) -> None:
        self.api = api
        self.paid: list[str] = []  # session ids, in the order they were paid

    def _session(self, url: str) -> dict[str, Any] | None:
        path = url.split("#", 1)[0].split("?", 1)[0]
        session_id = path.rstrip("/").rsplit("/", 1)[-1]
        return self.api.sessions.get(session_id)

    async def handle(self, route: Route) -> None:
        request = route.request
        session = self._session(request.url)
        if session is None:
            await route.fulfill(status=404, body="No such Checkout Session.")
            return
        if request.method == "POST":
            session.update(status="complete", payment_status="paid")
            self.paid.append(session["id"])
            back = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
            await route.fulfill(status=303, headers={"location": back})
            return
        amount = f"${session['amount_total'] / 100:,.2f}"
        page = f"""<!doctype html><html lang="en"><head><title>Checkout · Fake Stripe</title></head>
<body><main><h1>Pay Kyma {html.escape(amount)}</h1>
<form method="post"><button type="submit">Pay {html.escape(amount)}</button></form>
<p><a href="{html.escape(session["cancel_url"] or "/")}">Back to Kyma</a></p></main></body></html>"""
        await route.fulfill(status=200, content_type="text/html", body=page)

    def paid_event(self, session_id: str) -> dict[str, Any]:
        """The `checkout.session.completed` event Stripe sends for a paid session."""
        return webhook_event("checkout.session.completed", self.api.sessions[session_id])
