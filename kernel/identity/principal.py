"""Who is calling: a user with a token, or an API key, always within one tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

__all__ = ["Principal", "principal_of"]


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "api_key"]
    id: uuid.UUID
    """The user's id, or the API key's."""
    tenant_id: uuid.UUID
    role: str | None
    permissions: frozenset[str]
    mfa: bool = False

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"{self.kind}:{self.id}"

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.id if self.kind == "user" else None


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The principal the authentication middleware found for ``connection``, if any."""
    state = connection.scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    return principal if isinstance(principal, Principal) else None
