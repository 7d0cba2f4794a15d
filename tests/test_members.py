"""GET /api/tenant/members: a tenant's members, paged like every list, for those who may read them
(owners, admins and members; not viewers), and never another tenant's."""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import new_tenant, open_client


async def _join(client: AsyncTestClient[Any], slug: str, role: str) -> dict[str, str]:
    """Invite someone with ``role`` into ``slug`` and have them register; their e-mail and token."""
    headers = {"X-Tenant-ID": slug}
    email, password = f"{role}-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
    invitation = await client.post("/api/tenant/invitations", json={"email": email, "role": role}, headers=headers)
    assert invitation.status_code == 201, invitation.text
    joined = await client.post(
        "/api/auth/register",
        json={"email": email, "password": password, "invitation_token": invitation.json()["token"]},
        headers=headers,
    )
    assert joined.status_code == 201, joined.text
    return {"email": email, "token": joined.json()["access_token"]}


async def test_members_are_listed_paged_for_those_who_may_read_them(settings: Settings) -> None:
    async with open_client(settings) as client:
        a, b = await new_tenant(client, "mem-a"), await new_tenant(client, "mem-b")
        member = await _join(client, a["slug"], "member")
        viewer = await _join(client, a["slug"], "viewer")
        outsider = await _join(client, b["slug"], "member")
        ha, hb = {"X-Tenant-ID": a["slug"]}, {"X-Tenant-ID": b["slug"]}

        listed = await client.get("/api/tenant/members", headers=ha)
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert [m["email"] for m in body["members"]] == [a["email"], member["email"], viewer["email"]]
        assert [m["role"] for m in body["members"]] == ["owner", "member", "viewer"]
        assert body["members"][0]["user_id"] == a["user_id"] and body["members"][0]["joined_at"]
        assert body["pagination"] == {"page": 1, "limit": 20, "total": 3, "pages": 1}

        second = (await client.get("/api/tenant/members", params={"page": 2, "limit": 2}, headers=ha)).json()
        assert [m["email"] for m in second["members"]] == [viewer["email"]]
        assert second["pagination"] == {"page": 2, "limit": 2, "total": 3, "pages": 2}
        beyond = (await client.get("/api/tenant/members", params={"page": 9, "limit": 2}, headers=ha)).json()
        assert beyond["members"] == [] and beyond["pagination"]["total"] == 3
        for params, field in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"page": 0}, "page")):
            refused = await client.get("/api/tenant/members", params=params, headers=ha)
            assert refused.status_code in (400, 422), refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert field in refused.text

        # A member may read the list; a viewer may not.
        as_member = await client.get(
            "/api/tenant/members", headers={**ha, "Authorization": f"Bearer {member['token']}"}
        )
        assert as_member.status_code == 200 and as_member.json()["pagination"]["total"] == 3
        as_viewer = await client.get(
            "/api/tenant/members", headers={**ha, "Authorization": f"Bearer {viewer['token']}"}
        )
        assert as_viewer.status_code == 403, as_viewer.text

        # The other tenant sees its own members only; its member's token does not open tenant A.
        other = (await client.get("/api/tenant/members", headers=hb)).json()
        assert [m["email"] for m in other["members"]] == [b["email"], outsider["email"]]
        crossed = await client.get(
            "/api/tenant/members", headers={**ha, "Authorization": f"Bearer {outsider['token']}"}
        )
        assert crossed.status_code in (401, 403), crossed.text
        assert a["email"] not in crossed.text
