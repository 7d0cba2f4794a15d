"""Re-seal every stored secret under the newest master key.

What is sealed, where, and with which associated data is declared once, in
:data:`kernel.vault.sealed.SEALED_COLUMNS` (users' TOTP seeds, tenants' AI provider keys, the
plugins' vault); this module walks that registry and knows no table by name. Global tables are
re-sealed in a transaction without a tenant; tenant tables inside each tenant's own transaction, so
row-level security holds. A value already under the newest version is left alone, and each update
only replaces the value it read, so a rotation that stopped half-way (or raced a write) can simply
be run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.context import Kernel
from kernel.crypto import SecretBox, SecretBoxError
from kernel.vault.sealed import SEALED_COLUMNS, SealedColumn

__all__ = ["RotationReport", "rotate_secrets"]


@dataclass
class RotationReport:
    version: int
    resealed: int = 0
    current: int = 0
    failures: list[str] = field(default_factory=list)


async def _reseal(session: AsyncSession, box: SecretBox, sealed: SealedColumn, report: RotationReport) -> None:
    """Re-seal the values of one column visible to ``session``."""
    names = ["id", *sealed.reads]
    target = table(sealed.table, *(column(n) for n in dict.fromkeys([*names, sealed.column])))
    value = target.c[sealed.column]
    rows = (await session.execute(select(*(target.c[n] for n in names), value).where(value.is_not(None)))).all()
    for row in rows:
        values: dict[str, Any] = dict(row._mapping)
        old = values[sealed.column]
        if not box.needs_reseal(old):
            report.current += 1
            continue
        context = sealed.context(values)
        try:
            fresh = box.seal(box.open(old, context), context)
        except SecretBoxError:
            report.failures.append(f"{sealed.describe(values)} cannot be opened")
            continue
        where = [target.c[n] == values[n] for n in names if n in ("id", "tenant_id")]
        await session.execute(update(target).where(*where, value == old).values({sealed.column: fresh}))
        report.resealed += 1


async def rotate_secrets(kernel: Kernel) -> RotationReport:
    """Re-seal every value of every registered sealed column under the newest master key."""
    box = kernel.box
    report = RotationReport(version=box.current)
    async with kernel.db.global_() as session:
        for sealed in SEALED_COLUMNS:
            if not sealed.tenant_scoped:
                await _reseal(session, box, sealed, report)
    for tenant in await kernel.tenants.list():
        async with kernel.db.tenant(tenant.id) as session:
            for sealed in SEALED_COLUMNS:
                if sealed.tenant_scoped:
                    await _reseal(session, box, sealed, report)
    return report
