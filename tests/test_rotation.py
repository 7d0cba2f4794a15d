"""`businessos secrets rotate`: every stored secret moves to the newest master key, nothing lost."""
# The secrets: a user's TOTP seed, a tenant's AI provider key and a plugin's vault secret, each
# declared once in kernel.vault.sealed (tests/test_vault.py checks that nothing sealed is missing).

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import asyncpg

from kernel.app import load_app_plugins
from kernel.runtime import open_kernel
from kernel.settings import Settings
from tests.conftest import SECRET, _dsn, new_tenant, open_client, settings_for
from tests.test_cli import run_cli
from tests.test_mfa import _enable, _mfa_token, _setup, _verify, current_step, rfc6238

NEW_KEY = "2:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


async def test_rotation_reseals_totp_seeds_provider_keys_and_vault_secrets_under_the_new_key(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    assert settings.redis_url
    before = settings_for(database_url, settings.redis_url, tmp_path, BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1")
    async with open_client(before) as client:
        tenant = await new_tenant(client, "rot")
        headers = {"X-Tenant-ID": tenant["slug"]}
        secret = await _setup(client, tenant)
        await _enable(client, tenant, secret)
        key = "sk-rotation-test-0123456789abcdef"
        put = await client.put(
            "/api/ai/keys/openai", json={"api_key": key, "api_base": "http://127.0.0.1:9/v1"}, headers=headers
        )
        assert put.status_code == 200, put.text
    # A plugin's vault secret, stored through the facade (the vault's table is the kernel's).
    vault_value = "whsec_rotation-test-signing-secret"
    async with open_kernel(before, load_app_plugins(frozenset())) as kernel:
        await kernel.services("rotplugin").vault.put(uuid.UUID(tenant["id"]), "signing", vault_value)

    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.redis_url,
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_MASTER_KEYS": NEW_KEY,
    }
    rotated = run_cli("secrets", "rotate", env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("master key v2: ") and rotated.stdout.strip().endswith("0 failed")
    again = run_cli("secrets", "rotate", env=env)
    assert again.returncode == 0 and " 0 re-sealed" in again.stdout

    owner = await asyncpg.connect(_dsn(database_url))
    try:
        seed = await owner.fetchval("select mfa_secret from users where id = $1::uuid", tenant["user_id"])
        sealed = await owner.fetchval(
            "select sealed_key from ai_provider_keys where tenant_id = $1::uuid", tenant["id"]
        )
        vaulted = await owner.fetchval(
            "select sealed_value from vault_secrets where tenant_id = $1::uuid and plugin = 'rotplugin'", tenant["id"]
        )
    finally:
        await owner.close()
    assert seed.startswith("v2:") and sealed.startswith("v2:") and vaulted.startswith("v2:")

    # With the new key configured, all three secrets still work.
    after = settings_for(
        database_url,
        settings.redis_url,
        tmp_path,
        BUSINESSOS_MASTER_KEYS=NEW_KEY,
        BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1",
    )
    async with open_kernel(after, load_app_plugins(frozenset())) as kernel:
        assert await kernel.services("rotplugin").vault.open(uuid.UUID(tenant["id"]), "signing") == vault_value
    async with open_client(after) as client:
        keys = (await client.get("/api/ai/keys", headers={"X-Tenant-ID": tenant["slug"]})).json()
        assert "cdef" in str(keys) and key not in str(keys)
        token = await _mfa_token(client, tenant)
        step = await current_step()
        verified = await _verify(client, token, rfc6238(secret, step))
        assert verified.status_code == 200, verified.text
