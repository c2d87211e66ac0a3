"""Cron schedules, pure: when a chain's runs start (Temporal's arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from perdure import InvalidArgumentError
from perdure._cron import CronSchedule


def _t(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_first_run_starts_at_the_first_tick_after_the_start() -> None:
    schedule = CronSchedule("*/5 * * * *")
    assert schedule.first_time(_t("2024-01-01 10:02:30")) == _t("2024-01-01 10:05:00")
    assert schedule.first_time(_t("2024-01-01 10:05:00")) == _t("2024-01-01 10:10:00")


def test_the_next_run_skips_ticks_missed_while_a_run_ran() -> None:
    schedule = CronSchedule("0 * * * *")
    scheduled = _t("2024-01-01 10:00:00")
    assert schedule.next_time(scheduled, _t("2024-01-01 10:00:00")) == _t("2024-01-01 11:00:00")
    assert schedule.next_time(scheduled, _t("2024-01-01 12:30:00")) == _t("2024-01-01 13:00:00")
    # a tick exactly at the close still counts
    assert schedule.next_time(scheduled, _t("2024-01-01 12:00:00")) == _t("2024-01-01 12:00:00")


def test_every_is_a_period_anchored_at_the_chain() -> None:
    schedule = CronSchedule("@every 1h30m")
    start = _t("2024-01-01 10:00:00") + 0.25
    first = schedule.first_time(start)
    assert first == _t("2024-01-01 11:30:00")
    assert schedule.next_time(first, first + 1) == _t("2024-01-01 13:00:00")
    assert schedule.next_time(first, _t("2024-01-01 16:00:00")) == _t("2024-01-01 16:00:00")


@pytest.mark.parametrize(("shorthand", "after"), [
    ("@hourly", "2024-01-01 11:00:00"), ("@daily", "2024-01-02 00:00:00"),
    ("@midnight", "2024-01-02 00:00:00"), ("@weekly", "2024-01-07 00:00:00"),
    ("@monthly", "2024-02-01 00:00:00"), ("@yearly", "2025-01-01 00:00:00"),
    ("@annually", "2025-01-01 00:00:00"), ("0  9 * * MON-FRI", "2024-01-02 09:00:00"),
])
def test_shorthands_and_names(shorthand: str, after: str) -> None:
    assert CronSchedule(shorthand).first_time(_t("2024-01-01 10:00:00")) == _t(after)


@pytest.mark.parametrize("expression", ["* * *", "@every 0.5x", "TZ=UTC * * * * *", "@often"])
def test_bad_expressions_name_themselves(expression: str) -> None:
    with pytest.raises(InvalidArgumentError, match="cron schedule") as info:
        CronSchedule(expression)
    assert repr(expression) in str(info.value)
