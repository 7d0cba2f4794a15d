"""The CRM's rules: listing, optimistic concurrency, same-tenant references, audit and events.

Every function takes the caller's tenant session (``services.data.tenant(...)``), so the change, its
audit row and its events commit or roll back together; paging, cursors and version checks are the
SDK's (``sdk.list_rows``, ``sdk.check_version``). Handlers stay thin and call these.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm.models import Activity, Company, Contact, Deal, DealStageHistory, Pipeline, PipelineStage

__all__ = ["DEFAULT_LIMIT", "MEMBERS"]

# Membership checks need no handle on the running platform: the tenant session is enough.
MEMBERS = sdk.Members()

DEFAULT_LIMIT = 25


async def _check_owner(session: AsyncSession, owner_id: uuid.UUID | None) -> None:
    """An owner must be a member of the tenant (else 422 naming ``owner_id``)."""
    if owner_id is not None and not await MEMBERS.is_member(session, owner_id):
        raise sdk.Unprocessable(
            "owner_id is not a member of this tenant",
            errors=[sdk.FieldError("owner_id", "not a member of this tenant")],
        )


def _jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=str)


# ---- listing -----------------------------------------------------------------------------------


def _search(model: Any, q: str | None) -> list[ColumnElement[bool]]:
    if q is None or not q.strip():
        return []
    return [model.search.op("@@")(func.websearch_to_tsquery("simple", q))]


def _created(model: Any, after: datetime | None, before: datetime | None) -> list[ColumnElement[bool]]:
    where = []
    if after is not None:
        where.append(model.created_at >= after)
    if before is not None:
        where.append(model.created_at < before)
    return where


def _by_created(model: Any) -> dict[str, list[ColumnElement[Any]]]:
    return {
        "created_at": [model.created_at.asc(), model.id.asc()],
        "-created_at": [model.created_at.desc(), model.id.desc()],
    }


COMPANY_SORTS: dict[str, list[ColumnElement[Any]]] = {
    **_by_created(Company),
    "name": [Company.name.asc(), Company.id.asc()],
}
DEAL_SORTS: dict[str, list[ColumnElement[Any]]] = {
    **_by_created(Deal),
    "amount": [Deal.amount.asc(), Deal.id.asc()],
    "-amount": [Deal.amount.desc(), Deal.id.desc()],
    "title": [Deal.title.asc(), Deal.id.asc()],
    "-updated_at": [Deal.updated_at.desc(), Deal.id.desc()],
}
ACTIVITY_SORTS: dict[str, list[ColumnElement[Any]]] = {
    **_by_created(Activity),
    "due_at": [Activity.due_at.asc().nulls_last(), Activity.id.asc()],
    "-due_at": [Activity.due_at.desc().nulls_last(), Activity.id.desc()],
}


async def _get(session: AsyncSession, model: Any, row_id: uuid.UUID, what: str, *, lock: bool = False) -> Any:
    stmt = select(model).where(model.id == row_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise sdk.NotFound(f"no {what} {row_id}")
    return row


async def _exists(session: AsyncSession, model: Any, row_id: uuid.UUID | None, field: str, what: str) -> Any:
    """The referenced row, or 422 naming ``field`` (another tenant's rows are invisible here)."""
    if row_id is None:
        return None
    row = (await session.execute(select(model).where(model.id == row_id))).scalar_one_or_none()
    if row is None:
        raise sdk.Unprocessable(f"no {what} {row_id}", errors=[sdk.FieldError(field, f"no such {what}")])
    return row


def _changes(patch: msgspec.Struct) -> tuple[dict[str, Any], int | None]:
    values = {f: getattr(patch, f) for f in patch.__struct_fields__ if getattr(patch, f) is not msgspec.UNSET}
    version = values.pop("version", None)
    return values, version


# ---- companies ---------------------------------------------------------------------------------


def company_out(c: Company) -> s.CompanyOut:
    return s.CompanyOut(
        id=c.id,
        name=c.name,
        domain=c.domain,
        industry=c.industry,
        owner_id=c.owner_id,
        version=c.version,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


async def list_companies(
    session: AsyncSession,
    *,
    page: int,
    limit: int,
    sort: str,
    cursor: str | None,
    q: str | None,
    owner_id: uuid.UUID | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> tuple[list[s.CompanyOut], int | None, str | None]:
    where = [*_search(Company, q), *_created(Company, created_after, created_before)]
    if owner_id is not None:
        where.append(Company.owner_id == owner_id)
    rows, total, nxt = await sdk.list_rows(
        session, Company, sorts=COMPANY_SORTS, page=page, limit=limit, sort=sort, cursor=cursor, where=where
    )
    return [company_out(r) for r in rows], total, nxt


async def get_company(session: AsyncSession, company_id: uuid.UUID) -> s.CompanyOut:
    return company_out(await _get(session, Company, company_id, "company"))


async def create_company(session: AsyncSession, actor: sdk.ChangeLog, data: s.CompanyCreate) -> s.CompanyOut:
    await _check_owner(session, data.owner_id)
    row = Company(tenant_id=actor.tenant_id, **msgspec.structs.asdict(data))
    session.add(row)
    await session.flush()
    out = company_out(row)
    await actor.record(session, "crm.company.created", row.id, after=out)
    return out


async def update_company(
    session: AsyncSession, actor: sdk.ChangeLog, company_id: uuid.UUID, patch: s.CompanyPatch, if_match: int | None
) -> s.CompanyOut:
    row = await _get(session, Company, company_id, "company", lock=True)
    values, version = _changes(patch)
    sdk.check_version(row.version, if_match, version)
    if values.get("owner_id") is not None:
        await _check_owner(session, values["owner_id"])
    before = company_out(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    if "name" in values and values["name"] != before.name:
        # Keep the contacts' copy (searched by company name) in step.
        await session.execute(update(Contact).where(Contact.company_id == row.id).values(company_name=row.name))
        await session.execute(update(Deal).where(Deal.company_id == row.id).values(company_name=row.name))
    out = company_out(row)
    await actor.record(session, "crm.company.updated", row.id, before=before, after=out)
    return out


async def delete_company(
    session: AsyncSession, actor: sdk.ChangeLog, company_id: uuid.UUID, if_match: int | None
) -> None:
    row = await _get(session, Company, company_id, "company", lock=True)
    sdk.check_version(row.version, if_match, None, required=False)
    before = company_out(row)
    await session.execute(update(Contact).where(Contact.company_id == row.id).values(company_name=None))
    await session.execute(update(Deal).where(Deal.company_id == row.id).values(company_name=None))
    await session.delete(row)
    await session.flush()
    await actor.record(session, "crm.company.deleted", company_id, before=before)


# ---- contacts ----------------------------------------------------------------------------------


def contact_out(c: Contact) -> s.ContactOut:
    return s.ContactOut(
        id=c.id,
        first_name=c.first_name,
        last_name=c.last_name,
        email=c.email,
        phone=c.phone,
        company_id=c.company_id,
        company_name=c.company_name,
        owner_id=c.owner_id,
        tags=list(c.tags or []),
        version=c.version,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def contact_name(c: Contact | s.ContactOut) -> str:
    """A contact's name as deals show and search it."""
    return f"{c.first_name} {c.last_name}".strip()


async def _flush_contact(session: AsyncSession, email: str | None) -> None:
    """Flush a contact's insert or update; a used e-mail (any case) is 409 naming ``email``."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if "uq_crm_contacts_email" not in str(exc.orig):
            raise
        raise sdk.Conflict(
            f"a contact with the e-mail {email} already exists",
            errors=[sdk.FieldError("email", "already used by another contact")],
        ) from None


async def get_contact(session: AsyncSession, contact_id: uuid.UUID) -> s.ContactOut:
    return contact_out(await _get(session, Contact, contact_id, "contact"))


async def create_contact(session: AsyncSession, actor: sdk.ChangeLog, data: s.ContactCreate) -> s.ContactOut:
    await _check_owner(session, data.owner_id)
    company = await _exists(session, Company, data.company_id, "company_id", "company")
    row = Contact(
        tenant_id=actor.tenant_id,
        **msgspec.structs.asdict(data),
        company_name=company.name if company else None,
    )
    session.add(row)
    await _flush_contact(session, data.email)
    out = contact_out(row)
    await actor.record(session, "crm.contact.created", row.id, after=out)
    return out


async def update_contact(
    session: AsyncSession, actor: sdk.ChangeLog, contact_id: uuid.UUID, patch: s.ContactPatch, if_match: int | None
) -> s.ContactOut:
    row = await _get(session, Contact, contact_id, "contact", lock=True)
    values, version = _changes(patch)
    sdk.check_version(row.version, if_match, version)
    if values.get("owner_id") is not None:
        await _check_owner(session, values["owner_id"])
    before = contact_out(row)
    if "company_id" in values:
        company = await _exists(session, Company, values["company_id"], "company_id", "company")
        values["company_name"] = company.name if company else None
    for name, value in values.items():
        setattr(row, name, value)
    row.version += 1
    row.updated_at = sdk.utcnow()
    await _flush_contact(session, values.get("email"))
    if contact_name(row) != contact_name(before):
        # Keep the deals' copy (searched by contact name) in step.
        await session.execute(update(Deal).where(Deal.contact_id == row.id).values(contact_name=contact_name(row)))
    out = contact_out(row)
    await actor.record(session, "crm.contact.updated", row.id, before=before, after=out)
    return out


async def delete_contact(
    session: AsyncSession, actor: sdk.ChangeLog, contact_id: uuid.UUID, if_match: int | None
) -> None:
    row = await _get(session, Contact, contact_id, "contact", lock=True)
    sdk.check_version(row.version, if_match, None, required=False)
    before = contact_out(row)
    await session.execute(update(Deal).where(Deal.contact_id == row.id).values(contact_name=None))
    await session.delete(row)
    await session.flush()
    await actor.record(session, "crm.contact.deleted", contact_id, before=before)


# ---- pipelines ---------------------------------------------------------------------------------


def _stage_out(st: PipelineStage) -> s.StageOut:
    return s.StageOut(id=st.id, name=st.name, position=st.position, kind=st.kind)  # type: ignore[arg-type]


async def _pipeline_out(session: AsyncSession, p: Pipeline) -> s.PipelineOut:
    stages = (
        await session.execute(
            select(PipelineStage).where(PipelineStage.pipeline_id == p.id).order_by(PipelineStage.position)
        )
    ).scalars()
    return s.PipelineOut(
        id=p.id,
        name=p.name,
        is_default=p.is_default,
        stages=[_stage_out(st) for st in stages],
        created_at=p.created_at,
    )


async def list_pipelines(session: AsyncSession) -> list[s.PipelineOut]:
    rows = (await session.execute(select(Pipeline).order_by(Pipeline.created_at, Pipeline.id))).scalars().all()
    return [await _pipeline_out(session, p) for p in rows]


async def get_pipeline(session: AsyncSession, pipeline_id: uuid.UUID) -> s.PipelineOut:
    return await _pipeline_out(session, await _get(session, Pipeline, pipeline_id, "pipeline"))


async def clear_default_pipeline(session: AsyncSession) -> None:
    """No pipeline is the default any more (before another becomes it)."""
    await session.execute(update(Pipeline).where(Pipeline.is_default).values(is_default=False))
    await session.flush()


async def create_pipeline(session: AsyncSession, actor: sdk.ChangeLog, data: s.PipelineCreate) -> s.PipelineOut:
    if data.is_default:
        await clear_default_pipeline(session)
    row = Pipeline(tenant_id=actor.tenant_id, name=data.name, is_default=data.is_default)
    session.add(row)
    await session.flush()
    for position, stage in enumerate(data.stages):
        session.add(
            PipelineStage(
                tenant_id=actor.tenant_id, pipeline_id=row.id, name=stage.name, position=position, kind=stage.kind
            )
        )
    await session.flush()
    out = await _pipeline_out(session, row)
    await actor.record(session, "crm.pipeline.created", row.id, after=out)
    return out


# ---- deals -------------------------------------------------------------------------------------

_MAX_AMOUNT = Decimal("1e16")


def _check_amount(amount: Decimal) -> None:
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or abs(amount) >= _MAX_AMOUNT or (isinstance(exponent, int) and exponent < -2):
        raise sdk.Unprocessable("invalid amount", errors=[sdk.FieldError("amount", "at most 16 digits and 2 decimals")])


def deal_out(d: Deal) -> s.DealOut:
    return s.DealOut(
        id=d.id,
        title=d.title,
        amount=d.amount,
        currency=d.currency,
        pipeline_id=d.pipeline_id,
        stage_id=d.stage_id,
        company_id=d.company_id,
        contact_id=d.contact_id,
        owner_id=d.owner_id,
        company_name=d.company_name,
        contact_name=d.contact_name,
        version=d.version,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


@dataclass(frozen=True)
class DealFilters:
    """What ``GET /api/crm/deals`` narrows by; ``None`` means no filter."""

    q: str | None = None
    pipeline_id: uuid.UUID | None = None
    stage_id: uuid.UUID | None = None
    company_id: uuid.UUID | None = None
    contact_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    status: str | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


DEAL_STATUSES = ("open", "won", "lost")


def _deal_where(f: DealFilters) -> list[ColumnElement[bool]]:
    where = [*_search(Deal, f.q), *_created(Deal, f.created_after, f.created_before)]
    for column, value in (
        (Deal.pipeline_id, f.pipeline_id),
        (Deal.stage_id, f.stage_id),
        (Deal.company_id, f.company_id),
        (Deal.contact_id, f.contact_id),
        (Deal.owner_id, f.owner_id),
    ):
        if value is not None:
            where.append(column == value)
    if f.status is not None:
        if f.status not in DEAL_STATUSES:
            raise sdk.Unprocessable(
                "unknown status", errors=[sdk.FieldError("status", f"one of {', '.join(DEAL_STATUSES)}")]
            )
        # A deal's status is the kind of the stage it sits in.
        where.append(Deal.stage_id.in_(select(PipelineStage.id).where(PipelineStage.kind == f.status)))
    for field, amount in (("amount_min", f.amount_min), ("amount_max", f.amount_max)):
        if amount is not None and not amount.is_finite():
            raise sdk.Unprocessable(f"invalid {field}", errors=[sdk.FieldError(field, "must be a number")])
    if f.amount_min is not None:
        where.append(Deal.amount >= f.amount_min)
    if f.amount_max is not None:
        where.append(Deal.amount <= f.amount_max)
    return where


async def list_deals(
    session: AsyncSession, *, page: int, limit: int, sort: str, cursor: str | None, filters: DealFilters
) -> tuple[list[s.DealOut], int | None, str | None]:
    rows, total, nxt = await sdk.list_rows(
        session, Deal, sorts=DEAL_SORTS, page=page, limit=limit, sort=sort, cursor=cursor, where=_deal_where(filters)
    )
    return [deal_out(r) for r in rows], total, nxt


async def get_deal(session: AsyncSession, deal_id: uuid.UUID) -> s.DealOut:
    return deal_out(await _get(session, Deal, deal_id, "deal"))


async def _stage_of(session: AsyncSession, pipeline_id: uuid.UUID, stage_id: uuid.UUID | None) -> PipelineStage:
    stmt = select(PipelineStage).where(PipelineStage.pipeline_id == pipeline_id)
    stmt = stmt.where(PipelineStage.id == stage_id) if stage_id else stmt.order_by(PipelineStage.position).limit(1)
    stage = (await session.execute(stmt)).scalar_one_or_none()
    if stage is None:
        raise sdk.Unprocessable(
            "no such stage in the deal's pipeline", errors=[sdk.FieldError("stage_id", "not a stage of the pipeline")]
        )
    return stage


async def _default_pipeline(session: AsyncSession) -> uuid.UUID:
    found = (await session.execute(select(Pipeline.id).where(Pipeline.is_default))).scalar_one_or_none()
    if found is None:
        raise sdk.Unprocessable(
            "no pipeline named and the tenant has no default pipeline",
            errors=[sdk.FieldError("pipeline_id", "required while no pipeline is the default")],
        )
    return found


async def _linked_names(
    session: AsyncSession, company_id: uuid.UUID | None, contact_id: uuid.UUID | None
) -> dict[str, str | None]:
    """The names a deal keeps of its company and contact (422 naming the field if either is missing)."""
    company = await _exists(session, Company, company_id, "company_id", "company")
    contact = await _exists(session, Contact, contact_id, "contact_id", "contact")
    return {
        "company_name": company.name if company else None,
        "contact_name": contact_name(contact) if contact else None,
    }


async def create_deal(session: AsyncSession, actor: sdk.ChangeLog, data: s.DealCreate) -> s.DealOut:
    await _check_owner(session, data.owner_id)
    _check_amount(data.amount)
    pipeline_id = data.pipeline_id or await _default_pipeline(session)
    await _exists(session, Pipeline, pipeline_id, "pipeline_id", "pipeline")
    stage = await _stage_of(session, pipeline_id, data.stage_id)
    values = msgspec.structs.asdict(data)
    values.update(await _linked_names(session, data.company_id, data.contact_id))
    values["pipeline_id"] = pipeline_id
    values["stage_id"] = stage.id
    row = Deal(tenant_id=actor.tenant_id, **values)
    session.add(row)
    await session.flush()
    session.add(
        DealStageHistory(
            tenant_id=actor.tenant_id, deal_id=row.id, from_stage_id=None, to_stage_id=stage.id, actor=actor.name
        )
    )
    await session.flush()
    out = deal_out(row)
    await actor.record(session, "crm.deal.created", row.id, after=out)
    return out


async def update_deal(
    session: AsyncSession, actor: sdk.ChangeLog, deal_id: uuid.UUID, patch: s.DealPatch, if_match: int | None
) -> s.DealOut:
    row = await _get(session, Deal, deal_id, "deal", lock=True)
    values, version = _changes(patch)
    sdk.check_version(row.version, if_match, version)
    if values.get("owner_id") is not None:
        await _check_owner(session, values["owner_id"])
    if "amount" in values:
        _check_amount(values["amount"])
    names = await _linked_names(session, values.get("company_id"), values.get("contact_id"))
    for field in ("company", "contact"):
        if f"{field}_id" in values:
            values[f"{field}_name"] = names[f"{field}_name"]
    before = deal_out(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    out = deal_out(row)
    await actor.record(session, "crm.deal.updated", row.id, before=before, after=out)
    return out


async def move_deal(
    session: AsyncSession, actor: sdk.ChangeLog, deal_id: uuid.UUID, stage_id: uuid.UUID, if_match: int | None = None
) -> s.DealOut:
    """Put a deal in another stage of its pipeline: history, audit, ``crm.deal.stage_changed`` and,
    for a won or lost stage, ``crm.deal.won`` / ``crm.deal.lost``. Moving to the current stage is a no-op."""
    row = await _get(session, Deal, deal_id, "deal", lock=True)
    sdk.check_version(row.version, if_match, None, required=False)
    stage = await _stage_of(session, row.pipeline_id, stage_id)
    if stage.id == row.stage_id:
        return deal_out(row)
    before = deal_out(row)
    previous = row.stage_id
    row.stage_id = stage.id
    row.version += 1
    row.updated_at = sdk.utcnow()
    session.add(
        DealStageHistory(
            tenant_id=actor.tenant_id, deal_id=row.id, from_stage_id=previous, to_stage_id=stage.id, actor=actor.name
        )
    )
    await session.flush()
    out = deal_out(row)
    await actor.audit(
        session,
        action="crm.deal.stage_changed",
        resource_type="crm.deal",
        resource_id=str(row.id),
        before=_jsonable(before),
        after=_jsonable(out),
    )
    payload = {
        "deal_id": str(row.id),
        "pipeline_id": str(row.pipeline_id),
        "from_stage_id": str(previous),
        "to_stage_id": str(stage.id),
        "stage_name": stage.name,
        "stage_kind": stage.kind,
        "amount": str(row.amount),
        "currency": row.currency,
    }
    await actor.emit(session, event="crm.deal.stage_changed", payload=payload)
    if stage.kind in ("won", "lost"):
        await actor.emit(session, event=f"crm.deal.{stage.kind}", payload=payload)
    return out


async def deal_history(session: AsyncSession, deal_id: uuid.UUID) -> list[s.StageHistoryEntry]:
    await _get(session, Deal, deal_id, "deal")
    rows = (
        await session.execute(
            select(DealStageHistory)
            .where(DealStageHistory.deal_id == deal_id)
            .order_by(DealStageHistory.created_at, DealStageHistory.id)
        )
    ).scalars()
    return [
        s.StageHistoryEntry(
            from_stage_id=h.from_stage_id, to_stage_id=h.to_stage_id, actor=h.actor, moved_at=h.created_at
        )
        for h in rows
    ]


async def delete_deal(session: AsyncSession, actor: sdk.ChangeLog, deal_id: uuid.UUID, if_match: int | None) -> None:
    row = await _get(session, Deal, deal_id, "deal", lock=True)
    sdk.check_version(row.version, if_match, None, required=False)
    before = deal_out(row)
    await session.delete(row)
    await session.flush()
    await actor.record(session, "crm.deal.deleted", deal_id, before=before)


# ---- activities --------------------------------------------------------------------------------


def activity_out(a: Activity) -> s.ActivityOut:
    return s.ActivityOut(
        id=a.id,
        kind=a.kind,
        subject=a.subject,
        body=a.body,
        due_at=a.due_at,
        done=a.done,
        contact_id=a.contact_id,
        company_id=a.company_id,
        deal_id=a.deal_id,
        version=a.version,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


@dataclass(frozen=True)
class ActivityFilters:
    """What ``GET /api/crm/activities`` narrows by; ``None`` means no filter."""

    kind: str | None = None
    contact_id: uuid.UUID | None = None
    company_id: uuid.UUID | None = None
    deal_id: uuid.UUID | None = None
    done: bool | None = None
    due_after: datetime | None = None
    due_before: datetime | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


ACTIVITY_KINDS = ("note", "call", "meeting", "task")


async def list_activities(
    session: AsyncSession, *, page: int, limit: int, sort: str, cursor: str | None, filters: ActivityFilters
) -> tuple[list[s.ActivityOut], int | None, str | None]:
    f = filters
    if f.kind is not None and f.kind not in ACTIVITY_KINDS:
        raise sdk.Unprocessable("unknown kind", errors=[sdk.FieldError("kind", f"one of {', '.join(ACTIVITY_KINDS)}")])
    where = _created(Activity, f.created_after, f.created_before)
    for column, value in (
        (Activity.kind, f.kind),
        (Activity.contact_id, f.contact_id),
        (Activity.company_id, f.company_id),
        (Activity.deal_id, f.deal_id),
        (Activity.done, f.done),
    ):
        if value is not None:
            where.append(column == value)
    if f.due_after is not None:
        where.append(Activity.due_at >= f.due_after)
    if f.due_before is not None:
        where.append(Activity.due_at < f.due_before)
    rows, total, nxt = await sdk.list_rows(
        session, Activity, sorts=ACTIVITY_SORTS, page=page, limit=limit, sort=sort, cursor=cursor, where=where
    )
    return [activity_out(r) for r in rows], total, nxt


async def get_activity(session: AsyncSession, activity_id: uuid.UUID) -> s.ActivityOut:
    return activity_out(await _get(session, Activity, activity_id, "activity"))


async def create_activity(session: AsyncSession, actor: sdk.ChangeLog, data: s.ActivityCreate) -> s.ActivityOut:
    if data.contact_id is None and data.company_id is None and data.deal_id is None:
        raise sdk.Unprocessable(
            "an activity is about a contact, a company or a deal",
            errors=[
                sdk.FieldError(f, "give at least one of contact_id, company_id, deal_id")
                for f in ("contact_id", "company_id", "deal_id")
            ],
        )
    await _exists(session, Contact, data.contact_id, "contact_id", "contact")
    await _exists(session, Company, data.company_id, "company_id", "company")
    await _exists(session, Deal, data.deal_id, "deal_id", "deal")
    row = Activity(tenant_id=actor.tenant_id, **msgspec.structs.asdict(data))
    session.add(row)
    await session.flush()
    out = activity_out(row)
    await actor.record(session, "crm.activity.created", row.id, after=out)
    return out


async def update_activity(
    session: AsyncSession, actor: sdk.ChangeLog, activity_id: uuid.UUID, patch: s.ActivityPatch, if_match: int | None
) -> s.ActivityOut:
    row = await _get(session, Activity, activity_id, "activity", lock=True)
    values, version = _changes(patch)
    sdk.check_version(row.version, if_match, version)
    before = activity_out(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    out = activity_out(row)
    await actor.record(session, "crm.activity.updated", row.id, before=before, after=out)
    return out


async def delete_activity(
    session: AsyncSession, actor: sdk.ChangeLog, activity_id: uuid.UUID, if_match: int | None
) -> None:
    row = await _get(session, Activity, activity_id, "activity", lock=True)
    sdk.check_version(row.version, if_match, None, required=False)
    before = activity_out(row)
    await session.delete(row)
    await session.flush()
    await actor.record(session, "crm.activity.deleted", activity_id, before=before)
