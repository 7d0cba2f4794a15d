"""Accounts and log-in, from the outside: invitations, open sign-up, password policy, unique
e-mails, the shape of a log-in, no account enumeration, and the lock-out after failed attempts.

Every request carries its credentials explicitly (the client here has no owner-token hook), so
an anonymous request really is anonymous.
"""

from __future__ import annotations

import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pyotp
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from kernel.settings import Settings
from tests.conftest import _dsn, new_tenant, open_client

# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client that adds no credentials of its own: every header is the test's."""
    async with open_client(settings) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def mail(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


def at(tenant: dict[str, Any] | None = None, token: str | None = None) -> dict[str, str]:
    headers = {}
    if tenant is not None:
        headers["X-Tenant-ID"] = tenant["slug"]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def owner(tenant: dict[str, Any]) -> dict[str, str]:
    return at(tenant, tenant["access_token"])


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    return body


async def invite(
    api: AsyncTestClient[Any], tenant: dict[str, Any], email: str, role: str = "member"
) -> dict[str, Any]:
    response = await api.post(
        "/api/tenant/invitations", json={"email": email, "role": role}, headers=owner(tenant)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(
    api: AsyncTestClient[Any],
    tenant: dict[str, Any],
    email: str,
    pw: str,
    token: str | None = None,
    /,
    **extra: Any,
) -> Any:
    body: dict[str, Any] = {"email": email, "password": pw, **extra}
    if token is not None:
        body["invitation_token"] = token
    return await api.post("/api/auth/register", json=body, headers=at(tenant))


async def join(api: AsyncTestClient[Any], tenant: dict[str, Any], role: str) -> dict[str, Any]:
    """A new account that joined ``tenant`` with ``role`` through an invitation."""
    email, pw = mail(role), password()
    invitation = await invite(api, tenant, email, role)
    response = await register(api, tenant, email, pw, invitation["token"])
    assert response.status_code == 201, response.text
    return {"email": email, "password": pw, **response.json()}


async def login(api: AsyncTestClient[Any], email: str, pw: str, tenant: dict[str, Any] | None = None) -> Any:
    return await api.post("/api/auth/login", json={"email": email, "password": pw}, headers=at(tenant))


async def me(api: AsyncTestClient[Any], token: str) -> dict[str, Any]:
    response = await api.get("/api/auth/me", headers=at(token=token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def audit_rows(database_url: str, tenant: dict[str, Any], action: str) -> list[asyncpg.Record]:
    """The tenant's audit rows of ``action``, read as the database owner."""
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        return list(
            await conn.fetch(
                "select * from audit_logs where tenant_id = $1 and action = $2 order by seq",
                uuid.UUID(tenant["id"]),
                action,
            )
        )
    finally:
        await conn.close()


TOKEN_PAIR_KEYS = {"access_token", "refresh_token", "token_type", "expires_in"}


# --- invitations ----------------------------------------------------------------------------------


async def test_an_invitation_joins_its_tenant_with_the_invited_role_once(
    api: AsyncTestClient[Any], database_url: str
) -> None:
    a, b = await new_tenant(api, "inv-a"), await new_tenant(api, "inv-b")
    email, pw = mail("Viewer"), password()
    invitation = await invite(api, a, email.upper(), "viewer")
    token = invitation["token"]
    assert (
        token.startswith("inv_") and invitation["role"] == "viewer" and invitation["email"] == email.lower()
    )

    # The tenant is the header's, never the body's: extra fields are rejected.
    for field, value in (("tenant", b["slug"]), ("tenant_id", b["id"]), ("role", "admin")):
        body = problem(await register(api, a, email, pw, token, **{field: value}), 422)
        assert field in str(body), body
    # The invitation is for tenant A: presented under B's header it is refused.
    problem(await register(api, b, email, pw, token), 403)
    # Another e-mail than the invited one: refused (and the invitation stays usable).
    problem(await register(api, a, mail("intruder"), password(), token), 403)
    # A made-up invitation: refused.
    problem(await register(api, a, email, pw, "inv_" + "x" * 71), 403)
    problem(await register(api, a, email, pw, "not-an-invitation"), 403)

    response = await register(api, a, email.lower(), pw, token)
    assert response.status_code == 201, response.text
    pair = response.json()
    assert set(pair) == TOKEN_PAIR_KEYS and pair["token_type"] == "bearer"
    who = await me(api, pair["access_token"])
    assert who["tenant_id"] == a["id"] and who["role"] == "viewer" and who["email"] == email.lower()
    assert [m["tenant_id"] for m in who["memberships"]] == [a["id"]]
    rows = await audit_rows(database_url, a, "auth.registered")
    assert any(r["resource_id"] == who["id"] for r in rows)

    # Single use: neither the invitee nor anyone else can use it again.
    problem(await register(api, a, email, pw, token), 403)
    problem(await register(api, a, mail("second"), password(), token), 403)
    # Nobody joined tenant B on the way.
    assert [m["tenant_id"] for m in (await me(api, pair["access_token"]))["memberships"]] == [a["id"]]


async def test_an_expired_invitation_is_refused(api: AsyncTestClient[Any], database_url: str) -> None:
    tenant = await new_tenant(api, "inv-exp")
    email = mail("late")
    invitation = await invite(api, tenant, email)
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        await conn.execute(
            "update invitations set expires_at = now() - interval '1 second' where id = $1",
            uuid.UUID(invitation["id"]),
        )
    finally:
        await conn.close()
    body = problem(await register(api, tenant, email, password(), invitation["token"]), 403)
    assert "invitation" in body["detail"]


async def test_only_those_allowed_may_invite(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "inv-who")
    member = await join(api, tenant, "member")
    admin = await join(api, tenant, "admin")
    problem(await api.post("/api/tenant/invitations", json={"email": mail()}, headers=at(tenant)), 401)
    problem(
        await api.post(
            "/api/tenant/invitations", json={"email": mail()}, headers=at(tenant, member["access_token"])
        ),
        403,
    )
    response = await api.post(
        "/api/tenant/invitations",
        json={"email": mail(), "role": "admin"},
        headers=at(tenant, admin["access_token"]),
    )
    assert response.status_code == 201, response.text
    # No invitation makes an owner.
    problem(
        await api.post(
            "/api/tenant/invitations", json={"email": mail(), "role": "owner"}, headers=owner(tenant)
        ),
        422,
    )


# --- open sign-up -----------------------------------------------------------------------------------


async def test_open_sign_up_only_where_the_tenant_allows_it(api: AsyncTestClient[Any]) -> None:
    open_ = await new_tenant(api, "open", allow_signup=True)
    closed = await new_tenant(api, "closed")
    assert open_["allow_signup"] is True and closed["allow_signup"] is False
    current = await api.get("/api/tenants/current", headers=owner(open_))
    assert current.status_code == 200 and current.json()["allow_signup"] is True

    email, pw = mail("walk-in"), password()
    problem(await register(api, closed, email, pw), 403)
    response = await register(api, open_, email, pw)
    assert response.status_code == 201, response.text
    assert (await me(api, response.json()["access_token"]))["role"] == "member"
    # Open sign-up never grants more than member, whatever the body says.
    problem(await register(api, open_, mail(), password(), role="owner"), 422)
    # No header, no tenant.
    response = await api.post("/api/auth/register", json={"email": mail(), "password": password()})
    problem(response, 400)


# --- password policy --------------------------------------------------------------------------------


async def test_weak_passwords_are_refused_naming_the_field(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "pwpolicy", allow_signup=True)
    email = mail("weak")
    weak = [
        "short1!",
        "password",
        "12345678",
        "qwertyuiop",
        "P@ssw0rd",
        "aaaaaaaaaaaa",
        email,
        tenant["slug"],
        "x" * 129,
    ]
    for pw in weak:
        body = problem(await register(api, tenant, email, pw), 422)
        assert [e["field"] for e in body["errors"]] == ["password"], (pw, body)
    # The owner's password at sign-up, too.
    body = problem(
        await api.post(
            "/api/tenants",
            json={
                "name": "Weak",
                "slug": f"weak-{uuid.uuid4().hex[:8]}",
                "owner": {"email": mail(), "password": "letmein1"},
            },
        ),
        422,
    )
    assert [e["field"] for e in body["errors"]] == ["owner.password"]
    # A long random password is fine.
    long_pw = secrets.token_urlsafe(48)
    assert len(long_pw) == 64
    response = await register(api, tenant, email, long_pw)
    assert response.status_code == 201, response.text
    assert (await login(api, email, long_pw)).status_code == 200


# --- e-mail uniqueness ------------------------------------------------------------------------------


async def test_an_email_is_one_account_whatever_its_case(api: AsyncTestClient[Any]) -> None:
    a = await new_tenant(api, "mail-a", allow_signup=True)
    b = await new_tenant(api, "mail-b", allow_signup=True)
    email, pw = f"Alice-{uuid.uuid4().hex[:8]}@Example.COM", password()
    assert (await register(api, a, email, pw)).status_code == 201
    # Already a member of A, in any case.
    problem(await register(api, a, email.lower(), pw), 409)
    # Joining B with the account's e-mail needs the account's password.
    body = problem(await register(api, b, email.upper(), password()), 409)
    assert "password" in body["detail"]
    problem(
        await api.post(
            "/api/tenants",
            json={
                "name": "Other",
                "slug": f"mail-c-{uuid.uuid4().hex[:8]}",
                "owner": {"email": email.swapcase(), "password": password()},
            },
        ),
        409,
    )
    response = await register(api, b, email.swapcase(), pw)
    assert response.status_code == 201, response.text
    who = await me(api, response.json()["access_token"])
    assert who["email"] == email.lower() and who["tenant_id"] == b["id"]
    assert {m["tenant_id"] for m in who["memberships"]} == {a["id"], b["id"]}
    # One account, one password: log-in in any case, into either tenant.
    for tenant in (a, b):
        response = await login(api, email.upper(), pw, tenant)
        assert response.status_code == 200, response.text
        assert (await me(api, response.json()["access_token"]))["tenant_id"] == tenant["id"]


# --- log-in ------------------------------------------------------------------------------------------


async def test_login_answers_a_bearer_token_pair(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "login")
    response = await login(api, tenant["email"], tenant["password"], tenant)
    assert response.status_code == 200, response.text
    pair = response.json()
    assert set(pair) == TOKEN_PAIR_KEYS
    assert (
        pair["token_type"] == "bearer"
        and isinstance(pair["expires_in"], int)
        and 0 < pair["expires_in"] <= 3600
    )
    assert pair["access_token"].count(".") == 2 and pair["refresh_token"] != tenant["refresh_token"]
    assert "no-store" in response.headers["cache-control"]
    assert (await me(api, pair["access_token"]))["role"] == "owner"


async def test_unknown_email_and_wrong_password_look_the_same(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "enum")
    other = await new_tenant(api, "enum-other")
    user = await join(api, tenant, "member")

    def comparable(response: Any) -> tuple[int, dict[str, Any], str | None]:
        body = response.json()
        body.pop("request_id", None)
        return response.status_code, body, response.headers.get("www-authenticate")

    wrong = comparable(await login(api, user["email"], password()))
    unknown = comparable(await login(api, mail("nobody"), password()))
    assert wrong == unknown and wrong[0] == 401
    # The right password for a tenant the account is not in says no more.
    assert comparable(await login(api, user["email"], user["password"], other)) == wrong
    assert comparable(await login(api, mail("nobody"), password(), other)) == wrong

    # Similar time: medians of a few tries each (the bound is loose on purpose). The account has
    # had 2 failures above; 2 more stay under the lock-out (5).
    user2 = await join(api, tenant, "member")
    timings: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(4):
        for kind in ("wrong", "unknown"):
            email = user2["email"] if kind == "wrong" else mail("nobody")
            start = time.perf_counter()
            response = await login(api, email, password())
            timings[kind].append(time.perf_counter() - start)
            assert response.status_code == 401
    wrong_t, unknown_t = statistics.median(timings["wrong"]), statistics.median(timings["unknown"])
    assert max(wrong_t, unknown_t) / min(wrong_t, unknown_t) < 3, timings


# --- lock-out --------------------------------------------------------------------------------------


async def _lock_keys(redis: Redis) -> set[bytes]:
    return {key async for key in redis.scan_iter(match="bos:login:lock:*")}


async def _fail_until_locked(api: AsyncTestClient[Any], redis: Redis, email: str) -> tuple[list[int], bytes]:
    """Five wrong passwords; the statuses, and the Redis lock key that appeared."""
    before = await _lock_keys(redis)
    statuses = [(await login(api, email, password())).status_code for _ in range(5)]
    new = await _lock_keys(redis) - before
    assert len(new) == 1, new
    return statuses, new.pop()


async def _retry_after(response: Any) -> int:
    body = problem(response, 429)
    assert "try again" in body["detail"]
    return int(response.headers["retry-after"])


async def test_repeated_failures_lock_an_account_with_a_growing_retry_after(
    api: AsyncTestClient[Any], redis: Redis, database_url: str
) -> None:
    tenant = await new_tenant(api, "lock")
    user = await join(api, tenant, "member")
    user_id = (await me(api, user["access_token"]))["id"]

    statuses, key = await _fail_until_locked(api, redis, user["email"])
    assert statuses == [401] * 5
    # Locked: even the right password, in any case of the address, waits.
    first = await _retry_after(await login(api, user["email"], user["password"]))
    assert 1 <= first <= 30
    assert 1 <= await _retry_after(await login(api, user["email"].upper(), user["password"])) <= 30
    rows = await audit_rows(database_url, tenant, "auth.lockout")
    assert len(rows) == 1 and rows[0]["result"] == "denied"
    assert rows[0]["resource_id"] == user_id and rows[0]["actor"] == f"user:{user_id}"

    # The lock ends (deleting the key stands in for its 30 s); the next failure locks for longer.
    await redis.delete(key)
    assert (await login(api, user["email"], password())).status_code == 401
    second = await _retry_after(await login(api, user["email"], user["password"]))
    assert second > 30 and second <= 60
    assert len(await audit_rows(database_url, tenant, "auth.lockout")) == 2

    # Once the lock is over, the right password gets in, and the count starts again.
    await redis.delete(key)
    response = await login(api, user["email"], user["password"])
    assert response.status_code == 200, response.text
    assert (await login(api, user["email"], password())).status_code == 401
    assert (await login(api, user["email"], user["password"])).status_code == 200


async def test_an_unknown_email_locks_the_same_way(api: AsyncTestClient[Any], redis: Redis) -> None:
    tenant = await new_tenant(api, "lock-known")
    user = await join(api, tenant, "member")
    nobody = mail("nobody")
    known_statuses, known_key = await _fail_until_locked(api, redis, user["email"])
    unknown_statuses, unknown_key = await _fail_until_locked(api, redis, nobody)
    assert known_statuses == unknown_statuses == [401] * 5
    known = await login(api, user["email"], password())
    unknown = await login(api, nobody, password())
    assert 1 <= await _retry_after(known) <= 30 and 1 <= await _retry_after(unknown) <= 30
    known_body, unknown_body = known.json(), unknown.json()
    for body in (known_body, unknown_body):
        body.pop("request_id", None)
        body["detail"] = "".join(c for c in body["detail"] if not c.isdigit())
    assert known_body == unknown_body
    await redis.delete(known_key, unknown_key)


async def test_guessing_a_password_through_sign_up_counts_toward_the_lock_out(
    api: AsyncTestClient[Any], redis: Redis
) -> None:
    """Joining another tenant with an existing e-mail checks the account's password: those checks
    must not be an unlimited way around the log-in lock-out."""
    home = await new_tenant(api, "guess-home")
    user = await join(api, home, "member")
    open_ = await new_tenant(api, "guess-open", allow_signup=True)
    before = await _lock_keys(redis)
    for _ in range(5):
        problem(await register(api, open_, user["email"], password()), 409)
    new = await _lock_keys(redis) - before
    assert len(new) == 1
    # Locked for sign-up, tenant creation and log-in alike, even with the right password.
    await _retry_after(await register(api, open_, user["email"], user["password"]))
    response = await api.post(
        "/api/tenants",
        json={
            "name": "G",
            "slug": f"guess-{uuid.uuid4().hex[:8]}",
            "owner": {"email": user["email"], "password": password()},
        },
    )
    await _retry_after(response)
    await _retry_after(await login(api, user["email"], user["password"]))
    await redis.delete(*new)
    assert (await register(api, open_, user["email"], user["password"])).status_code == 201


async def test_a_password_alone_never_opens_an_account_that_has_mfa(api: AsyncTestClient[Any]) -> None:
    """Log-in asks an MFA account for its second factor; joining or creating a tenant with the
    account's e-mail and password must not hand out its tokens without it (they would open every
    tenant of the account through switch-tenant)."""
    home = await new_tenant(api, "mfa-home")
    victim = await join(api, home, "admin")
    setup = await api.post("/api/auth/mfa/setup", headers=at(home, victim["access_token"]))
    assert setup.status_code == 200, setup.text
    code = pyotp.TOTP(setup.json()["secret"]).now()
    enabled = await api.post(
        "/api/auth/mfa/enable", json={"code": code}, headers=at(home, victim["access_token"])
    )
    assert enabled.status_code == 200, enabled.text
    challenge = await login(api, victim["email"], victim["password"])
    assert challenge.status_code == 200 and challenge.json()["mfa_required"] is True
    assert "access_token" not in challenge.json()

    open_ = await new_tenant(api, "mfa-open", allow_signup=True)
    attacker = await new_tenant(api, "mfa-attacker")
    invitation = await invite(api, attacker, victim["email"], "member")
    attempts = [
        await register(api, open_, victim["email"], victim["password"]),
        await register(api, attacker, victim["email"], victim["password"], invitation["token"]),
        await api.post(
            "/api/tenants",
            json={
                "name": "M",
                "slug": f"mfa-{uuid.uuid4().hex[:8]}",
                "owner": {"email": victim["email"], "password": victim["password"]},
            },
        ),
    ]
    for response in attempts:
        assert response.status_code == 403, response.text
        assert "access_token" not in response.text
        assert "two-factor" in problem(response, 403)["detail"]
    # A wrong password still says only that the password is wrong (no hint about MFA).
    body = problem(await register(api, open_, victim["email"], password()), 409)
    assert "two-factor" not in body["detail"]


async def test_a_nul_character_in_an_email_or_name_is_refused_not_a_server_error(
    api: AsyncTestClient[Any],
) -> None:
    tenant = await new_tenant(api, "nul", allow_signup=True)
    attempts = [
        await login(api, "a\x00b@example.com", password()),
        await register(api, tenant, "a\x00b@example.com", password()),
        await api.post(
            "/api/auth/register",
            json={"email": mail(), "password": password(), "name": "a\x00b"},
            headers=at(tenant),
        ),
    ]
    assert [r.status_code for r in attempts] == [422, 422, 422], [r.text for r in attempts]
