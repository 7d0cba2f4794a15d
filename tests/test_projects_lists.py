"""The projects module's paginated lists, board column management and comment edits, over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from tests.test_projects import (
    api,
    assert_dense,
    at,
    member_of,
    new_project,
    new_task,
    ok,
    problem,
    projects_settings,
    tasks_of,
    tenant_with_projects,
)

__all__ = ["api", "projects_settings"]  # the fixtures, shared with tests/test_projects.py


def columns_of(body: dict[str, Any]) -> list[tuple[str, int, bool]]:
    return [(c["name"], c["position"], c["is_done"]) for c in body["columns"]]


async def audit_actions(api: AsyncTestClient[Any], tenant: dict[str, Any], pattern: str) -> list[str]:
    rows = ok(await api.get("/api/audit/logs", params={"action": pattern, "limit": 200}, headers=at(tenant)))["items"]
    return [r["action"] for r in rows]


# --- projects -------------------------------------------------------------------------------------


async def test_project_list_pages_filters_and_sorts(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    names = ["Website", "Hiring", "Audit 100%", "Offsite", "Web shop"]
    made = [await new_project(api, a, name) for name in names]
    await new_project(api, b, "Website")

    async def listed(**params: Any) -> list[str]:
        body = ok(await api.get("/api/projects", params=params, headers=at(a)))
        assert set(body) == {"projects", "pagination"}
        return [p["name"] for p in body["projects"]]

    assert await listed() == names
    assert await listed(sort="-created_at") == list(reversed(names))
    assert await listed(sort="name") == sorted(names)
    assert await listed(q="web") == ["Website", "Web shop"]
    assert await listed(q="100%") == ["Audit 100%"] and await listed(q="%") == ["Audit 100%"]
    assert await listed(created_after=made[3]["created_at"]) == ["Offsite", "Web shop"]
    assert await listed(created_before=made[1]["created_at"]) == ["Website"]
    page = ok(await api.get("/api/projects", params={"limit": 2, "page": 3}, headers=at(a)))
    assert page["pagination"] == {"page": 3, "limit": 2, "total": 5, "pages": 3}
    assert [p["name"] for p in page["projects"]] == ["Web shop"]
    assert page["projects"][0]["columns"] == made[4]["columns"]
    for params, field in (({"limit": 101}, "limit"), ({"page": 0}, "page"), ({"sort": "colour"}, "sort")):
        body = problem(await api.get("/api/projects", params=params, headers=at(a)), 422)
        assert body["errors"][0]["field"] == field
    # One problem names every bad field (the SDK's one check, which the CRM's lists share).
    bad = {"limit": 101, "page": 0, "sort": "colour"}
    body = problem(await api.get("/api/projects", params=bad, headers=at(a)), 422)
    assert [e["field"] for e in body["errors"]] == ["page", "limit", "sort"]
    assert [p["name"] for p in ok(await api.get("/api/projects", headers=at(b)))["projects"]] == ["Website"]


# --- board columns --------------------------------------------------------------------------------


async def test_columns_are_added_renamed_and_reordered_densely(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    project = await new_project(api, a)
    base = f"/api/projects/{project['id']}/columns"
    assert ok(await api.get(base, headers=at(a)))["columns"] == project["columns"]

    added = ok(await api.post(base, json={"name": "Review", "position": 2}, headers=at(a)), 201)
    assert columns_of(added) == [
        ("To do", 0, False),
        ("In progress", 1, False),
        ("Review", 2, False),
        ("Done", 3, True),
    ]
    review = added["columns"][2]["id"]
    assert columns_of(ok(await api.post(base, json={"name": "Icebox"}, headers=at(a)), 201))[-1] == (
        "Icebox",
        4,
        False,
    )

    moved = ok(await api.patch(f"{base}/{review}", json={"name": "QA", "position": 0}, headers=at(a)))
    assert columns_of(moved) == [
        ("QA", 0, False),
        ("To do", 1, False),
        ("In progress", 2, False),
        ("Done", 3, True),
        ("Icebox", 4, False),
    ]
    last = ok(await api.patch(f"{base}/{review}", json={"position": 99}, headers=at(a)))
    assert [c["name"] for c in last["columns"]] == ["To do", "In progress", "Done", "Icebox", "QA"]
    assert ok(await api.get(f"/api/projects/{project['id']}", headers=at(a)))["columns"] == last["columns"]

    # Bad input is refused naming it, and nothing changes.
    problem(await api.post(base, json={"name": ""}, headers=at(a)), 422)
    problem(await api.patch(f"{base}/{review}", json={"position": -1}, headers=at(a)), 422)
    problem(await api.patch(f"{base}/{review}", json={"colour": "red"}, headers=at(a)), 422)
    done = last["columns"][2]["id"]
    body = problem(await api.patch(f"{base}/{done}", json={"is_done": False}, headers=at(a)), 422)
    assert body["errors"][0]["field"] == "is_done"
    problem(await api.patch(f"{base}/{uuid.uuid4()}", json={"name": "x"}, headers=at(a)), 404)
    assert ok(await api.get(base, headers=at(a)))["columns"] == last["columns"]

    # Another tenant reaches none of it; another project's column is not this board's.
    problem(await api.get(base, headers=at(b)), 404)
    problem(await api.post(base, json={"name": "Theirs"}, headers=at(b)), 404)
    problem(await api.patch(f"{base}/{review}", json={"name": "Theirs"}, headers=at(b)), 404)
    problem(await api.delete(f"{base}/{review}", headers=at(b)), 404)
    other = await new_project(api, a, "Other")
    problem(await api.patch(f"/api/projects/{other['id']}/columns/{review}", json={"name": "x"}, headers=at(a)), 404)

    assert (
        sorted(await audit_actions(api, a, "projects.column.*"))
        == ["projects.column.created"] * 2 + ["projects.column.updated"] * 2
    )


async def test_moving_the_done_flag_completes_and_reopens_tasks(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    todo, doing, done = (c["id"] for c in project["columns"])
    base = f"/api/projects/{project['id']}/columns"
    working = await new_task(api, a, project, "Working", column_id=doing)
    finished = await new_task(api, a, project, "Finished", column_id=done)
    assert working["completed_at"] is None and finished["completed_at"] is not None

    after = ok(await api.patch(f"{base}/{doing}", json={"is_done": True}, headers=at(a)))
    assert columns_of(after) == [("To do", 0, False), ("In progress", 1, True), ("Done", 2, False)]
    by_title = {t["title"]: t for t in await tasks_of(api, a, project)}
    assert by_title["Working"]["completed_at"] is not None and by_title["Finished"]["completed_at"] is None

    # A new column can take the flag too.
    added = ok(await api.post(base, json={"name": "Shipped", "is_done": True}, headers=at(a)), 201)
    assert [c["is_done"] for c in added["columns"]] == [False, False, False, True]
    assert all(t["completed_at"] is None for t in await tasks_of(api, a, project))
    assert todo


async def test_a_column_with_tasks_is_deleted_only_by_moving_them(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    project = await new_project(api, a)
    todo, doing, done = (c["id"] for c in project["columns"])
    base = f"/api/projects/{project['id']}/columns"
    in_todo = [await new_task(api, a, project, f"T{i}", column_id=todo) for i in range(3)]
    already_done = await new_task(api, a, project, "Old", column_id=done)

    body = problem(await api.delete(f"{base}/{todo}", headers=at(a)), 409)
    assert body["tasks"] == 3 and "3 tasks" in body["detail"]
    body = problem(await api.delete(f"{base}/{done}", params={"move_to": todo}, headers=at(a)), 409)
    other = await new_project(api, a, "Other")
    for target in (other["columns"][0]["id"], todo):
        body = problem(await api.delete(f"{base}/{todo}", params={"move_to": target}, headers=at(a)), 422)
        assert body["errors"][0]["field"] == "move_to"
    problem(await api.delete(f"{base}/{todo}", params={"move_to": "nope"}, headers=at(a)), 422)
    assert ok(await api.get(base, headers=at(a)))["columns"] == project["columns"]

    # Into the done column: the tasks follow the one already there, in their order, and complete.
    left = ok(await api.delete(f"{base}/{todo}", params={"move_to": done}, headers=at(a)))
    assert columns_of(left) == [("In progress", 0, False), ("Done", 1, True)]
    tasks = await tasks_of(api, a, project)
    assert [(t["title"], t["position"], t["status"]) for t in tasks] == [
        ("Old", 0, "Done"),
        ("T0", 1, "Done"),
        ("T1", 2, "Done"),
        ("T2", 3, "Done"),
    ]
    assert all(t["completed_at"] is not None for t in tasks)
    assert_dense(tasks)
    assert already_done["id"] == tasks[0]["id"] and len(in_todo) == 3
    # An empty column goes without move_to.
    assert columns_of(ok(await api.delete(f"{base}/{doing}", headers=at(a)))) == [("Done", 0, True)]
    assert await audit_actions(api, a, "projects.column.deleted") == ["projects.column.deleted"] * 2
    completed = await audit_actions(api, a, "projects.task.*")
    assert completed.count("projects.task.created") == 4


# --- tasks ----------------------------------------------------------------------------------------


async def test_task_list_filters_sorts_and_pages(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    member = await member_of(api, a, "member")
    project = await new_project(api, a)
    todo, doing, done = (c["id"] for c in project["columns"])
    await new_task(api, a, project, "Write copy", priority="low", due_date="2030-01-10", description="for the site")
    await new_task(api, a, project, "Fix 50% bug", priority="urgent", assignee_id=member["user_id"], column_id=doing)
    await new_task(api, a, project, "Ship", priority="high", due_date="2030-02-01", column_id=done)
    await new_task(api, a, project, "Plan", due_date="2030-01-20", assignee_id=member["user_id"])
    base = f"/api/projects/{project['id']}/tasks"

    async def titles(**params: Any) -> list[str]:
        body = ok(await api.get(base, params=params, headers=at(a)))
        assert set(body) == {"tasks", "pagination"}
        return [t["title"] for t in body["tasks"]]

    assert await titles() == ["Write copy", "Plan", "Fix 50% bug", "Ship"]
    assert await titles(status="in PROGRESS") == ["Fix 50% bug"]
    assert await titles(column_id=todo) == ["Write copy", "Plan"]
    assert await titles(assignee_id=member["user_id"]) == ["Plan", "Fix 50% bug"]
    assert await titles(priority="high") == ["Ship"]
    assert await titles(due_after="2030-01-10", due_before="2030-02-01") == ["Write copy", "Plan"]
    assert await titles(q="SITE") == ["Write copy"] and await titles(q="50%") == ["Fix 50% bug"]
    assert await titles(done="true") == ["Ship"]
    assert await titles(sort="priority") == ["Fix 50% bug", "Ship", "Plan", "Write copy"]
    assert await titles(sort="due_date") == ["Write copy", "Plan", "Ship", "Fix 50% bug"]
    assert await titles(sort="-created_at") == ["Plan", "Ship", "Fix 50% bug", "Write copy"]
    page = ok(await api.get(base, params={"limit": 3, "page": 2}, headers=at(a)))
    assert page["pagination"] == {"page": 2, "limit": 3, "total": 4, "pages": 2}
    assert [t["title"] for t in page["tasks"]] == ["Ship"]

    for params, field in (
        ({"priority": "meh"}, "priority"),
        ({"sort": "colour"}, "sort"),
        ({"limit": 101}, "limit"),
        ({"due_after": "soon"}, "due_after"),
    ):
        assert problem(await api.get(base, params=params, headers=at(a)), 422)["errors"][0]["field"] == field
    problem(await api.get(base, headers=at(b)), 404)


# --- comments -------------------------------------------------------------------------------------


async def test_comments_page_and_only_their_author_or_an_admin_changes_them(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant_with_projects(api), await tenant_with_projects(api)
    member = await member_of(api, a, "member")
    colleague = await member_of(api, a, "member")
    admin = await member_of(api, a, "admin")
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Discuss")
    url = f"/api/projects/{project['id']}/tasks/{task['id']}/comments"
    as_member, as_colleague, as_admin = (at(a, m["access_token"]) for m in (member, colleague, admin))

    mine = ok(await api.post(url, json={"body": "First"}, headers=as_member), 201)
    for i in range(4):
        ok(await api.post(url, json={"body": f"Owner {i}"}, headers=at(a)), 201)
    page = ok(await api.get(url, params={"limit": 2, "page": 1}, headers=at(a)))
    assert set(page) == {"comments", "pagination"}
    assert page["pagination"] == {"page": 1, "limit": 2, "total": 5, "pages": 3}
    assert [c["body"] for c in page["comments"]] == ["First", "Owner 0"]
    assert mine["edited_at"] is None
    theirs = page["comments"][1]

    edited = ok(await api.patch(f"{url}/{mine['id']}", json={"body": "First, edited"}, headers=as_member))
    assert edited["body"] == "First, edited" and edited["edited_at"] is not None
    body = problem(await api.patch(f"{url}/{theirs['id']}", json={"body": "Hijack"}, headers=as_member), 403)
    assert "author" in body["detail"]
    problem(await api.patch(f"{url}/{mine['id']}", json={"body": "Not yours"}, headers=as_colleague), 403)
    problem(await api.delete(f"{url}/{mine['id']}", headers=as_colleague), 403)
    problem(await api.patch(f"{url}/{mine['id']}", json={"body": ""}, headers=as_member), 422)
    assert ok(await api.get(url, headers=at(a)))["comments"][0]["body"] == "First, edited"

    # Owners and admins moderate.
    ok(await api.patch(f"{url}/{mine['id']}", json={"body": "Moderated"}, headers=as_admin))
    assert (await api.delete(f"{url}/{theirs['id']}", headers=as_admin)).status_code == 204
    assert (await api.delete(f"{url}/{mine['id']}", headers=at(a))).status_code == 204
    assert ok(await api.get(url, headers=at(a)))["pagination"]["total"] == 3
    problem(await api.delete(f"{url}/{mine['id']}", headers=at(a)), 404)

    # Another tenant, even its owner, reaches none of it.
    left = ok(await api.get(url, headers=at(a)))["comments"][0]
    problem(await api.patch(f"{url}/{left['id']}", json={"body": "x"}, headers=at(b)), 404)
    problem(await api.delete(f"{url}/{left['id']}", headers=at(b)), 404)
    other_task = await new_task(api, a, project, "Elsewhere")
    wrong = f"/api/projects/{project['id']}/tasks/{other_task['id']}/comments/{left['id']}"
    problem(await api.delete(wrong, headers=at(a)), 404)

    actions = await audit_actions(api, a, "projects.comment.*")
    assert actions.count("projects.comment.updated") == 2 and actions.count("projects.comment.deleted") == 2


async def test_a_viewer_reads_columns_and_comments_but_changes_none(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    viewer = await member_of(api, a, "viewer")
    as_viewer = at(a, viewer["access_token"])
    project = await new_project(api, a)
    task = await new_task(api, a, project, "Look only")
    comment = ok(
        await api.post(
            f"/api/projects/{project['id']}/tasks/{task['id']}/comments", json={"body": "Hi"}, headers=at(a)
        ),
        201,
    )
    column = project["columns"][0]["id"]
    base = f"/api/projects/{project['id']}"
    assert ok(await api.get(f"{base}/columns", headers=as_viewer))["columns"] == project["columns"]
    assert ok(await api.get(f"{base}/tasks", headers=as_viewer))["pagination"]["total"] == 1
    for method, path, body in (
        ("POST", f"{base}/columns", {"name": "x"}),
        ("PATCH", f"{base}/columns/{column}", {"name": "x"}),
        ("DELETE", f"{base}/columns/{column}", None),
        ("PATCH", f"{base}/tasks/{task['id']}/comments/{comment['id']}", {"body": "x"}),
        ("DELETE", f"{base}/tasks/{task['id']}/comments/{comment['id']}", None),
    ):
        problem(await api.request(method, path, json=body, headers=as_viewer), 403)
    assert ok(await api.get(f"{base}/columns", headers=at(a)))["columns"] == project["columns"]


async def test_moderating_comments_is_a_permission_tenants_can_move(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with_projects(api)
    member, admin = await member_of(api, a, "member"), await member_of(api, a, "admin")
    as_member, as_admin = at(a, member["access_token"]), at(a, admin["access_token"])
    roles = {r["role"]: set(r["permissions"]) for r in ok(await api.get("/api/roles", headers=at(a)))["roles"]}
    assert "projects.comments.moderate" in roles["admin"] and "projects.comments.moderate" in roles["owner"]
    assert "projects.comments.moderate" not in roles["member"] | roles["viewer"]
    assert "projects.comments.write" in roles["member"]

    project = await new_project(api, a)
    task = await new_task(api, a, project, "Discuss")
    url = f"/api/projects/{project['id']}/tasks/{task['id']}/comments"
    owners = ok(await api.post(url, json={"body": "By the owner"}, headers=at(a)), 201)
    problem(await api.patch(f"{url}/{owners['id']}", json={"body": "x"}, headers=as_member), 403)

    # The tenant moves the right: members moderate, admins no longer do.
    grant = sorted(roles["member"] | {"projects.comments.moderate"})
    ok(await api.put("/api/roles/member", json={"permissions": grant}, headers=at(a)))
    ok(await api.put("/api/roles/admin", json={"permissions": sorted(roles["member"])}, headers=at(a)))
    edited = ok(await api.patch(f"{url}/{owners['id']}", json={"body": "Moderated"}, headers=as_member))
    assert edited["body"] == "Moderated"
    body = problem(await api.delete(f"{url}/{owners['id']}", headers=as_admin), 403)
    assert "projects.comments.moderate" in body["detail"]
