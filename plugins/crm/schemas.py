"""What the CRM's API reads and answers with (msgspec Structs).

Patch bodies use ``msgspec.UNSET`` for "not given", so ``null`` can clear a field. Money is a
``Decimal`` (JSON string) with a three-letter currency code.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from kernel import sdk

__all__ = [
    "ActivityCreate",
    "ActivityCursorPage",
    "ActivityOut",
    "ActivityPage",
    "ActivityPatch",
    "CompanyCreate",
    "CompanyCursorPage",
    "CompanyOut",
    "CompanyPage",
    "CompanyPatch",
    "ContactCreate",
    "ContactCursorPage",
    "ContactOut",
    "ContactPage",
    "ContactPatch",
    "DealCreate",
    "DealCursorPage",
    "DealMove",
    "DealOut",
    "DealPage",
    "DealPatch",
    "ImportReport",
    "ImportRowError",
    "Pagination",
    "PipelineCreate",
    "PipelineList",
    "PipelineOut",
    "PipelinePatch",
    "StageCreate",
    "StageHistoryEntry",
    "StageIn",
    "StageOut",
    "StagePatch",
]

Text = Annotated[str, msgspec.Meta(max_length=1000, pattern=r"^[^\x00]*$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]*$")]
OptName = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f]*$")]
Email = Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")]
Phone = Annotated[str, msgspec.Meta(max_length=50, pattern=r"^[0-9+()./ \-x]*$")]
Domain = Annotated[
    str, msgspec.Meta(max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)+$")
]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=50, pattern=r"^[^\x00-\x1f,]*$")]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=50)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Amount = Decimal  # range and scale are checked by the service (msgspec has no Decimal bounds)
StageKind = Literal["open", "won", "lost"]
ActivityKind = Literal["note", "call", "meeting", "task"]
Version = Annotated[int, msgspec.Meta(ge=1)]
Position = Annotated[int, msgspec.Meta(ge=0, le=1000)]


Pagination = sdk.Pagination
"""Where an offset page sits in its list (the SDK's, shared by every plugin's lists)."""


# ---- companies ---------------------------------------------------------------------------------


class CompanyCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    domain: Domain | None = None
    industry: OptName | None = None
    owner_id: uuid.UUID | None = None


class CompanyPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET
    domain: Domain | UnsetType | None = UNSET
    industry: OptName | UnsetType | None = UNSET
    owner_id: uuid.UUID | UnsetType | None = UNSET
    version: Version | UnsetType = UNSET
    """The version the change was made against; a stale one answers 409."""


class CompanyOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    domain: str | None
    industry: str | None
    owner_id: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


class CompanyPage(msgspec.Struct, frozen=True):
    companies: list[CompanyOut]
    pagination: Pagination


class CompanyCursorPage(msgspec.Struct, frozen=True):
    companies: list[CompanyOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next rows; ``null`` after the last."""


# ---- contacts ----------------------------------------------------------------------------------


class ContactCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    first_name: Name
    last_name: OptName = ""
    email: Email | None = None
    phone: Phone | None = None
    company_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    tags: Tags = msgspec.field(default_factory=list)


class ContactPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    first_name: Name | UnsetType = UNSET
    last_name: OptName | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    phone: Phone | UnsetType | None = UNSET
    company_id: uuid.UUID | UnsetType | None = UNSET
    owner_id: uuid.UUID | UnsetType | None = UNSET
    tags: Tags | UnsetType = UNSET
    version: Version | UnsetType = UNSET
    """The version the change was made against; a stale one answers 409."""


class ContactOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    company_id: uuid.UUID | None
    company_name: str | None
    owner_id: uuid.UUID | None
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


class ContactPage(msgspec.Struct, frozen=True):
    contacts: list[ContactOut]
    pagination: Pagination


class ContactCursorPage(msgspec.Struct, frozen=True):
    contacts: list[ContactOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next rows; ``null`` after the last."""


# ---- pipelines and deals -----------------------------------------------------------------------


class StageIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    kind: StageKind = "open"


class PipelineCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    stages: Annotated[list[StageIn], msgspec.Meta(min_length=1, max_length=50)]
    """In order; positions are given from 0."""
    is_default: bool = False
    """Make this the tenant's default pipeline (the one before it stops being the default)."""


class PipelinePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET
    is_default: bool | UnsetType = UNSET
    """``true`` makes this the default pipeline (and no other); ``false`` leaves the tenant without one."""


class StageCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    kind: StageKind = "open"
    position: Position | None = None
    """Where the stage goes (0 is first); the stages from there move one to the right. Default: last."""


class StagePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET
    kind: StageKind | UnsetType = UNSET
    position: Position | UnsetType = UNSET
    """The stage's new place (past the end means last); the others close up around it."""


class StageOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    position: int
    kind: StageKind


class PipelineOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    is_default: bool
    stages: list[StageOut]
    created_at: datetime


class PipelineList(msgspec.Struct, frozen=True):
    pipelines: list[PipelineOut]


class DealCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: Name
    amount: Amount = Decimal("0")
    currency: Currency = "USD"
    pipeline_id: uuid.UUID | None = None
    """Defaults to the tenant's default pipeline (422 naming ``pipeline_id`` when there is none)."""
    stage_id: uuid.UUID | None = None
    """Defaults to the pipeline's first stage."""
    company_id: uuid.UUID | None = None
    contact_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None


class DealPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: Name | UnsetType = UNSET
    amount: Amount | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET
    company_id: uuid.UUID | UnsetType | None = UNSET
    contact_id: uuid.UUID | UnsetType | None = UNSET
    owner_id: uuid.UUID | UnsetType | None = UNSET
    version: Version | UnsetType = UNSET


class DealMove(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    stage_id: uuid.UUID


class DealOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    title: str
    amount: Decimal
    currency: str
    pipeline_id: uuid.UUID
    stage_id: uuid.UUID
    company_id: uuid.UUID | None
    contact_id: uuid.UUID | None
    owner_id: uuid.UUID | None
    company_name: str | None = None
    contact_name: str | None = None
    version: int
    created_at: datetime
    updated_at: datetime


class DealPage(msgspec.Struct, frozen=True):
    deals: list[DealOut]
    pagination: Pagination


class DealCursorPage(msgspec.Struct, frozen=True):
    deals: list[DealOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next rows; ``null`` after the last."""


class StageHistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    from_stage_id: uuid.UUID | None
    to_stage_id: uuid.UUID
    actor: str | None
    moved_at: datetime


# ---- activities --------------------------------------------------------------------------------


class ActivityCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: ActivityKind
    subject: Name
    body: Annotated[str, msgspec.Meta(max_length=20000, pattern=r"^[^\x00]*$")] = ""
    due_at: datetime | None = None
    done: bool = False
    contact_id: uuid.UUID | None = None
    company_id: uuid.UUID | None = None
    deal_id: uuid.UUID | None = None


class ActivityPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    subject: Name | UnsetType = UNSET
    body: Annotated[str, msgspec.Meta(max_length=20000, pattern=r"^[^\x00]*$")] | UnsetType = UNSET
    due_at: datetime | UnsetType | None = UNSET
    done: bool | UnsetType = UNSET
    version: Version | UnsetType = UNSET


class ActivityOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    kind: str
    subject: str
    body: str
    due_at: datetime | None
    done: bool
    contact_id: uuid.UUID | None
    company_id: uuid.UUID | None
    deal_id: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


class ActivityPage(msgspec.Struct, frozen=True):
    activities: list[ActivityOut]
    pagination: Pagination


class ActivityCursorPage(msgspec.Struct, frozen=True):
    activities: list[ActivityOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next rows; ``null`` after the last."""


# ---- CSV import --------------------------------------------------------------------------------


class ImportRowError(msgspec.Struct, frozen=True):
    row: int
    """The row as a spreadsheet numbers it: the header is row 1, the first record row 2."""
    field: str
    message: str


class ImportReport(msgspec.Struct, frozen=True):
    imported: int
    errors: list[ImportRowError]
