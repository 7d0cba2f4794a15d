"""Workflow nodes: the ``crm.create_contact`` and ``crm.update_deal_stage`` actions and the
``crm.deal_stage_changed`` trigger.

Actions are called through the node contract, ``run(ctx, config)``, and follow the same rules,
audit rows and events as the HTTP routes (the audit actor is the one ``ctx`` names).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm import service

__all__ = [
    "NODES",
    "CreateContactConfig",
    "DealStageChanged",
    "DealStageChangedConfig",
    "UpdateDealStageConfig",
    "deal_stage_changed_matches",
]


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


class DealStageChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of ``crm.deal.stage_changed``, which the trigger hands to the workflow."""

    deal_id: uuid.UUID
    pipeline_id: uuid.UUID
    from_stage_id: uuid.UUID
    to_stage_id: uuid.UUID
    stage_name: str
    stage_kind: str
    amount: str | None = None
    currency: str | None = None


async def create_contact(ctx: sdk.NodeContext, config: CreateContactConfig) -> s.ContactOut:
    """Create a contact as a workflow step; a used e-mail fails it (409)."""
    data = msgspec.convert(msgspec.structs.asdict(config), s.ContactCreate)
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        return await service.create_contact(session, ctx.services.changes.by(ctx.actor, ctx.tenant_id), data)


async def update_deal_stage(ctx: sdk.NodeContext, config: UpdateDealStageConfig) -> s.DealOut:
    """Move a deal to a stage of its pipeline as a workflow step (history, audit and events as the
    HTTP route records them)."""
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        return await service.move_deal(
            session, ctx.services.changes.by(ctx.actor, ctx.tenant_id), config.deal_id, config.stage_id
        )


def deal_stage_changed_matches(config: DealStageChangedConfig, payload: dict[str, Any]) -> bool:
    """Whether a ``crm.deal.stage_changed`` payload is one ``config`` starts on."""
    return (config.pipeline_id is None or payload.get("pipeline_id") == str(config.pipeline_id)) and (
        config.to_stage_id is None or payload.get("to_stage_id") == str(config.to_stage_id)
    )


NODES = [
    sdk.NodeSpec(
        key="crm.create_contact",
        kind="action",
        title="Create a contact",
        description="Adds a contact to the CRM (a used e-mail fails the step).",
        config=CreateContactConfig,
        output=s.ContactOut,
        run=create_contact,
        permission="crm.contacts.write",
    ),
    sdk.NodeSpec(
        key="crm.update_deal_stage",
        kind="action",
        title="Move a deal to a stage",
        description="Moves a deal within its pipeline, recording the history and stage events.",
        config=UpdateDealStageConfig,
        output=s.DealOut,
        run=update_deal_stage,
        permission="crm.deals.write",
    ),
    sdk.NodeSpec(
        key="crm.deal_stage_changed",
        kind="trigger",
        title="A deal changed stage",
        description="Starts on crm.deal.stage_changed, optionally for one pipeline or target stage.",
        config=DealStageChangedConfig,
        output=DealStageChanged,
        event="crm.deal.stage_changed",
        filter=deal_stage_changed_matches,
    ),
]
