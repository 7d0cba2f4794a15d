"""A fast path for hot read-only endpoints: Core statements compiled once, run on asyncpg.

``Database.tenant()`` gives an ORM session, which is what writes want. A list endpoint that answers
thousands of times a second pays for that: statement compilation and cache keys, ORM instances, the
identity map, and a transaction that costs a round trip to begin and another to set the tenant.

``Database.read(tenant_id)`` instead checks a connection out of a small asyncpg pool (same role,
opened on first use) and opens a ``READ ONLY`` transaction whose first round trip both begins it
and sets ``app.tenant_id``, so row-level security applies exactly as in ``tenant()``.

Statements are SQLAlchemy Core selects wrapped in :class:`Query` once (at import time, or behind an
``lru_cache`` keyed by the query's shape), with values passed by name through ``bindparam`` at each
call. Rows come back as asyncpg records, which index by column label.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.sql import ClauseElement

from kernel.errors import FieldError, Unprocessable

__all__ = ["Query", "Reader", "begin_statement", "end", "open_read_pool"]

_DIALECT = PGDialect_asyncpg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


class Query:
    """A statement compiled for asyncpg: its SQL text and the names of its parameters, in order.

    Values given to :meth:`args` override the values bound when the statement was built, so a
    statement built with ``bindparam("limit")`` (or ``bindparam("limit", 20)``) takes ``limit=...``.
    """

    __slots__ = ("_defaults", "names", "sql")

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql: str = str(compiled)
        self.names: tuple[str, ...] = tuple(getattr(compiled, "positiontup", None) or ())
        binds = getattr(compiled, "binds", {})
        # Values fixed when the statement was built; a bindparam built without one must be given.
        self._defaults: dict[str, Any] = {
            name: value for name, value in compiled.params.items() if name not in binds or not binds[name].required
        }

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The values in parameter order. A text value holding a NUL character (PostgreSQL cannot
        store or compare one) is refused with a 422 naming the parameter."""
        for name, value in values.items():
            if _has_nul(value):
                message = "must not contain NUL characters"
                raise Unprocessable(f"{name} {message}", errors=[FieldError(field=name, message=message)])
        try:
            return [values[name] if name in values else self._defaults[name] for name in self.names]
        except KeyError as missing:  # a programming error: say which parameter
            raise TypeError(f"query parameter {missing} has no value") from None

    def __repr__(self) -> str:
        return f"Query({self.sql!r})"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(isinstance(item, str) and "\x00" in item for item in value)
    return False


class Reader:
    """Queries inside one tenant's read-only transaction (see ``Database.read``)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg.Connection

    async def fetch(self, query: Query, **values: Any) -> list[Any]:
        try:
            rows: list[Any] = await self._connection.fetch(query.sql, *query.args(values))
        except asyncpg.DataError as exc:
            raise _named(query, exc) from exc
        return rows

    async def fetchrow(self, query: Query, **values: Any) -> Any:
        try:
            return await self._connection.fetchrow(query.sql, *query.args(values))
        except asyncpg.DataError as exc:
            raise _named(query, exc) from exc

    async def fetchval(self, query: Query, **values: Any) -> Any:
        try:
            return await self._connection.fetchval(query.sql, *query.args(values))
        except asyncpg.DataError as exc:
            raise _named(query, exc) from exc


_ARGUMENT = re.compile(r"invalid input for query argument \$(\d+)\b.*\((.*)\)$", re.DOTALL)


def _named(query: Query, exc: Exception) -> Exception:
    """A value the driver refused (out of its column type's range) as a 422 naming the parameter;
    any other data error as it was (``kernel.errors`` maps it)."""
    found = _ARGUMENT.search(str(exc))
    if found is None or not 0 < int(found.group(1)) <= len(query.names):
        return exc
    name = query.names[int(found.group(1)) - 1]
    message = f"out of range: {found.group(2)}"
    return Unprocessable(f"{name} is {message}", errors=[FieldError(field=name, message=message)])


async def open_read_pool(url: URL, size: int) -> asyncpg.Pool:
    """asyncpg's own pool for ``Database.read``, on the same role as the engine's.

    Checking a connection out of SQLAlchemy's pool costs more than the query itself on a hot
    path; asyncpg's pool costs a few microseconds. It opens connections as needed (none idle at
    start) and decodes ``json``/``jsonb`` with msgspec.
    """

    async def setup(connection: asyncpg.Connection) -> None:
        for name in ("json", "jsonb"):
            await connection.set_type_codec(
                name, schema="pg_catalog", encoder=_json_text, decoder=msgspec.json.decode, format="text"
            )

    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=size, init=setup, server_settings={"application_name": "businessos"},
        max_inactive_connection_lifetime=300, reset=_keep, timeout=5,
    )
    assert pool is not None
    return pool


async def _keep(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on release: ``Database.read`` ends every transaction it
    begins (or terminates the connection) and changes no session state; the tenant setting is
    transaction-local."""


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def begin_statement(tenant_id: uuid.UUID) -> str:
    """``BEGIN READ ONLY`` and the tenant setting, in one simple-protocol round trip.

    The tenant id is a ``uuid.UUID`` (its text form is hex and dashes), so it is safe to inline.
    """
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a uuid.UUID")
    return f"BEGIN READ ONLY; SELECT set_config('app.tenant_id', '{tenant_id}', true)"


async def end(connection: Any, error: BaseException | None) -> bool:
    """Commit (or roll back after ``error``); False when the connection must be discarded."""
    if isinstance(error, asyncio.CancelledError):
        return False  # a query may still be running on it: never hand it to the next request
    try:
        await connection.execute("ROLLBACK" if error is not None else "COMMIT")
    except Exception:
        return False
    return True
