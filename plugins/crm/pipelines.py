"""Changing pipelines and their stages once they exist.

Every change to a pipeline's stages first locks the pipeline's row, then reads the stages: two
concurrent reorders of one pipeline run one after the other, so positions stay 0..n-1. A deferred
unique constraint on ``(pipeline_id, position)`` refuses at commit anything that slipped through.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.crm import schemas as s
from plugins.crm.models import Deal, DealStageHistory, Pipeline, PipelineStage
from plugins.crm.service import _get, _jsonable, _pipeline_out, _stage_out, clear_default_pipeline

__all__ = ["add_stage", "delete_pipeline", "delete_stage", "update_pipeline", "update_stage"]


async def _deal_count(session: AsyncSession, *where: Any) -> int:
    return int((await session.execute(select(func.count()).select_from(Deal).where(*where))).scalar_one())


async def _stages(session: AsyncSession, pipeline_id: uuid.UUID) -> list[PipelineStage]:
    stmt = select(PipelineStage).where(PipelineStage.pipeline_id == pipeline_id)
    return list((await session.execute(stmt.order_by(PipelineStage.position, PipelineStage.id))).scalars())


def _renumber(stages: list[PipelineStage]) -> None:
    for position, stage in enumerate(stages):
        if stage.position != position:
            stage.position = position


def _stage_of(stages: list[PipelineStage], stage_id: uuid.UUID, field: str | None = None) -> PipelineStage:
    for stage in stages:
        if stage.id == stage_id:
            return stage
    if field is None:
        raise sdk.NotFound(f"no stage {stage_id} in this pipeline")
    raise sdk.Unprocessable(
        f"no stage {stage_id} in this pipeline", errors=[sdk.FieldError(field, "not a stage of the pipeline")]
    )


async def _stage_changed(
    session: AsyncSession,
    actor: sdk.ChangeLog,
    event: str,
    pipeline_id: uuid.UUID,
    stage_id: uuid.UUID,
    *,
    before: Any = None,
    after: Any = None,
) -> None:
    """Audit a stage's change and emit its event (the stage, with its pipeline's id)."""
    before_data = {**_jsonable(before), "pipeline_id": str(pipeline_id)} if before is not None else None
    after_data = {**_jsonable(after), "pipeline_id": str(pipeline_id)} if after is not None else None
    await actor.audit(
        session,
        action=event,
        resource_type="crm.stage",
        resource_id=str(stage_id),
        before=before_data,
        after=after_data,
    )
    payload = after_data or {"id": str(stage_id), "pipeline_id": str(pipeline_id)}
    await actor.emit(session, event=event, payload=payload)


# ---- pipelines ---------------------------------------------------------------------------------


async def update_pipeline(
    session: AsyncSession, actor: sdk.ChangeLog, pipeline_id: uuid.UUID, patch: s.PipelinePatch
) -> s.PipelineOut:
    """Rename a pipeline or make it (or stop it being) the tenant's default."""
    row = await _get(session, Pipeline, pipeline_id, "pipeline", lock=True)
    before = await _pipeline_out(session, row)
    if patch.name is not msgspec.UNSET:
        row.name = patch.name
    if patch.is_default is not msgspec.UNSET and patch.is_default != row.is_default:
        if patch.is_default:
            await clear_default_pipeline(session)
        row.is_default = patch.is_default
    await session.flush()
    out = await _pipeline_out(session, row)
    if out != before:
        await actor.record(session, "crm.pipeline.updated", row.id, before=before, after=out)
    return out


async def delete_pipeline(session: AsyncSession, actor: sdk.ChangeLog, pipeline_id: uuid.UUID) -> None:
    """Delete a pipeline with its stages; 409 naming how many deals still use it."""
    row = await _get(session, Pipeline, pipeline_id, "pipeline", lock=True)
    used = await _deal_count(session, Deal.pipeline_id == pipeline_id)
    if used:
        raise sdk.Conflict(
            f"{used} deal{'s' if used != 1 else ''} use{'' if used != 1 else 's'} this pipeline: "
            "move them to another pipeline or delete them first",
            extra={"deals": used},
        )
    before = await _pipeline_out(session, row)
    await session.delete(row)
    await session.flush()
    await actor.record(session, "crm.pipeline.deleted", pipeline_id, before=before)


# ---- stages ------------------------------------------------------------------------------------


async def add_stage(
    session: AsyncSession, actor: sdk.ChangeLog, pipeline_id: uuid.UUID, data: s.StageCreate
) -> s.PipelineOut:
    """Insert a stage at ``data.position`` (default: last; past the end means last); the stages
    from there move one place right. Answers the pipeline, where the new stage is at that place."""
    pipeline = await _get(session, Pipeline, pipeline_id, "pipeline", lock=True)
    stages = await _stages(session, pipeline_id)
    if len(stages) >= 50:
        raise sdk.Conflict("a pipeline has at most 50 stages")
    stage = PipelineStage(
        tenant_id=actor.tenant_id, pipeline_id=pipeline_id, name=data.name, kind=data.kind, position=len(stages)
    )
    session.add(stage)
    place = len(stages) if data.position is None else min(data.position, len(stages))
    stages.insert(place, stage)
    _renumber(stages)
    await session.flush()
    out = _stage_out(stage)
    await _stage_changed(session, actor, "crm.stage.created", pipeline_id, stage.id, after=out)
    return await _pipeline_out(session, pipeline)


async def update_stage(
    session: AsyncSession, actor: sdk.ChangeLog, pipeline_id: uuid.UUID, stage_id: uuid.UUID, patch: s.StagePatch
) -> s.PipelineOut:
    """Rename a stage, change its kind (``open``, ``won``, ``lost``) or move it to another place;
    the other stages close up around it."""
    pipeline = await _get(session, Pipeline, pipeline_id, "pipeline", lock=True)
    stages = await _stages(session, pipeline_id)
    stage = _stage_of(stages, stage_id)
    before = _stage_out(stage)
    if patch.name is not msgspec.UNSET:
        stage.name = patch.name
    if patch.kind is not msgspec.UNSET:
        stage.kind = patch.kind
    if patch.position is not msgspec.UNSET:
        stages.remove(stage)
        stages.insert(min(patch.position, len(stages)), stage)
        _renumber(stages)
    await session.flush()
    after = _stage_out(stage)
    if after != before:
        await _stage_changed(session, actor, "crm.stage.updated", pipeline_id, stage.id, before=before, after=after)
    return await _pipeline_out(session, pipeline)


async def delete_stage(
    session: AsyncSession, actor: sdk.ChangeLog, pipeline_id: uuid.UUID, stage_id: uuid.UUID, move_to: uuid.UUID | None
) -> s.PipelineOut:
    """Delete a stage. While deals sit in it: 409 naming how many, unless ``move_to`` names another
    stage of the pipeline, where they go (with history and ``crm.deal.stage_changed``)."""
    pipeline = await _get(session, Pipeline, pipeline_id, "pipeline", lock=True)
    stages = await _stages(session, pipeline_id)
    stage = _stage_of(stages, stage_id)
    if len(stages) == 1:
        raise sdk.Conflict("a pipeline keeps at least one stage: delete the pipeline instead")
    target = None
    if move_to is not None:
        target = _stage_of(stages, move_to, "move_to")
        if target.id == stage.id:
            raise sdk.Unprocessable(
                "move_to is the stage being deleted", errors=[sdk.FieldError("move_to", "name another stage")]
            )
    # Lock the deals in the stage so none is moved or changed under us.
    deals = list((await session.execute(select(Deal).where(Deal.stage_id == stage_id).with_for_update())).scalars())
    if deals and target is None:
        raise sdk.Conflict(
            f"{len(deals)} deal{'s' if len(deals) != 1 else ''} sit{'' if len(deals) != 1 else 's'} in this stage: "
            "give move_to (another stage of the pipeline) to move them there",
            extra={"deals": len(deals)},
        )
    before = _stage_out(stage)
    if target is not None and deals:
        await _move_deals(session, actor, deals, stage, target)
    stages.remove(stage)
    await session.delete(stage)
    _renumber(stages)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise sdk.Conflict("a deal was just put in this stage: try again") from None
    moved = {"moved_deals": len(deals), "move_to": str(target.id) if target else None}
    await actor.audit(
        session,
        action="crm.stage.deleted",
        resource_type="crm.stage",
        resource_id=str(stage_id),
        before={**_jsonable(before), "pipeline_id": str(pipeline_id)},
        after=moved,
    )
    await actor.emit(session, event="crm.stage.deleted",
        payload={"id": str(stage_id), "pipeline_id": str(pipeline_id), **moved},
    )
    return await _pipeline_out(session, pipeline)


async def _move_deals(
    session: AsyncSession, actor: sdk.ChangeLog, deals: list[Deal], source: PipelineStage, target: PipelineStage
) -> None:
    """Put ``deals`` in ``target``, as ``POST /deals/{id}/move`` would, in a few statements."""
    ids = [d.id for d in deals]
    await session.execute(
        update(Deal)
        .where(Deal.id.in_(ids))
        .values(stage_id=target.id, version=Deal.version + 1, updated_at=sdk.utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        insert(DealStageHistory),
        [
            {
                "tenant_id": actor.tenant_id,
                "deal_id": deal_id,
                "from_stage_id": source.id,
                "to_stage_id": target.id,
                "actor": actor.name,
            }
            for deal_id in ids
        ],
    )
    for deal in deals:
        payload = {
            "deal_id": str(deal.id),
            "pipeline_id": str(deal.pipeline_id),
            "from_stage_id": str(source.id),
            "to_stage_id": str(target.id),
            "stage_name": target.name,
            "stage_kind": target.kind,
            "amount": str(deal.amount),
            "currency": deal.currency,
        }
        await actor.emit(session, event="crm.deal.stage_changed", payload=payload)
        if target.kind in ("won", "lost") and source.kind != target.kind:
            await actor.emit(session, event=f"crm.deal.{target.kind}", payload=payload)
