"""Workflow nodes: the ``crm.create_contact`` and ``crm.update_deal_stage`` actions and the
``crm.deal_stage_changed`` trigger.

Actions are called as ``run(config, kernel=..., tenant_id=...)`` and follow the same rules,
audit rows and events as the HTTP routes (the audit actor is ``workflow``).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm import service
from plugins.crm.service import Actor

__all__ = ["NODES", "CreateContactConfig", "DealStageChangedConfig", "UpdateDealStageConfig"]


class CreateContactConfig(msgspec.Struct, frozen=True, kw_only=True):
    first_name: s.Name
    last_name: s.OptName = ""
    email: s.Email | None = None
    phone: s.Phone | None = None
    company_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    tags: s.Tags = msgspec.field(default_factory=list)


class UpdateDealStageConfig(msgspec.Struct, frozen=True, kw_only=True):
    deal_id: uuid.UUID
    stage_id: uuid.UUID


class DealStageChangedConfig(msgspec.Struct, frozen=True, kw_only=True):
    pipeline_id: uuid.UUID | None = None
    """Only deals of this pipeline; ``None`` for every pipeline."""
    to_stage_id: uuid.UUID | None = None
    """Only moves into this stage; ``None`` for any stage."""


def _workflow_actor(tenant_id: uuid.UUID) -> Actor:
    async def audit(session: Any, **fields: Any) -> None:
        await sdk.audit_record(session, actor="workflow", **fields)

    return Actor(tenant_id=tenant_id, audit=audit, name="workflow")


async def create_contact(
    config: CreateContactConfig, *, kernel: sdk.Kernel, tenant_id: uuid.UUID, **_: Any
) -> dict[str, Any]:
    """Create a contact as a workflow step; returns the contact as JSON."""
    data = msgspec.convert(msgspec.structs.asdict(config), s.ContactCreate)
    async with kernel.db.tenant(tenant_id) as session:
        out = await service.create_contact(session, _workflow_actor(tenant_id), data)
    result: dict[str, Any] = msgspec.to_builtins(out)
    return result


async def update_deal_stage(
    config: UpdateDealStageConfig, *, kernel: sdk.Kernel, tenant_id: uuid.UUID, **_: Any
) -> dict[str, Any]:
    """Move a deal to a stage of its pipeline as a workflow step; returns the deal as JSON."""
    async with kernel.db.tenant(tenant_id) as session:
        out = await service.move_deal(session, _workflow_actor(tenant_id), config.deal_id, config.stage_id)
    result: dict[str, Any] = msgspec.to_builtins(out)
    return result


NODES = [
    sdk.NodeSpec(
        key="crm.create_contact",
        kind="action",
        title="Create a contact",
        description="Adds a contact to the CRM (a used e-mail fails the step).",
        config=CreateContactConfig,
        run=create_contact,
    ),
    sdk.NodeSpec(
        key="crm.update_deal_stage",
        kind="action",
        title="Move a deal to a stage",
        description="Moves a deal within its pipeline, recording the history and stage events.",
        config=UpdateDealStageConfig,
        run=update_deal_stage,
    ),
    sdk.NodeSpec(
        key="crm.deal_stage_changed",
        kind="trigger",
        title="A deal changed stage",
        description="Starts on crm.deal.stage_changed, optionally for one pipeline or target stage.",
        config=DealStageChangedConfig,
    ),
]
