"""The tokens by kind a settlement batch records (pure functions of billing/hold_store.py, run
by both stores in their one bulk statement per batch)."""

from __future__ import annotations

from datetime import UTC, datetime

from core_service.billing.hold_store import (
    Ended,
    Ending,
    EndOrder,
    Expired,
    Settlement,
    daily_usage,
    reconcile_late,
    tokens_at_end,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
USED = Settlement(
    cost_nanos=900,
    prompt_tokens=100,
    completion_tokens=40,
    estimated=False,
    cached_tokens=60,
    cache_write_tokens=10,
    reasoning_tokens=15,
)


def ended(hold: str, ending: Ending, settlement: Settlement | None, **row: int) -> Ended:
    order = EndOrder(hold, "acct", ending, NOW, settlement)
    return Ended(
        hold_id=hold,
        account_id="acct",
        ending=ending,
        amount_nanos=1000,
        charged_nanos=settlement.cost_nanos if settlement else row.get("charged", 0),
        model="m",
        request_id="req_" + hold,
        now=NOW,
        **tokens_at_end(order, row.get("cp_prompt", 0), row.get("cp_completion", 0)),
    )


def test_a_days_usage_adds_up_each_kind_of_token() -> None:
    rows = daily_usage(
        [
            ended("h1", Ending.SETTLED, USED),
            ended("h2", Ending.SETTLED, USED),
            ended("h3", Ending.RELEASED, None),
            ended("h4", Ending.EXPIRED, None, charged=300, cp_prompt=100, cp_completion=5),
        ]
    )
    [row] = rows
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 300, 85)
    # An expired hold's checkpoint keeps no parts: only the settled ones bring them.
    assert (row.cached_tokens, row.cache_write_tokens, row.reasoning_tokens) == (120, 20, 30)
    assert row.cost_nanos == 2100 and row.estimated_requests == 1


def test_a_late_settlement_brings_the_parts_its_expired_hold_lacked() -> None:
    expired = Expired("h4", "acct", 1000, 300, "m", "req_h4", 100, 5)
    [correction] = reconcile_late(
        [EndOrder("h4", "acct", Ending.SETTLED, NOW, USED)], [expired], {"acct": 10_000}
    )
    assert correction.charged_nanos == 600 and correction.late
    assert (correction.prompt_tokens, correction.completion_tokens) == (0, 35)
    assert (correction.cached_tokens, correction.reasoning_tokens) == (60, 15)
    first = ended("h4", Ending.EXPIRED, None, charged=300, cp_prompt=100, cp_completion=5)
    [row] = daily_usage([first, correction])
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 100, 40)
    assert (row.cached_tokens, row.cache_write_tokens, row.reasoning_tokens) == (60, 10, 15)
    assert row.cost_nanos == 900
