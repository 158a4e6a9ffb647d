"""The console's shared script (static/js/console.js) in the browser: money shown exactly, and
the page a person is sent to after signing in never on another origin."""

from __future__ import annotations

from tests.http_bridge.console.conftest import Ui


async def test_money_is_exact_and_next_pages_stay_home(browser: Ui) -> None:
    await browser.visit("/terms")
    results = await browser.page.evaluate(
        """async () => {
            const m = await import("/static/js/console.js");
            const sum = ["0.1", "0.2", "0.000000001"].reduce((a, v) => a + m.nanos(v), 0n);
            const next = (search) => {
                history.replaceState(null, "", "/terms" + search);
                return m.nextPath("/");
            };
            return {
                shown: ["0.500000000", "0.000002800", "-0.000018000", "1234567.1", "12", "x", "1.0000000001"]
                    .map((v) => m.usd(v)),
                signed: m.usd("25.000000000", {signed: true}),
                sum: m.usd(sum),
                next: ["?next=/keys", "?next=//evil.example", "?next=/%5Cevil.example",
                       "?next=https://evil.example/", "?next=javascript:alert(1)", ""].map(next),
            };
        }"""
    )
    assert results["shown"] == [
        "$0.50",
        "$0.0000028",
        "-$0.000018",
        "$1,234,567.10",
        "$12.00",
        "—",
        "—",  # more than nine decimals is not an amount Kyma sends
    ]
    assert results["signed"] == "+$25.00"
    assert results["sum"] == "$0.300000001"
    assert results["next"] == ["/keys", "/", "/", "/", "/", "/"]
