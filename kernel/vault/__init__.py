"""Secrets: the plugin-facing vault and the registry of every sealed column.

- :mod:`kernel.vault.service`: :class:`Vault`, a plugin's per-tenant secrets (``services.vault``).
- :mod:`kernel.vault.sealed`: :data:`SEALED_COLUMNS`, every column holding a sealed value, which
  ``businessos secrets rotate`` (:mod:`kernel.rotation`) walks.
"""

from __future__ import annotations

from kernel.vault.sealed import SEALED_COLUMNS, SealedColumn, vault_context
from kernel.vault.service import SecretUnreadable, Vault

__all__ = ["SEALED_COLUMNS", "SealedColumn", "SecretUnreadable", "Vault", "vault_context"]
