"""A key's spend in calendar periods (UTC): days, ISO weeks, months, and the cap's room."""

from __future__ import annotations

from datetime import UTC, date, datetime

from core_service.billing.key_spend import KeySpendState, next_period, period_start, resets_at


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_periods_are_calendar_periods_in_utc() -> None:
    day = date(2026, 12, 31)  # a Thursday
    assert period_start("daily", day) == day
    assert period_start("weekly", day) == date(2026, 12, 28)
    assert period_start("monthly", day) == date(2026, 12, 1)
    assert next_period("monthly", date(2026, 12, 1)) == date(2027, 1, 1)
    assert next_period("monthly", date(2027, 1, 1)) == date(2027, 2, 1)
    assert next_period("weekly", date(2026, 12, 28)) == date(2027, 1, 4)
    assert resets_at("daily", _at("2026-12-31T23:59:59")) == _at("2027-01-01T00:00:00")
    assert resets_at("monthly", _at("2027-02-28T12:00:00")) == _at("2027-03-01T00:00:00")
    assert resets_at(None, _at("2027-02-28T12:00:00")) is None


def test_each_counter_starts_again_with_its_period_and_never_goes_back() -> None:
    state = KeySpendState("key_1", cap_nanos=100, cap_interval="weekly")
    state.charge(30, _at("2026-12-31T10:00:00"))  # Thursday
    state.charge(20, _at("2027-01-01T10:00:00"))  # Friday: a new day and month, same week
    assert (state.spent_day_nanos, state.spent_week_nanos, state.spent_month_nanos) == (20, 50, 20)
    assert state.spent_total_nanos == 50 and state.spent() == 50
    state.held_nanos = 30
    assert state.room() == 20
    state.roll(_at("2026-12-31T23:00:00"))  # a node whose clock is behind changes nothing
    assert state.spent_week_nanos == 50 and state.spent_day == date(2027, 1, 1)
    state.roll(_at("2027-01-04T00:00:00"))  # Monday: the week starts again
    assert state.spent() == 0 and state.room() == 70 and state.spent_total_nanos == 50
    uncapped = KeySpendState("key_2", cap_nanos=None, cap_interval=None)
    assert uncapped.room() is None
