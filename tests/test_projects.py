"""The projects module over HTTP: projects and their boards, tasks and subtasks, assignees,
comments, concurrent moves, tenant isolation, permissions, module switching, audit and events."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from plugins.projects.schemas import TaskOut
from tests.conftest import _dsn, new_tenant, node_context, open_client, other_process, settings_for
from tests.servers import api_servers
from tests.test_access import join

# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def projects_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings allowing the projects plugin, its branch migrated on the session database."""
    assert settings.database_url and settings.redis_url
    scoped = settings_for(
        settings.database_url, settings.redis_url, tmp_path_factory.mktemp("projects"), BUSINESSOS_PLUGINS="projects"
    )
    plugins = load_app_plugins(scoped.plugins_allowlist)
    record = plugins.get("projects")
    assert record is not None and record.active, record and record.reason
    await migrate.upgrade(scoped, settings.database_url, plugins.migration_folders())
    return scoped


@pytest.fixture(scope="module")
async def api(projects_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(projects_settings) as client:
        yield client


async def tenant_with_projects(api: AsyncTestClient[Any], prefix: str = "prj") -> dict[str, Any]:
    tenant = await new_tenant(api, prefix)
    response = await api.post("/api/modules/projects/enable", headers=at(tenant))
    assert response.status_code == 200, response.text
    return tenant


async def member_of(api: AsyncTestClient[Any], tenant: dict[str, Any], role: str) -> dict[str, Any]:
    """A new person invited to ``tenant`` with ``role``: their tokens plus ``user_id``."""
    joined = await join(api, tenant, role)
    me = ok(await api.get("/api/auth/me", headers=at(tenant, joined["access_token"])))
    return {**joined, "user_id": me["id"]}


def at(tenant: dict[str, Any], token: str | None = None) -> dict[str, str]:
    headers = {"X-Tenant-ID": tenant["slug"]}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def new_project(api: AsyncTestClient[Any], tenant: dict[str, Any], name: str = "Launch") -> dict[str, Any]:
    project: dict[str, Any] = ok(await api.post("/api/projects", json={"name": name}, headers=at(tenant)), 201)
    return project


async def new_task(
    api: AsyncTestClient[Any], tenant: dict[str, Any], project: dict[str, Any], title: str, **fields: Any
) -> dict[str, Any]:
    task: dict[str, Any] = ok(
        await api.post(f"/api/projects/{project['id']}/tasks", json={"title": title, **fields}, headers=at(tenant)),
        201,
    )
    return task


async def tasks_of(api: AsyncTestClient[Any], tenant: dict[str, Any], project: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(await api.get(f"/api/projects/{project['id']}/tasks", headers=at(tenant)))["tasks"]
    return items


def positions_by_column(tasks: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for task in tasks:
        found.setdefault(task["column_id"], []).append(task["position"])
    return {column: sorted(positions) for column, positions in found.items()}


def assert_dense(tasks: list[dict[str, Any]]) -> None:
    for column, positions in positions_by_column(tasks).items():
        assert positions == list(range(len(positions))), (column, positions)


# --- projects -------------------------------------------------------------------------------------


async def test_project_crud_with_default_board(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    created = await new_project(api, a, "Website")
    assert created["name"] == "Website" and created["description"] == ""
    assert [(c["name"], c["position"], c["is_done"]) for c in created["columns"]] == [
        ("To do", 0, False),
        ("In progress", 1, False),
        ("Done", 2, True),
    ]
    other = await new_project(api, a, "Hiring")

    listed = ok(await api.get("/api/projects", headers=at(a)))["projects"]
    assert [p["id"] for p in listed] == [created["id"], other["id"]]
    assert ok(await api.get(f"/api/projects/{created['id']}", headers=at(a))) == created

    patched = ok(await api.patch(f"/api/projects/{created['id']}", json={"description": "New site"}, headers=at(a)))
    assert (patched["name"], patched["description"]) == ("Website", "New site")
    problem(await api.patch(f"/api/projects/{created['id']}", json={"name": ""}, headers=at(a)), 422)
    problem(await api.post("/api/projects", json={"nom": "x"}, headers=at(a)), 422)

    await new_task(api, a, created, "Design")
    assert (await api.delete(f"/api/projects/{created['id']}", headers=at(a))).status_code == 204
    problem(await api.get(f"/api/projects/{created['id']}", headers=at(a)), 404)
    problem(await api.get(f"/api/projects/{created['id']}/tasks", headers=at(a)), 404)
    assert [p["id"] for p in ok(await api.get("/api/projects", headers=at(a)))["projects"]] == [other["id"]]


# --- tasks ----------------------------------------------------------------------------------------


async def test_tasks_land_at_the_end_of_their_column_with_their_fields(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    todo, doing, done = (c["id"] for c in project["columns"])

    first = await new_task(
        api, a, project, "Write copy", description="All pages", priority="high", due_date="2030-01-31"
    )
    assert first == {
        **first,
        "title": "Write copy",
        "description": "All pages",
        "priority": "high",
        "due_date": "2030-01-31",
        "column_id": todo,
        "status": "To do",
        "position": 0,
        "assignee_id": None,
        "completed_at": None,
        "parent_task_id": None,
        "subtask_ids": [],
    }
    second = await new_task(api, a, project, "Review")
    third = await new_task(api, a, project, "Build", column_id=doing)
    assert (second["position"], second["priority"], third["position"], third["status"]) == (
        1,
        "normal",
        0,
        "In progress",
    )
    # Created straight into the done column: complete from the start.
    assert (await new_task(api, a, project, "Kick-off", column_id=done))["completed_at"] is not None

    problem(
        await api.post(f"/api/projects/{project['id']}/tasks", json={"title": "x", "priority": "asap"}, headers=at(a)),
        422,
    )
    body = problem(
        await api.post(
            f"/api/projects/{project['id']}/tasks", json={"title": "x", "column_id": str(uuid.uuid4())}, headers=at(a)
        ),
        422,
    )
    assert body["errors"][0]["field"] == "column_id"

    patched = ok(
        await api.patch(
            f"/api/projects/{project['id']}/tasks/{first['id']}",
            json={"title": "Write all copy", "priority": "urgent", "due_date": None},
            headers=at(a),
        )
    )
    assert (patched["title"], patched["priority"], patched["due_date"], patched["position"]) == (
        "Write all copy",
        "urgent",
        None,
        0,
    )
    assert ok(await api.get(f"/api/projects/{project['id']}/tasks/{first['id']}", headers=at(a))) == patched
    assert [t["id"] for t in await tasks_of(api, a, project)][:3] == [first["id"], second["id"], third["id"]]


async def test_subtasks_belong_to_their_parent_and_go_with_it(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project, elsewhere = await new_project(api, a), await new_project(api, a, "Elsewhere")
    parent = await new_task(api, a, project, "Launch")
    before = await new_task(api, a, project, "Before")
    subs = [await new_task(api, a, project, f"Step {i}", parent_task_id=parent["id"]) for i in range(3)]
    after = await new_task(api, a, project, "After")
    nested = await new_task(api, a, project, "Detail", parent_task_id=subs[0]["id"])

    got = ok(await api.get(f"/api/projects/{project['id']}/tasks/{parent['id']}", headers=at(a)))
    assert got["subtask_ids"] == [s["id"] for s in subs]
    listed = ok(
        await api.get(f"/api/projects/{project['id']}/tasks", params={"parent_task_id": parent["id"]}, headers=at(a))
    )["tasks"]
    assert [t["id"] for t in listed] == [s["id"] for s in subs]
    assert all(t["parent_task_id"] == parent["id"] for t in listed)

    # A parent must be a task of the same project.
    other = await new_task(api, a, elsewhere, "Other")
    for parent_id in (other["id"], str(uuid.uuid4())):
        body = problem(
            await api.post(
                f"/api/projects/{project['id']}/tasks", json={"title": "x", "parent_task_id": parent_id}, headers=at(a)
            ),
            422,
        )
        assert body["errors"][0]["field"] == "parent_task_id"

    # Deleting the parent deletes its subtasks (nested ones too); the column closes up.
    assert (await api.delete(f"/api/projects/{project['id']}/tasks/{parent['id']}", headers=at(a))).status_code == 204
    remaining = await tasks_of(api, a, project)
    assert [(t["id"], t["position"]) for t in remaining] == [(before["id"], 0), (after["id"], 1)]
    for gone in (parent, *subs, nested):
        problem(await api.get(f"/api/projects/{project['id']}/tasks/{gone['id']}", headers=at(a)), 404)


async def test_assignee_must_be_a_member_of_the_tenant(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    member = await member_of(api, a, "member")
    project = await new_project(api, a)

    assigned = await new_task(api, a, project, "Mine", assignee_id=a["user_id"])
    assert assigned["assignee_id"] == a["user_id"]
    for stranger in (b["user_id"], str(uuid.uuid4())):  # another tenant's owner; nobody at all
        body = problem(
            await api.post(
                f"/api/projects/{project['id']}/tasks", json={"title": "x", "assignee_id": stranger}, headers=at(a)
            ),
            422,
        )
        assert [e["field"] for e in body["errors"]] == ["assignee_id"]
        body = problem(
            await api.patch(
                f"/api/projects/{project['id']}/tasks/{assigned['id']}", json={"assignee_id": stranger}, headers=at(a)
            ),
            422,
        )
        assert [e["field"] for e in body["errors"]] == ["assignee_id"]

    url = f"/api/projects/{project['id']}/tasks/{assigned['id']}"
    assert (
        ok(await api.patch(url, json={"assignee_id": member["user_id"]}, headers=at(a)))["assignee_id"]
        == member["user_id"]
    )
    assert ok(await api.patch(url, json={"assignee_id": None}, headers=at(a)))["assignee_id"] is None


async def test_moving_renumbers_both_columns_and_done_completes(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    todo, doing, done = (c["id"] for c in project["columns"])
    t = [await new_task(api, a, project, f"T{i}") for i in range(4)]

    def move(task: dict[str, Any], column: str, position: int) -> Any:
        return api.post(
            f"/api/projects/{project['id']}/tasks/{task['id']}/move",
            json={"column_id": column, "position": position},
            headers=at(a),
        )

    # Within a column: T3 to the top.
    assert ok(await move(t[3], todo, 0))["position"] == 0
    assert [x["id"] for x in await tasks_of(api, a, project)] == [t[3]["id"], t[0]["id"], t[1]["id"], t[2]["id"]]
    # Across columns, with a position past the end meaning last.
    moved = ok(await move(t[0], doing, 99))
    assert (moved["column_id"], moved["position"], moved["status"], moved["completed_at"]) == (
        doing,
        0,
        "In progress",
        None,
    )
    ok(await move(t[1], doing, 0))
    tasks = await tasks_of(api, a, project)
    assert [(x["id"], x["column_id"], x["position"]) for x in tasks] == [
        (t[3]["id"], todo, 0),
        (t[2]["id"], todo, 1),
        (t[1]["id"], doing, 0),
        (t[0]["id"], doing, 1),
    ]
    # Into the done column: completed; back out: open again.
    finished = ok(await move(t[1], done, 0))
    assert finished["status"] == "Done" and finished["completed_at"] is not None
    assert_dense(await tasks_of(api, a, project))
    assert ok(await move(t[1], todo, 1))["completed_at"] is None
    assert_dense(await tasks_of(api, a, project))

    # A column of another project, or none at all, is refused.
    other = await new_project(api, a, "Other")
    for column in (other["columns"][0]["id"], str(uuid.uuid4())):
        assert problem(await move(t[0], column, 0), 422)["errors"][0]["field"] == "column_id"
    problem(await move(t[0], todo, -1), 422)


async def test_concurrent_moves_keep_positions_dense_and_unique(
    api: AsyncTestClient[Any], projects_settings: Settings, tmp_path: Path
) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    columns = [c["id"] for c in project["columns"]]
    tasks = [await new_task(api, a, project, f"T{i}", column_id=columns[i % 3]) for i in range(12)]
    doomed = [await new_task(api, a, project, f"D{i}", column_id=columns[i % 3]) for i in range(3)]
    env = {
        "BUSINESSOS_PLUGINS": "projects",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    rng = random.Random(5)
    base = f"/api/projects/{project['id']}/tasks"
    # Two real server processes; 40 moves (many on the same tasks and columns), 6 creations and
    # 3 deletions in flight at once.
    async with (
        api_servers(projects_settings, tmp_path, count=2, env=env) as urls,
        httpx.AsyncClient(timeout=60, headers={**at(a, a["access_token"])}) as http,
    ):
        moves = [
            http.post(
                f"{urls[i % 2]}{base}/{rng.choice(tasks)['id']}/move",
                json={"column_id": rng.choice(columns), "position": rng.randrange(0, 6)},
            )
            for i in range(40)
        ]
        creations = [
            http.post(f"{urls[i % 2]}{base}", json={"title": f"N{i}", "column_id": columns[i % 3]}) for i in range(6)
        ]
        deletions = [http.delete(f"{urls[i % 2]}{base}/{task['id']}") for i, task in enumerate(doomed)]
        calls = [*moves, *creations, *deletions]
        order = list(range(len(calls)))
        rng.shuffle(order)
        shuffled = await asyncio.gather(*(calls[i] for i in order))
        responses = [r for _, r in sorted(zip(order, shuffled, strict=True))]
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 40 + [201] * 6 + [204] * 3, [r.text for r in responses if r.status_code >= 300]
    after = await tasks_of(api, a, project)
    created = [r.json()["id"] for r in responses[40:46]]
    assert sorted(t["id"] for t in after) == sorted([t["id"] for t in tasks] + created)
    assert_dense(after)
    # Done-ness follows the column each task ended in.
    for task in after:
        assert (task["completed_at"] is not None) == (task["column_id"] == columns[2]), task


# --- comments -------------------------------------------------------------------------------------


async def test_comments_carry_their_author(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    member = await member_of(api, a, "member")
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Discuss")
    url = f"/api/projects/{project['id']}/tasks/{task['id']}/comments"

    first = ok(await api.post(url, json={"body": "Looks good"}, headers=at(a)), 201)
    second = ok(await api.post(url, json={"body": "Agreed"}, headers=at(a, member["access_token"])), 201)
    assert (first["author_id"], first["author"]) == (a["user_id"], f"user:{a['user_id']}")
    assert second["author_id"] == member["user_id"]
    listed = ok(await api.get(url, headers=at(a)))["comments"]
    assert [(c["body"], c["author_id"]) for c in listed] == [
        ("Looks good", a["user_id"]),
        ("Agreed", member["user_id"]),
    ]
    problem(await api.post(url, json={"body": ""}, headers=at(a)), 422)
    problem(
        await api.post(
            f"/api/projects/{project['id']}/tasks/{uuid.uuid4()}/comments", json={"body": "x"}, headers=at(a)
        ),
        404,
    )


# --- isolation, permissions, module switching -----------------------------------------------------


async def test_another_tenants_ids_answer_404(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Secret")
    b_project = await new_project(api, b)
    p, t = project["id"], task["id"]
    column = project["columns"][1]["id"]

    for method, path, body in (
        ("GET", f"/api/projects/{p}", None),
        ("PATCH", f"/api/projects/{p}", {"name": "mine"}),
        ("DELETE", f"/api/projects/{p}", None),
        ("GET", f"/api/projects/{p}/tasks", None),
        ("POST", f"/api/projects/{p}/tasks", {"title": "x"}),
        ("GET", f"/api/projects/{p}/tasks/{t}", None),
        ("PATCH", f"/api/projects/{p}/tasks/{t}", {"title": "x"}),
        ("DELETE", f"/api/projects/{p}/tasks/{t}", None),
        ("POST", f"/api/projects/{p}/tasks/{t}/move", {"column_id": column, "position": 0}),
        ("GET", f"/api/projects/{p}/tasks/{t}/comments", None),
        ("POST", f"/api/projects/{p}/tasks/{t}/comments", {"body": "x"}),
        # A's task under B's own project is not found either.
        ("GET", f"/api/projects/{b_project['id']}/tasks/{t}", None),
        ("POST", f"/api/projects/{b_project['id']}/tasks/{t}/move", {"column_id": column, "position": 0}),
    ):
        response = await api.request(method, path, json=body, headers=at(b))
        problem(response, 404)
        assert "Secret" not in response.text
    assert ok(await api.get(f"/api/projects/{p}/tasks/{t}", headers=at(a)))["title"] == "Secret"
    assert [x["id"] for x in ok(await api.get("/api/projects", headers=at(b)))["projects"]] == [b_project["id"]]


async def test_viewer_reads_but_cannot_write(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    viewer = await member_of(api, a, "viewer")
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Look only")
    as_viewer = at(a, viewer["access_token"])
    p, t = project["id"], task["id"]

    assert ok(await api.get(f"/api/projects/{p}", headers=as_viewer))["id"] == p
    assert ok(await api.get(f"/api/projects/{p}/tasks/{t}/comments", headers=as_viewer))["comments"] == []
    for method, path, body in (
        ("POST", "/api/projects", {"name": "x"}),
        ("PATCH", f"/api/projects/{p}", {"name": "x"}),
        ("DELETE", f"/api/projects/{p}", None),
        ("POST", f"/api/projects/{p}/tasks", {"title": "x"}),
        ("PATCH", f"/api/projects/{p}/tasks/{t}", {"title": "x"}),
        ("POST", f"/api/projects/{p}/tasks/{t}/move", {"column_id": project["columns"][2]["id"], "position": 0}),
        ("DELETE", f"/api/projects/{p}/tasks/{t}", None),
        ("POST", f"/api/projects/{p}/tasks/{t}/comments", {"body": "x"}),
    ):
        problem(await api.request(method, path, json=body, headers=as_viewer), 403)
    assert ok(await api.get(f"/api/projects/{p}/tasks/{t}", headers=at(a)))["title"] == "Look only"


async def test_disabled_module_answers_404_naming_it_and_keeps_data(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Kept")
    ok(await api.post("/api/modules/projects/disable", headers=at(a)))

    for method, path in (
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", f"/api/projects/{project['id']}/tasks/{task['id']}"),
    ):
        body = problem(
            await api.request(method, path, json={"name": "x"} if method == "POST" else None, headers=at(a)), 404
        )
        assert body["module"] == "projects" and "projects" in body["detail"]

    ok(await api.post("/api/modules/projects/enable", headers=at(a)))
    assert ok(await api.get(f"/api/projects/{project['id']}/tasks/{task['id']}", headers=at(a))) == task
    assert [p["id"] for p in ok(await api.get("/api/projects", headers=at(a)))["projects"]] == [project["id"]]


# --- audit, events, workflow nodes ----------------------------------------------------------------


async def test_every_mutation_is_audited_with_its_resource(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    p = project["id"]
    task = await new_task(api, a, project, "Audited")
    t = task["id"]
    ok(await api.patch(f"/api/projects/{p}", json={"name": "Renamed"}, headers=at(a)))
    ok(await api.patch(f"/api/projects/{p}/tasks/{t}", json={"priority": "low"}, headers=at(a)))
    ok(
        await api.post(
            f"/api/projects/{p}/tasks/{t}/move",
            json={"column_id": project["columns"][2]["id"], "position": 0},
            headers=at(a),
        )
    )
    comment = ok(await api.post(f"/api/projects/{p}/tasks/{t}/comments", json={"body": "done"}, headers=at(a)), 201)
    assert (await api.delete(f"/api/projects/{p}/tasks/{t}", headers=at(a))).status_code == 204
    assert (await api.delete(f"/api/projects/{p}", headers=at(a))).status_code == 204

    rows = ok(await api.get("/api/audit/logs", params={"action": "projects.*", "limit": 200}, headers=at(a)))["items"]
    seen = [(r["action"], r["resource_type"], r["resource_id"]) for r in reversed(rows)]
    assert seen == [
        ("projects.project.created", "projects.project", p),
        ("projects.task.created", "projects.task", t),
        ("projects.project.updated", "projects.project", p),
        ("projects.task.updated", "projects.task", t),
        ("projects.task.moved", "projects.task", t),
        ("projects.comment.created", "projects.comment", comment["id"]),
        ("projects.task.deleted", "projects.task", t),
        ("projects.project.deleted", "projects.project", p),
    ]
    assert {r["actor"] for r in rows} == {f"user:{a['user_id']}"}
    by_action = {r["action"]: r for r in rows}
    assert by_action["projects.task.updated"]["before"]["priority"] == "normal"
    assert by_action["projects.task.updated"]["after"]["priority"] == "low"
    assert by_action["projects.task.moved"]["after"]["status"] == "Done"
    # No generic http.* rows: each change was audited by the route itself.
    assert ok(await api.get("/api/audit/logs", params={"action": "http.*"}, headers=at(a)))["items"] == []
    assert ok(await api.get("/api/audit/verify", headers=at(a)))["valid"] is True


async def test_events_go_to_the_outbox_with_the_change(api: AsyncTestClient[Any], database_url: str) -> None:
    a = await tenant_with_projects(api)
    member = await member_of(api, a, "member")
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Evented", assignee_id=member["user_id"])
    url = f"/api/projects/{project['id']}/tasks/{task['id']}"
    done = project["columns"][2]["id"]
    ok(await api.post(url + "/move", json={"column_id": done, "position": 0}, headers=at(a)))
    ok(await api.post(url + "/move", json={"column_id": done, "position": 0}, headers=at(a)))  # already done
    comment = ok(await api.post(url + "/comments", json={"body": "x"}, headers=at(a)), 201)
    # A refused change emits nothing.
    problem(await api.patch(url, json={"assignee_id": str(uuid.uuid4())}, headers=at(a)), 422)

    conn = await asyncpg.connect(_dsn(database_url))
    try:
        rows = await conn.fetch(
            "select event, payload::text as payload from events_outbox where tenant_id = $1 order by created_at, id",
            uuid.UUID(a["id"]),
        )
    finally:
        await conn.close()
    # One event of each kind (the second move into Done completes nothing new; the refusal emits nothing).
    events = {r["event"]: json.loads(r["payload"]) for r in rows if r["event"].startswith("projects.")}
    assert len([r for r in rows if r["event"].startswith("projects.")]) == 4
    assert set(events) == {
        "projects.task.created",
        "projects.task.assigned",
        "projects.task.completed",
        "projects.comment.created",
    }
    created, assigned, completed, commented = (
        events[f"projects.{name}"] for name in ("task.created", "task.assigned", "task.completed", "comment.created")
    )
    assert created["id"] == task["id"] and created["project_id"] == project["id"]
    assert assigned["assignee_id"] == member["user_id"]
    assert completed["status"] == "Done" and completed["completed_at"]
    assert commented["id"] == comment["id"] and commented["task_id"] == task["id"]
    assert commented["author_id"] == a["user_id"]


async def test_purge_deletes_only_this_tenants_project_rows(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    for tenant in (a, b):
        project = await new_project(api, tenant)
        task = await new_task(api, tenant, project, "Parent")
        sub = await new_task(api, tenant, project, "Child", parent_task_id=task["id"])
        ok(
            await api.post(
                f"/api/projects/{project['id']}/tasks/{sub['id']}/comments", json={"body": "x"}, headers=at(tenant)
            ),
            201,
        )
    ok(await api.post("/api/modules/projects/disable", headers=at(a)))
    purged = ok(await api.delete("/api/modules/projects/data", headers=at(a)))
    assert purged["deleted"] == {
        "projects_comments": 1,
        "projects_tasks": 2,
        "projects_columns": 3,
        "projects_projects": 1,
    }
    ok(await api.post("/api/modules/projects/enable", headers=at(a)))
    assert ok(await api.get("/api/projects", headers=at(a)))["projects"] == []
    assert len(ok(await api.get("/api/projects", headers=at(b)))["projects"]) == 1


async def test_create_task_node_and_completed_trigger_are_declared_and_run(
    api: AsyncTestClient[Any], projects_settings: Settings
) -> None:
    plugins = load_app_plugins(projects_settings.plugins_allowlist)
    record = plugins.get("projects")
    assert record is not None
    nodes = {n.key: n for n in record.nodes}
    assert {k: n.kind for k, n in nodes.items()} == {
        "projects.create_task": "action",
        "projects.task_completed": "trigger",
    }
    assert {e.name for e in record.event_types} == {
        "projects.task.created",
        "projects.task.assigned",
        "projects.task.completed",
        "projects.comment.created",
        "projects.comment.updated",
        "projects.comment.deleted",
        "projects.column.created",
        "projects.column.updated",
        "projects.column.deleted",
    }

    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    project = await new_project(api, a)
    create = nodes["projects.create_task"]
    assert create.run is not None and create.config is not None and create.output is TaskOut
    config = create.config(
        project_id=uuid.UUID(project["id"]), title="From a workflow", assignee_id=uuid.UUID(a["user_id"])
    )
    async with other_process(projects_settings) as kernel:
        made = await create.run(node_context(kernel, "projects", uuid.UUID(a["id"])), config)
        # Tenant B's workflow cannot reach tenant A's project.
        with pytest.raises(sdk.NotFound):
            await create.run(node_context(kernel, "projects", uuid.UUID(b["id"])), config)
    assert isinstance(made, TaskOut) and made.title == "From a workflow" and made.status == "To do"
    got = ok(await api.get(f"/api/projects/{project['id']}/tasks/{made.id}", headers=at(a)))
    assert got["assignee_id"] == a["user_id"]
    problem(await api.get(f"/api/projects/{project['id']}/tasks/{made.id}", headers=at(b)), 404)
    rows = ok(await api.get("/api/audit/logs", params={"action": "projects.task.created"}, headers=at(a)))["items"]
    assert [(r["actor"], r["resource_type"], r["resource_id"]) for r in rows] == [
        ("workflow", "projects.task", str(made.id))
    ]
    theirs = ok(await api.get("/api/audit/logs", params={"action": "projects.task.created"}, headers=at(b)))
    assert theirs["items"] == []
    completed = nodes["projects.task_completed"]
    assert completed.event == "projects.task.completed" and completed.filter is not None
    assert completed.filter(completed.config(), {"project_id": project["id"]})  # type: ignore[misc]
    elsewhere = completed.config(project_id=uuid.uuid4())  # type: ignore[misc]
    assert not completed.filter(elsewhere, {"project_id": project["id"]})

