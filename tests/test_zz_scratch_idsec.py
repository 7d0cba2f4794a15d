from typing import Any
import uuid
from datetime import datetime, timedelta
from litestar.testing import AsyncTestClient
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client


async def test_probe(settings: Settings) -> None:
    async with open_client(settings) as api:
        api.event_hooks = {"request": [], "response": []}
        t = await new_tenant(api, "probe", allow_signup=True)
        h = {"X-Tenant-ID": t["slug"], "Authorization": f"Bearer {t['access_token']}"}
        anon = {"X-Tenant-ID": t["slug"]}
        probes = [
            ("POST", "/api/api-keys", {"name": "n", "role": "member", "expires_at": (datetime.utcnow() + timedelta(hours=1)).isoformat()}, h),
            ("POST", "/api/auth/login", {"email": "a\x00b@x.com", "password": "x"}, anon),
            ("POST", "/api/auth/register", {"email": "a\x00b@x.com", "password": f"pw-{uuid.uuid4().hex}"}, anon),
            ("POST", "/api/auth/register", {"email": f"n{uuid.uuid4().hex[:6]}@x.com", "password": f"pw-{uuid.uuid4().hex}", "name": "a\x00b"}, anon),
            ("POST", "/api/auth/login", {"email": "é@x.com", "password": "x\x00"}, anon),
            ("POST", "/api/tenant/invitations", {"email": "a\x00b@x.com"}, h),
            ("POST", "/api/api-keys", {"name": "a\x00b", "role": "member"}, h),
            ("POST", "/api/auth/switch-tenant", {"tenant": "a\x00b"}, h),
            ("POST", "/api/auth/switch-tenant", {"tenant": "x" * 100}, h),
            ("GET", "/api/tenants/current", None, {"X-Tenant-ID": "a" * 101, "Authorization": h["Authorization"]}),
            ("GET", "/api/tenants/current", None, {"X-Tenant-ID": "a%00b", "Authorization": h["Authorization"]}),
            ("POST", "/api/auth/refresh", {"refresh_token": "rt_" + "\x00" * 71}, anon),
            ("PUT", "/api/roles/member", {"permissions": ["a\x00b"]}, h),
            ("PUT", "/api/roles/me%00mber", {"permissions": []}, h),
            ("POST", "/api/auth/logout", {"refresh_token": "rt_" + "A" * 71}, h),
            ("GET", "/api/auth/me", None, {"Authorization": "Bearer " + "é"}),
        ]
        for method, path, body, headers in probes:
            r = await api.request(method, path, json=body, headers=headers)
            print("PROBE", method, path, repr(body)[:60], r.status_code, r.text[:150])
