"""CSV export and import of contacts and companies.

Export writes a header row and one row per record. Cells that a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return) are written with a
leading ``'``; import removes it again, so an export imports back unchanged.

Import validates every row before it writes anything and reports errors by row number as a
spreadsheet shows it (the header is row 1, the first record row 2):

- ``all_or_nothing`` (the default): any error and nothing is imported;
- ``per_row``: the valid rows are imported, the others reported.

One audit row records the import (mode, counts); each imported record emits its usual
``crm.<entity>.created`` event, so workflows see imported contacts like any others.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm.models import Company, Contact
from plugins.crm.service import MEMBERS

__all__ = [
    "COMPANY_COLUMNS",
    "CONTACT_COLUMNS",
    "Mode",
    "export_companies",
    "export_contacts",
    "import_companies",
    "import_contacts",
    "parse_csv",
]

Mode = Literal["all_or_nothing", "per_row"]
Progress = Callable[[int], None]

CONTACT_COLUMNS = ("id", "first_name", "last_name", "email", "phone", "company", "owner_id", "tags", "created_at")
COMPANY_COLUMNS = ("id", "name", "domain", "industry", "owner_id", "created_at")
# Written by export for reference, ignored by import.
_EXPORT_ONLY = {"id", "created_at", "updated_at", "version"}
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_BATCH = 500
TAG_SEPARATOR = ";"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:2] and text[1:].startswith(_FORMULA) else text


def _write(columns: tuple[str, ...], rows: Iterator[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


async def export_contacts(session: AsyncSession) -> str:
    rows = (await session.execute(select(Contact).order_by(Contact.created_at, Contact.id))).scalars()
    return _write(
        CONTACT_COLUMNS,
        (
            [
                c.id,
                c.first_name,
                c.last_name,
                c.email,
                c.phone,
                c.company_name,
                c.owner_id,
                TAG_SEPARATOR.join(c.tags or []),
                c.created_at.isoformat(),
            ]
            for c in rows
        ),
    )


async def export_companies(session: AsyncSession) -> str:
    rows = (await session.execute(select(Company).order_by(Company.created_at, Company.id))).scalars()
    return _write(
        COMPANY_COLUMNS,
        ([c.id, c.name, c.domain, c.industry, c.owner_id, c.created_at.isoformat()] for c in rows),
    )


# ---- import ------------------------------------------------------------------------------------


def parse_csv(body: bytes, columns: tuple[str, ...], required: str) -> list[tuple[int, dict[str, str]]]:
    """(row number, cells by column) for each non-empty record row; 422 for an unusable file."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise sdk.Unprocessable("the file is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if required not in header:
            raise sdk.Unprocessable(f"the header row must name a {required} column")
        unknown = sorted(set(header) - set(columns) - _EXPORT_ONLY - {""})
        if unknown:
            raise sdk.Unprocessable(f"unknown columns: {', '.join(unknown)}; known: {', '.join(columns)}")
        rows = []
        for number, record in enumerate(reader, start=2):
            if not any(cell.strip() for cell in record):
                continue
            cells = {h: _uncell(v.strip()) for h, v in zip(header, record, strict=False) if h and h not in _EXPORT_ONLY}
            if len(record) > len(header):
                cells["__extra__"] = "x"
            rows.append((number, cells))
    except csv.Error as exc:
        raise sdk.Unprocessable(f"the file is not valid CSV: {exc}") from None
    return rows


def _validation_error(row: int, exc: msgspec.ValidationError) -> s.ImportRowError:
    message = str(exc)
    field = "row"
    if " - at `$." in message:
        message, _, where = message.rpartition(" - at `$.")
        field = where.rstrip("`").split("[")[0]
    elif "missing required field `" in message:
        field = message.split("`")[1]
    if "matching regex" in message:
        message = f"not a valid {field.replace('_', ' ')}"
    return s.ImportRowError(row=row, field=field, message=message)


def _blank_to_none(cells: dict[str, str], *names: str) -> None:
    for name in names:
        if name in cells and cells[name] == "":
            cells[name] = None  # type: ignore[assignment]


class _Plan:
    """The rows that passed validation, and the errors of those that did not."""

    def __init__(self) -> None:
        self.good: list[tuple[int, dict[str, Any]]] = []
        self.errors: list[s.ImportRowError] = []


async def _contact_plan(session: AsyncSession, rows: list[tuple[int, dict[str, str]]]) -> _Plan:
    plan = _Plan()
    # Every company by its name; a name two companies share links nothing (a row error says so).
    companies: dict[str, list[tuple[uuid.UUID, str]]] = {}
    for cid, name in (await session.execute(select(Company.id, Company.name))).tuples():
        companies.setdefault(name.lower(), []).append((cid, name))
    members = await _members(session, rows)
    emails = {r[1].get("email", "").lower() for r in rows if r[1].get("email")}
    taken = set()
    if emails:
        taken = set(
            (await session.execute(select(func.lower(Contact.email)).where(func.lower(Contact.email).in_(emails))))
            .scalars()
            .all()
        )
    seen: dict[str, int] = {}
    for number, cells in rows:
        if "__extra__" in cells:
            plan.errors.append(s.ImportRowError(row=number, field="row", message="more cells than header columns"))
            continue
        cells = dict(cells)
        company = cells.pop("company", "")
        tags = cells.pop("tags", "")
        _blank_to_none(cells, "email", "phone", "owner_id")
        data: dict[str, Any] = {**cells, "tags": [t.strip() for t in tags.split(TAG_SEPARATOR) if t.strip()]}
        try:
            contact = msgspec.convert(data, s.ContactCreate, strict=False)
        except msgspec.ValidationError as exc:
            plan.errors.append(_validation_error(number, exc))
            continue
        values = msgspec.structs.asdict(contact)
        if contact.owner_id is not None and contact.owner_id not in members:
            plan.errors.append(_not_a_member(number))
            continue
        if company:
            found = companies.get(company.lower(), [])
            if len(found) != 1:
                message = (
                    f"no company named {company!r}" if not found
                    else f"{len(found)} companies are named {company!r}: rename one or link the contact by hand"
                )
                plan.errors.append(s.ImportRowError(row=number, field="company", message=message))
                continue
            values["company_id"], values["company_name"] = found[0]
        if contact.email:
            key = contact.email.lower()
            if key in taken:
                plan.errors.append(
                    s.ImportRowError(row=number, field="email", message="already used by another contact")
                )
                continue
            if key in seen:
                plan.errors.append(
                    s.ImportRowError(row=number, field="email", message=f"also on row {seen[key]} of this file")
                )
                continue
            seen[key] = number
        plan.good.append((number, values))
    return plan


async def _members(session: AsyncSession, rows: list[tuple[int, dict[str, str]]]) -> set[uuid.UUID]:
    """The ``owner_id`` values of ``rows`` that are members of the session's tenant."""
    owners = set()
    for _, cells in rows:
        try:
            owners.add(uuid.UUID(cells.get("owner_id") or ""))
        except ValueError:
            continue  # blank or malformed: the row's own validation reports it
    return {owner for owner in owners if await MEMBERS.is_member(session, owner)}


def _not_a_member(row: int) -> s.ImportRowError:
    """As the JSON API answers (422 on ``owner_id``), for one row."""
    return s.ImportRowError(row=row, field="owner_id", message="not a member of this tenant")


async def _company_plan(session: AsyncSession, rows: list[tuple[int, dict[str, str]]]) -> _Plan:
    plan = _Plan()
    members = await _members(session, rows)
    for number, cells in rows:
        if "__extra__" in cells:
            plan.errors.append(s.ImportRowError(row=number, field="row", message="more cells than header columns"))
            continue
        cells = dict(cells)
        _blank_to_none(cells, "domain", "industry", "owner_id")
        try:
            company = msgspec.convert(cells, s.CompanyCreate, strict=False)
        except msgspec.ValidationError as exc:
            plan.errors.append(_validation_error(number, exc))
            continue
        if company.owner_id is not None and company.owner_id not in members:
            plan.errors.append(_not_a_member(number))
            continue
        plan.good.append((number, msgspec.structs.asdict(company)))
    return plan


async def _write_rows(
    session: AsyncSession,
    actor: sdk.ChangeLog,
    model: Any,
    plan: _Plan,
    mode: Mode,
    event: str,
    progress: Progress | None,
) -> int:
    """Insert the planned rows in batches. A batch that fails (a row added meanwhile took an
    e-mail) is retried row by row in per_row mode, so only the conflicting rows are reported."""
    imported = 0
    for start in range(0, len(plan.good), _BATCH):
        batch = plan.good[start : start + _BATCH]
        try:
            async with session.begin_nested():
                written = await _insert(session, actor, model, [values for _, values in batch])
        except IntegrityError:
            if mode == "all_or_nothing":
                raise sdk.Conflict("a row conflicts with a record saved meanwhile; nothing was imported") from None
            written = []
            for number, values in batch:
                try:
                    async with session.begin_nested():
                        written += await _insert(session, actor, model, [values])
                except IntegrityError:
                    plan.errors.append(
                        s.ImportRowError(row=number, field="email", message="already used by another contact")
                    )
        for row in written:
            # The record as the API shows it, so handlers of imported and created records agree.
            payload = {k: v for k, v in row.items() if k != "tenant_id"}
            payload["imported"] = True
            await actor.emit(session, event=event, payload=msgspec.to_builtins(payload))
        imported += len(written)
        if progress is not None:
            progress(len(batch))
    return imported


async def _insert(
    session: AsyncSession, actor: sdk.ChangeLog, model: Any, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    now = sdk.utcnow()
    values = [
        {**r, "tenant_id": actor.tenant_id, "id": sdk.uuid7(), "created_at": now, "updated_at": now, "version": 1}
        for r in rows
    ]
    for v in values:
        if model is Contact:
            v.setdefault("company_id", None)
            v.setdefault("company_name", None)
    await session.execute(insert(model), values)
    return values


async def _run(
    session: AsyncSession,
    actor: sdk.ChangeLog,
    plan: _Plan,
    model: Any,
    mode: Mode,
    entity: str,
    total: int,
    progress: Progress | None,
) -> s.ImportReport:
    if plan.errors and mode == "all_or_nothing":
        errors = sorted(plan.errors, key=lambda e: e.row)
        raise sdk.Unprocessable(
            f"{len(errors)} row(s) failed validation; nothing was imported",
            extra={"imported": 0, "errors": msgspec.to_builtins(errors)},
        )
    if progress is not None and plan.errors:
        progress(len(plan.errors))  # rejected rows are done with, too
    imported = await _write_rows(session, actor, model, plan, mode, f"crm.{entity}.created", progress)
    errors = sorted(plan.errors, key=lambda e: e.row)
    await actor.audit(
        session,
        action=f"crm.{entity}.imported",
        resource_type=f"crm.{entity}",
        after={"mode": mode, "rows": total, "imported": imported, "failed": len(errors)},
    )
    return s.ImportReport(imported=imported, errors=errors)


async def import_contacts(
    session: AsyncSession, actor: sdk.ChangeLog, body: bytes, mode: Mode, progress: Progress | None = None
) -> s.ImportReport:
    rows = parse_csv(body, CONTACT_COLUMNS, "first_name")
    plan = await _contact_plan(session, rows)
    return await _run(session, actor, plan, Contact, mode, "contact", len(rows), progress)


async def import_companies(
    session: AsyncSession, actor: sdk.ChangeLog, body: bytes, mode: Mode, progress: Progress | None = None
) -> s.ImportReport:
    rows = parse_csv(body, COMPANY_COLUMNS, "name")
    plan = await _company_plan(session, rows)
    return await _run(session, actor, plan, Company, mode, "company", len(rows), progress)


def count_rows(body: bytes) -> int:
    """Record rows in a CSV file (for a progress bar's length); a rough count is fine."""
    return max(sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8-sig", "replace"), newline=""))) - 1, 0)
