"""Reading the audit log: filtered, cursor-paginated listing and chain verification."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import Text, cast, select

from kernel.audit.log import GENESIS, chain_hash, format_time
from kernel.audit.models import AuditLogRow
from kernel.audit.schemas import AuditEntry, AuditPage, BrokenLink, ChainReport
from kernel.db.engine import Database
from kernel.errors import FieldError, Unprocessable

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Row, Select

    _Row: TypeAlias = Row[*tuple[Any, ...]]
    _Select: TypeAlias = Select[*tuple[Any, ...]]

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "AuditFilters", "AuditService", "parse_filters"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
VERIFY_BATCH = 1000
_MAX_FILTER = 500
_CURSOR_PREFIX = "v1:"

_T = AuditLogRow
_COLUMNS = (
    _T.id,
    _T.seq,
    _T.occurred_at,
    _T.actor,
    _T.action,
    _T.resource_type,
    _T.resource_id,
    _T.result,
    _T.request_id,
    _T.ip,
    _T.user_agent,
    # Text, not decoded JSON: verification hashes PostgreSQL's own rendering of the values.
    cast(_T.before, Text).label("before"),
    cast(_T.after, Text).label("after"),
    cast(_T.details, Text).label("details"),
    _T.prev_hash,
    _T.hash,
)


@dataclass(frozen=True)
class AuditFilters:
    """What ``GET /api/audit/logs`` narrows by. ``action`` ending in ``*`` matches a prefix;
    ``since`` is inclusive and ``until`` exclusive."""

    actor: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_filters(
    *,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> AuditFilters:
    """Filters from query-string values; an invalid one answers 422 naming the parameter.
    Empty values count as absent."""
    errors: list[FieldError] = []
    texts: dict[str, str | None] = {}
    for name, value in (
        ("actor", actor),
        ("action", action),
        ("resource_type", resource_type),
        ("resource_id", resource_id),
    ):
        texts[name] = value or None
        if value and (len(value) > _MAX_FILTER or "\x00" in value):
            errors.append(FieldError(name, f"must be at most {_MAX_FILTER} characters of text"))
    if action and "*" in action[:-1]:
        errors.append(FieldError("action", "only a trailing * (prefix match) is supported"))
    elif action == "*":
        texts["action"] = None
    times: dict[str, datetime | None] = {}
    for name, value in (("since", since), ("until", until)):
        times[name] = None
        if value:
            try:
                times[name] = _parse_time(value)
            except ValueError:
                errors.append(
                    FieldError(name, "must be an ISO 8601 date or date-time, e.g. 2025-01-31T12:00:00Z")
                )
    start, end = times["since"], times["until"]
    if start is not None and end is not None and end < start:
        errors.append(FieldError("until", "must not be earlier than since"))
    if errors:
        raise _invalid(errors)
    return AuditFilters(
        actor=texts["actor"],
        action=texts["action"],
        resource_type=texts["resource_type"],
        resource_id=texts["resource_id"],
        since=start,
        until=end,
    )


class AuditService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(
        self,
        tenant_id: uuid.UUID,
        filters: AuditFilters | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AuditPage:
        """One page of the tenant's rows, newest first (keyset on ``seq``)."""
        filters = filters or AuditFilters()
        size = DEFAULT_LIMIT if limit is None else limit
        if size < 1:
            raise _invalid([FieldError("limit", f"must be between 1 and {MAX_LIMIT}")])
        size = min(size, MAX_LIMIT)
        query = _filtered(select(*_COLUMNS).where(_T.tenant_id == tenant_id), filters)
        if cursor:
            query = query.where(_T.seq < _decode_cursor(cursor))
        query = query.order_by(_T.seq.desc()).limit(size + 1)
        async with self.db.tenant(tenant_id) as session:
            rows = (await session.execute(query)).all()
        more = len(rows) > size
        rows = rows[:size]
        return AuditPage(
            items=[_entry(r) for r in rows],
            next_cursor=_encode_cursor(rows[-1].seq) if more and rows else None,
        )

    async def verify(self, tenant_id: uuid.UUID, *, batch: int = VERIFY_BATCH) -> ChainReport:
        """Walk the tenant's chain in ``seq`` order, ``batch`` rows per query, recomputing every
        hash and checking every link; report the first broken one.

        Deleting the newest rows leaves no break behind; anchor the latest ``hash`` elsewhere
        (for example in the job that exports the log) to catch that.
        """
        count = 0
        expected_seq = 1
        prev = GENESIS
        broken: BrokenLink | None = None
        after_seq = 0
        while True:
            query = (
                select(*_COLUMNS, _T.tenant_id)
                .where(_T.tenant_id == tenant_id, _T.seq > after_seq)
                .order_by(_T.seq)
                .limit(batch)
            )
            async with self.db.tenant(tenant_id) as session:
                rows = (await session.execute(query)).all()
            for row in rows:
                count += 1
                if broken is None:
                    reason = _check(row, expected_seq, prev)
                    if reason is not None:
                        broken = BrokenLink(seq=row.seq, id=row.id, reason=reason)
                expected_seq = row.seq + 1
                prev = bytes(row.hash)
            if len(rows) < batch:
                break
            after_seq = rows[-1].seq
        return ChainReport(valid=broken is None, rows=count, first_broken=broken)


def _check(row: _Row, expected_seq: int, prev: bytes) -> str | None:
    """Why ``row`` does not continue the chain whose last hash is ``prev``, or ``None``."""
    if row.seq != expected_seq:
        gap = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}..{row.seq - 1}"
        return f"seq {gap} missing: expected seq {expected_seq}, found {row.seq}"
    if bytes(row.prev_hash) != prev:
        previous = "the genesis hash" if expected_seq == 1 else f"the hash of seq {expected_seq - 1}"
        return f"prev_hash does not match {previous}"
    if chain_hash(prev, _canonical_row(row)) != bytes(row.hash):
        return "hash does not match the row's contents: the row was altered"
    return None


def _canonical_row(row: _Row) -> dict[str, Any]:
    """The row as :func:`kernel.audit.log.record` hashed it."""
    return {
        "tenant_id": str(row.tenant_id),
        "id": str(row.id),
        "seq": row.seq,
        "occurred_at": format_time(row.occurred_at),
        "actor": row.actor,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "result": row.result,
        "request_id": row.request_id,
        "ip": row.ip,
        "user_agent": row.user_agent,
        "before": row.before,
        "after": row.after,
        "details": row.details,
    }


def _filtered(query: _Select, filters: AuditFilters) -> _Select:
    if filters.actor is not None:
        query = query.where(_T.actor == filters.actor)
    if filters.action is not None:
        if filters.action.endswith("*"):
            query = query.where(_T.action.startswith(filters.action[:-1], autoescape=True))
        else:
            query = query.where(_T.action == filters.action)
    if filters.resource_type is not None:
        query = query.where(_T.resource_type == filters.resource_type)
    if filters.resource_id is not None:
        query = query.where(_T.resource_id == filters.resource_id)
    if filters.since is not None:
        query = query.where(_T.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(_T.occurred_at < filters.until)
    return query


def _entry(row: _Row) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        seq=row.seq,
        occurred_at=row.occurred_at,
        actor=row.actor,
        action=row.action,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        result=row.result,
        request_id=row.request_id,
        ip=row.ip,
        user_agent=row.user_agent,
        before=_decode(row.before),
        after=_decode(row.after),
        details=_decode(row.details),
        prev_hash=bytes(row.prev_hash).hex(),
        hash=bytes(row.hash).hex(),
    )


def _decode(value: str | None) -> Any:
    return None if value is None else msgspec.json.decode(value)


_OFFSET_SPACE = re.compile(r"(T[\d:.]+) (\d{2}(?::?\d{2})?)$", re.IGNORECASE)


def _parse_time(value: str) -> datetime:
    # An unencoded "+" in a query string arrives as a space: "...T10:00:00 02:00".
    moment = datetime.fromisoformat(_OFFSET_SPACE.sub(r"\1+\2", value.strip()))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        seq = int(raw.removeprefix(_CURSOR_PREFIX))
        if not 1 <= seq < 2**63:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid([FieldError("cursor", "is not a cursor this API returned")]) from None
    return seq


def _invalid(errors: list[FieldError]) -> Unprocessable:
    fields = ", ".join(dict.fromkeys(e.field for e in errors))
    return Unprocessable(f"invalid value for: {fields}", errors=errors)
