"""The CRM's CLI import (with its progress bar) and its workflow nodes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.settings import Settings
from plugins.crm import schemas as s
from plugins.crm.nodes import (
    NODES,
    CreateContactConfig,
    DealStageChanged,
    DealStageChangedConfig,
    UpdateDealStageConfig,
)
from tests.conftest import SECRET, node_context, other_process
from tests.test_cli import run_cli
from tests.test_crm import api, crm_settings, crm_tenant, make, problem
from tests.test_crm_deals import sales_pipeline

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py


def _run_cli(settings: Settings, args: list[str]) -> Any:
    """``businessos crm import ARGS`` as a real subprocess on the test's servers."""
    env = {
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_PLUGINS": "crm",
    }
    return run_cli("crm", "import", *args, env=env)


async def test_cli_import_shows_progress_and_reports_rows_by_number(
    api: AsyncTestClient[Any], crm_settings: Settings, tmp_path: Path
) -> None:
    t = await crm_tenant(api)
    lines = ["first_name,last_name,email"] + [f"P{i},Person,p{i}@example.com" for i in range(600)]
    lines.insert(5, "Bad,Row,not-an-email")  # row 6
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join(lines) + "\n")

    refused = await asyncio.to_thread(_run_cli, crm_settings, [str(path), "--tenant", t["slug"]])
    assert refused.returncode == 1 and "row 6: email" in refused.stdout + refused.stderr
    assert (await api.get("/api/crm/contacts", headers=t["h"])).json()["pagination"]["total"] == 0

    args = [str(path), "--tenant", t["slug"], "--mode", "per_row"]
    done = await asyncio.to_thread(_run_cli, crm_settings, args)
    assert "importing" in done.stdout + done.stderr  # the progress bar (it draws only its label without a terminal)
    assert "imported 600 row(s), 1 rejected" in done.stdout + done.stderr and done.returncode == 1
    assert (await api.get("/api/crm/contacts", headers=t["h"])).json()["pagination"]["total"] == 600
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.imported"}, headers=t["h"])).json()
    assert logs["items"][0]["actor"] == "cli"

    unknown = await asyncio.to_thread(_run_cli, crm_settings, [str(path), "--tenant", "no-such-tenant"])
    assert unknown.returncode == 1 and "no tenant" in unknown.stdout + unknown.stderr


async def test_workflow_nodes_create_contacts_and_move_deals(api: AsyncTestClient[Any], crm_settings: Settings) -> None:
    assert [(n.key, n.kind) for n in NODES] == [
        ("crm.create_contact", "action"),
        ("crm.update_deal_stage", "action"),
        ("crm.deal_stage_changed", "trigger"),
    ]
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    deal = await make(api, t, "deals", title="Deal", pipeline_id=p["id"])
    won = p["stages"][2]["id"]
    create, move = NODES[0].run, NODES[1].run
    assert create is not None and move is not None
    assert (NODES[0].output, NODES[1].output, NODES[2].output) == (s.ContactOut, s.DealOut, DealStageChanged)
    tenant_id = uuid.UUID(t["id"])
    other = await crm_tenant(api)
    async with other_process(crm_settings) as kernel:
        config = msgspec.convert({"first_name": "Flow", "email": "flow@example.com"}, CreateContactConfig)
        made = await create(node_context(kernel, "crm", tenant_id), config)
        move_config = UpdateDealStageConfig(deal_id=uuid.UUID(deal["id"]), stage_id=uuid.UUID(won))
        moved = await move(node_context(kernel, "crm", tenant_id, step_id="step-2"), move_config)
        with pytest.raises(sdk.Conflict):
            await create(node_context(kernel, "crm", tenant_id), config)
        # Another tenant: its own contact with the same e-mail; the first tenant's deal is not there.
        theirs = await create(node_context(kernel, "crm", uuid.UUID(other["id"])), config)
        with pytest.raises(sdk.NotFound):
            await move(node_context(kernel, "crm", uuid.UUID(other["id"])), move_config)
    assert isinstance(made, s.ContactOut) and isinstance(moved, s.DealOut)
    assert (await api.get(f"/api/crm/contacts/{made.id}", headers=t["h"])).json()["first_name"] == "Flow"
    assert (await api.get(f"/api/crm/contacts/{theirs.id}", headers=other["h"])).json()["first_name"] == "Flow"
    problem(await api.get(f"/api/crm/contacts/{theirs.id}", headers=t["h"]), 404)
    assert str(moved.stage_id) == won
    history = (await api.get(f"/api/crm/deals/{deal['id']}/history", headers=t["h"])).json()
    assert history[-1]["actor"] == "workflow"
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.created"}, headers=t["h"])).json()
    assert [(r["actor"], r["resource_type"]) for r in logs["items"]] == [("workflow", "crm.contact")]
    # The trigger starts on its event, narrowed by its filter.
    trigger = NODES[2]
    assert trigger.event == "crm.deal.stage_changed" and trigger.filter is not None
    payload = {"pipeline_id": p["id"], "to_stage_id": won}
    assert trigger.filter(DealStageChangedConfig(), payload)
    assert trigger.filter(DealStageChangedConfig(to_stage_id=uuid.UUID(won)), payload)
    assert not trigger.filter(DealStageChangedConfig(pipeline_id=uuid.uuid4()), payload)
    problem(await api.get(f"/api/crm/contacts/{made.id}", headers=(await crm_tenant(api))["h"]), 404)
