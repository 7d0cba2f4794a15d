"""What a plugin declares and receives for inbound webhooks (re-exported by ``kernel.sdk``)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel.errors import NotFound
from kernel.vault.service import SecretUnreadable
from kernel.webhooks.signatures import HmacScheme, InvalidSignature, verify_hmac, verify_standard_webhook

if TYPE_CHECKING:
    from kernel.plugins.services import Services

__all__ = ["WEBHOOK_NAME", "InboundWebhook", "WebhookReply", "WebhookRoute"]

log = logging.getLogger("businessos.webhooks")

WEBHOOK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""A webhook route's name within its plugin (a lower-case identifier)."""


@dataclass(frozen=True)
class WebhookReply:
    """What the kernel answers the sender (a handler returning ``None`` answers 204). ``content``
    is JSON-encoded unless it is ``bytes`` or ``str``."""

    status: int = 200
    content: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None


@dataclass(frozen=True)
class InboundWebhook:
    """One delivery to a plugin's webhook endpoint: the tenant comes from the endpoint's token."""

    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    name: str
    """The webhook route (declared by the plugin) the endpoint was created for."""
    method: str
    headers: Mapping[str, str]
    """Request headers, names in lower case."""
    query: Mapping[str, str]
    body: bytes
    """The raw body, exactly as received: verify signatures over this, then decode."""
    services: Services = field(repr=False)
    """The plugin's facade."""

    async def verify_standard(self, secret_name: str) -> None:
        """Check a Standard Webhooks signature with the tenant's vault secret ``secret_name``
        (a ``whsec_...`` value); 401 :class:`InvalidSignature` when it does not match, is too old
        or too new, or no such secret is stored."""
        verify_standard_webhook(await self._secret(secret_name), self.body, self.headers)

    async def verify_hmac(self, secret_name: str, scheme: HmacScheme) -> None:
        """Check a provider-style HMAC signature (see :class:`HmacScheme`) with the tenant's vault
        secret ``secret_name``; 401 :class:`InvalidSignature` when it does not hold."""
        verify_hmac(await self._secret(secret_name), self.body, self.headers, scheme)

    async def _secret(self, name: str) -> str:
        try:
            return await self.services.vault.open(self.tenant_id, name)
        except (NotFound, SecretUnreadable) as exc:
            # Fail closed; the sender learns only that the signature was not accepted.
            plugin = self.services.plugin
            log.warning("webhook %s/%s: signing secret %r unusable: %s", plugin, self.name, name, exc.detail)
            raise InvalidSignature("webhook signature cannot be verified") from None


WebhookHandler = Callable[[InboundWebhook], Awaitable[WebhookReply | None]]


@dataclass(frozen=True)
class WebhookRoute:
    """A public webhook route of a plugin: deliveries to ``/hooks/<plugin>/<token>`` of an endpoint
    created for ``name`` run ``handler``."""

    name: str
    handler: WebhookHandler
    description: str = ""
