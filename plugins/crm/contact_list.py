"""``GET /api/crm/contacts``, the CRM's hottest read, on the kernel's read path (``sdk.Reader``).

Each combination of sort, filters and paging mode is one Core select, compiled once and cached;
values travel as named parameters. Offset paging gets the total in the same statement (a scalar
sub-select, which PostgreSQL runs once), so a page costs one round trip instead of two.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, DateTime, Integer, Text, bindparam, func, select, tuple_
from sqlalchemy.dialects.postgresql import UUID

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm.models import Contact

__all__ = ["list_contacts"]

_COLUMNS = (
    Contact.id, Contact.first_name, Contact.last_name, Contact.email, Contact.phone, Contact.company_id,
    Contact.company_name, Contact.owner_id, Contact.tags, Contact.version, Contact.created_at, Contact.updated_at,
)

_SORTS: dict[str, tuple[ColumnElement[Any], ...]] = {
    "created_at": (Contact.created_at.asc(), Contact.id.asc()),
    "-created_at": (Contact.created_at.desc(), Contact.id.desc()),
    "last_name": (Contact.last_name.asc(), Contact.first_name.asc(), Contact.id.asc()),
    "email": (Contact.email.asc().nulls_last(), Contact.id.asc()),
}

_FILTERS: dict[str, Any] = {
    "q": lambda: Contact.search.op("@@")(func.websearch_to_tsquery("simple", bindparam("q", type_=Text))),
    "company_id": lambda: Contact.company_id == bindparam("company_id", type_=UUID(as_uuid=True)),
    "owner_id": lambda: Contact.owner_id == bindparam("owner_id", type_=UUID(as_uuid=True)),
    "created_after": lambda: Contact.created_at >= bindparam("created_after", type_=DateTime(timezone=True)),
    "created_before": lambda: Contact.created_at < bindparam("created_before", type_=DateTime(timezone=True)),
}


@functools.lru_cache(maxsize=512)
def _query(sort: str, filters: tuple[str, ...], mode: str) -> sdk.Query:
    """``mode``: ``page`` (offset, with the total), ``count``, ``first`` or ``after`` (cursor)."""
    where = [_FILTERS[name]() for name in filters]
    if mode == "count":
        return sdk.Query(select(func.count()).select_from(Contact).where(*where))
    columns: list[Any] = list(_COLUMNS)
    if mode == "page":  # counted once per statement (an init plan), from the index alone when it can
        columns.append(select(func.count()).select_from(Contact).where(*where).scalar_subquery().label("total"))
    if mode == "after":
        key = tuple_(Contact.created_at, Contact.id)
        bound = tuple_(
            bindparam("after_created", type_=DateTime(timezone=True)), bindparam("after_id", type_=UUID(as_uuid=True))
        )
        where.append(key < bound if sort.startswith("-") else key > bound)
    stmt = select(*columns).where(*where).order_by(*_SORTS[sort]).limit(bindparam("limit", type_=Integer))
    if mode == "page":
        stmt = stmt.offset(bindparam("offset", type_=BigInteger))
    return sdk.Query(stmt)


def _out(row: Any) -> s.ContactOut:
    return s.ContactOut(
        id=row["id"], first_name=row["first_name"], last_name=row["last_name"], email=row["email"],
        phone=row["phone"], company_id=row["company_id"], company_name=row["company_name"],
        owner_id=row["owner_id"], tags=list(row["tags"] or ()), version=row["version"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


async def list_contacts(
    reader: sdk.Reader,
    *,
    page: int,
    limit: int,
    sort: str,
    cursor: str | None,
    q: str | None,
    company_id: uuid.UUID | None,
    owner_id: uuid.UUID | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> tuple[list[s.ContactOut], int | None, str | None]:
    """(contacts, total or None in cursor mode, next cursor); same rules as ``sdk.list_rows``."""
    sdk.check_list(page, limit, sort, _SORTS, cursor)
    values: dict[str, Any] = {
        "q": q if q is not None and q.strip() else None, "company_id": company_id, "owner_id": owner_id,
        "created_after": created_after, "created_before": created_before,
    }
    values = {name: value for name, value in values.items() if value is not None}
    filters = tuple(values)
    if cursor is None:
        rows = await reader.fetch(_query(sort, filters, "page"), **values, limit=limit, offset=(page - 1) * limit)
        if rows:
            total = int(rows[0]["total"])
        else:  # past the end (or nothing matches): the window had no row to carry the count
            total = int(await reader.fetchval(_query(sort, filters, "count"), **values)) if page > 1 else 0
        return [_out(r) for r in rows], total, None
    if cursor:
        values["after_created"], values["after_id"] = sdk.decode_cursor(cursor)
    rows = await reader.fetch(_query(sort, filters, "after" if cursor else "first"), **values, limit=limit + 1)
    more = len(rows) > limit
    contacts = [_out(r) for r in rows[:limit]]
    next_cursor = sdk.encode_cursor(contacts[-1].created_at, contacts[-1].id) if more and contacts else None
    return contacts, None, next_cursor
