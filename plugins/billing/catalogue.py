"""The operator's catalogue: plans and their versions (installation tables, no tenant).

A plan's terms never change in place: a change writes version ``n + 1``, new subscriptions take
the newest version, and existing ones keep theirs (grandfathered) until the operator migrates
them.

Each process keeps two copies: ``KNOWN``, what sign-up needs to know synchronously (is a plan
paid, does it start with a trial), and the plan versions it has read. Every change bumps the one
row of ``billing_catalogue`` in its own transaction; every process (API and worker) compares that
number with the one it last saw (:meth:`Catalogue.sync`, one primary-key read, from the plugin's
lifespan every :data:`SYNC_SECONDS` and wherever a fresh answer matters) and reloads when it
moved. ``KNOWN`` is only a first guess anyway: the subscription made for a self-service sign-up
checks the plan again against the database (``Subscriptions.ensure``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing.pricing import CURRENCY_EXPONENTS
from plugins.billing.schemas import PlanChange, PlanCreate, PlanOut, PlanVersionOut

__all__ = ["DEFAULT_PLAN", "KNOWN", "SYNC_SECONDS", "Catalogue", "PlanTerms", "seen_version"]

DEFAULT_PLAN = "free"
SYNC_SECONDS = 1.0
"""How often each process checks the catalogue's version."""


@dataclass(frozen=True)
class PlanTerms:
    """One plan version as the services use it."""

    plan_id: uuid.UUID
    code: str
    name: str
    version_id: uuid.UUID
    version: int
    currency: str
    prices: dict[str, int | None]
    trial_days: int
    entitlements: dict[str, Any]
    charges: list[dict[str, Any]]

    @property
    def paid(self) -> bool:
        return any(p for p in self.prices.values())

    def price(self, interval: str) -> int:
        return int(self.prices.get(interval) or 0)

    def allows_module(self, module: str) -> bool:
        modules = self.entitlements.get("modules") or []
        return "*" in modules or module in modules


_VERSIONS: dict[uuid.UUID, PlanTerms] = {}

# code -> (paid, trial_days): seeded values until the first refresh.
KNOWN: dict[str, tuple[bool, int]] = {"free": (False, 0), "pro": (True, 14), "enterprise": (True, 30)}
# The catalogue version this process's copies are of (0: not loaded yet).
_SEEN = {"version": 0}


def seen_version() -> int:
    """The catalogue version this process last loaded."""
    return _SEEN["version"]


_TERMS = """
select p.id as plan_id, p.code, p.name, v.id as version_id, v.version, v.currency, v.prices, v.trial_days,
       v.entitlements, v.charges, v.created_at, p.archived
  from billing_plan_versions v join billing_plans p on p.id = v.plan_id
"""
_LATEST = (
    _TERMS  # noqa: S608 (constants only)
    + " where p.code = :code and v.version = (select max(version) from billing_plan_versions where plan_id = p.id)"
)


def _terms(row: Any) -> PlanTerms:
    return PlanTerms(
        plan_id=row.plan_id, code=row.code, name=row.name, version_id=row.version_id, version=row.version,
        currency=row.currency, prices=dict(row.prices), trial_days=row.trial_days,
        entitlements=dict(row.entitlements), charges=list(row.charges),
    )


def _version_out(row: Any) -> PlanVersionOut:
    return PlanVersionOut(
        id=row.version_id, version=row.version, currency=row.currency, prices=dict(row.prices),
        trial_days=row.trial_days, entitlements=dict(row.entitlements), charges=list(row.charges),
        created_at=row.created_at,
    )


def _currency(code: str, field: str) -> None:
    if code not in CURRENCY_EXPONENTS:
        raise sdk.Unprocessable(
            f"unknown currency {code!r}", errors=[sdk.FieldError(field=field, message="an ISO 4217 code we know")]
        )


class Catalogue:
    """Reads and versioned writes of plans, in any session (the tables have no tenant)."""

    async def latest(self, session: AsyncSession, code: str) -> PlanTerms | None:
        row = (await session.execute(text(_LATEST), {"code": code})).one_or_none()
        return _terms(row) if row is not None else None

    async def version(self, session: AsyncSession, version_id: uuid.UUID) -> PlanTerms:
        """One plan version. Versions never change once written, so each is read once per process
        (only the plan's name may change: a renamed plan shows its new name after a restart)."""
        cached = _VERSIONS.get(version_id)
        if cached is not None:
            return cached
        row = (await session.execute(text(_TERMS + " where v.id = :id"), {"id": version_id})).one()
        terms = _VERSIONS[version_id] = _terms(row)
        return terms

    async def sync(self, session: AsyncSession) -> int:
        """Reload this process's copies when the catalogue changed since it last loaded them
        (another process's change included); answers the version now loaded."""
        current = int((await session.execute(text("select version from billing_catalogue where id = 1"))).scalar_one())
        if current != _SEEN["version"]:
            await self.refresh(session)
            _SEEN["version"] = current
        return current

    async def _bump(self, session: AsyncSession) -> None:
        """Mark the catalogue changed (in the change's transaction) and reload here at once."""
        bumped = await session.execute(
            text("update billing_catalogue set version = version + 1 where id = 1 returning version"))
        await self.refresh(session)
        _SEEN["version"] = int(bumped.scalar_one())

    async def refresh(self, session: AsyncSession) -> None:
        _VERSIONS.clear()  # only a plan's name can change in a version: read them again
        rows = (await session.execute(text(_TERMS + " where not p.archived"))).all()
        latest: dict[str, Any] = {}
        for row in rows:
            if row.code not in latest or row.version > latest[row.code].version:
                latest[row.code] = row
        KNOWN.clear()
        KNOWN.update({code: (any(r.prices.values()), r.trial_days) for code, r in latest.items()})

    async def list(self, session: AsyncSession) -> list[PlanOut]:
        rows = (await session.execute(text(_TERMS + " order by p.created_at, p.code, v.version"))).all()
        plans: dict[str, list[Any]] = {}
        for row in rows:
            plans.setdefault(row.code, []).append(row)
        return [
            PlanOut(id=v[-1].plan_id, code=c, name=v[-1].name, archived=v[-1].archived,
                    current=_version_out(v[-1]), versions=len(v))
            for c, v in plans.items()
        ]

    async def get(self, session: AsyncSession, code: str) -> PlanOut:
        for plan in await self.list(session):
            if plan.code == code:
                return plan
        raise sdk.NotFound(f"plan {code!r} does not exist")

    async def create(self, session: AsyncSession, data: PlanCreate) -> PlanOut:
        _currency(data.currency, "currency")
        plan_id = sdk.uuid7()
        created = await session.execute(
            text("insert into billing_plans (id, code, name) values (:id, :code, :name) "
                 "on conflict (code) do nothing returning id"),
            {"id": plan_id, "code": data.code, "name": data.name},
        )
        if created.scalar_one_or_none() is None:
            raise sdk.Conflict(f"a plan with code {data.code!r} already exists")
        await self._add_version(session, plan_id, 1, data.currency, msgspec.to_builtins(data.prices),
                                data.trial_days, msgspec.to_builtins(data.entitlements),
                                msgspec.to_builtins(data.charges))
        await self._bump(session)
        return await self.get(session, data.code)

    async def change(self, session: AsyncSession, code: str, data: PlanChange) -> PlanOut:
        """A new version from the last one and ``data``; subscriptions keep the version they have."""
        await session.execute(text("select id from billing_plans where code = :c for update"), {"c": code})
        last = await self.latest(session, code)
        if last is None:
            raise sdk.NotFound(f"plan {code!r} does not exist")
        if data.currency is not None:
            _currency(data.currency, "currency")
        if data.name is not None:
            await session.execute(text("update billing_plans set name = :n where id = :id"),
                                  {"n": data.name, "id": last.plan_id})
        await self._add_version(
            session, last.plan_id, last.version + 1, data.currency or last.currency,
            msgspec.to_builtins(data.prices) if data.prices is not None else last.prices,
            data.trial_days if data.trial_days is not None else last.trial_days,
            msgspec.to_builtins(data.entitlements) if data.entitlements is not None else last.entitlements,
            msgspec.to_builtins(data.charges) if data.charges is not None else last.charges,
        )
        await self._bump(session)
        return await self.get(session, code)

    async def _add_version(
        self, session: AsyncSession, plan_id: uuid.UUID, version: int, currency: str, prices: Any,
        trial_days: int, entitlements: Any, charges: Any,
    ) -> None:
        await session.execute(
            text("insert into billing_plan_versions (id, plan_id, version, currency, prices, trial_days, "
                 "entitlements, charges) values (:id, :p, :v, :c, cast(:prices as jsonb), :t, "
                 "cast(:e as jsonb), cast(:ch as jsonb))"),
            {"id": sdk.uuid7(), "p": plan_id, "v": version, "c": currency, "prices": _json(prices), "t": trial_days,
             "e": _json(entitlements), "ch": _json(charges)},
        )

    async def plan_with_module(self, session: AsyncSession, module: str) -> str | None:
        """The cheapest current plan whose entitlements include ``module``."""
        best: tuple[int, str] | None = None
        for plan in await self.list(session):
            if plan.archived:
                continue
            modules = plan.current.entitlements.get("modules") or []
            if "*" in modules or module in modules:
                price = int(plan.current.prices.get("monthly") or 0)
                if best is None or price < best[0]:
                    best = (price, plan.code)
        return best[1] if best else None


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
