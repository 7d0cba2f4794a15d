"""Billing periods and proration: pure functions of an anchor, an interval and a time zone.

Period ``n`` starts at the anchor's local date and time moved ``n`` intervals on, its day of the
month clamped to the month's length (31 January -> 28/29 February -> 31 March: the anchor day is
kept, never drifted), and turned into an instant in the tenant's billing time zone. Both ends of
every period come from the same function, so consecutive periods meet exactly: no gap, no
overlap, across month ends and DST changes. Proration splits an amount by elapsed seconds with
cumulative rounding, so the pieces of one period always add up to the whole.
"""

from __future__ import annotations

import calendar
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["INTERVAL_MONTHS", "Interval", "Period", "period_at", "period_n", "prorate", "split"]

Interval = Literal["monthly", "yearly"]
INTERVAL_MONTHS: dict[str, int] = {"monthly": 1, "yearly": 12}


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC, and its index from the anchor."""

    index: int
    start: datetime
    end: datetime


def _local(anchor: datetime, zone: ZoneInfo) -> datetime:
    return anchor.astimezone(zone).replace(tzinfo=None)


def _boundary(anchor_local: datetime, months: int, zone: ZoneInfo) -> datetime:
    """The instant ``months`` after the local anchor, day clamped to the month's length."""
    total = anchor_local.month - 1 + months
    year, month = anchor_local.year + total // 12, total % 12 + 1
    day = min(anchor_local.day, calendar.monthrange(year, month)[1])
    local = anchor_local.replace(year=year, month=month, day=day)
    # fold=0: a repeated local hour means its first occurrence; a skipped one maps forward. Either
    # way one local boundary is always the same instant, which is all "no gap, no overlap" needs.
    return local.replace(tzinfo=zone).astimezone(UTC)


def period_n(anchor: datetime, interval: str, timezone: str, index: int) -> Period:
    """Period number ``index`` (0: the one starting at ``anchor``)."""
    zone = ZoneInfo(timezone)
    local = _local(anchor, zone)
    step = INTERVAL_MONTHS[interval]
    return Period(index, _boundary(local, index * step, zone), _boundary(local, (index + 1) * step, zone))


def period_at(anchor: datetime, interval: str, timezone: str, at: datetime) -> Period:
    """The period that contains ``at`` (``at`` at or after ``anchor``)."""
    step = INTERVAL_MONTHS[interval]
    local_at = at.astimezone(ZoneInfo(timezone))
    local_anchor = anchor.astimezone(ZoneInfo(timezone))
    guess = max(0, ((local_at.year - local_anchor.year) * 12 + local_at.month - local_anchor.month) // step - 1)
    period = period_n(anchor, interval, timezone, guess)
    while period.end <= at:
        period = period_n(anchor, interval, timezone, period.index + 1)
    while period.start > at and period.index > 0:
        period = period_n(anchor, interval, timezone, period.index - 1)
    return period


def minor(amount: Decimal, exponent: int) -> Decimal:
    """``amount`` rounded to the currency's minor unit (``exponent`` decimals), half to even."""
    return amount.quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_EVEN)


def _share(amount_minor: int, start: datetime, end: datetime, upto: datetime) -> int:
    total = Decimal((end - start).total_seconds())
    elapsed = Decimal((min(max(upto, start), end) - start).total_seconds())
    if total <= 0:
        return amount_minor
    return int((Decimal(amount_minor) * elapsed / total).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def prorate(amount_minor: int, start: datetime, end: datetime, frm: datetime, to: datetime) -> int:
    """The part of ``amount_minor`` (whole period ``[start, end)``) that ``[frm, to)`` uses, in
    minor units. Computed as the difference of two cumulative roundings, so that the pieces of any
    split of the period sum to ``amount_minor`` exactly."""
    return _share(amount_minor, start, end, to) - _share(amount_minor, start, end, frm)


def split(amount_minor: int, start: datetime, end: datetime, cuts: list[datetime]) -> list[int]:
    """``amount_minor`` split at ``cuts`` (sorted instants inside the period), one piece each."""
    edges = [start, *cuts, end]
    return [prorate(amount_minor, start, end, a, b) for a, b in itertools.pairwise(edges)]


def add_days(at: datetime, days: int, timezone: str) -> datetime:
    """``days`` calendar days after ``at`` in the time zone (a trial ends at the same local time)."""
    zone = ZoneInfo(timezone)
    local = at.astimezone(zone).replace(tzinfo=None) + timedelta(days=days)
    return local.replace(tzinfo=zone).astimezone(UTC)
