"""Writing audit rows, in the caller's transaction, chained per tenant.

Each row carries ``hash = sha256(prev_hash || canonical(row))`` where ``prev_hash`` is the hash of
the tenant's previous row (by ``seq``; 32 zero bytes for the first) and ``canonical(row)`` is the
sorted-key, whitespace-free JSON (msgspec) of these fields, so that anyone can recompute it from
the table alone:

- ``tenant_id``, ``id``: the UUIDs' canonical text;
- ``seq``: the integer;
- ``occurred_at``: UTC, ISO 8601 with microseconds (``2025-01-02T03:04:05.000006+00:00``), which
  round-trips exactly through ``timestamptz``;
- ``actor``, ``action``, ``resource_type``, ``resource_id``, ``result``, ``request_id``, ``ip``,
  ``user_agent``: the stored text or ``null``;
- ``before``, ``after``, ``details``: PostgreSQL's own text of the stored ``jsonb`` value
  (``column::text``) or ``null``. Hashing the database's normal form, not the caller's JSON, keeps
  key order, number formats and the like from breaking verification.

A per-tenant advisory lock, held until the caller's transaction ends, keeps the chain linear under
concurrent writers; the row commits or rolls back with the caller's change.

Secret-looking keys in ``before``/``after``/``details`` are replaced by ``"[redacted]"`` at any
depth before anything is stored or hashed.

An audit row that belongs to no change of the caller's (a webhook delivery's outcome) goes through
:class:`AuditWriter` (``kernel.audit``): group commit, one transaction for every row of a tenant
waiting at that moment, each caller returning once its row is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.connection import ASGIConnection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db.models import uuid7
from kernel.errors import translate

if TYPE_CHECKING:
    from kernel.db.engine import Database
    from kernel.plugins.services import Actor

__all__ = [
    "GENESIS",
    "REDACTED",
    "AuditWriter",
    "Entry",
    "RequestMeta",
    "audit",
    "canonical",
    "chain_hash",
    "format_time",
    "record",
    "record_for_plugin",
    "record_many",
    "redact",
    "request_actor",
    "request_meta",
]

log = logging.getLogger("businessos.audit")

GENESIS = b"\x00" * 32
REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"pass|token|secret|code|key|otp|authorization|cookie", re.IGNORECASE)

# Longest stored text per column: an audit row never fails the change it records for being long.
_LIMITS = {
    "actor": 200,
    "action": 200,
    "resource_type": 200,
    "resource_id": 500,
    "result": 100,
    "request_id": 200,
    "ip": 100,
    "user_agent": 500,
}


@dataclass(frozen=True)
class RequestMeta:
    """Where an audited action came from."""

    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


def redact(value: Any) -> Any:
    """Replace the values of secret-looking keys, at any depth (and drop NUL characters, which
    PostgreSQL text cannot hold)."""
    if isinstance(value, dict):
        return {
            _text(str(k)): REDACTED if _SECRET_KEYS.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _text(value)
    return value


def format_time(moment: datetime) -> str:
    """The hashed form of ``occurred_at``: UTC, microseconds always present."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers: every field but the hash, as sorted-key JSON."""
    fields = {k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
    return msgspec.json.encode(fields, order="sorted")


def chain_hash(prev: bytes, row: dict[str, Any]) -> bytes:
    return hashlib.sha256(prev + canonical(row)).digest()


_LAST_AND_NORMAL = text(
    # The tenant's last row, and the database's normal form of each entry's JSON fields (in order).
    """select l.seq, l.hash,
              array(select cast(x as jsonb)::text
                      from unnest(cast(:before as text[])) with ordinality as u(x, n) order by n) as before,
              array(select cast(x as jsonb)::text
                      from unnest(cast(:after as text[])) with ordinality as u(x, n) order by n) as after,
              array(select cast(x as jsonb)::text
                      from unnest(cast(:details as text[])) with ordinality as u(x, n) order by n) as details
         from (select 1) as one
         left join lateral (
              select seq, hash from audit_logs where tenant_id = :t order by seq desc limit 1
         ) as l on true"""
)

_INSERT = text(
    """insert into audit_logs (tenant_id, id, seq, occurred_at, actor, action, resource_type,
           resource_id, result, request_id, ip, user_agent, before, after, details, prev_hash, hash)
       values (:tenant_id, :id, :seq, :occurred_at, :actor, :action, :resource_type, :resource_id,
           :result, :request_id, :ip, :user_agent, cast(cast(:before as text) as jsonb),
           cast(cast(:after as text) as jsonb), cast(cast(:details as text) as jsonb), :prev_hash, :hash)"""
)


@dataclass(frozen=True)
class Entry:
    """One audit row to append (see :func:`record_many`)."""

    actor: str | None
    action: str
    resource_type: str | None = None
    resource_id: str | None = None
    result: str = "success"
    meta: RequestMeta | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    details: dict[str, Any] | None = None


async def record(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    actor: str | None,
    action: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
    result: str = "success",
    meta: RequestMeta | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit row in ``session``'s transaction (which must be scoped to ``tenant_id``)."""
    entry = Entry(
        actor=actor, action=action, resource_type=resource_type, resource_id=resource_id, result=result,
        meta=meta, before=before, after=after, details=details,
    )
    await record_many(session, tenant_id, [entry])


async def record_for_plugin(
    session: AsyncSession,
    plugin: str,
    actor: Actor | None,
    *,
    tenant_id: uuid.UUID,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any],
) -> None:
    """An audit row of a kernel service acting for ``plugin`` (its vault, its webhook endpoints),
    naming ``actor`` (who asked, with the request's meta) or ``plugin:<plugin>`` without one. The
    actor's request then gets no generic row from the safety net."""
    if actor is not None:
        actor._audited()
    await record(
        session, tenant_id=tenant_id, actor=(actor.name if actor else None) or f"plugin:{plugin}", action=action,
        resource_type=resource_type, resource_id=resource_id, meta=actor.meta if actor else None, details=details,
    )


async def record_many(session: AsyncSession, tenant_id: uuid.UUID, entries: Sequence[Entry]) -> None:
    """Append ``entries``, in order, in ``session``'s transaction (scoped to ``tenant_id``): one
    lock, one read of the chain's end and one multi-row insert, however many there are."""
    await _append(session, tenant_id, entries, [_encoded(e) for e in entries])


_Json = tuple[str | None, str | None, str | None]


def _encoded(entry: Entry) -> _Json:
    """``before``, ``after`` and ``details`` as (redacted) JSON text."""
    return _json(entry.before), _json(entry.after), _json(entry.details)


async def _append(
    session: AsyncSession, tenant_id: uuid.UUID, entries: Sequence[Entry], encoded: Sequence[_Json]
) -> None:
    if not entries:
        return
    await session.execute(
        text("select pg_advisory_xact_lock(hashtextextended('audit:' || :t, 0))"), {"t": str(tenant_id)}
    )
    # After the lock (a statement of its own, so its snapshot sees the previous holder's commit):
    # the tenant's last row, and the database's normal form of the JSON fields.
    found = (
        await session.execute(
            _LAST_AND_NORMAL,
            {
                "t": tenant_id,
                "before": [e[0] for e in encoded],
                "after": [e[1] for e in encoded],
                "details": [e[2] for e in encoded],
            },
        )
    ).one()
    seq, prev = (found.seq, bytes(found.hash)) if found.seq is not None else (0, GENESIS)
    rows = []
    for index, entry in enumerate(entries):
        meta = entry.meta or RequestMeta()
        seq += 1
        occurred_at = datetime.now(UTC)
        row: dict[str, Any] = {
            "tenant_id": str(tenant_id),
            "id": str(uuid7()),
            "seq": seq,
            "occurred_at": format_time(occurred_at),
            "actor": _limit("actor", entry.actor),
            "action": _limit("action", entry.action),
            "resource_type": _limit("resource_type", entry.resource_type),
            "resource_id": _limit("resource_id", entry.resource_id),
            "result": _limit("result", entry.result),
            "request_id": _limit("request_id", meta.request_id),
            "ip": _limit("ip", meta.ip),
            "user_agent": _limit("user_agent", meta.user_agent),
            "before": found.before[index],
            "after": found.after[index],
            "details": found.details[index],
        }
        digest = chain_hash(prev, row)
        rows.append({**row, "occurred_at": occurred_at, "prev_hash": prev, "hash": digest})
        prev = digest
    await session.execute(_INSERT, rows)


_Waiting = tuple[Entry, _Json, "asyncio.Future[None]"]


class AuditWriter:
    """Audit rows written in transactions of their own, with group commit (``kernel.audit``).

    One writer task per tenant takes every entry waiting for that tenant (up to
    :attr:`max_batch`) and appends them with one lock, one read of the chain's end and one insert
    in one transaction; :meth:`append` returns once its entry is committed, or raises what
    failed it. When nothing is being written an entry is written at once; entries that arrive
    while a transaction runs share the next one. A batch that fails for another reason than an
    unreachable database is written again one entry at a time, so one bad entry fails only its
    own caller.
    """

    max_batch = 500

    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiting: dict[uuid.UUID, list[_Waiting]] = {}
        self._writers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.transactions = 0
        """Transactions written so far (for tests and benchmarks)."""

    async def append(self, tenant_id: uuid.UUID, entry: Entry) -> None:
        """Append ``entry`` to ``tenant_id``'s chain; returns when it is committed. Cancelling the
        caller does not withdraw an entry already handed over."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        waiting = self._waiting.setdefault(tenant_id, [])
        writer = self._writers.get(tenant_id)
        if writer is not None and writer.get_loop() is not loop:
            # The writer belonged to an event loop that is gone (tests run several loops in one
            # process): nobody waits in it any more.
            waiting[:] = [w for w in waiting if w[2].get_loop() is loop]
            writer = None
        waiting.append((entry, _encoded(entry), done))
        if writer is None:
            self._writers[tenant_id] = loop.create_task(self._write(tenant_id), name=f"audit-writer-{tenant_id}")
        await asyncio.shield(done)

    async def _write(self, tenant_id: uuid.UUID) -> None:
        batch: list[_Waiting] = []
        try:
            while waiting := self._waiting.get(tenant_id):
                batch = waiting[: self.max_batch]
                del waiting[: self.max_batch]
                await self._commit(tenant_id, batch)
                batch = []
        except BaseException as exc:  # cancelled (shutting down): nobody waits for ever
            for _, _, done in [*batch, *self._waiting.get(tenant_id, [])]:
                if not done.done():
                    done.set_exception(RuntimeError(f"audit writer stopped: {type(exc).__name__}"))
            self._waiting.pop(tenant_id, None)
            raise
        finally:
            if self._writers.get(tenant_id) is asyncio.current_task():
                self._writers.pop(tenant_id, None)
                if not self._waiting.get(tenant_id):
                    self._waiting.pop(tenant_id, None)

    async def _commit(self, tenant_id: uuid.UUID, batch: list[_Waiting]) -> None:
        try:
            await self._transaction(tenant_id, batch)
        except Exception as exc:
            problem = translate(exc)
            if len(batch) == 1 or (problem is not None and problem.status == 503):
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                return
            log.warning("a batch of %d audit rows failed (%s); writing them one by one", len(batch), exc)
            for waiting in batch:
                await self._commit(tenant_id, [waiting])
            return
        for _, _, done in batch:
            if not done.done():
                done.set_result(None)

    async def _transaction(self, tenant_id: uuid.UUID, batch: list[_Waiting]) -> None:
        self.transactions += 1
        async with self._db.tenant(tenant_id) as session:
            await _append(session, tenant_id, [w[0] for w in batch], [w[1] for w in batch])


async def audit(
    connection: ASGIConnection[Any, Any, Any, Any],
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    action: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
    result: str = "success",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """:func:`record` for a route handler: the actor is the request's principal, the request id,
    IP and user agent come from the request. ``session`` must be ``db.tenant(tenant_id)``'s."""
    _state(connection)["audited"] = True
    await record(
        session,
        tenant_id=tenant_id,
        actor=request_actor(connection),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        result=result,
        meta=request_meta(connection),
        before=before,
        after=after,
        details=details,
    )


def request_actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """How the audit log names the request's principal (``user:<id>``, ``api_key:<id>``), if any."""
    principal = _state(connection).get("principal")
    actor = getattr(principal, "actor", None)
    return actor if isinstance(actor, str) else None


def request_meta(connection: ASGIConnection[Any, Any, Any, Any]) -> RequestMeta:
    """The request id, client IP and user agent of ``connection``.

    The request id and IP set by the HTTP middleware win; without them, the ``X-Request-ID``
    header and the peer address stand in.
    """
    state = _state(connection)
    request_id = state.get("request_id") or connection.headers.get("x-request-id") or None
    ip = state.get("client_ip") or (connection.client.host if connection.client else None) or None
    return RequestMeta(
        request_id=_limit("request_id", str(request_id)) if request_id else None,
        ip=_limit("ip", str(ip)) if ip else None,
        user_agent=_limit("user_agent", connection.headers.get("user-agent") or None),
    )


def _state(connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
    state = connection.scope.get("state")
    return state if isinstance(state, dict) else {}


def _text(value: str) -> str:
    return value.replace("\x00", "")


def _limit(column: str, value: str | None) -> str | None:
    if value is None:
        return None
    return _text(value)[: _LIMITS[column]]


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else msgspec.json.encode(redact(value), enc_hook=str).decode()
