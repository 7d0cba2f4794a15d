"""The CRM's CLI import (with its progress bar) and its workflow nodes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.settings import Settings
from plugins.crm.cli import import_file
from plugins.crm.nodes import NODES, CreateContactConfig, UpdateDealStageConfig
from tests.conftest import other_process
from tests.test_crm import api, crm_settings, crm_tenant, make, problem
from tests.test_crm_deals import sales_pipeline

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py


def _run_cli(settings: Settings, args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    # The command opens the kernel through sdk.open_kernel(); here, on the test's servers.
    monkeypatch.setattr(sdk, "open_kernel", lambda: other_process(settings), raising=False)
    return CliRunner().invoke(import_file, args, catch_exceptions=False)


async def test_cli_import_shows_progress_and_reports_rows_by_number(
    api: AsyncTestClient[Any], crm_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = await crm_tenant(api)
    lines = ["first_name,last_name,email"] + [f"P{i},Person,p{i}@example.com" for i in range(600)]
    lines.insert(5, "Bad,Row,not-an-email")  # row 6
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join(lines) + "\n")

    refused = await asyncio.to_thread(_run_cli, crm_settings, [str(path), "--tenant", t["slug"]], monkeypatch)
    assert refused.exit_code == 1 and "row 6: email" in refused.output
    assert (await api.get("/api/crm/contacts", headers=t["h"])).json()["pagination"]["total"] == 0

    args = [str(path), "--tenant", t["slug"], "--mode", "per_row"]
    done = await asyncio.to_thread(_run_cli, crm_settings, args, monkeypatch)
    assert "importing" in done.output  # the progress bar (it draws only its label without a terminal)
    assert "imported 600 row(s), 1 rejected" in done.output and done.exit_code == 1
    assert (await api.get("/api/crm/contacts", headers=t["h"])).json()["pagination"]["total"] == 600
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.imported"}, headers=t["h"])).json()
    assert logs["items"][0]["actor"] == "cli"

    unknown = await asyncio.to_thread(_run_cli, crm_settings, [str(path), "--tenant", "no-such-tenant"], monkeypatch)
    assert unknown.exit_code == 1 and "no tenant" in unknown.output


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
    tenant_id = uuid.UUID(t["id"])
    async with other_process(crm_settings) as kernel:
        config = msgspec.convert({"first_name": "Flow", "email": "flow@example.com"}, CreateContactConfig)
        made = await create(config, kernel=kernel, tenant_id=tenant_id)
        moved = await move(
            UpdateDealStageConfig(deal_id=uuid.UUID(deal["id"]), stage_id=uuid.UUID(won)),
            kernel=kernel,
            tenant_id=tenant_id,
        )
        with pytest.raises(sdk.Conflict):
            await create(config, kernel=kernel, tenant_id=tenant_id)
    assert (await api.get(f"/api/crm/contacts/{made['id']}", headers=t["h"])).json()["first_name"] == "Flow"
    assert moved["stage_id"] == won
    history = (await api.get(f"/api/crm/deals/{deal['id']}/history", headers=t["h"])).json()
    assert history[-1]["actor"] == "workflow"
    problem(await api.get(f"/api/crm/contacts/{made['id']}", headers=(await crm_tenant(api))["h"]), 404)
