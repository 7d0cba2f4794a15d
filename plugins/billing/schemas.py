"""The billing API's shapes (msgspec Structs). Money is integer minor units plus the currency."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from plugins.billing.pricing import Charge

__all__ = [
    "Amendment",
    "CancelRequest",
    "ChangePlan",
    "ClockAdvance",
    "ClockCreate",
    "CreditGrant",
    "Entitlements",
    "Invoice",
    "PaymentRecord",
    "PlanChange",
    "PlanCreate",
    "PlanOut",
    "PlanVersionOut",
    "ProfileUpdate",
    "Subscription",
    "UsageBatch",
    "UsageEvent",
]

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Minor = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Interval = Literal["monthly", "yearly"]
Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=80, pattern=r"^[a-z][a-z0-9_.]*$")]


class Entitlements(msgspec.Struct, forbid_unknown_fields=True):
    """What a plan allows; ``None`` is unlimited. ``modules`` may hold ``"*"`` (every module)."""

    modules: list[str] = msgspec.field(default_factory=list)
    seats: Count | None = None
    api_keys: Count | None = None
    ai_tokens: Count | None = None
    """Per month."""
    workflow_executions: Count | None = None
    """Per month."""
    rate_limit: Count | None = None
    """Requests per minute."""


class Prices(msgspec.Struct, forbid_unknown_fields=True):
    monthly: Minor | None = None
    yearly: Minor | None = None


class PlanChange(msgspec.Struct, forbid_unknown_fields=True):
    """A new version of a plan (every field of the version; omitted ones keep the last version's)."""

    name: str | None = None
    currency: Currency | None = None
    prices: Prices | None = None
    trial_days: Annotated[int, msgspec.Meta(ge=0, le=365)] | None = None
    entitlements: Entitlements | None = None
    charges: list[Charge] | None = None


class PlanCreate(msgspec.Struct, forbid_unknown_fields=True):
    code: Code
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    currency: Currency = "USD"
    prices: Prices = msgspec.field(default_factory=Prices)
    trial_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 0
    entitlements: Entitlements = msgspec.field(default_factory=Entitlements)
    charges: list[Charge] = msgspec.field(default_factory=list)


class PlanVersionOut(msgspec.Struct):
    id: uuid.UUID
    version: int
    currency: str
    prices: dict[str, int | None]
    trial_days: int
    entitlements: dict[str, Any]
    charges: list[dict[str, Any]]
    created_at: datetime


class PlanOut(msgspec.Struct):
    id: uuid.UUID
    code: str
    name: str
    archived: bool
    current: PlanVersionOut
    versions: int


class Subscription(msgspec.Struct):
    id: uuid.UUID
    plan: str
    plan_version: int
    plan_version_id: uuid.UUID
    status: str
    interval: str
    currency: str
    timezone: str
    current_period: dict[str, datetime]
    trial_end: datetime | None
    cancel_at_period_end: bool
    pending_plan: str | None
    pending_interval: str | None
    canceled_at: datetime | None
    override_by: str | None = None
    """The operator (``operator:<id>``) who last set the plan outside the tenant's own choice."""
    override_at: datetime | None = None


class ChangePlan(msgspec.Struct, forbid_unknown_fields=True):
    plan: Code
    interval: Interval | None = None


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    at: Literal["now", "period_end"] = "period_end"


class UsageEvent(msgspec.Struct, forbid_unknown_fields=True):
    transaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    metric: Metric
    value: Annotated[float, msgspec.Meta(ge=0)] | Annotated[str, msgspec.Meta(max_length=40)] = 1
    timestamp: datetime | None = None
    unique_key: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class UsageBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[UsageEvent], msgspec.Meta(min_length=1, max_length=1000)]


class Amendment(msgspec.Struct, forbid_unknown_fields=True):
    transaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    value: Annotated[float, msgspec.Meta(ge=0)] | Annotated[str, msgspec.Meta(max_length=40)]


class Invoice(msgspec.Struct):
    id: uuid.UUID
    kind: str
    number: str | None
    status: str
    currency: str
    period_start: datetime
    period_end: datetime
    lines: list[dict[str, Any]]
    subtotal_minor: int
    credits_minor: int
    tax_rate: str
    tax_id: str | None
    tax_minor: int
    total_minor: int
    amount_paid_minor: int
    finalized_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None
    corrects_id: uuid.UUID | None
    created_at: datetime


class ProfileUpdate(msgspec.Struct, forbid_unknown_fields=True):
    timezone: str | None = None
    tax_rate: Annotated[str, msgspec.Meta(pattern=r"^\d{1,2}(\.\d{1,4})?$")] | None = None
    """Percent, e.g. ``"20"`` or ``"8.875"``."""
    tax_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    stripe_customer: Annotated[str, msgspec.Meta(pattern=r"^cus_[A-Za-z0-9]{1,64}$")] | None = None
    stripe_payment_method: Annotated[str, msgspec.Meta(pattern=r"^pm_[A-Za-z0-9_]{1,64}$")] | None = None


class ClockCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    frozen_at: datetime


class ClockAdvance(msgspec.Struct, forbid_unknown_fields=True):
    to: datetime


class CreditGrant(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: Annotated[int, msgspec.Meta(gt=0, le=10**12)]
    currency: Currency = "USD"
    expires_at: datetime | None = None
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""


class PaymentRecord(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: Annotated[int, msgspec.Meta(gt=0, le=10**13)]
    reference: Annotated[str, msgspec.Meta(max_length=200)] | None = None
