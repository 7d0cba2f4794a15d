"""Billing periods and prorations as properties (hypothesis): consecutive periods meet exactly
(no gap, no overlap) whatever the anchor, interval and time zone, across month ends and DST; the
anchor day is kept (31 January -> 28/29 February -> 31 March); the pieces of any split of a
period's price add up to the price; pricing models on known figures."""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.billing.periods import period_at, period_n, prorate, split
from plugins.billing.pricing import Charge, Tier, price_usage

ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
                         "America/Sao_Paulo", "Pacific/Chatham"])
ANCHORS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC))
INTERVALS = st.sampled_from(["monthly", "yearly"])


@settings(max_examples=300, deadline=None)
@given(anchor=ANCHORS, interval=INTERVALS, zone=ZONES, count=st.integers(1, 40))
def test_consecutive_periods_meet_exactly(anchor: datetime, interval: str, zone: str, count: int) -> None:
    periods = [period_n(anchor, interval, zone, i) for i in range(count)]
    for before, after in itertools.pairwise(periods):
        assert before.end == after.start  # no gap, no overlap
        assert before.start < before.end
    local = anchor.astimezone(ZoneInfo(zone))
    for period in periods:
        start = period.start.astimezone(ZoneInfo(zone))
        # The anchor day is kept, clamped to short months, never drifting.
        assert start.day == min(local.day, calendar.monthrange(start.year, start.month)[1])


@settings(max_examples=200, deadline=None)
@given(anchor=ANCHORS, interval=INTERVALS, zone=ZONES, offset=st.integers(0, 3 * 366 * 24 * 3600))
def test_period_at_contains_the_instant(anchor: datetime, interval: str, zone: str, offset: int) -> None:
    at = anchor + timedelta(seconds=offset)
    period = period_at(anchor, interval, zone, at)
    assert period.start <= at < period.end
    assert period == period_n(anchor, interval, zone, period.index)


def test_month_ends_keep_the_anchor_day() -> None:
    anchor = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)
    starts = [period_n(anchor, "monthly", "UTC", i).start.date().isoformat() for i in range(4)]
    assert starts == ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"]
    paris = datetime(2027, 3, 1, tzinfo=ZoneInfo("Europe/Paris")).astimezone(UTC)  # across the March DST change
    march = period_n(paris, "monthly", "Europe/Paris", 0)
    assert march.end - march.start == timedelta(days=31) - timedelta(hours=1)
    assert march.end.astimezone(ZoneInfo("Europe/Paris")).hour == 0


@settings(max_examples=300, deadline=None)
@given(amount=st.integers(0, 10**9), anchor=ANCHORS, zone=ZONES, interval=INTERVALS,
       cuts=st.lists(st.floats(0, 1, exclude_min=True, exclude_max=True), max_size=6))
def test_prorations_sum_to_the_whole(
    amount: int, anchor: datetime, zone: str, interval: str, cuts: list[float]
) -> None:
    period = period_n(anchor, interval, zone, 0)
    span = period.end - period.start
    instants = sorted({period.start + span * c for c in cuts})
    pieces = split(amount, period.start, period.end, instants)
    assert sum(pieces) == amount
    assert all(p >= 0 for p in pieces)
    # An upgrade at any instant: the credit for the unused part plus the used part is the price.
    for instant in instants:
        used = prorate(amount, period.start, period.end, period.start, instant)
        unused = prorate(amount, period.start, period.end, instant, period.end)
        assert used + unused == amount


def test_pricing_models_on_known_figures() -> None:
    graduated = Charge(metric="calls", model="graduated", included=10,
                       tiers=[Tier(up_to=100, unit_price="0.10"), Tier(up_to=None, unit_price="0.05", flat_fee="1")])
    lines = price_usage(graduated, Decimal(160), "USD")
    assert [line.amount_minor for line in lines] == [1000, 350]  # 100 x 0.10, then 50 x 0.05 + 1.00
    volume = Charge(metric="calls", model="volume",
                    tiers=[Tier(up_to=100, unit_price="0.10"), Tier(up_to=None, unit_price="0.05")])
    assert [line.amount_minor for line in price_usage(volume, Decimal(150), "USD")] == [750]
    package = Charge(metric="calls", model="package", package_size=100, package_price="2.5", included=50)
    assert [line.amount_minor for line in price_usage(package, Decimal(251), "USD")] == [750]
    per_unit = Charge(metric="tokens", model="per_unit", unit_price="0.000015")
    assert [line.amount_minor for line in price_usage(per_unit, Decimal(1_000_000), "JPY")] == [15]
    assert [line.amount_minor for line in price_usage(per_unit, Decimal(333), "USD")] == [0]
