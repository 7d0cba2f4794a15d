"""Prompt templates: named, versioned, rendered in Jinja2's sandbox.

A template is either one string (rendered as a single ``user`` message) or a list of
``{"role", "content"}`` message templates. Versions are immutable: an update adds a version and
the older ones stay readable. Rendering uses :class:`jinja2.sandbox.SandboxedEnvironment` with
:class:`jinja2.StrictUndefined`, so a missing variable is an error (422 naming it) rather than an
empty string, and attribute access the sandbox deems unsafe (``__class__`` and the like) is
refused when the template is saved and again when it is rendered. ``range`` is capped, ``*`` and
``**`` cannot build huge values, the output is cut off at :data:`MAX_OUTPUT` characters, and a
render that takes longer than :data:`RENDER_SECONDS` is stopped (422).
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from jinja2 import Template, meta
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.library_schemas import (
    MessageTemplate,
    Page,
    Prompt,
    PromptCreate,
    PromptDetail,
    PromptList,
    PromptParameters,
    PromptUpdate,
    PromptVersion,
    Rendered,
)
from kernel.ai.pricing import litellm_async, resolve_model
from kernel.ai.tables import PromptRow, PromptVersionRow
from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.errors import Conflict, FieldError, NotFound, Problem, Unprocessable
from kernel.sandbox import ENV as _ENV
from kernel.sandbox import MAX_OUTPUT, deadline, unsafe_attribute

__all__ = [
    "MAX_OUTPUT",
    "PromptService",
    "RenderedTemplate",
    "find_version",
    "page_bounds",
    "page_of",
    "render",
    "rendered",
    "variables_of",
]

RENDER_SECONDS = 0.25
"""How long one message template may take to render (422 after)."""
_UNDEFINED_NAME = re.compile(r"^'([^']+)' is undefined$")
_NO_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'$")


def _sources(template: str | Sequence[MessageTemplate]) -> list[tuple[str, str, str]]:
    """(field, role, source) of each message template."""
    if isinstance(template, str):
        return [("template", "user", template)]
    return [(f"template[{i}].content", m.role, m.content) for i, m in enumerate(template)]


def variables_of(template: str | Sequence[MessageTemplate]) -> list[str]:
    """The variables ``template`` uses, sorted; 422 naming the line of a template that does not
    parse, or naming an attribute the sandbox would refuse."""
    found: set[str] = set()
    for field, _role, source in _sources(template):
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise Unprocessable(
                f"{field} does not parse: line {exc.lineno}: {exc.message}",
                errors=[FieldError(field=field, message=f"line {exc.lineno}: {exc.message}")],
                extra={"line": exc.lineno},
            ) from None
        unsafe = unsafe_attribute(tree)
        if unsafe is not None:
            raise Unprocessable(
                f"{field} uses the attribute {unsafe!r}, which templates may not access",
                errors=[FieldError(field=field, message=f"unsafe attribute {unsafe!r}")],
            )
        found |= meta.find_undeclared_variables(tree)
    return sorted(found - set(_ENV.globals))


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    """Templates compile to Python once per process (versions are immutable, so the source is
    a fine key)."""
    return _ENV.from_string(source)


def _generate(source: str, variables: dict[str, Any]) -> str:
    out: list[str] = []
    size = 0
    template = _compiled(source)
    with deadline(RENDER_SECONDS):  # synchronous: no other coroutine runs meanwhile
        for piece in template.generate(**variables):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise SecurityError(f"the rendered text is longer than {MAX_OUTPUT} characters")
            out.append(piece)
    return "".join(out)


def _render_one(field: str, source: str, variables: dict[str, Any]) -> str:
    try:
        return _generate(source, variables)
    except UndefinedError as exc:
        message = str(exc.message or exc)
        missing = _UNDEFINED_NAME.match(message)
        if missing:
            name = missing.group(1)
            raise Unprocessable(
                f"missing variable {name!r}",
                errors=[FieldError(field=f"variables.{name}", message="missing variable")],
                extra={"variable": name},
            ) from None
        attribute = _NO_ATTRIBUTE.search(message)
        raise Unprocessable(
            f"{field}: {message}",
            errors=[FieldError(field="variables", message=message)],
            extra={"variable": attribute.group(1)} if attribute else None,
        ) from None
    except SecurityError as exc:
        raise Unprocessable(
            f"{field} was refused by the sandbox: {exc}", errors=[FieldError(field=field, message=str(exc))]
        ) from None
    except TemplateError as exc:
        raise Unprocessable(f"{field}: {exc}", errors=[FieldError(field=field, message=str(exc))]) from None
    except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise Unprocessable(
            f"{field} failed to render: {type(exc).__name__}: {exc}",
            errors=[FieldError(field=field, message=str(exc)[:200])],
        ) from None


def render(template: str | Sequence[MessageTemplate], variables: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages ``template`` renders to with ``variables`` (422 on any failure)."""
    return [
        {"role": role, "content": _render_one(field, source, variables)} for field, role, source in _sources(template)
    ]


class RenderedTemplate(msgspec.Struct, frozen=True):
    prompt_id: uuid.UUID
    version: int
    messages: list[dict[str, Any]]
    model: str | None
    parameters: PromptParameters


def _template(stored: Any) -> str | list[MessageTemplate]:
    if isinstance(stored, str):
        return stored
    return [MessageTemplate(role=m["role"], content=m["content"]) for m in stored]


def _stored(template: str | Sequence[MessageTemplate]) -> Any:
    return template if isinstance(template, str) else [msgspec.to_builtins(m) for m in template]


def _parameters(stored: dict[str, Any] | None) -> PromptParameters:
    return msgspec.convert(stored or {}, PromptParameters)


def _version(row: PromptVersionRow) -> PromptVersion:
    return PromptVersion(
        version=row.version, template=_template(row.template), variables=list(row.variables), model=row.model,
        parameters=_parameters(row.parameters), created_at=row.created_at, created_by=row.created_by,
    )


def _prompt(row: PromptRow) -> Prompt:
    return Prompt(
        id=row.id, name=row.name, description=row.description, latest_version=row.latest_version,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def page_bounds(page: int, limit: int) -> tuple[int, int]:
    """``(offset, limit)``; 422 naming the field when out of range (``limit`` at most 100)."""
    if page < 1:
        raise Unprocessable("page must be at least 1", errors=[FieldError(field="page", message="must be >= 1")])
    if not 1 <= limit <= 100:
        raise Unprocessable(
            "limit must be between 1 and 100", errors=[FieldError(field="limit", message="must be 1..100")]
        )
    return (page - 1) * limit, limit


def page_of(page: int, limit: int, total: int) -> Page:
    return Page(page=page, limit=limit, total=total, pages=math.ceil(total / limit) if total else 0)


async def _find_prompt(session: AsyncSession, ref: str | uuid.UUID, *, lock: bool = False) -> PromptRow:
    """The prompt with id or name ``ref``; 404 otherwise."""
    ident: uuid.UUID | None = ref if isinstance(ref, uuid.UUID) else None
    if ident is None:
        try:
            ident = uuid.UUID(str(ref))
        except ValueError:
            ident = None
    query = select(PromptRow).where(PromptRow.id == ident if ident else PromptRow.name == str(ref))
    row = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no prompt template {str(ref)!r}", extra={"template": str(ref)})
    return row


async def find_version(
    session: AsyncSession, ref: str | uuid.UUID, version: int | None = None
) -> tuple[PromptRow, PromptVersionRow]:
    """The prompt ``ref`` (id or name) and its ``version`` (latest by default); 404 otherwise."""
    prompt = await _find_prompt(session, ref)
    wanted = version or prompt.latest_version
    row = (
        await session.execute(
            select(PromptVersionRow).where(
                PromptVersionRow.prompt_id == prompt.id, PromptVersionRow.version == wanted
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"prompt template {prompt.name!r} has no version {wanted}", extra={"version": wanted})
    return prompt, row


async def rendered(
    session: AsyncSession, ref: str | uuid.UUID, variables: dict[str, Any], version: int | None = None
) -> RenderedTemplate:
    prompt, row = await find_version(session, ref, version)
    return RenderedTemplate(
        prompt_id=prompt.id, version=row.version, messages=render(_template(row.template), variables),
        model=row.model, parameters=_parameters(row.parameters),
    )


async def _check_model(model: str | None) -> str | None:
    if model is None:
        return None
    await litellm_async()
    try:
        return resolve_model(model).model
    except Problem as problem:
        raise Unprocessable(problem.detail, errors=[FieldError(field="model", message="unknown model")]) from None


class PromptService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, tenant_id: uuid.UUID, page: int, limit: int) -> PromptList:
        offset, limit = page_bounds(page, limit)
        async with self.db.tenant(tenant_id) as session:
            total = (await session.execute(select(func.count()).select_from(PromptRow))).scalar_one()
            rows = (
                await session.execute(select(PromptRow).order_by(PromptRow.name).offset(offset).limit(limit))
            ).scalars()
            return PromptList(prompts=[_prompt(r) for r in rows], pagination=page_of(page, limit, total))

    async def _detail(self, session: AsyncSession, prompt: PromptRow) -> PromptDetail:
        versions = list(
            (
                await session.execute(
                    select(PromptVersionRow.version)
                    .where(PromptVersionRow.prompt_id == prompt.id)
                    .order_by(PromptVersionRow.version)
                )
            ).scalars()
        )
        _, latest = await find_version(session, prompt.id)
        return PromptDetail(
            id=prompt.id, name=prompt.name, description=prompt.description, latest_version=prompt.latest_version,
            created_at=prompt.created_at, updated_at=prompt.updated_at, latest=_version(latest), versions=versions,
        )

    async def get(self, tenant_id: uuid.UUID, prompt_id: uuid.UUID) -> PromptDetail:
        async with self.db.tenant(tenant_id) as session:
            return await self._detail(session, await _find_prompt(session, prompt_id))

    async def version(self, tenant_id: uuid.UUID, prompt_id: uuid.UUID, version: int) -> PromptVersion:
        async with self.db.tenant(tenant_id) as session:
            _, row = await find_version(session, prompt_id, version)
            return _version(row)

    async def create(
        self, tenant_id: uuid.UUID, data: PromptCreate, *, actor: str | None, meta: RequestMeta
    ) -> PromptDetail:
        variables = variables_of(data.template)
        model = await _check_model(data.model)
        now = utcnow()
        prompt = PromptRow(
            tenant_id=tenant_id, id=uuid7(), name=data.name, description=data.description, latest_version=1,
            created_by=actor, created_at=now, updated_at=now,
        )
        try:
            async with self.db.tenant(tenant_id) as session:
                session.add(prompt)
                await session.flush()
                session.add(
                    PromptVersionRow(
                        tenant_id=tenant_id, id=uuid7(), prompt_id=prompt.id, version=1,
                        template=_stored(data.template), variables=variables, model=model,
                        parameters=msgspec.to_builtins(data.parameters), created_by=actor, created_at=now,
                    )
                )
                await session.flush()
                await record(
                    session, tenant_id=tenant_id, actor=actor, action="ai.prompt.created", resource_type="ai_prompt",
                    resource_id=str(prompt.id), meta=meta,
                    after={"name": data.name, "version": 1, "variables": variables, "model": model},
                )
                return await self._detail(session, prompt)
        except IntegrityError as exc:
            if "uq_ai_prompts_tenant_id_name" in str(exc.orig):
                raise Conflict(
                    f"a prompt template named {data.name!r} already exists",
                    errors=[FieldError(field="name", message="already used")],
                ) from None
            raise

    async def add_version(
        self, tenant_id: uuid.UUID, prompt_id: uuid.UUID, data: PromptUpdate, *, actor: str | None, meta: RequestMeta
    ) -> PromptDetail:
        """A new version from the latest one with ``data``'s fields replaced."""
        if data.template is not None:
            variables_of(data.template)
        model = await _check_model(data.model)
        async with self.db.tenant(tenant_id) as session:
            # Locked: two concurrent updates get consecutive version numbers.
            prompt = await _find_prompt(session, prompt_id, lock=True)
            _, latest = await find_version(session, prompt.id)
            template = data.template if data.template is not None else _template(latest.template)
            variables = variables_of(template)
            number = prompt.latest_version + 1
            now = utcnow()
            session.add(
                PromptVersionRow(
                    tenant_id=tenant_id, id=uuid7(), prompt_id=prompt.id, version=number,
                    template=_stored(template), variables=variables,
                    model=model if data.model is not None else latest.model,
                    parameters=(
                        msgspec.to_builtins(data.parameters) if data.parameters is not None else latest.parameters
                    ),
                    created_by=actor, created_at=now,
                )
            )
            prompt.latest_version = number
            prompt.updated_at = now
            if data.description is not None:
                prompt.description = data.description
            await session.flush()
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.prompt.versioned", resource_type="ai_prompt",
                resource_id=str(prompt.id), meta=meta,
                before={"version": number - 1}, after={"version": number, "variables": variables},
            )
            return await self._detail(session, prompt)

    async def delete(self, tenant_id: uuid.UUID, prompt_id: uuid.UUID, *, actor: str | None, meta: RequestMeta) -> None:
        async with self.db.tenant(tenant_id) as session:
            prompt = await _find_prompt(session, prompt_id)
            await session.execute(delete(PromptRow).where(PromptRow.id == prompt.id))
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.prompt.deleted", resource_type="ai_prompt",
                resource_id=str(prompt.id), meta=meta,
                before={"name": prompt.name, "latest_version": prompt.latest_version},
            )

    async def preview(
        self, tenant_id: uuid.UUID, prompt_id: uuid.UUID, variables: dict[str, Any], version: int | None
    ) -> Rendered:
        async with self.db.tenant(tenant_id) as session:
            out = await rendered(session, prompt_id, variables, version)
        return Rendered(
            prompt_id=out.prompt_id, version=out.version, messages=out.messages, model=out.model,
            parameters=out.parameters,
        )
