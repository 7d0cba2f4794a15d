"""Who is calling: a user with a token, or an API key, always within one tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

__all__ = ["Principal"]


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
