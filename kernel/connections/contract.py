"""What a connector plugin declares about credentials: ``sdk.CredentialType`` and friends.

A *credential type* (``businessos_credentials``) names the shape of a tenant's credentials for one
kind of connection (``http.bearer``, ``slack.bot``), which of its fields are secret, how to check
them, and, for OAuth 2.0 types, where to authorize. A *connection* (``/api/connections``) is one
tenant's stored instance of a type; node configs name it by id (``connection: uuid.UUID``) and the
node's runner opens it with ``await ctx.services.connections.open(ctx.tenant_id, config.connection,
MyCreds)``. Re-exported by ``kernel.sdk``; plugins never import this module directly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec

if TYPE_CHECKING:
    from kernel.plugins.services import Services

__all__ = [
    "CREDENTIAL_KEY",
    "ConnectionUsers",
    "CredentialCheck",
    "CredentialType",
    "OAuth2Config",
    "OAuth2Credentials",
    "Secret",
    "secret_fields_of",
]

CREDENTIAL_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")

Secret = Annotated[str, msgspec.Meta(extra={"secret": True}, extra_json_schema={"writeOnly": True, "x-secret": True})]
"""A credentials field that is secret: ``token: sdk.Secret``. Sealed at rest, never answered
(only a masked hint), marked ``"writeOnly": true, "x-secret": true`` in the type's JSON Schema."""



class CredentialCheck(Protocol):
    """``await check(services, creds)``: returns when the credentials work, raises an
    ``sdk.Problem`` (``sdk.Unprocessable`` naming the field, ``sdk.Forbidden``, ...) saying what
    failed otherwise."""

    def __call__(self, services: Services, creds: Any, /) -> Awaitable[None]: ...


class ConnectionUsers(Protocol):
    """``await users(services, tenant_id, connection_id)``: what of the plugin uses the connection
    (names a person recognises, e.g. ``"workflow 'Sync leads' (version 3)"``); empty when nothing
    does."""

    def __call__(
        self, services: Services, tenant_id: uuid.UUID, connection_id: uuid.UUID, /
    ) -> Awaitable[Sequence[str]]: ...


class OAuth2Credentials(msgspec.Struct, kw_only=True):
    """Base of an OAuth 2.0 credential type's schema: subclass it and add fields of your own.

    The tenant gives ``client_id``/``client_secret`` (and, when the type's :class:`OAuth2Config`
    leaves them empty, the endpoints); the kernel fills in the token fields after the
    authorization-code exchange and on every refresh."""

    client_id: str
    client_secret: Secret = ""
    authorize_url: str = ""
    """Used when the type's ``OAuth2Config.authorize_url`` is empty."""
    token_url: str = ""
    """Used when the type's ``OAuth2Config.token_url`` is empty."""
    scopes: list[str] = msgspec.field(default_factory=list)
    """Requested scopes; the type's ``OAuth2Config.scopes`` when empty."""
    access_token: Secret = ""
    refresh_token: Secret = ""
    token_type: str = "Bearer"
    expires_at: datetime | None = None
    """When ``access_token`` expires (UTC); ``None``: it does not say."""


@dataclass(frozen=True)
class OAuth2Config:
    """How an OAuth 2.0 type authorizes: the authorization-code grant with PKCE (S256)."""

    authorize_url: str = ""
    """The provider's authorization endpoint; empty: the credentials' ``authorize_url``."""
    token_url: str = ""
    """The provider's token endpoint; empty: the credentials' ``token_url``."""
    scopes: tuple[str, ...] = ()
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    """Extra query parameters of the authorization URL (``{"access_type": "offline"}``)."""
    client_auth: str = "body"
    """How the client authenticates at the token endpoint: ``"body"`` (``client_id`` and
    ``client_secret`` form fields) or ``"basic"`` (HTTP Basic)."""


@dataclass(frozen=True)
class CredentialType:
    """A kind of connection a plugin offers (``businessos_credentials``)."""

    key: str
    """``<plugin>.<name>``: what ``POST /api/connections`` names as ``type``."""
    title: str
    schema: type[msgspec.Struct]
    """The credentials' fields; a body is validated against it (422 naming the field). An OAuth
    2.0 type's schema subclasses :class:`OAuth2Credentials`."""
    check: CredentialCheck | None = field(default=None, compare=False)
    """Run by ``POST /api/connections/{id}/test``; ``None``: the type cannot be checked."""
    secret_fields: tuple[str, ...] = ()
    """Secret fields besides those typed ``sdk.Secret``."""
    oauth: OAuth2Config | None = None
    description: str = ""

    def secrets(self) -> frozenset[str]:
        """Every secret field: :attr:`secret_fields` and the fields typed ``sdk.Secret``."""
        return frozenset(self.secret_fields) | secret_fields_of(self.schema)


def secret_fields_of(schema: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of ``schema`` typed :data:`Secret` (their JSON Schema says ``"secret": true``)."""
    found = set()
    for info in msgspec.inspect.type_info(schema).fields:  # type: ignore[attr-defined]
        if _is_secret(info.type):
            found.add(info.encode_name)
    return frozenset(found)


def _is_secret(kind: Any) -> bool:
    extra = getattr(kind, "extra", None)
    if isinstance(extra, dict) and extra.get("secret") is True:
        return True
    inner = getattr(kind, "types", None) or ()  # a union: str | None
    return any(_is_secret(t) for t in inner)
