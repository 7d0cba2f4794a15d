"""One way to list and to guard concurrent edits, re-exported by ``kernel.sdk``.

Lists page by offset (``page``/``limit``, answered with a :class:`Pagination` that counts the
matches) or by cursor (an opaque token over ``(created_at, id)``, no count, no OFFSET: rows
inserted meanwhile cause neither gaps nor duplicates). Bad paging, sort or cursor input is a 422
naming the field. Records carry a ``version``; a change names the version it was made against in
``If-Match`` (the record's ``ETag``) or in its body, and a stale one is refused.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.errors import Conflict, FieldError, Problem, Unprocessable

__all__ = [
    "CURSOR_SORTS",
    "MAX_LIMIT",
    "MAX_PAGE",
    "Pagination",
    "PreconditionFailed",
    "PreconditionRequired",
    "check_list",
    "check_version",
    "decode_cursor",
    "encode_cursor",
    "etag",
    "list_and_count",
    "list_rows",
    "parse_if_match",
]

MAX_LIMIT = 100
MAX_PAGE = 1_000_000
CURSOR_SORTS = ("created_at", "-created_at")
"""The sorts a cursor can walk: it is a position in ``(created_at, id)``."""


class Pagination(msgspec.Struct, frozen=True):
    """Where an offset page sits in its list."""

    page: int
    limit: int
    total: int
    pages: int

    @classmethod
    def of(cls, page: int, limit: int, total: int) -> Pagination:
        return cls(page=page, limit=limit, total=total, pages=math.ceil(total / limit) if total else 0)


class PreconditionFailed(Problem):
    """412: the ``If-Match`` version is not the current one."""

    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PreconditionRequired(Problem):
    """428: a change without ``If-Match`` or a ``version`` could overwrite someone else's."""

    status, slug, title = 428, "precondition-required", "Precondition required"


def check_list(
    page: int, limit: int, sort: str, sorts: Collection[str], cursor: str | None = None, *, max_limit: int = MAX_LIMIT
) -> None:
    """Refuse bad paging input with one 422 naming every bad field: ``page`` outside 1..MAX_PAGE,
    ``limit`` outside 1..``max_limit``, a ``sort`` not in ``sorts``, a cursor with a sort it cannot
    walk."""
    errors = []
    if page < 1 or page > MAX_PAGE:
        errors.append(FieldError("page", f"must be between 1 and {MAX_PAGE} (use a cursor for deep lists)"))
    if limit < 1 or limit > max_limit:
        errors.append(FieldError("limit", f"must be between 1 and {max_limit}"))
    if sort not in sorts:
        errors.append(FieldError("sort", f"one of {', '.join(sorts)}"))
    elif cursor is not None and sort not in CURSOR_SORTS:
        errors.append(FieldError("sort", "created_at or -created_at with a cursor"))
    if errors:
        raise Unprocessable("invalid paging or sort", errors=errors)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """The cursor of the row after which the next page starts."""
    raw = msgspec.json.encode([created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """``(created_at, id)`` of a cursor :func:`encode_cursor` gave out; 422 naming ``cursor`` else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = msgspec.json.decode(raw, type=tuple[datetime, uuid.UUID])
    except (binascii.Error, msgspec.ValidationError, msgspec.DecodeError, ValueError):
        raise Unprocessable("invalid cursor", errors=[FieldError("cursor", "not a cursor this API gave out")]) from None
    return created, row_id


async def list_and_count(
    session: AsyncSession, stmt: Select[Any], order: Sequence[ColumnElement[Any]], page: int, limit: int
) -> tuple[list[Any], int]:
    """One offset page of ``stmt`` in ``order`` (its first column's values: ORM objects for
    ``select(Model)``), and how many rows ``stmt`` matches."""
    total = int(await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0)
    rows = await session.scalars(stmt.order_by(*order).offset((page - 1) * limit).limit(limit))
    return list(rows.all()), total


async def list_rows(
    session: AsyncSession,
    model: Any,
    *,
    sorts: Mapping[str, Sequence[ColumnElement[Any]]],
    page: int,
    limit: int,
    sort: str,
    cursor: str | None,
    where: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[Any], int | None, str | None]:
    """Rows of ``model`` (which has ``created_at`` and ``id``) matching ``where``: (rows, total or
    ``None`` in cursor mode, the next cursor or ``None`` at the end).

    Without ``cursor``, an offset page counted by :func:`list_and_count`. With one (empty: from the
    start), the rows after it in the ``sort`` direction, one more fetched to know whether a next
    page exists."""
    check_list(page, limit, sort, sorts, cursor)
    stmt: Select[Any] = select(model).where(*where)
    if cursor is None:
        rows, total = await list_and_count(session, stmt, sorts[sort], page, limit)
        return rows, total, None
    if cursor:
        created, row_id = decode_cursor(cursor)
        key = (model.created_at, model.id)
        after = (
            or_(key[0] < created, and_(key[0] == created, key[1] < row_id))
            if sort.startswith("-")
            else or_(key[0] > created, and_(key[0] == created, key[1] > row_id))
        )
        stmt = stmt.where(after)
    found = list((await session.scalars(stmt.order_by(*sorts[sort]).limit(limit + 1))).all())
    rows = found[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if len(found) > limit and rows else None
    return rows, None, next_cursor


def etag(version: int) -> str:
    """The ``ETag`` of a record at ``version``."""
    return f'"{version}"'


def parse_if_match(header: str | None) -> int | None:
    """The version an ``If-Match`` header names (``"3"`` or ``W/"3"``); 412 for anything else."""
    if header is None:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise PreconditionFailed('If-Match must be the ETag this API gave out, such as "3"')
    return int(value)


def check_version(current: int, if_match: int | None, body_version: int | None, *, required: bool = True) -> None:
    """Refuse a change made against another version than ``current``.

    ``If-Match`` wins (stale: 412); otherwise a ``version`` in the body (stale: 409); with
    neither, 428 when ``required``.
    """
    if if_match is not None:
        if if_match != current:
            raise PreconditionFailed(
                f"the record changed: it is at version {current}, If-Match names {if_match}",
                extra={"current_version": current},
            )
        return
    if body_version is not None:
        if body_version != current:
            raise Conflict(
                f"the record changed: it is at version {current}, the change was made against {body_version}",
                extra={"current_version": current},
            )
        return
    if required:
        raise PreconditionRequired("send If-Match with the record's ETag, or its version in the body")
