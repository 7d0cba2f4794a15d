"""Declarative bases and the tenant-scoped mixin every tenant table uses."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

__all__ = ["KernelBase", "Model", "TenantScoped", "declarative_base", "utcnow", "uuid7"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_last_uuid7 = 0
_uuid7_lock = threading.Lock()


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new rows land at the end of the index. Within a
    process the values also increase strictly (RFC 9562's monotonic method): two made in the same
    millisecond keep the order they were made in, which code sorting by id relies on."""
    global _last_uuid7
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    with _uuid7_lock:
        if value <= _last_uuid7:
            value = _last_uuid7 + 1
        _last_uuid7 = value
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def declarative_base() -> type[DeclarativeBase]:
    """A fresh declarative base with its own ``MetaData``: one per plugin.

    Separate metadata keeps one plugin's table names from clashing inside another's; the kernel
    compares the names across plugins at boot and reports a clash naming both.
    """

    class Base(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING_CONVENTION)

    return Base


class KernelBase(DeclarativeBase):
    """The kernel's own tables (a class statement, not ``declarative_base()``, so type checkers
    accept it as a base class)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantScoped:
    """Columns every tenant table starts with: primary key ``(tenant_id, id)``.

    The foreign key to ``tenants`` and the row-level security policy are created by the
    migration (see ``kernel.sdk.create_tenant_table``), not by the ORM.
    """

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=utcnow
    )


class Model(DeclarativeBase):
    """The base of a plugin's models: ``class Base(sdk.Model): pass`` once per plugin, then
    ``class Thing(sdk.TenantScoped, Base)``.

    Each direct subclass becomes a declarative base of its own, with its own registry and
    ``MetaData`` (the kernel's naming convention), so one plugin's tables never land in another's
    metadata. Unlike :func:`declarative_base`, it is a class statement, so ``mypy --strict``
    accepts the subclass as a base.
    """

    __abstract__ = True

    def __init_subclass__(cls, **kw: Any) -> None:
        if Model in cls.__bases__:
            # A plugin's base: a registry and MetaData of its own; nothing to map yet.
            own = registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))
            cls.registry = own
            cls.metadata = own.metadata
            cls._sa_registry = own
            cls.__abstract__ = True
            return
        super().__init_subclass__(**kw)
