"""Re-seal every stored secret under the newest master key.

Secrets live in two places: users' TOTP seeds (global table, context ``user:<id>``) and
tenants' AI provider keys (a tenant table, context ``tenant:<id>``, reached through each tenant's
own transaction so row-level security holds). A value already under the newest version is left
alone, so a rotation that stopped half-way can simply be run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update

from kernel.ai.models import ProviderKeyRow
from kernel.context import Kernel
from kernel.crypto import SecretBoxError
from kernel.identity.models import UserRow

__all__ = ["RotationReport", "rotate_secrets"]


@dataclass
class RotationReport:
    version: int
    resealed: int = 0
    current: int = 0
    failures: list[str] = field(default_factory=list)


async def rotate_secrets(kernel: Kernel) -> RotationReport:
    box = kernel.box
    report = RotationReport(version=box.current)
    async with kernel.db.global_() as session:
        query = select(UserRow.id, UserRow.mfa_secret).where(UserRow.mfa_secret.is_not(None))
        for user_id, sealed in (await session.execute(query)).all():
            if sealed is None or not box.needs_reseal(sealed):
                report.current += 1
                continue
            context = f"user:{user_id}"
            try:
                fresh = box.seal(box.open(sealed, context), context)
            except SecretBoxError:
                report.failures.append(f"user {user_id}: TOTP seed cannot be opened")
                continue
            await session.execute(update(UserRow).where(UserRow.id == user_id).values(mfa_secret=fresh))
            report.resealed += 1
    for tenant in await kernel.tenants.list():
        async with kernel.db.tenant(tenant.id) as session:
            rows = (await session.execute(select(ProviderKeyRow))).scalars().all()
            for row in rows:
                if not box.needs_reseal(row.sealed_key):
                    report.current += 1
                    continue
                context = f"tenant:{tenant.id}"
                try:
                    row.sealed_key = box.seal(box.open(row.sealed_key, context), context)
                except SecretBoxError:
                    report.failures.append(f"tenant {tenant.slug}: {row.provider} key cannot be opened")
                    continue
                report.resealed += 1
    return report
