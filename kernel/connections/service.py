"""Connections: tenants' credentials for connectors, sealed, checked, refreshed.

A connection is one row of ``connections``: its credential type (a plugin's ``sdk.CredentialType``),
a name unique in the tenant, the non-secret fields in clear, masked hints of the secret ones, and
every field sealed together (AES-GCM, the tenant and the row's id as associated data, so a sealed
value copied to another row or tenant does not open). Nothing here puts a secret in an answer, an
audit row, an event, a log line or an error: check failures are scrubbed of the secret values.

OAuth 2.0 types authorize with the authorization-code grant and PKCE (S256). The state is a random
token kept only as its SHA-256 in Redis for :data:`STATE_SECONDS`, with the tenant, the user who
started, the PKCE verifier and the client credentials sealed; the callback takes it once (GETDEL).
Tokens are refreshed when a connection is opened within :data:`REFRESH_MARGIN` of expiry and by a
worker cron job ahead of that; a refresh the provider refuses (a 4xx: revoked grant, bad client)
marks the connection ``broken`` and emits ``kernel.connection.broken``; a provider that is merely
unreachable (5xx, timeout) leaves it as it was and the caller gets a 502. Every call to a token
endpoint goes through the egress client.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import RequestMeta
from kernel.audit.log import record as audit_record
from kernel.connections.contract import CredentialType, OAuth2Credentials
from kernel.connections.models import ConnectionRow
from kernel.connections.schemas import (
    CheckError,
    CheckResult,
    ConnectionCreate,
    ConnectionUpdate,
    ConnectionView,
    CredentialTypeInfo,
    CredentialTypeList,
    LastCheck,
    OAuthStart,
    OAuthStarted,
)
from kernel.crypto import SecretBoxError
from kernel.db.models import utcnow, uuid7
from kernel.db.reader import Query
from kernel.egress import EgressFailed
from kernel.errors import BadRequest, Conflict, FieldError, NotFound, Problem, Unprocessable
from kernel.events.catalog import ConnectionBroken, publish
from kernel.listing import check_list, list_and_count
from kernel.plugins.loader import PluginRecord
from kernel.tenants.models import TenantRow
from kernel.vault.sealed import connection_context

if TYPE_CHECKING:
    from kernel.context import Kernel
    from kernel.plugins.services import Actor

__all__ = [
    "REFRESH_MARGIN",
    "STATE_SECONDS",
    "BrokenConnection",
    "ConnectionService",
    "UnreadableConnection",
]

log = logging.getLogger("businessos.connections")

T = TypeVar("T", bound=msgspec.Struct)

STATE_SECONDS = 600
"""How long an OAuth 2.0 authorization may take between start and callback."""
REFRESH_MARGIN = timedelta(seconds=120)
"""An access token expiring within this is refreshed before the connection is handed out."""
SWEEP_AHEAD = timedelta(minutes=10)
"""The cron job refreshes tokens expiring within this."""
SORTS = {"name": ("name", "id"), "-name": ("-name", "id"), "created_at": ("created_at", "id"),
         "-created_at": ("-created_at", "id")}
_STATE_KEY = "bos:oauth-state:"
_MASK = "••••"
_TOKEN_BYTES = 256 * 1024
_TOKEN_SECONDS = 15.0


_OPEN = Query(
    select(
        ConnectionRow.tenant_id, ConnectionRow.id, ConnectionRow.plugin, ConnectionRow.type, ConnectionRow.name,
        ConnectionRow.status, ConnectionRow.broken_reason, ConnectionRow.sealed_credentials,
    ).where(ConnectionRow.id == bindparam("id"))
)


class BrokenConnection(Problem):
    """The connection needs authorizing again (its token refresh was refused)."""

    status, slug, title = 409, "connection-broken", "Connection is broken"


class UnreadableConnection(Problem):
    """The stored credentials do not open (altered, or sealed under a retired master key)."""

    status, slug, title = 409, "connection-unreadable", "Stored credentials cannot be opened"


class _TokenRefused(Exception):
    """The token endpoint answered, and said no."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mask(value: str) -> str:
    return _MASK + value[-4:] if len(value) >= 16 else _MASK


def _state_key(state: str) -> str:
    return _STATE_KEY + hashlib.sha256(state.encode()).hexdigest()


def _field_of(error: msgspec.ValidationError) -> str:
    """``credentials.<path>`` of the field msgspec's message names (``- at `$.a.b```, or the
    missing field of ``Object missing required field `x```)."""
    message = str(error)
    parts = ["credentials"]
    marker = "- at `$"
    if marker in message:
        path = message.rsplit(marker, 1)[1].rstrip("`").replace("[", ".").replace("]", "")
        parts += [p for p in path.split(".") if p]
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        parts.append(missing.group(1))
    return ".".join(parts)


def _scrub(text: str, values: Sequence[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, _MASK)
    return text


def _secret_values(kind: CredentialType, creds: msgspec.Struct) -> list[str]:
    values = msgspec.to_builtins(creds)
    return [str(values[name]) for name in kind.secrets() if isinstance(values, dict) and values.get(name)]


class ConnectionService:
    """The kernel's connections; plugins reach them through ``services.connections``."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    # -- types ---------------------------------------------------------------------------------

    def kind(self, key: str) -> tuple[PluginRecord, CredentialType] | None:
        """The active plugin declaring credential type ``key``, and the type."""
        for record in self.kernel.plugins.active():
            for kind in record.credentials:
                if kind.key == key:
                    return record, kind
        return None

    async def types(self, tenant_id: uuid.UUID) -> CredentialTypeList:
        enabled = await self.kernel.modules.enabled(tenant_id)
        found = [
            CredentialTypeInfo(
                key=kind.key, plugin=record.name, title=kind.title, description=kind.description,
                schema=msgspec.json.schema(kind.schema), secret_fields=sorted(kind.secrets()),
                oauth=kind.oauth is not None, checkable=kind.check is not None,
            )
            for record in self.kernel.plugins.active()
            if record.name in enabled
            for kind in record.credentials
        ]
        return CredentialTypeList(types=sorted(found, key=lambda t: t.key))

    async def _usable_kind(self, tenant_id: uuid.UUID, key: str, field: str = "type") -> CredentialType:
        found = self.kind(key)
        if found is None or found[0].name not in await self.kernel.modules.enabled(tenant_id):
            raise Unprocessable(
                f"unknown credential type {key!r} (see GET /api/connections/types)",
                errors=[FieldError(field, "not a credential type of a module this tenant enabled")],
            )
        return found[1]

    # -- sealing -------------------------------------------------------------------------------

    @staticmethod
    def _validate(kind: CredentialType, raw: dict[str, Any]) -> msgspec.Struct:
        try:
            return msgspec.convert(raw, kind.schema)
        except msgspec.ValidationError as error:
            raise Unprocessable(
                f"credentials do not fit {kind.key}: {error}",
                errors=[FieldError(_field_of(error), str(error).split(" - at ")[0])],
            ) from None

    def _store(self, row: ConnectionRow, kind: CredentialType, creds: msgspec.Struct) -> None:
        values: dict[str, Any] = msgspec.to_builtins(creds)
        hidden = kind.secrets()
        row.public = {k: v for k, v in values.items() if k not in hidden}
        row.hints = {k: _mask(str(v)) for k, v in values.items() if k in hidden and v}
        row.sealed_credentials = self.kernel.box.seal(
            msgspec.json.encode(values).decode(), connection_context(row.tenant_id, row.id)
        )
        row.expires_at = creds.expires_at if isinstance(creds, OAuth2Credentials) else None
        row.updated_at = utcnow()

    def _unseal(self, row: ConnectionRow, kind: CredentialType) -> msgspec.Struct:
        try:
            plain = self.kernel.box.open(row.sealed_credentials, connection_context(row.tenant_id, row.id))
            return msgspec.json.decode(plain, type=kind.schema)
        except (SecretBoxError, msgspec.ValidationError, msgspec.DecodeError):
            log.warning("connection %s of tenant %s cannot be opened", row.id, row.tenant_id)
            raise UnreadableConnection(
                f"the stored credentials of connection {row.name!r} cannot be opened (altered, or sealed under a "
                "retired master key, or its type's schema changed): store them again",
                extra={"connection_id": str(row.id)},
            ) from None

    # -- views ---------------------------------------------------------------------------------

    def view(self, row: ConnectionRow) -> ConnectionView:
        found = self.kind(row.type)
        last = (
            LastCheck(ok=bool(row.check_ok), at=row.checked_at, error=row.check_error)
            if row.checked_at is not None
            else None
        )
        return ConnectionView(
            id=row.id, type=row.type, plugin=row.plugin, name=row.name, status=row.status, fields=dict(row.public),
            secrets=dict(row.hints), oauth=found is not None and found[1].oauth is not None,
            expires_at=row.expires_at, broken_reason=row.broken_reason, last_check=last, created_by=row.created_by,
            created_at=row.created_at, updated_at=row.updated_at,
        )

    @staticmethod
    def _audited(row: ConnectionRow) -> dict[str, Any]:
        """What an audit row keeps of a connection: never a secret nor a masked hint."""
        return {"name": row.name, "type": row.type, "status": row.status, "fields": dict(row.public)}

    @staticmethod
    async def _audit(
        session: AsyncSession, row: ConnectionRow, action: str, actor: Actor | None, *,
        result: str = "success", before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if actor is not None:
            actor._audited()
        await audit_record(
            session, tenant_id=row.tenant_id, actor=actor.name if actor is not None else "system",
            action=f"connection.{action}", resource_type="connection", resource_id=str(row.id), result=result,
            meta=actor.meta if actor is not None else RequestMeta(), before=before, after=after, details=details,
        )

    @staticmethod
    async def _row(session: AsyncSession, connection_id: uuid.UUID, *, lock: bool = False) -> ConnectionRow:
        stmt = select(ConnectionRow).where(ConnectionRow.id == connection_id)
        row = (await session.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()
        if row is None:  # another tenant's id too: row-level security hides it
            raise NotFound(f"no connection {connection_id}")
        return row

    @staticmethod
    def _name(name: str) -> str:
        name = name.strip() if isinstance(name, str) else ""
        if not name or len(name) > 200:
            raise Unprocessable(
                "a connection's name is 1-200 characters", errors=[FieldError("name", "1-200 characters")]
            )
        return name

    # -- CRUD ----------------------------------------------------------------------------------

    async def create(self, tenant_id: uuid.UUID, data: ConnectionCreate, actor: Actor) -> ConnectionView:
        kind = await self._usable_kind(tenant_id, data.type)
        creds = self._validate(kind, data.credentials)
        return await self._insert(tenant_id, kind, self._name(data.name), creds, actor, "created")

    async def _insert(
        self, tenant_id: uuid.UUID, kind: CredentialType, name: str, creds: msgspec.Struct, actor: Actor, action: str
    ) -> ConnectionView:
        row = ConnectionRow(
            tenant_id=tenant_id, id=uuid7(), plugin=kind.key.split(".")[0], type=kind.key, name=name, status="active",
            created_by=actor.name, created_at=utcnow(),
        )
        self._store(row, kind, creds)
        try:
            async with self.kernel.db.tenant(tenant_id) as session:
                session.add(row)
                await session.flush()
                await self._audit(session, row, action, actor, after=self._audited(row))
        except IntegrityError:
            raise self._taken(name) from None
        return self.view(row)

    @staticmethod
    def _taken(name: str) -> Conflict:
        return Conflict(f"a connection named {name!r} exists", errors=[FieldError("name", "already used")])

    async def list_page(
        self, tenant_id: uuid.UUID, *, page: int, limit: int, sort: str, type: str | None
    ) -> tuple[list[ConnectionView], int]:
        check_list(page, limit, sort, SORTS)
        order = [
            getattr(ConnectionRow, c.lstrip("-")).desc() if c.startswith("-") else getattr(ConnectionRow, c)
            for c in SORTS[sort]
        ]
        stmt = select(ConnectionRow)
        if type:
            stmt = stmt.where(ConnectionRow.type == type)
        async with self.kernel.db.tenant(tenant_id) as session:
            rows, total = await list_and_count(session, stmt, order, page, limit)
        return [self.view(r) for r in rows], total

    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionView:
        async with self.kernel.db.tenant(tenant_id) as session:
            return self.view(await self._row(session, connection_id))

    async def update(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, data: ConnectionUpdate, actor: Actor
    ) -> ConnectionView:
        try:
            async with self.kernel.db.tenant(tenant_id) as session:
                row = await self._row(session, connection_id, lock=True)
                before = self._audited(row)
                changed = []
                if data.name is not None and self._name(data.name) != row.name:
                    row.name, row.updated_at = self._name(data.name), utcnow()
                    changed.append("name")
                if data.credentials is not None:
                    kind = await self._usable_kind(tenant_id, row.type)
                    self._store(row, kind, self._validate(kind, data.credentials))
                    row.status, row.broken_reason = "active", None
                    row.checked_at = row.check_ok = row.check_error = None
                    changed.append("credentials")
                if changed:
                    await session.flush()
                    action = "renamed" if changed == ["name"] else "updated"
                    await self._audit(
                        session, row, action, actor, before=before, after=self._audited(row),
                        details={"changed": changed},
                    )
                return self.view(row)
        except IntegrityError:
            raise self._taken(data.name or "") from None

    async def users(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> list[str]:
        """What uses the connection, as every plugin implementing ``businessos_connection_users``
        reports it."""
        found: list[str] = []
        for record in self.kernel.plugins.active():
            if record.connection_users is not None:
                found += [str(u) for u in await record.connection_users(
                    self.kernel.services(record.name), tenant_id, connection_id
                )]
        return found

    async def delete(self, tenant_id: uuid.UUID, connection_id: uuid.UUID, actor: Actor) -> None:
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, connection_id, lock=True)
        users = await self.users(tenant_id, connection_id)
        if users:
            raise Conflict(
                f"connection {row.name!r} is in use by {', '.join(users)}: stop using it first",
                extra={"used_by": users},
            )
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, connection_id, lock=True)
            await session.delete(row)
            await self._audit(session, row, "deleted", actor, before=self._audited(row))

    async def plugins_of(self, tenant_id: uuid.UUID, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The plugin whose credential type each of ``ids`` is, for those that are connections of
        ``tenant_id`` (another tenant's ids and unknown ids are simply absent)."""
        if not ids:
            return {}
        async with self.kernel.db.tenant(tenant_id) as session:
            rows = await session.execute(
                select(ConnectionRow.id, ConnectionRow.plugin).where(ConnectionRow.id.in_(list(ids)))
            )
            return {row.id: row.plugin for row in rows}

    # -- use -----------------------------------------------------------------------------------

    @overload
    async def open(self, tenant_id: uuid.UUID, connection_id: uuid.UUID, plugin: str, schema: type[T]) -> T: ...

    @overload
    async def open(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, plugin: str, schema: None = None
    ) -> msgspec.Struct: ...

    async def open(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, plugin: str, schema: type[T] | None = None
    ) -> T | msgspec.Struct:
        """The connection's credentials, as its type's Struct; see :meth:`Connections.open`."""
        async with self.kernel.db.read(tenant_id) as reader:  # the hot path: one round trip, no ORM
            found = await reader.fetchrow(_OPEN, id=connection_id)
        if found is None:
            raise NotFound(f"no connection {connection_id}")
        row = ConnectionRow(**dict(found))
        kind = self._kind_for(row, plugin, schema)
        if row.status == "broken":
            raise BrokenConnection(
                f"connection {row.name!r} is broken ({row.broken_reason}): authorize it again",
                extra={"connection_id": str(row.id)},
            )
        creds = self._unseal(row, kind)
        if kind.oauth is not None and isinstance(creds, OAuth2Credentials) and self._due(creds, REFRESH_MARGIN):
            creds = await self.refresh(tenant_id, connection_id, margin=REFRESH_MARGIN)
        return creds

    def _kind_for(self, row: ConnectionRow, plugin: str, schema: type[msgspec.Struct] | None) -> CredentialType:
        found = self.kind(row.type)
        wrong = (
            found is None or row.plugin != plugin
            or (schema is not None and not issubclass(found[1].schema, schema))
        )
        if wrong or found is None:
            wanted = f"a {schema.__name__} connection of {plugin}" if schema is not None else f"a {plugin} connection"
            raise Unprocessable(
                f"connection {row.name!r} is a {row.type} connection; this needs {wanted}",
                errors=[FieldError("connection", f"a {row.type} connection cannot be used here")],
            )
        return found[1]

    @staticmethod
    def _due(creds: OAuth2Credentials, margin: timedelta) -> bool:
        return creds.expires_at is not None and creds.expires_at <= utcnow() + margin

    # -- testing -------------------------------------------------------------------------------

    async def test(self, tenant_id: uuid.UUID, connection_id: uuid.UUID, actor: Actor) -> CheckResult:
        """Run the type's check: ``ok`` or what failed (the problem the check raised, scrubbed)."""
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, connection_id)
        kind = await self._usable_kind(tenant_id, row.type, field="connection")
        error: CheckError | None = None
        secrets_: list[str] = []
        try:
            creds = await self.open(tenant_id, connection_id, row.plugin)
            secrets_ = _secret_values(kind, creds)
            if kind.check is None:
                raise Unprocessable(f"credential type {kind.key} has no check")
            await kind.check(self.kernel.services(row.plugin), creds)
        except Problem as problem:
            error = CheckError(
                status=problem.status, title=problem.title, detail=_scrub(problem.detail, secrets_),
                errors=[{"field": e.field, "message": _scrub(e.message, secrets_)} for e in problem.errors],
            )
        except Exception as exc:  # a check's own bug: say which, keep its message out (it may hold a secret)
            log.warning("the check of %s raised %s", kind.key, type(exc).__name__)
            error = CheckError(status=500, title="Check failed", detail=f"the check raised {type(exc).__name__}")
        now = utcnow()
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, connection_id, lock=True)
            row.checked_at, row.check_ok = now, error is None
            row.check_error = None if error is None else f"{error.title}: {error.detail}"
            await self._audit(
                session, row, "tested", actor, result="success" if error is None else "failure",
                details={"ok": error is None, "error": row.check_error},
            )
        return CheckResult(ok=error is None, checked_at=now, error=error)

    # -- OAuth 2.0 -----------------------------------------------------------------------------

    async def start_oauth(
        self, tenant_id: uuid.UUID, data: OAuthStart, actor: Actor, callback_url: str
    ) -> OAuthStarted:
        kind = await self._usable_kind(tenant_id, data.type)
        if kind.oauth is None:
            raise Unprocessable(
                f"{kind.key} is not an OAuth 2.0 type: create it with POST /api/connections",
                errors=[FieldError("type", "not an OAuth 2.0 credential type")],
            )
        creds = self._validate(kind, data.credentials)
        assert isinstance(creds, OAuth2Credentials)
        name = self._name(data.name)
        authorize = kind.oauth.authorize_url or creds.authorize_url
        parts = urlsplit(authorize)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Unprocessable(
                "the authorization endpoint must be an http(s) URL",
                errors=[FieldError("credentials.authorize_url", "an http(s) URL is required")],
            )
        if not (kind.oauth.token_url or creds.token_url):
            raise Unprocessable(
                "the token endpoint is missing", errors=[FieldError("credentials.token_url", "required")]
            )
        if data.redirect is not None and urlsplit(data.redirect).scheme not in ("http", "https"):
            raise Unprocessable("redirect must be an http(s) URL", errors=[FieldError("redirect", "http(s) URL")])
        async with self.kernel.db.tenant(tenant_id) as session:
            if data.connection_id is not None:
                existing = await self._row(session, data.connection_id)
                if existing.type != kind.key:
                    raise Unprocessable(
                        f"connection {existing.name!r} is a {existing.type} connection",
                        errors=[FieldError("connection_id", f"not a {kind.key} connection")],
                    )
            elif (
                await session.execute(select(ConnectionRow.id).where(ConnectionRow.name == name))
            ).first() is not None:
                raise self._taken(name)
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        pending = {
            "tenant_id": str(tenant_id), "actor": actor.name, "type": kind.key, "name": name,
            "verifier": verifier, "redirect": data.redirect, "callback": callback_url,
            "connection_id": str(data.connection_id) if data.connection_id else None,
            "credentials": msgspec.to_builtins(creds),
        }
        key = _state_key(state)
        sealed = self.kernel.box.seal(msgspec.json.encode(pending).decode(), key)
        await self.kernel.redis.set(key, sealed, ex=STATE_SECONDS)
        query = {
            "response_type": "code", "client_id": creds.client_id, "redirect_uri": callback_url, "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        scopes = creds.scopes or list(kind.oauth.scopes)
        if scopes:
            query["scope"] = " ".join(scopes)
        query.update(kind.oauth.authorize_params)
        joined = "&".join(p for p in (parts.query, urlencode(query)) if p)
        return OAuthStarted(
            authorize_url=urlunsplit((parts.scheme, parts.netloc, parts.path, joined, "")),
            state=state, expires_at=utcnow() + timedelta(seconds=STATE_SECONDS),
        )

    async def finish_oauth(
        self, state: str, code: str | None, error: str | None, meta: RequestMeta
    ) -> tuple[ConnectionView | None, str | None, str | None]:
        """Take the state once and exchange the code: (the connection, the redirect to send the
        browser to, the error). An unknown, used or expired state is a 400."""
        from kernel.plugins.services import Actor

        key = _state_key(state or "")
        sealed = await self.kernel.redis.getdel(key) if state and len(state) <= 200 else None
        if sealed is None:
            raise NotFound("unknown, expired or already used OAuth state: start again", errors=[
                FieldError("state", "unknown, expired or used"),
            ])
        raw = sealed.decode() if isinstance(sealed, bytes) else str(sealed)
        pending = msgspec.json.decode(self.kernel.box.open(raw, key))
        tenant_id = uuid.UUID(pending["tenant_id"])
        actor = Actor(name=pending["actor"], meta=meta)
        redirect: str | None = pending["redirect"]
        found = self.kind(pending["type"])
        if found is None or found[1].oauth is None:
            raise BadRequest(f"credential type {pending['type']} is no longer available")
        kind = found[1]
        creds = msgspec.convert(pending["credentials"], kind.schema)
        assert isinstance(creds, OAuth2Credentials)
        if error or not code:
            return None, redirect, error or "no authorization code"
        try:
            tokens = await self._token_request(kind, creds, {
                "grant_type": "authorization_code", "code": code, "redirect_uri": pending["callback"],
                "code_verifier": pending["verifier"],
            })
        except _TokenRefused as refused:
            return None, redirect, refused.reason
        creds = self._with_tokens(creds, tokens)
        if pending["connection_id"] is None:
            try:
                view = await self._insert(tenant_id, kind, pending["name"], creds, actor, "authorized")
            except Conflict:
                return None, redirect, "name_taken"
            return view, redirect, None
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, uuid.UUID(pending["connection_id"]), lock=True)
            before = self._audited(row)
            self._store(row, kind, creds)
            row.status, row.broken_reason = "active", None
            await self._audit(session, row, "authorized", actor, before=before, after=self._audited(row))
            return self.view(row), redirect, None

    @staticmethod
    def _with_tokens(creds: OAuth2Credentials, tokens: dict[str, Any]) -> OAuth2Credentials:
        expires_in = tokens.get("expires_in")
        expires_at = None
        if isinstance(expires_in, int | float | str) and str(expires_in).replace(".", "", 1).isdigit():
            expires_at = datetime.now(UTC) + timedelta(seconds=float(expires_in))
        scope = tokens.get("scope")
        return msgspec.structs.replace(
            creds,
            access_token=str(tokens["access_token"]),
            refresh_token=str(tokens.get("refresh_token") or creds.refresh_token),
            token_type=str(tokens.get("token_type") or "Bearer"),
            expires_at=expires_at,
            scopes=scope.split() if isinstance(scope, str) and scope else creds.scopes,
        )

    async def _token_request(
        self, kind: CredentialType, creds: OAuth2Credentials, form: dict[str, str]
    ) -> dict[str, Any]:
        """POST to the token endpoint (RFC 6749 section 4.1.3 / 6) through the egress client."""
        assert kind.oauth is not None
        url = kind.oauth.token_url or creds.token_url
        headers = {"accept": "application/json", "content-type": "application/x-www-form-urlencoded"}
        body = dict(form)
        if kind.oauth.client_auth == "basic":
            pair = f"{_form(creds.client_id)}:{_form(creds.client_secret)}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            body["client_id"] = creds.client_id
            if creds.client_secret:
                body["client_secret"] = creds.client_secret
        response = await self.kernel.egress.request(
            "POST", url, field="token_url", headers=headers, content=urlencode(body),
            seconds=_TOKEN_SECONDS, max_bytes=_TOKEN_BYTES, follow_redirects=False,
        )
        try:
            answer = response.json()
        except (msgspec.DecodeError, ValueError):
            answer = dict(parse_qsl(response.text))  # some providers answer form-encoded
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code >= 500:
            raise EgressFailed(f"token_url: the token endpoint answered {response.status_code}", extra={"url": url})
        if response.status_code != 200 or not answer.get("access_token"):
            reason = str(answer.get("error") or f"status {response.status_code}")
            described = answer.get("error_description")
            raise _TokenRefused(f"{reason}: {described}"[:300] if described else reason[:300])
        return answer

    async def refresh(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, *, margin: timedelta = REFRESH_MARGIN
    ) -> OAuth2Credentials:
        """Refresh the connection's token unless another caller did while we waited for its lock
        (the row stays locked during the exchange: one refresh at a time, since providers rotate
        refresh tokens). A refused refresh marks it broken and raises :class:`BrokenConnection`."""
        broken: str | None = None
        async with self.kernel.db.tenant(tenant_id) as session:
            row = await self._row(session, connection_id, lock=True)
            found = self.kind(row.type)
            if found is None or found[1].oauth is None:
                raise Unprocessable(f"connection {row.name!r} is not an OAuth 2.0 connection")
            kind = found[1]
            creds = self._unseal(row, kind)
            assert isinstance(creds, OAuth2Credentials)
            if row.status == "broken":
                broken = row.broken_reason or "broken"
            elif not self._due(creds, margin):
                return creds
            elif not creds.refresh_token:
                broken = "the access token expired and there is no refresh token"
            else:
                try:
                    tokens = await self._token_request(
                        kind, creds, {"grant_type": "refresh_token", "refresh_token": creds.refresh_token}
                    )
                except _TokenRefused as refused:
                    broken = f"token refresh refused: {refused.reason}"
                else:
                    creds = self._with_tokens(creds, tokens)
                    self._store(row, kind, creds)
                    await self._audit(session, row, "refreshed", None)
                    return creds
            if row.status != "broken":
                row.status, row.broken_reason, row.updated_at = "broken", broken, utcnow()
                await self._audit(session, row, "broken", None, result="failure", details={"reason": broken})
                await publish(session, tenant_id, ConnectionBroken(
                    actor="system", connection_id=row.id, name=row.name, type=row.type, reason=broken,
                ))
                log.warning("connection %s of tenant %s is broken: %s", row.id, tenant_id, broken)
        raise BrokenConnection(
            f"connection {row.name!r} is broken ({broken}): authorize it again", extra={"connection_id": str(row.id)}
        )

    async def refresh_expiring(self, ahead: timedelta = SWEEP_AHEAD) -> int:
        """Refresh every OAuth 2.0 token expiring within ``ahead`` (the worker's cron job); returns
        how many were refreshed. Broken ones stay broken; one failure does not stop the rest."""
        async with self.kernel.db.global_() as session:
            tenants = list((await session.execute(select(TenantRow.id).order_by(TenantRow.id))).scalars())
        refreshed = 0
        until = utcnow() + ahead
        for tenant_id in tenants:
            async with self.kernel.db.tenant(tenant_id) as session:
                due = list((await session.execute(
                    select(ConnectionRow.id).where(
                        ConnectionRow.expires_at.is_not(None), ConnectionRow.expires_at <= until,
                        ConnectionRow.status == "active",
                    ).order_by(ConnectionRow.id)
                )).scalars())
            for connection_id in due:
                try:
                    await self.refresh(tenant_id, connection_id, margin=ahead)
                    refreshed += 1
                except Problem as problem:
                    log.warning("refreshing connection %s failed: %s", connection_id, problem.title)
        return refreshed


def _form(value: str) -> str:
    """RFC 6749 section 2.3.1: client id and secret are form-encoded before Basic."""
    from urllib.parse import quote_plus

    return quote_plus(value)
