"""TOTP second factor, over HTTP, with codes from an independent RFC 6238 implementation (and from
``oathtool`` where it is installed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import _dsn, new_tenant

STEP = 30


def rfc6238(secret_b32: str, step: int, digits: int = 6) -> str:
    """HOTP (RFC 4226) of the time step: HMAC-SHA1 over the big-endian counter, dynamic truncation."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def test_reference_implementation_matches_rfc6238_vectors() -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    # RFC 6238 appendix B (SHA-1), eight digits.
    assert rfc6238(secret, 59 // STEP, 8) == "94287082"
    assert rfc6238(secret, 1111111109 // STEP, 8) == "07081804"
    assert rfc6238(secret, 20000000000 // STEP, 8) == "65353130"
    assert rfc6238(secret, 59 // STEP) == "287082"


OATHTOOL = shutil.which("oathtool")


def oathtool(secret: str, step: int) -> str:
    assert OATHTOOL
    out = subprocess.run(
        [OATHTOOL, "--totp", "-b", f"--now=@{step * STEP + 1}", secret],
        capture_output=True, text=True, check=True, timeout=10,
    )
    return out.stdout.strip()


async def current_step() -> int:
    """The current time step, waiting first if it has fewer than 2 s left (so that a code computed
    now is still at the same offset when the server checks it)."""
    if STEP - time.time() % STEP < 2:
        await asyncio.sleep(STEP - time.time() % STEP + 0.05)
    return int(time.time()) // STEP


def wrong_code(secret: str, step: int) -> str:
    """A well-formed code that is no code of ``secret`` near ``step``."""
    near = {rfc6238(secret, s) for s in range(step - 3, step + 4)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


@pytest.fixture
async def owner_db(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(database_url))
    yield conn
    await conn.close()


def _h(tenant: dict[str, Any]) -> dict[str, str]:
    return {"X-Tenant-ID": tenant["slug"]}


async def _login(client: AsyncTestClient[Any], tenant: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(
        "/api/auth/login", json={"email": tenant["email"], "password": tenant["password"]}, headers=_h(tenant)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _mfa_token(client: AsyncTestClient[Any], tenant: dict[str, Any]) -> str:
    body = await _login(client, tenant)
    assert body["mfa_required"] is True and "access_token" not in body
    token: str = body["mfa_token"]
    return token


async def _verify(client: AsyncTestClient[Any], token: str, code: str) -> Any:
    return await client.post("/api/auth/mfa/verify", json={"mfa_token": token, "code": code})


async def _setup(client: AsyncTestClient[Any], tenant: dict[str, Any]) -> str:
    response = await client.post("/api/auth/mfa/setup", headers=_h(tenant))
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def _enable(client: AsyncTestClient[Any], tenant: dict[str, Any], secret: str) -> list[str]:
    """Enable with the previous step's code (one step of skew), checked against oathtool if present."""
    step = await current_step()
    code = rfc6238(secret, step - 1)
    if OATHTOOL:
        assert oathtool(secret, step - 1) == code
    response = await client.post("/api/auth/mfa/enable", json={"code": code}, headers=_h(tenant))
    assert response.status_code == 200, response.text
    codes: list[str] = response.json()["recovery_codes"]
    return codes


async def test_setup_enable_log_in_with_totp_and_recovery_codes_then_disable(
    client: AsyncTestClient[Any], owner_db: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client, "mfa")
    h = _h(tenant)

    # Setup: a secret and an otpauth URI; the seed is stored sealed, not in plain text.
    response = await client.post("/api/auth/mfa/setup", headers=h)
    assert response.status_code == 200, response.text
    first = response.json()["secret"]
    uri = urlparse(response.json()["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/BusinessOS:{tenant['email']}"
    query = parse_qs(uri.query)
    assert query["secret"] == [first] and query["issuer"] == ["BusinessOS"]
    assert len(base64.b32decode(first + "=" * (-len(first) % 8))) >= 20

    # Setting up again before enabling replaces the pending secret.
    secret = await _setup(client, tenant)
    assert secret != first
    user_id = uuid.UUID(tenant["user_id"])
    stored = await owner_db.fetchrow("select mfa_secret, mfa_enabled from users where id = $1", user_id)
    assert stored is not None and stored["mfa_secret"] and not stored["mfa_enabled"]
    assert secret not in stored["mfa_secret"] and first not in stored["mfa_secret"]
    assert secret.lower() not in stored["mfa_secret"].lower()
    assert re.match(r"^v\d+:", stored["mfa_secret"])

    # A wrong code (here: the replaced secret's) is refused, naming the field.
    step = await current_step()
    response = await client.post("/api/auth/mfa/enable", json={"code": wrong_code(secret, step)}, headers=h)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["code"]
    if rfc6238(first, step) not in {rfc6238(secret, s) for s in range(step - 1, step + 2)}:
        response = await client.post("/api/auth/mfa/enable", json={"code": rfc6238(first, step)}, headers=h)
        assert response.status_code == 422, response.text

    # Enable with the previous step's code: ten distinct recovery codes, stored hashed.
    recovery = await _enable(client, tenant, secret)
    assert len(recovery) == 10 and len(set(recovery)) == 10
    assert all(re.fullmatch(r"[a-z2-7]{5}-[a-z2-7]{5}", c) for c in recovery)
    hashes = await owner_db.fetch("select code_hash from user_recovery_codes where user_id = $1", user_id)
    assert len(hashes) == 10
    stored_bytes = b"".join(bytes(r["code_hash"]) for r in hashes)
    assert not any(c.replace("-", "").encode() in stored_bytes for c in recovery)
    assert (await client.post("/api/auth/mfa/setup", headers=h)).status_code == 409

    # Log-in now asks for the second factor; the code used to enable is not accepted again.
    token = await _mfa_token(client, tenant)
    step = await current_step()
    response = await _verify(client, token, rfc6238(secret, step - 1))
    assert response.status_code in (401, 422), response.text
    # Codes two steps away are refused.
    for offset in (2, -2):
        response = await _verify(client, token, rfc6238(secret, step + offset))
        assert response.status_code in (401, 422), response.text

    # The current code (from oathtool too, where installed) gives tokens that work.
    step = await current_step()
    code = rfc6238(secret, step)
    if OATHTOOL:
        assert oathtool(secret, step) == code
    token = await _mfa_token(client, tenant)
    response = await _verify(client, token, code)
    assert response.status_code == 200, response.text
    pair = response.json()
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["mfa_enabled"] is True and me.json()["id"] == tenant["user_id"]
    # The mfa_token is spent; the same code on a new log-in is a replay.
    assert (await _verify(client, token, code)).status_code in (401, 422)
    used_code = code
    response = await _verify(client, await _mfa_token(client, tenant), used_code)
    assert response.status_code in (401, 422), response.text

    # A recovery code works once.
    response = await _verify(client, await _mfa_token(client, tenant), recovery[0].upper())
    assert response.status_code == 200, response.text
    response = await _verify(client, await _mfa_token(client, tenant), recovery[0])
    assert response.status_code in (401, 422), response.text

    # Five wrong codes use up an mfa_token: then even a good code gets 429 (and is not spent).
    token = await _mfa_token(client, tenant)
    bad = wrong_code(secret, await current_step())
    for _ in range(5):
        assert (await _verify(client, token, bad)).status_code == 401
    response = await _verify(client, token, recovery[1])
    assert response.status_code == 429, response.text
    response = await _verify(client, await _mfa_token(client, tenant), recovery[1])
    assert response.status_code == 200, response.text

    # Disabling needs a current TOTP code: a wrong one or a recovery code is refused.
    step = await current_step()
    response = await client.post("/api/auth/mfa/disable", json={"code": wrong_code(secret, step)}, headers=h)
    assert response.status_code == 422, response.text
    response = await client.post("/api/auth/mfa/disable", json={"code": recovery[2]}, headers=h)
    assert response.status_code == 422, response.text
    step = await current_step()
    response = await client.post("/api/auth/mfa/disable", json={"code": rfc6238(secret, step + 1)}, headers=h)
    assert response.status_code == 204, response.text
    body = await _login(client, tenant)
    assert "access_token" in body and "mfa_token" not in body
    stored = await owner_db.fetchrow("select mfa_secret, mfa_enabled from users where id = $1", user_id)
    assert stored is not None and stored["mfa_secret"] is None and not stored["mfa_enabled"]
    left = await owner_db.fetchval("select count(*) from user_recovery_codes where user_id = $1", user_id)
    assert left == 0

    # The audit log has the MFA changes and outcomes, and no secret or code.
    async with owner_db.transaction():
        await owner_db.execute("select set_config('app.tenant_id', $1, true)", tenant["id"])
        rows = await owner_db.fetch(
            """select action, result,
                      concat_ws('|', actor, action, resource_type, resource_id, result, request_id, ip,
                                user_agent, before::text, after::text, details::text) as text
                 from audit_logs where tenant_id = $1 order by seq""",
            uuid.UUID(tenant["id"]),
        )
    seen = {(r["action"], r["result"]) for r in rows}
    for expected in [
        ("auth.mfa.setup", "success"),
        ("auth.mfa.enable", "failure"),
        ("auth.mfa.enable", "success"),
        ("auth.mfa.verify", "failure"),
        ("auth.mfa.verify", "success"),
        ("auth.mfa.disable", "failure"),
        ("auth.mfa.disable", "success"),
    ]:
        assert expected in seen, expected
    everything = "\n".join(r["text"] for r in rows).lower()
    secrets_and_codes = [first, secret, used_code, *recovery, *(c.replace("-", "") for c in recovery)]
    for value in secrets_and_codes:
        assert value.lower() not in everything, value


async def test_recovery_codes_are_regenerated_with_a_current_code(client: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(client, "mfa")
    h = _h(tenant)
    secret = await _setup(client, tenant)
    old = await _enable(client, tenant, secret)

    step = await current_step()
    response = await client.post(
        "/api/auth/mfa/recovery-codes", json={"code": wrong_code(secret, step)}, headers=h
    )
    assert response.status_code == 422, response.text
    response = await client.post("/api/auth/mfa/recovery-codes", json={"code": old[0]}, headers=h)
    assert response.status_code == 422, response.text
    response = await client.post(
        "/api/auth/mfa/recovery-codes", json={"code": rfc6238(secret, await current_step())}, headers=h
    )
    assert response.status_code == 200, response.text
    new = response.json()["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)

    assert (await _verify(client, await _mfa_token(client, tenant), old[3])).status_code == 401
    response = await _verify(client, await _mfa_token(client, tenant), new[3])
    assert response.status_code == 200, response.text

    # Disable with a later step (skew) than the one the regeneration used.
    response = await client.post(
        "/api/auth/mfa/disable", json={"code": rfc6238(secret, await current_step() + 1)}, headers=h
    )
    assert response.status_code == 204, response.text
    response = await client.post("/api/auth/mfa/recovery-codes", json={"code": "123456"}, headers=h)
    assert response.status_code == 409, response.text


async def test_one_code_used_concurrently_logs_in_once(client: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(client, "mfa")
    secret = await _setup(client, tenant)
    await _enable(client, tenant, secret)
    tokens = [await _mfa_token(client, tenant) for _ in range(4)]
    code = rfc6238(secret, await current_step())
    responses = await asyncio.gather(*(_verify(client, t, code) for t in tokens))
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401], [r.text for r in responses]


async def test_mfa_management_needs_a_signed_in_user(client: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(client, "mfa")
    response = await client.post(
        "/api/api-keys", json={"name": "robot", "role": "admin"}, headers=_h(tenant)
    )
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    for path, body in [
        ("/api/auth/mfa/setup", None),
        ("/api/auth/mfa/enable", {"code": "123456"}),
        ("/api/auth/mfa/disable", {"code": "123456"}),
        ("/api/auth/mfa/recovery-codes", {"code": "123456"}),
    ]:
        response = await client.post(path, json=body, headers={"X-API-Key": key})
        assert response.status_code == 403, (path, response.text)
        response = await client.post(path, json=body)  # no credentials, no tenant
        assert response.status_code == 401, (path, response.text)
    # Enabling before setting up is a conflict; a bad mfa_token is 401.
    response = await client.post("/api/auth/mfa/enable", json={"code": "123456"}, headers=_h(tenant))
    assert response.status_code == 409, response.text
    assert (await _verify(client, "not-a-token", "123456")).status_code == 401


async def test_wrong_codes_for_a_signed_in_user_are_limited(client: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(client, "mfa")
    h = _h(tenant)
    secret = await _setup(client, tenant)
    await _enable(client, tenant, secret)
    bad = wrong_code(secret, await current_step())
    for _ in range(5):
        response = await client.post("/api/auth/mfa/disable", json={"code": bad}, headers=h)
        assert response.status_code == 422, response.text
    response = await client.post(
        "/api/auth/mfa/disable", json={"code": rfc6238(secret, await current_step())}, headers=h
    )
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
