"""What the audit API answers with."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

__all__ = ["AuditEntry", "AuditPage", "BrokenLink", "ChainReport"]


class AuditEntry(msgspec.Struct, frozen=True):
    id: uuid.UUID
    seq: int
    """Position in the tenant's chain: 1, 2, 3, ... without gaps."""
    occurred_at: datetime
    actor: str | None
    """``user:<id>``, ``api_key:<id>``, or ``null`` for the system or an anonymous caller."""
    action: str
    resource_type: str | None
    resource_id: str | None
    result: str
    request_id: str | None
    ip: str | None
    user_agent: str | None
    before: Any
    after: Any
    details: Any
    prev_hash: str
    """Hex SHA-256 of the previous row (zeros for the first)."""
    hash: str
    """Hex SHA-256 over ``prev_hash`` and this row's canonical form."""


class AuditPage(msgspec.Struct, frozen=True):
    items: list[AuditEntry]
    """Newest first."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; ``null`` on the last page."""


class BrokenLink(msgspec.Struct, frozen=True):
    seq: int
    id: uuid.UUID
    reason: str


class ChainReport(msgspec.Struct, frozen=True):
    valid: bool
    rows: int
    """Rows examined: all of the tenant's rows."""
    first_broken: BrokenLink | None
