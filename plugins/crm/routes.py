"""HTTP routes under ``/api/crm``: parse, call the service in one tenant transaction, answer.

Lists answer ``{"<things>": [...], "pagination": {...}}``; with ``cursor`` (empty to start) they
answer ``{"<things>": [...], "next_cursor": ...}`` instead. ``limit`` above 100 is refused (422).
Single records carry an ``ETag`` (their version); PATCH needs ``If-Match`` or ``version``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from litestar import Request, Response, delete, get, patch, post

from kernel import sdk
from plugins.crm import contact_list, csvio, pipelines, service
from plugins.crm import schemas as s

__all__ = ["ROUTES"]


def _actor(services: sdk.Services, request: Request[Any, Any, Any], tenant: sdk.Tenant) -> sdk.ChangeLog:
    """Changes made by the request's principal in its tenant."""
    return services.changes.by(sdk.Actor.of_request(request), tenant.id)


def _if_match(request: Request[Any, Any, Any]) -> int | None:
    return sdk.parse_if_match(request.headers.get("if-match"))


def _tagged(body: Any, version: int, status: int = 200) -> Response[Any]:
    return Response(content=body, status_code=status, headers={"ETag": sdk.etag(version)})


# ---- contacts ----------------------------------------------------------------------------------


@get("/api/crm/contacts", opt={"permission": "crm.contacts.read"}, tags=["crm"])
async def list_contacts(
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at",
    q: str | None = None,
    cursor: str | None = None,
    company_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> s.ContactPage | s.ContactCursorPage:
    """Contacts, newest first by default; ``sort`` is ``created_at``, ``-created_at``, ``last_name``
    or ``email``; ``q`` searches names, e-mail and company name (web search syntax)."""
    async with services.data.read(tenant.id) as reader:
        rows, total, nxt = await contact_list.list_contacts(
            reader,
            page=page,
            limit=limit,
            sort=sort,
            cursor=cursor,
            q=q,
            company_id=company_id,
            owner_id=owner_id,
            created_after=created_after,
            created_before=created_before,
        )
    if total is None:
        return s.ContactCursorPage(contacts=rows, next_cursor=nxt)
    return s.ContactPage(contacts=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/crm/contacts", opt={"permission": "crm.contacts.write"}, tags=["crm"])
async def create_contact(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.ContactCreate
) -> Response[s.ContactOut]:
    """Create a contact; an e-mail already used in the tenant (any case) answers 409."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_contact(session, _actor(services, request, tenant), data)
    return _tagged(out, out.version, 201)


@get("/api/crm/contacts/{contact_id:uuid}", opt={"permission": "crm.contacts.read"}, tags=["crm"])
async def get_contact(tenant: sdk.Tenant, services: sdk.Services, contact_id: uuid.UUID) -> Response[s.ContactOut]:
    async with services.data.tenant(tenant.id) as session:
        out = await service.get_contact(session, contact_id)
    return _tagged(out, out.version)


@patch("/api/crm/contacts/{contact_id:uuid}", opt={"permission": "crm.contacts.write"}, tags=["crm"])
async def update_contact(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    contact_id: uuid.UUID,
    data: s.ContactPatch,
) -> Response[s.ContactOut]:
    """Change a contact. Needs ``If-Match`` (stale: 412) or ``version`` (stale: 409); neither: 428."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_contact(
            session, _actor(services, request, tenant), contact_id, data, _if_match(request)
        )
    return _tagged(out, out.version)


@delete("/api/crm/contacts/{contact_id:uuid}", opt={"permission": "crm.contacts.write"}, tags=["crm"])
async def delete_contact(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, contact_id: uuid.UUID
) -> None:
    """Delete a contact (``If-Match`` optional; stale: 412)."""
    async with services.data.tenant(tenant.id) as session:
        await service.delete_contact(session, _actor(services, request, tenant), contact_id, _if_match(request))


# ---- companies ---------------------------------------------------------------------------------


@get("/api/crm/companies", opt={"permission": "crm.companies.read"}, tags=["crm"])
async def list_companies(
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at",
    q: str | None = None,
    cursor: str | None = None,
    owner_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> s.CompanyPage | s.CompanyCursorPage:
    """Companies; ``sort`` is ``created_at``, ``-created_at`` or ``name``; ``q`` searches name and domain."""
    async with services.data.tenant(tenant.id) as session:
        rows, total, nxt = await service.list_companies(
            session,
            page=page,
            limit=limit,
            sort=sort,
            cursor=cursor,
            q=q,
            owner_id=owner_id,
            created_after=created_after,
            created_before=created_before,
        )
    if total is None:
        return s.CompanyCursorPage(companies=rows, next_cursor=nxt)
    return s.CompanyPage(companies=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/crm/companies", opt={"permission": "crm.companies.write"}, tags=["crm"])
async def create_company(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.CompanyCreate
) -> Response[s.CompanyOut]:
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_company(session, _actor(services, request, tenant), data)
    return _tagged(out, out.version, 201)


@get("/api/crm/companies/{company_id:uuid}", opt={"permission": "crm.companies.read"}, tags=["crm"])
async def get_company(tenant: sdk.Tenant, services: sdk.Services, company_id: uuid.UUID) -> Response[s.CompanyOut]:
    async with services.data.tenant(tenant.id) as session:
        out = await service.get_company(session, company_id)
    return _tagged(out, out.version)


@patch("/api/crm/companies/{company_id:uuid}", opt={"permission": "crm.companies.write"}, tags=["crm"])
async def update_company(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    company_id: uuid.UUID,
    data: s.CompanyPatch,
) -> Response[s.CompanyOut]:
    """Change a company. Needs ``If-Match`` (stale: 412) or ``version`` (stale: 409); neither: 428."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_company(
            session, _actor(services, request, tenant), company_id, data, _if_match(request)
        )
    return _tagged(out, out.version)


@delete("/api/crm/companies/{company_id:uuid}", opt={"permission": "crm.companies.write"}, tags=["crm"])
async def delete_company(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, company_id: uuid.UUID
) -> None:
    """Delete a company; its contacts stay, without a company."""
    async with services.data.tenant(tenant.id) as session:
        await service.delete_company(session, _actor(services, request, tenant), company_id, _if_match(request))


# ---- pipelines ---------------------------------------------------------------------------------


@get("/api/crm/pipelines", opt={"permission": "crm.pipelines.read"}, tags=["crm"])
async def list_pipelines(tenant: sdk.Tenant, services: sdk.Services) -> s.PipelineList:
    """Every pipeline with its stages in order."""
    async with services.data.tenant(tenant.id) as session:
        return s.PipelineList(pipelines=await service.list_pipelines(session))


@post("/api/crm/pipelines", opt={"permission": "crm.pipelines.write"}, tags=["crm"])
async def create_pipeline(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.PipelineCreate
) -> s.PipelineOut:
    """Create a pipeline with its stages (in the order given; each ``open``, ``won`` or ``lost``)."""
    async with services.data.tenant(tenant.id) as session:
        return await service.create_pipeline(session, _actor(services, request, tenant), data)


@get("/api/crm/pipelines/{pipeline_id:uuid}", opt={"permission": "crm.pipelines.read"}, tags=["crm"])
async def get_pipeline(tenant: sdk.Tenant, services: sdk.Services, pipeline_id: uuid.UUID) -> s.PipelineOut:
    async with services.data.tenant(tenant.id) as session:
        return await service.get_pipeline(session, pipeline_id)


@patch("/api/crm/pipelines/{pipeline_id:uuid}", opt={"permission": "crm.pipelines.write"}, tags=["crm"])
async def update_pipeline(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    pipeline_id: uuid.UUID,
    data: s.PipelinePatch,
) -> s.PipelineOut:
    """Rename a pipeline; ``is_default: true`` makes it the tenant's default (and no other)."""
    async with services.data.tenant(tenant.id) as session:
        return await pipelines.update_pipeline(session, _actor(services, request, tenant), pipeline_id, data)


@delete("/api/crm/pipelines/{pipeline_id:uuid}", opt={"permission": "crm.pipelines.write"}, tags=["crm"])
async def delete_pipeline(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, pipeline_id: uuid.UUID
) -> None:
    """Delete a pipeline and its stages; 409 (with ``deals``, how many) while deals use it."""
    async with services.data.tenant(tenant.id) as session:
        await pipelines.delete_pipeline(session, _actor(services, request, tenant), pipeline_id)


STAGES = "/api/crm/pipelines/{pipeline_id:uuid}/stages"


@post(STAGES, opt={"permission": "crm.pipelines.write"}, tags=["crm"])
async def add_stage(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    pipeline_id: uuid.UUID,
    data: s.StageCreate,
) -> s.PipelineOut:
    """Add a stage at ``position`` (default last); answers the pipeline with its stages renumbered."""
    async with services.data.tenant(tenant.id) as session:
        return await pipelines.add_stage(session, _actor(services, request, tenant), pipeline_id, data)


@patch(STAGES + "/{stage_id:uuid}", opt={"permission": "crm.pipelines.write"}, tags=["crm"])
async def update_stage(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    pipeline_id: uuid.UUID,
    stage_id: uuid.UUID,
    data: s.StagePatch,
) -> s.PipelineOut:
    """Rename a stage, set its ``kind`` (open, won, lost) or move it to ``position``; answers the pipeline."""
    async with services.data.tenant(tenant.id) as session:
        return await pipelines.update_stage(session, _actor(services, request, tenant), pipeline_id, stage_id, data)


@delete(STAGES + "/{stage_id:uuid}", opt={"permission": "crm.pipelines.write"}, tags=["crm"], status_code=200)
async def delete_stage(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    pipeline_id: uuid.UUID,
    stage_id: uuid.UUID,
    move_to: uuid.UUID | None = None,
) -> s.PipelineOut:
    """Delete a stage; while deals sit in it, 409 (with ``deals``, how many) unless ``move_to``
    names another stage of the pipeline to move them to. Answers the pipeline."""
    async with services.data.tenant(tenant.id) as session:
        return await pipelines.delete_stage(session, _actor(services, request, tenant), pipeline_id, stage_id, move_to)


# ---- deals -------------------------------------------------------------------------------------


@get("/api/crm/deals", opt={"permission": "crm.deals.read"}, tags=["crm"])
async def list_deals(
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at",
    q: str | None = None,
    cursor: str | None = None,
    pipeline_id: uuid.UUID | None = None,
    stage_id: uuid.UUID | None = None,
    company_id: uuid.UUID | None = None,
    contact_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
    status: str | None = None,
    amount_min: Decimal | None = None,
    amount_max: Decimal | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> s.DealPage | s.DealCursorPage:
    """Deals; ``sort`` is ``created_at``, ``-created_at`` (default), ``amount``, ``-amount``, ``title``
    or ``-updated_at``; ``status`` is the kind of the deal's stage (``open``, ``won``, ``lost``);
    ``amount_min``/``amount_max`` are inclusive; ``q`` searches the title and the company's and
    contact's names (web search syntax)."""
    filters = service.DealFilters(
        q=q,
        pipeline_id=pipeline_id,
        stage_id=stage_id,
        company_id=company_id,
        contact_id=contact_id,
        owner_id=owner_id,
        status=status,
        amount_min=amount_min,
        amount_max=amount_max,
        created_after=created_after,
        created_before=created_before,
    )
    async with services.data.tenant(tenant.id) as session:
        rows, total, nxt = await service.list_deals(
            session, page=page, limit=limit, sort=sort, cursor=cursor, filters=filters
        )
    if total is None:
        return s.DealCursorPage(deals=rows, next_cursor=nxt)
    return s.DealPage(deals=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/crm/deals", opt={"permission": "crm.deals.write"}, tags=["crm"])
async def create_deal(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.DealCreate
) -> Response[s.DealOut]:
    """Create a deal in a pipeline (in its first stage unless ``stage_id`` says otherwise)."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_deal(session, _actor(services, request, tenant), data)
    return _tagged(out, out.version, 201)


@get("/api/crm/deals/{deal_id:uuid}", opt={"permission": "crm.deals.read"}, tags=["crm"])
async def get_deal(tenant: sdk.Tenant, services: sdk.Services, deal_id: uuid.UUID) -> Response[s.DealOut]:
    async with services.data.tenant(tenant.id) as session:
        out = await service.get_deal(session, deal_id)
    return _tagged(out, out.version)


@patch("/api/crm/deals/{deal_id:uuid}", opt={"permission": "crm.deals.write"}, tags=["crm"])
async def update_deal(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, deal_id: uuid.UUID, data: s.DealPatch
) -> Response[s.DealOut]:
    """Change a deal (not its stage: see ``/move``). Needs ``If-Match`` or ``version``."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_deal(session, _actor(services, request, tenant), deal_id, data, _if_match(request))
    return _tagged(out, out.version)


@post("/api/crm/deals/{deal_id:uuid}/move", opt={"permission": "crm.deals.write"}, tags=["crm"], status_code=200)
async def move_deal(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, deal_id: uuid.UUID, data: s.DealMove
) -> Response[s.DealOut]:
    """Move a deal to another stage of its pipeline; records the history and emits
    ``crm.deal.stage_changed`` (and ``crm.deal.won`` / ``crm.deal.lost``)."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.move_deal(
            session, _actor(services, request, tenant), deal_id, data.stage_id, _if_match(request)
        )
    return _tagged(out, out.version)


@get("/api/crm/deals/{deal_id:uuid}/history", opt={"permission": "crm.deals.read"}, tags=["crm"])
async def deal_history(tenant: sdk.Tenant, services: sdk.Services, deal_id: uuid.UUID) -> list[s.StageHistoryEntry]:
    """The deal's stages, oldest first (the first entry is where it was created)."""
    async with services.data.tenant(tenant.id) as session:
        return await service.deal_history(session, deal_id)


@delete("/api/crm/deals/{deal_id:uuid}", opt={"permission": "crm.deals.write"}, tags=["crm"])
async def delete_deal(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, deal_id: uuid.UUID
) -> None:
    async with services.data.tenant(tenant.id) as session:
        await service.delete_deal(session, _actor(services, request, tenant), deal_id, _if_match(request))


# ---- activities --------------------------------------------------------------------------------


@get("/api/crm/activities", opt={"permission": "crm.activities.read"}, tags=["crm"])
async def list_activities(
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at",
    cursor: str | None = None,
    kind: str | None = None,
    contact_id: uuid.UUID | None = None,
    company_id: uuid.UUID | None = None,
    deal_id: uuid.UUID | None = None,
    done: bool | None = None,
    due_after: datetime | None = None,
    due_before: datetime | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> s.ActivityPage | s.ActivityCursorPage:
    """Activities, filtered by ``kind``, the contact, company or deal they are about, ``done`` and
    the due and creation dates (``*_after`` inclusive, ``*_before`` exclusive); ``sort`` is
    ``created_at``, ``-created_at`` (default), ``due_at`` or ``-due_at``."""
    filters = service.ActivityFilters(
        kind=kind,
        contact_id=contact_id,
        company_id=company_id,
        deal_id=deal_id,
        done=done,
        due_after=due_after,
        due_before=due_before,
        created_after=created_after,
        created_before=created_before,
    )
    async with services.data.tenant(tenant.id) as session:
        rows, total, nxt = await service.list_activities(
            session, page=page, limit=limit, sort=sort, cursor=cursor, filters=filters
        )
    if total is None:
        return s.ActivityCursorPage(activities=rows, next_cursor=nxt)
    return s.ActivityPage(activities=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/crm/activities", opt={"permission": "crm.activities.write"}, tags=["crm"])
async def create_activity(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.ActivityCreate
) -> Response[s.ActivityOut]:
    """Log a note, call, meeting or task about at least one contact, company or deal (else 422)."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_activity(session, _actor(services, request, tenant), data)
    return _tagged(out, out.version, 201)


@get("/api/crm/activities/{activity_id:uuid}", opt={"permission": "crm.activities.read"}, tags=["crm"])
async def get_activity(tenant: sdk.Tenant, services: sdk.Services, activity_id: uuid.UUID) -> Response[s.ActivityOut]:
    async with services.data.tenant(tenant.id) as session:
        out = await service.get_activity(session, activity_id)
    return _tagged(out, out.version)


@patch("/api/crm/activities/{activity_id:uuid}", opt={"permission": "crm.activities.write"}, tags=["crm"])
async def update_activity(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    activity_id: uuid.UUID,
    data: s.ActivityPatch,
) -> Response[s.ActivityOut]:
    """Change an activity (e.g. mark a task done). Needs ``If-Match`` or ``version``."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_activity(
            session, _actor(services, request, tenant), activity_id, data, _if_match(request)
        )
    return _tagged(out, out.version)


@delete("/api/crm/activities/{activity_id:uuid}", opt={"permission": "crm.activities.write"}, tags=["crm"])
async def delete_activity(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, activity_id: uuid.UUID
) -> None:
    async with services.data.tenant(tenant.id) as session:
        await service.delete_activity(session, _actor(services, request, tenant), activity_id, _if_match(request))


# ---- CSV ---------------------------------------------------------------------------------------


def _mode(mode: str) -> csvio.Mode:
    if mode not in ("all_or_nothing", "per_row"):
        raise sdk.Unprocessable("unknown mode", errors=[sdk.FieldError("mode", "all_or_nothing or per_row")])
    return mode  # type: ignore[return-value]


CSV_BODY = {"request_media_type": "text/csv"}  # the body is read raw; this documents it (kernel.http.openapi)


def _csv(text: str, name: str) -> Response[str]:
    return Response(
        content=text,
        media_type="text/csv",  # Litestar adds "; charset=utf-8" to text types
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@get("/api/crm/contacts/export", opt={"permission": "crm.contacts.read"}, tags=["crm"], media_type="text/csv")
async def export_contacts(tenant: sdk.Tenant, services: sdk.Services) -> Response[str]:
    """Every contact as CSV, oldest first (``company`` is the company's name, ``tags`` joined by ``;``)."""
    async with services.data.tenant(tenant.id) as session:
        return _csv(await csvio.export_contacts(session), "contacts")


@post("/api/crm/contacts/import", opt={"permission": "crm.contacts.write", **CSV_BODY}, tags=["crm"], status_code=200)
async def import_contacts(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, mode: str = "all_or_nothing"
) -> s.ImportReport:
    """Import contacts from a CSV body (``first_name`` required; ``company`` names an existing
    company). ``all_or_nothing``: any invalid row and nothing is imported (422 listing the rows);
    ``per_row``: valid rows are imported and the others listed."""
    chosen = _mode(mode)
    body = await request.body()
    async with services.data.tenant(tenant.id) as session:
        return await csvio.import_contacts(session, _actor(services, request, tenant), body, chosen)


@get("/api/crm/companies/export", opt={"permission": "crm.companies.read"}, tags=["crm"], media_type="text/csv")
async def export_companies(tenant: sdk.Tenant, services: sdk.Services) -> Response[str]:
    """Every company as CSV, oldest first."""
    async with services.data.tenant(tenant.id) as session:
        return _csv(await csvio.export_companies(session), "companies")


@post("/api/crm/companies/import", opt={"permission": "crm.companies.write", **CSV_BODY}, tags=["crm"], status_code=200)
async def import_companies(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, mode: str = "all_or_nothing"
) -> s.ImportReport:
    """Import companies from a CSV body (``name`` required); modes as for contacts."""
    chosen = _mode(mode)
    body = await request.body()
    async with services.data.tenant(tenant.id) as session:
        return await csvio.import_companies(session, _actor(services, request, tenant), body, chosen)


ROUTES: list[Any] = [
    list_contacts,
    create_contact,
    get_contact,
    update_contact,
    delete_contact,
    list_companies,
    create_company,
    get_company,
    update_company,
    delete_company,
    list_pipelines,
    create_pipeline,
    get_pipeline,
    update_pipeline,
    delete_pipeline,
    add_stage,
    update_stage,
    delete_stage,
    list_deals,
    create_deal,
    get_deal,
    update_deal,
    move_deal,
    deal_history,
    delete_deal,
    list_activities,
    create_activity,
    get_activity,
    update_activity,
    delete_activity,
    export_contacts,
    import_contacts,
    export_companies,
    import_companies,
]
