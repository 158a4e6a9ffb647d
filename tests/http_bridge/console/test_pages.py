"""The console's pages and assets as the bridge serves them (no browser, no core: a page never
calls the core). The browser tests (test_journey.py) drive the same pages in Chromium."""

from __future__ import annotations

import fnmatch
import pathlib
import re
import tomllib

import httpx
import pytest

from core_service.settings import Settings
from http_bridge.app import create_app
from http_bridge.console import pages
from http_bridge.console.assets import STATIC_DIR

ROOT = pathlib.Path(__file__).parents[3]
CONSOLE = ROOT / "http_bridge" / "console"


@pytest.fixture
async def http(tmp_path: pathlib.Path):
    app = create_app(Settings(data_dir=tmp_path, metrics_port=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kyma.test") as client:
        yield client


def signed_in(client: httpx.AsyncClient) -> None:
    client.cookies.set(pages.SESSION_COOKIE, "anything", domain="kyma.test")


async def test_every_page_is_served_with_a_strict_policy(http: httpx.AsyncClient) -> None:
    signed_in(http)
    for page in pages.PAGES:
        reply = await http.get(page.path)
        assert reply.status_code == 200, page.path
        assert reply.headers["content-type"].startswith("text/html")
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        html = reply.text
        assert f"<title>{page.title} · Kyma</title>" in html
        # No inline script or style: the policy would block them.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page.path
        assert "<style" not in html and " style=" not in html, page.path
        assert 'lang="en"' in html and 'name="viewport"' in html


async def test_pages_for_a_signed_in_person_send_others_to_sign_in(
    http: httpx.AsyncClient,
) -> None:
    for page in pages.PAGES:
        reply = await http.get(page.path)
        if page.signed_in:
            assert reply.status_code == 303, page.path
            assert reply.headers["location"] == "/signin?next=" + page.path.replace("/", "%2F")
        else:
            assert reply.status_code == 200, page.path


async def test_the_referral_link_prefills_its_code(http: httpx.AsyncClient) -> None:
    reply = await http.get("/signup", params={"ref": "AAKCFH9Y"})
    assert 'value="AAKCFH9Y"' in reply.text
    assert "You came through a referral link" in reply.text
    # Whatever is not a referral code is dropped, never echoed into the page.
    hostile = await http.get("/signup", params={"ref": '"><script>alert(1)</script>'})
    assert hostile.status_code == 200
    assert "alert(1)" not in hostile.text and 'name="referral_code" value=""' in hostile.text


async def test_stripe_sends_the_buyer_back_to_the_dashboard(http: httpx.AsyncClient) -> None:
    back = await http.get("/billing/success", params={"session_id": "cs_test_a1B2"})
    assert back.status_code == 303 and back.headers["location"] == "/?purchase=cs_test_a1B2"
    odd = await http.get("/billing/success", params={"session_id": "javascript:alert(1)"})
    assert odd.headers["location"] == "/?purchase="
    cancelled = await http.get("/billing/cancelled")
    assert cancelled.headers["location"] == "/billing?cancelled=1"
    # The return URLs Kyma gives Stripe by default.
    back = await http.get(
        "/console/billing", params={"checkout": "success", "session_id": "cs_test_x"}
    )
    assert back.status_code == 303 and back.headers["location"] == "/?purchase=cs_test_x"
    back = await http.get("/console/billing", params={"checkout": "success"})
    assert back.headers["location"] == "/?purchase="
    back = await http.get("/console/billing", params={"checkout": "cancelled"})
    assert back.headers["location"] == "/billing?cancelled=1"


async def test_assets_are_served_from_the_package_and_cached_by_version(
    http: httpx.AsyncClient,
) -> None:
    signed_in(http)
    html = (await http.get("/")).text
    linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert any("chart.umd.min.js" in url for url in linked)
    for url in linked:
        reply = await http.get(url)
        assert reply.status_code == 200, url
        assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"
        if url.split("?")[0].endswith(".js"):
            assert reply.headers["content-type"].startswith("text/javascript")
        again = await http.get(url, headers={"if-none-match": reply.headers["etag"]})
        assert again.status_code == 304
    unversioned = await http.get("/static/console.css")
    assert unversioned.status_code == 200 and unversioned.headers["cache-control"] == "no-cache"
    for missing in ("/static/nope.js", "/static/../pages.py", "/static/%2e%2e/pages.py"):
        reply = await http.get(missing)
        assert reply.status_code == 404, missing
        assert reply.json()["error"]["message"]


async def test_scripts_load_only_what_ships(http: httpx.AsyncClient) -> None:
    """Every module a script imports is in the package, and the console's own files name no
    other origin: nothing is fetched from outside at run time."""
    own = [p for p in STATIC_DIR.rglob("*") if p.is_file() and "vendor" not in p.parts]
    own += list((CONSOLE / "templates").glob("*.html"))
    for path in own:
        # An XML namespace names no resource to fetch.
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://", text), f"{path.name} names another origin"
        for module in re.findall(r'from "\./([^"]+)"', text):
            assert (path.parent / module).is_file(), f"{path.name} imports missing {module}"


def test_every_console_file_ships_in_the_package() -> None:
    """pyproject's package-data must match every template and asset, or a wheel would miss it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["http_bridge.console"]
    files = [p for p in CONSOLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in files:
        if path.suffix == ".py":
            continue
        relative = path.relative_to(CONSOLE).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
    licence = STATIC_DIR / "vendor" / "chart.js-LICENSE.md"
    assert "MIT License" in licence.read_text()


def test_pages_are_counted_by_route() -> None:
    from http_bridge.metrics import route_of

    assert route_of("/keys") == "/keys"
    assert route_of("/static/js/keys.js") == "/static/{name}"
    assert route_of("/keys/../../etc/passwd") == "other"
