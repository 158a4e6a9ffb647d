"""The console in a real browser (headless Chromium), as a person uses it: one long journey
from a referral link to signing in again, and the checks around it (accessibility with
axe-core on every main page, keyboard use, a phone-sized screen)."""

from __future__ import annotations

import asyncio
import re
import secrets
from decimal import ROUND_CEILING, Decimal
from typing import Any

import openai
import pytest
from playwright.async_api import expect

from tests.conftest import ISSUED_KEYS, Kyma
from tests.fakes.stripe_checkout import CHECKOUT_ORIGIN, FakeCheckoutPage
from tests.http_bridge.console.conftest import Ui, deliver_webhook, mailed_code, open_ui

# The stripe library's own httpx call warns; see tests/integration/test_billing_http.py.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"
)

# test-model's prices in the test catalogue (tests/conftest.py), USD per million tokens.
INPUT_PRICE, OUTPUT_PRICE = Decimal("1.00"), Decimal("2.00")


def cost_of(prompt_tokens: int, completion_tokens: int) -> Decimal:
    def side(tokens: int, price: Decimal) -> Decimal:
        return (tokens * price / 1_000_000).quantize(Decimal("1e-9"), rounding=ROUND_CEILING)

    return side(prompt_tokens, INPUT_PRICE) + side(completion_tokens, OUTPUT_PRICE)


def shown(amount: Decimal) -> str:
    """An amount as the console shows it: every significant digit, at least cents."""
    text = f"{amount:.9f}".rstrip("0")
    whole, fraction = text.split(".")
    return f"${int(whole):,}.{fraction.ljust(2, '0')}"


async def account_of(kyma: Kyma, key: str) -> dict:
    async with kyma.http() as http:
        reply = await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def logged(kyma: Kyma, key: str, request_id: str) -> None:
    """Wait until the request's log row is written (in batches, after the answer)."""
    async with kyma.http() as http:
        for _ in range(300):
            reply = await http.get(
                "/v1/account/requests", headers={"authorization": f"Bearer {key}"}
            )
            if any(row["id"] == request_id for row in reply.json()["data"]):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{request_id} was never logged")


async def sign_in(ui: Ui, address: str, mails_before: int) -> None:
    """Sign in by code, with the keyboard only (focus follows the form), from the sign-in page
    the browser is on (which may say where to go next), or a fresh one."""
    page = ui.page
    if "/signin" in page.url:
        await ui.ready("signin")
    else:
        await ui.visit("/signin", "signin")
    await ui.expect_accessible()
    # The first Tab reaches the skip link, and focus is visible.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    for _ in range(20):
        if await page.evaluate("document.activeElement.id") == "signin-email":
            break
        await page.keyboard.press("Tab")
    await page.keyboard.type(address)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Check your mail")).to_be_focused()
    code = await mailed_code(ui.kyma, address, mails_before)
    await page.keyboard.press("Tab")
    await page.keyboard.type(code)
    await page.keyboard.press("Enter")


async def test_a_person_from_a_referral_link_to_signing_in_again(browser: Ui) -> None:
    ui, kyma, page = browser, browser.kyma, browser.page

    # Someone shares the referral link Kyma gave them.
    _, referrer_key = await kyma.create_account()
    link = (await account_of(kyma, referrer_key))["referral_link"]
    code = link.rsplit("=", 1)[1]
    assert link == f"{kyma.http_url}/signup?ref={code}"

    # Sign up through it: the code is filled in; the terms must be accepted.
    address = f"ada-{secrets.token_hex(4)}@example.com"
    await ui.visit(link, "signup")
    await expect(page.get_by_label("Referral code")).to_have_value(code)
    await ui.expect_accessible()
    await page.get_by_label("Email address").fill(address)
    await page.get_by_role("button", name="Send me a code").click()
    await expect(page.get_by_role("alert")).to_contain_text("accept the terms")
    await page.get_by_label("I accept the terms of service").check()
    await page.get_by_role("button", name="Send me a code").click()
    await page.get_by_label("Code", exact=True).fill(await mailed_code(kyma, address, 0))
    await page.get_by_role("button", name="Create my account").click()

    # The dashboard, with the welcome bonus.
    await page.wait_for_url(kyma.http_url + "/")
    await ui.ready("dashboard")
    await expect(page.locator("#balance")).to_have_text("$0.50")
    await expect(page.locator("#available")).to_have_text("$0.50")
    await expect(page.locator("#tier")).to_have_text("0")
    await expect(page.locator("#ledger-table tbody")).to_contain_text("Welcome bonus")
    await ui.expect_accessible()

    # A key, shown once, copied with the button.
    await ui.visit("/keys", "keys")
    await ui.expect_accessible()
    await page.get_by_label("Name").fill("laptop")
    await page.get_by_role("button", name="Create key").click()
    secret_box = page.locator("#new-key-secret")
    await expect(secret_box).to_have_text(re.compile(r"^ky_\w+$"))
    secret = (await secret_box.text_content()) or ""
    ISSUED_KEYS.add(secret)
    await page.get_by_role("button", name="Copy", exact=True).click()
    await expect(page.locator("#copy-new-key-status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await ui.snapshot("keys-created")
    await page.get_by_role("button", name="I have saved it").click()
    await expect(secret_box).to_be_hidden()
    await expect(page.locator("#key-list")).to_contain_text("laptop")

    # A model call with the openai SDK and that key...
    async with kyma.client(secret) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
    reply = raw.parse()
    assert reply.usage is not None
    request_id = raw.headers["x-request-id"]
    cost = cost_of(reply.usage.prompt_tokens, reply.usage.completion_tokens)
    await kyma.settled()
    await logged(kyma, secret, request_id)

    # ...is on the dashboard: the request with its cost, the chart and its table, the ledger.
    await ui.visit("/", "dashboard-after-call")
    row = page.locator("#requests-table tbody tr", has_text=request_id)
    await expect(row).to_contain_text("test-model")
    await expect(row).to_contain_text(shown(cost))
    charted = await page.evaluate(
        """() => Chart.getChart("usage-chart").data.datasets.map((d) => [d.label, d.exact])"""
    )
    assert [label for label, _ in charted] == ["test-model"]
    assert sum(Decimal(v) for _, values in charted for v in values) == cost
    await expect(page.locator('#usage-table [data-total="cost"]')).to_have_text(shown(cost))
    await expect(page.locator("#usage-reconciled")).to_contain_text(
        f"add up to the same {shown(cost)}"
    )
    await expect(page.locator("#balance")).to_have_text(shown(Decimal("0.5") - cost))

    # Buy credits: Stripe Checkout (the fake), back to the dashboard, credited once the
    # webhook has landed, and the tier rises.
    checkout = FakeCheckoutPage(kyma.stripe.api)  # type: ignore[attr-defined]
    await page.route(CHECKOUT_ORIGIN + "/**", checkout.handle)
    await ui.visit("/billing", "billing")
    await ui.expect_accessible()
    await page.get_by_label("Amount in USD").fill("25")
    await page.get_by_role("button", name="Continue to payment").click()
    await page.get_by_role("link", name="Back to Kyma").click()  # changed their mind
    await page.wait_for_url(kyma.http_url + "/billing?cancelled=1")
    await expect(page.locator("#checkout-cancelled")).to_contain_text("nothing was charged")
    await page.get_by_label("Amount in USD").fill("25")
    await page.get_by_role("button", name="Continue to payment").click()
    await page.get_by_role("button", name="Pay $25.00").click()
    await page.wait_for_url(re.compile(re.escape(kyma.http_url) + r"/\?purchase="))
    status = page.locator("#purchase-status")
    await expect(status).to_contain_text("Waiting for Stripe")
    await ui.snapshot("dashboard-awaiting-payment")
    (session_id,) = checkout.paid
    landed = await deliver_webhook(kyma, checkout.paid_event(session_id))
    assert landed.json()["outcome"] == "credited"
    await expect(status).to_contain_text("Your purchase of $25.00 is credited.")
    await expect(page.locator("#balance")).to_have_text(shown(Decimal("25.5") - cost))
    await expect(page.locator("#purchased")).to_have_text("$25.00")
    await expect(page.locator("#tier")).to_have_text("1")
    await expect(page.locator("#ledger-table tbody")).to_contain_text("Purchase")
    await ui.snapshot("dashboard-credited")

    # The playground: a streamed reply with its tokens, cost and rate-limit headers.
    await ui.visit("/playground", "playground")
    await ui.expect_accessible()
    await page.get_by_label("API key").fill(secret)
    await page.get_by_label("API key").press("Tab")
    await page.get_by_label("Model", exact=True).select_option("test-model")
    await page.get_by_label("Max tokens per reply").fill("8")
    await page.get_by_label("Message").fill("Tell me a story")
    await page.get_by_role("button", name="Send").click()
    answer = page.locator(".message.assistant").last
    await expect(answer.locator(".meta")).to_contain_text("completion tokens")
    await expect(answer.locator(".meta")).to_contain_text("cost $")
    await expect(page.locator("#ratelimit-table")).to_contain_text("x-ratelimit-remaining-requests")
    await ui.snapshot("playground-replied")

    # A cap on the key: a request that could cost more than is left under it is refused.
    await ui.visit("/keys", "keys-before-cap")
    card = page.locator(".key-card", has_text="laptop")
    await card.get_by_text("Change limits of “laptop”").click()
    await card.get_by_label("Spend cap in USD").fill("0.001")
    await card.get_by_label("The cap resets").select_option("daily")
    await card.get_by_role("button", name="Save limits").click()
    await expect(page.locator("#flash")).to_contain_text("The limits of “laptop” are saved.")
    card = page.locator(".key-card", has_text="laptop")
    await expect(card).to_contain_text("of $0.001 spent, resets every day")
    await ui.visit("/playground", "playground-capped")
    await page.get_by_label("API key").fill(secret)
    await page.get_by_label("Model", exact=True).select_option("test-model")
    await page.get_by_label("Max tokens per reply").fill("1000")  # up to $0.002: over the cap
    await page.get_by_label("Message").fill("A long story, please")
    await page.get_by_role("button", name="Send").click()
    refused = page.locator(".message.assistant.error").last
    await expect(refused.locator(".meta")).to_contain_text("HTTP 403 · key_spend_cap_reached")

    # Revoke it: the key stops working.
    await ui.visit("/keys", "keys-before-revoke")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Revoke “laptop”").click()
    await expect(page.locator(".key-card.revoked", has_text="laptop")).to_contain_text("Revoked")
    async with kyma.client(secret) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()

    # The other pages, each checked for accessibility.
    for path in ("/referrals", "/account", "/terms", "/status"):
        await ui.visit(path)
        await ui.expect_accessible()
        if path == "/terms":
            await expect(page.locator("#terms-text")).to_contain_text("Kyma")
        if path == "/account":
            await expect(page.locator("#email")).to_have_text(address)
            await expect(page.locator("#terms-accepted")).to_contain_text("Version 2026-04-07")

    # Sign out; the console is closed to this browser until it signs in again, by code.
    await ui.visit("/account")
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await page.wait_for_url(re.compile(r"/signin\?signed_out=1$"))
    await page.goto(kyma.http_url + "/keys")
    await page.wait_for_url(re.compile(r"/signin\?next=%2Fkeys$"))
    await sign_in(ui, address, mails_before=1)
    await page.wait_for_url(kyma.http_url + "/keys")
    await ui.ready("keys-signed-in-again")
    await expect(page.locator(".key-card.revoked")).to_contain_text("laptop")


async def test_a_referrer_sees_each_referral_and_its_progress(browser: Ui) -> None:
    ui, kyma, page = browser, browser.kyma, browser.page
    referrer = f"grace-{secrets.token_hex(4)}@example.com"
    _, referrer_key = await kyma.create_account(referrer)
    code = (await account_of(kyma, referrer_key))["referral_code"]
    referred = f"linus-{secrets.token_hex(4)}@example.com"
    async with kyma.http() as http:
        started = await http.post(
            "/v1/auth/signup", json={"email": referred, "referral_code": code}
        )
        assert started.status_code == 200, started.text
        made = await http.post(
            "/v1/auth/verify",
            json={"email": referred, "code": await mailed_code(kyma, referred, 0)},
        )
        assert made.status_code == 201, made.text
    ISSUED_KEYS.add(made.json()["api_key"])

    await sign_in(ui, referrer, mails_before=0)
    await page.wait_for_url(kyma.http_url + "/")
    await ui.visit("/referrals", "referrals")
    await expect(page.locator("#referral-link")).to_have_value(f"{kyma.http_url}/signup?ref={code}")
    row = page.locator("#referrals-table tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("0 of 1,000,000 tokens")
    await expect(row.locator("progress")).to_have_attribute("max", "1000000")
    await ui.expect_accessible()
    await page.get_by_role("button", name="Copy link").click()
    assert await page.evaluate("navigator.clipboard.readText()") == (
        f"{kyma.http_url}/signup?ref={code}"
    )


async def test_the_main_pages_fit_a_phone_screen(browser: Ui) -> None:
    ui, kyma, page = browser, browser.kyma, browser.page
    await page.set_viewport_size({"width": 360, "height": 740})
    await ui.visit("/signup", "phone-signup")
    address = f"phone-{secrets.token_hex(4)}@example.com"
    await kyma.create_account(address)
    await sign_in(ui, address, mails_before=0)
    await page.wait_for_url(kyma.http_url + "/")
    for path in ("/", "/keys", "/billing", "/referrals", "/playground", "/account", "/status"):
        await ui.visit(path, "phone" + path.replace("/", "-"))
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone's screen"


async def test_another_origin_cannot_use_the_session(browser: Ui) -> None:
    """A page on another origin of the same site (another port of 127.0.0.1: the browser sends
    the SameSite cookie along) posts to the API with the person's session: nothing happens."""
    ui, kyma, page = browser, browser.kyma, browser.page
    address = f"eve-target-{secrets.token_hex(4)}@example.com"
    await kyma.create_account(address)
    await sign_in(ui, address, mails_before=0)
    await page.wait_for_url(kyma.http_url + "/")

    attacker = "http://127.0.0.1:9"  # never contacted: the browser is answered by the route
    api = kyma.http_url + "/v1/account/keys"
    attack = f"""<!doctype html><html lang="en"><head><title>Win a prize</title></head><body>
<form id="form" method="post" action="{api}" enctype="text/plain">
<input name='{{"name":"by-form","x":"' value='"}}'></form>
<script>
fetch("{api}", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"content-type": "text/plain"}}, body: JSON.stringify({{name: "by-fetch"}})}})
  .catch(() => {{}})  // its answer is opaque to this page anyway
  .finally(() => document.getElementById("form").submit());
</script></body></html>"""

    async def serve(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=attack)

    await page.route(attacker + "/**", serve)
    await page.goto(attacker + "/prize")
    await page.wait_for_url(api)  # the form was posted, and answered
    assert '"error"' in ((await page.text_content("body")) or "")  # refused

    await ui.visit("/keys")
    names = await page.evaluate(
        """async () => (await (await fetch("/v1/account/keys")).json()).data.map((k) => k.name)"""
    )
    assert not {"by-form", "by-fetch"} & set(names), names


async def test_terms_alert_and_signing_out_everywhere(browser: Ui, chromium: Any) -> None:
    """An account made by an operator has accepted no terms: the dashboard says so until the
    person accepts them; the low-balance alert is kept; signing out everywhere ends the
    session of another browser too."""
    ui, kyma, page = browser, browser.kyma, browser.page
    address = f"grace-{secrets.token_hex(4)}@example.com"
    await kyma.create_account(address)
    await sign_in(ui, address, mails_before=0)
    await page.wait_for_url(kyma.http_url + "/")
    await ui.ready("dashboard-terms")
    notices = page.locator("#notices")
    await expect(notices).to_be_visible()
    await ui.expect_accessible()
    await notices.get_by_role("button", name="Accept the terms (version 2026-04-07)").click()
    await expect(page.locator("#flash")).to_contain_text("you accepted the current terms")
    await expect(notices).to_be_hidden()

    await ui.visit("/account", "account")
    await expect(page.locator("#terms-accepted")).to_contain_text("Version 2026-04-07")
    await page.get_by_label("Email me when my available balance falls below (USD)").fill("5")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#flash")).to_contain_text("falls below $5.")
    await ui.visit("/account", "account-saved")
    await expect(page.locator("#threshold")).to_have_value("5")

    other = await open_ui(chromium, kyma)  # the same person on another device
    try:
        await sign_in(other, address, mails_before=1)
        await other.page.wait_for_url(kyma.http_url + "/")
        await other.ready()

        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Sign out everywhere").click()
        await page.wait_for_url(re.compile(r"/signin\?signed_out=1$"))
        await other.page.goto(kyma.http_url + "/keys")
        await other.page.wait_for_url(re.compile(r"/signin\?next=%2Fkeys$"))
        assert not other.problems, other.problems
    finally:
        await other.context.close()
