"""Money and usage pricing: currencies' minor units and the four pricing models (Lago's shapes).

Amounts in the catalogue are decimal strings in the currency's major unit (``"0.002"`` per
token may be finer than a cent); every line an invoice carries is rounded once, half to even, to
an integer number of minor units.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import msgspec

__all__ = [
    "AGGREGATIONS",
    "CURRENCY_EXPONENTS",
    "Charge",
    "ChargeLine",
    "Tier",
    "exponent",
    "price_usage",
    "to_minor",
]

CURRENCY_EXPONENTS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "BRL": 2, "INR": 2, "JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3,
}
AGGREGATIONS = ("count", "sum", "max", "unique_count", "latest")
Aggregation = Literal["count", "sum", "max", "unique_count", "latest"]
Model = Literal["per_unit", "graduated", "volume", "package"]
DecimalText = str


def exponent(currency: str) -> int:
    """Decimals of the currency's minor unit (2 unless listed)."""
    return CURRENCY_EXPONENTS.get(currency, 2)


def to_minor(amount: Decimal, currency: str) -> int:
    """A major-unit amount as an integer count of minor units, rounded half to even."""
    exp = exponent(currency)
    return int((amount * (Decimal(10) ** exp)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    up_to: int | None = None
    """The last unit of the tier (inclusive); ``None``: no upper bound (the last tier)."""
    unit_price: DecimalText = "0"
    flat_fee: DecimalText = "0"


class Charge(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A usage charge of a plan version on one billable metric."""

    metric: str
    aggregation: Aggregation = "sum"
    model: Model = "per_unit"
    unit_price: DecimalText = "0"
    tiers: list[Tier] = msgspec.field(default_factory=list)
    package_size: int = 1
    package_price: DecimalText = "0"
    included: int = 0
    """Units the plan includes before charging (the allowance)."""


class ChargeLine(msgspec.Struct, frozen=True):
    description: str
    quantity: str
    unit_price: str
    amount_minor: int


def _check(charge: Charge) -> None:
    for text in (charge.unit_price, charge.package_price, *(t.unit_price for t in charge.tiers),
                 *(t.flat_fee for t in charge.tiers)):
        Decimal(text)


def price_usage(charge: Charge, quantity: Decimal, currency: str) -> list[ChargeLine]:
    """The invoice lines of ``quantity`` units of ``charge``'s metric (after its allowance)."""
    _check(charge)
    billable = max(Decimal(0), quantity - charge.included)
    name = charge.metric
    if charge.model == "per_unit":
        price = Decimal(charge.unit_price)
        return [ChargeLine(name, str(billable), str(price), to_minor(billable * price, currency))]
    if charge.model == "package":
        packages = math.ceil(billable / charge.package_size) if billable > 0 else 0
        price = Decimal(charge.package_price)
        return [ChargeLine(f"{name} ({charge.package_size} per package)", str(packages), str(price),
                           to_minor(packages * price, currency))]
    lines: list[ChargeLine] = []
    lower = Decimal(0)
    for tier in charge.tiers:
        upper = Decimal(tier.up_to) if tier.up_to is not None else None
        price, fee = Decimal(tier.unit_price), Decimal(tier.flat_fee)
        label = f"{name} {int(lower) + 1}-{tier.up_to if tier.up_to is not None else '...'}"
        if charge.model == "graduated":
            units = (min(billable, upper) if upper is not None else billable) - lower
            if units > 0:
                lines.append(ChargeLine(label, str(units), str(price), to_minor(units * price + fee, currency)))
        elif billable > lower and (upper is None or billable <= upper):  # volume: the tier the total falls in
            return [ChargeLine(label, str(billable), str(price), to_minor(billable * price + fee, currency))]
        if upper is None or billable <= upper:
            break
        lower = upper
    return lines
