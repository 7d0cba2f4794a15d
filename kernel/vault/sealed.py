"""Every column that holds a sealed secret, declared once.

A sealed value is what :class:`kernel.crypto.SecretBox` produces (``v<version>:<base64>``), opened
with associated data (its *context*) computed from the row it sits in. ``businessos secrets rotate``
walks this registry and nothing else, so a column missing here would silently keep its old key:
``tests/test_vault.py`` reads the database catalog and fails when a column that looks like a secret
is neither declared here nor explained in :data:`NOT_SEALED`.

Plugins do not add sealed columns of their own; they keep secrets in the vault (``sdk.Vault``),
whose table is declared here like the kernel's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NOT_SEALED", "SEALED_COLUMNS", "SealedColumn", "connection_context", "vault_context"]


def vault_context(tenant_id: uuid.UUID | str, plugin: str, name: str) -> str:
    """The associated data of a vault secret: its tenant, its plugin and its name (the purpose).

    A sealed value copied to another tenant, plugin or name does not open. Plugin names and
    secret names cannot contain ``:``, so the parts cannot be shifted into one another.
    """
    return f"vault:{tenant_id}:{plugin}:{name}"


def connection_context(tenant_id: uuid.UUID | str, connection_id: uuid.UUID | str) -> str:
    """The associated data of a connection's sealed credentials: its tenant and its id."""
    return f"connection:{tenant_id}:{connection_id}"


@dataclass(frozen=True)
class SealedColumn:
    """One column of sealed values and how to rebuild each value's associated data."""

    table: str
    column: str
    tenant_scoped: bool
    """Tenant tables are read and re-sealed inside each tenant's own transaction (row-level
    security holds); global tables in a transaction without a tenant."""
    reads: tuple[str, ...]
    """The other columns :attr:`context` and :attr:`describe` need (``id`` is always read)."""
    context: Callable[[Mapping[str, Any]], str]
    """The associated data the value was sealed with, from the row."""
    describe: Callable[[Mapping[str, Any]], str]
    """Names the secret in a rotation failure; never its value."""


SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(
        table="users",
        column="mfa_secret",
        tenant_scoped=False,
        reads=(),
        context=lambda row: f"user:{row['id']}",
        describe=lambda row: f"user {row['id']}: TOTP seed",
    ),
    SealedColumn(
        table="ai_provider_keys",
        column="sealed_key",
        tenant_scoped=True,
        reads=("tenant_id", "provider"),
        context=lambda row: f"tenant:{row['tenant_id']}",
        describe=lambda row: f"tenant {row['tenant_id']}: {row['provider']} key",
    ),
    SealedColumn(
        table="vault_secrets",
        column="sealed_value",
        tenant_scoped=True,
        reads=("tenant_id", "plugin", "name"),
        context=lambda row: vault_context(row["tenant_id"], row["plugin"], row["name"]),
        describe=lambda row: f"tenant {row['tenant_id']}: vault secret {row['plugin']}/{row['name']}",
    ),
    SealedColumn(
        table="connections",
        column="sealed_credentials",
        tenant_scoped=True,
        reads=("tenant_id",),
        context=lambda row: connection_context(row["tenant_id"], row["id"]),
        describe=lambda row: f"tenant {row['tenant_id']}: connection {row['id']}",
    ),
)

NOT_SEALED: Mapping[tuple[str, str], str] = {
    # Columns whose names look secret but hold no sealed value, and why that is right.
    ("users", "password_hash"): "an Argon2 hash: nothing to open",
    ("operators", "password_hash"): "an Argon2 hash: nothing to open",
    ("api_keys", "key_hash"): "SHA-256 of the key: nothing to open",
    ("api_keys", "prefix"): "the key's public first characters, shown to recognise it",
    ("refresh_tokens", "token_hash"): "SHA-256 of the token: nothing to open",
    ("invitations", "token_hash"): "SHA-256 of the token: nothing to open",
    ("user_recovery_codes", "code_hash"): "SHA-256 of a recovery code: nothing to open",
    ("webhook_endpoints", "token_hash"): "SHA-256 of the URL token: nothing to open",
    ("ai_provider_keys", "last_four"): "the key's last four characters, shown to recognise it",
    ("billing_plans", "code"): "a plan's public name (free, pro), not a secret code",
    ("billing_subscriptions", "plan_code"): "the subscribed plan's public name",
    ("billing_usage_events", "unique_key"): "what a unique-count metric counts (a user id), not a key",
    ("billing_usage_uniques", "unique_key"): "what a unique-count metric counts (a user id), not a key",
    ("workflows_versions", "trigger_key"): "the catalogue key of the version's trigger node (workflows.manual)",
    ("workflows_steps", "node_key"): "the catalogue key of the step's node (crm.create_contact)",
    ("workflows_executions", "wait_key"): "the correlation value a waiting run expects in an event, not a key",
    ("webhooks_replays", "idempotency_key"): "the caller's name for a replay request, to answer a repeat once",
}
