"""Browser tests of the console: Debian's Chromium (headless), driven by Playwright for Python.

- `chromium`: one browser for the session, or a skip saying why there is none (Playwright's
  own browser download cannot work here: the system's /usr/bin/chromium is used, installed by
  scripts/setup-system).
- `console_kyma`: a Kyma whose bridge address is known before it starts (links it gives out
  and Stripe's return URLs point at it), with the fake Stripe API.
- `browser`: a fresh browser context and page per test (`Ui`), with axe-core injected into
  every page; a test fails on any script error or Content-Security-Policy violation, and on
  failure the last screenshot of each page it visited is written to test-output/console/
  (always, with KYMA_TEST_SCREENSHOTS=always).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import pathlib
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.conftest import Kyma, Upstream, bound_socket, running_kyma
from tests.fakes.stripe_api import API_KEY, WEBHOOK_SECRET, running_fake_stripe, signed_delivery

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DATA = pathlib.Path(__file__).parent / "data"
OUTPUT = pathlib.Path(__file__).parents[3] / "test-output" / "console"
# How long a page may take to show what the test waits for: a liveness bound on a loaded
# machine, never a measure of speed.
PATIENCE_MS = 30_000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest_asyncio.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            "Chromium is not installed at /usr/bin/chromium (Debian's `chromium` package; "
            "scripts/setup-system installs it when run as root with apt-get)"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: ./scripts/setup --dev")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(scope="module")
async def console_kyma(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Kyma]:
    sock = bound_socket()
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with running_fake_stripe() as stripe_api:
        async with running_kyma(
            tmp_path_factory.mktemp("console"),
            None,
            upstream,
            "sqlite",
            sock=sock,
            public_base_url=origin,
            stripe_secret_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_api.url,
            # Stripe's return URLs are left to their defaults: the console's, on this origin.
        ) as kyma:
            kyma.stripe = stripe_api  # type: ignore[attr-defined]
            yield kyma
            await kyma.verify_ledger()


class Ui:
    """One person's browser on the console."""

    def __init__(self, kyma: Kyma, context: Any, page: Any) -> None:
        self.kyma = kyma
        self.context = context
        self.page = page
        self.shots: dict[str, bytes] = {}
        self.problems: list[str] = []
        page.set_default_timeout(PATIENCE_MS)
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.problems.append(f"CSP violation: {message.text}")

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.kyma.http_url + path

    async def ready(self, name: str | None = None) -> None:
        """Wait until the page's script has loaded what it shows; keep its screenshot."""
        await self.page.wait_for_selector("body[data-ready]", state="attached")
        state = await self.page.get_attribute("body", "data-ready")
        flash = await self.page.text_content("#flash")
        assert state == "ok", f"{self.page.url} failed to load: {flash}"
        await self.snapshot(name)

    async def snapshot(self, name: str | None = None) -> None:
        name = name or (self.page.url.split("/", 3)[-1].split("?")[0] or "dashboard")
        self.shots[name] = await self.page.screenshot(full_page=True)

    async def visit(self, path: str, name: str | None = None) -> None:
        await self.page.goto(self.url(path))
        await self.ready(name)

    async def accessibility_problems(self) -> list[str]:
        """axe-core's serious and critical violations on the page as it is now."""
        found = await self.page.evaluate(
            """async () => {
                const result = await axe.run(document, {resultTypes: ["violations"]});
                return result.violations
                    .filter((v) => v.impact === "serious" || v.impact === "critical")
                    .map((v) => `${v.impact} ${v.id}: ${v.help} at ${
                        v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
            }"""
        )
        return [f"{self.page.url}: {problem}" for problem in found]

    async def expect_accessible(self) -> None:
        problems = await self.accessibility_problems()
        assert not problems, "\n".join(problems)

    def save(self, test_name: str) -> pathlib.Path:
        folder = OUTPUT / re.sub(r"[^\w.-]+", "_", test_name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, png in self.shots.items():
            (folder / (re.sub(r"[^\w.-]+", "_", name) + ".png")).write_bytes(png)
        return folder


async def open_ui(chromium: Any, kyma: Kyma) -> Ui:
    """A fresh browser context (a person's own browser) on the console."""
    from playwright.async_api import expect

    expect.set_options(timeout=PATIENCE_MS)
    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=kyma.http_url)
    # Injected by the browser itself, so the page's Content-Security-Policy does not apply.
    await context.add_init_script(path=str(DATA / "axe.min.js"))
    return Ui(kyma, context, await context.new_page())


@pytest_asyncio.fixture
async def browser(
    chromium: Any, console_kyma: Kyma, request: pytest.FixtureRequest
) -> AsyncIterator[Ui]:
    ui = await open_ui(chromium, console_kyma)
    try:
        yield ui
        assert not ui.problems, "\n".join(ui.problems)
    finally:
        failed = request.node.stash.get(_FAILED, False) or ui.problems
        if failed or os.environ.get("KYMA_TEST_SCREENSHOTS") == "always":
            try:
                await ui.snapshot("at-failure" if failed else "last")
            except Exception:  # the page may be gone; the earlier shots are still written
                pass
            folder = ui.save(request.node.name)
            print(f"screenshots of the pages visited: {folder}")
        await ui.context.close()


# --- what a person does outside the browser -------------------------------------------------


async def mailed_code(kyma: Kyma, address: str, seen: int) -> str:
    """The code in the `seen`+1-th mail with a code to `address` (other mails, such as a
    low-balance alert, do not count). Mail goes out before the API answers; the loop only
    bounds a slow file system."""
    directory = kyma.settings.data_dir / "mail"
    for _ in range(200):
        codes = []
        for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            found = re.search(r"code is (\d{6})", message.get_content())
            if message["To"] == address and found:
                codes.append(found.group(1))
        if len(codes) > seen:
            return codes[seen]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no code mail number {seen + 1} to {address}")


async def deliver_webhook(kyma: Kyma, event: dict[str, Any]) -> httpx.Response:
    payload, signature = signed_delivery(event, WEBHOOK_SECRET)
    async with kyma.http() as http:
        return await http.post(
            "/v1/billing/stripe/webhook",
            content=payload,
            headers={"stripe-signature": signature, "content-type": "application/json"},
        )
