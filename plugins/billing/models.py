"""The module's tenant tables as metadata (the kernel checks their names and purges by them).

The queries are SQL text in the services; the installation tables (``billing_plans``,
``billing_plan_versions``, ``billing_sequences``, ``billing_clocks``, ``billing_due``) hold no
tenant rows and are left out of this metadata on purpose, so a tenant purge never touches them.
"""

from __future__ import annotations

from sqlalchemy import Column, MetaData, Table
from sqlalchemy.dialects.postgresql import UUID

__all__ = ["METADATA", "SWEEP"]

METADATA = MetaData()

SWEEP = "select set_config('app.billing_sweep', 'on', true)"
"""Run first in an untenanted transaction that reads ``billing_due`` across tenants: its
policy opens the table (for reading) to such a transaction only."""


def _tenant_table(name: str) -> Table:
    return Table(
        name, METADATA,
        Column("tenant_id", UUID(as_uuid=True), primary_key=True),
        Column("id", UUID(as_uuid=True), primary_key=True),
    )


for _name in (
    "billing_profiles", "billing_subscriptions", "billing_pending_items", "billing_usage_events",
    "billing_usage_rollups", "billing_usage_uniques", "billing_thresholds", "billing_invoices",
    "billing_credit_entries", "billing_payments",
):
    _tenant_table(_name)
