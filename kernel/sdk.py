"""The one module a plugin imports from the kernel.

Everything a plugin needs is re-exported here: the hook marker, the manifest and contribution
types, the model base, migration helpers, the node contract and the services facade
(``sdk.Services``). The rest of ``kernel`` is private and may change without notice (``ruff
check`` refuses an import of it from ``plugins/``, ``connectors/`` and ``examples/``); this
surface follows ``KERNEL_API_VERSION`` (see docs/plugins.md, "Stability").
"""

from __future__ import annotations

from kernel import KERNEL_API_VERSION
from kernel.audit.log import RequestMeta
from kernel.connections.contract import (
    ConnectionUsers,
    CredentialCheck,
    CredentialType,
    OAuth2Config,
    OAuth2Credentials,
    Secret,
)
from kernel.connections.facade import Connections
from kernel.connections.service import BrokenConnection
from kernel.db.ddl import create_tenant_table, enable_tenant_rls, grant_runtime
from kernel.db.models import Model, TenantScoped, declarative_base, utcnow, uuid7
from kernel.db.reader import Query, Reader
from kernel.egress import EgressClient, EgressFailed, EgressRefused, EgressResponse
from kernel.entitlements import Entitlement, EntitlementProvider, EntitlementQuery, Entitlements
from kernel.errors import (
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    PaymentRequired,
    Problem,
    Unprocessable,
)
from kernel.identity.permissions import AUTHENTICATED, OPERATOR, PUBLIC
from kernel.identity.principal import Principal
from kernel.jobs.facade import Jobs
from kernel.listing import (
    Pagination,
    PreconditionFailed,
    PreconditionRequired,
    check_list,
    check_version,
    decode_cursor,
    encode_cursor,
    etag,
    list_and_count,
    list_rows,
    parse_if_match,
)
from kernel.operators.service import Operator
from kernel.plugins.contract import (
    EventContext,
    EventHandler,
    EventType,
    JobContext,
    JobSpec,
    Manifest,
    NodeContext,
    NodeRunner,
    NodeSpec,
    Permission,
    Schedule,
    SettingsCheck,
    StepJournal,
)
from kernel.plugins.hookspecs import hookimpl
from kernel.plugins.nodes import CatalogueNode, Nodes
from kernel.plugins.services import AI, Actor, AIAnswer, ChangeLog, Changes, Data, Members, Services, Tenants
from kernel.runtime import open_services
from kernel.sandbox import TemplateFailed, TemplateSandbox
from kernel.tenants.schemas import Tenant
from kernel.vault.service import SecretUnreadable, Vault
from kernel.webhooks.contract import InboundWebhook, WebhookReply, WebhookRoute
from kernel.webhooks.service import WebhookEndpoint, WebhookEndpointCreated, Webhooks
from kernel.webhooks.signatures import HmacScheme, InvalidSignature, verify_hmac, verify_standard_webhook

__all__ = [
    "AI",
    "AUTHENTICATED",
    "KERNEL_API_VERSION",
    "OPERATOR",
    "PUBLIC",
    "AIAnswer",
    "Actor",
    "BadRequest",
    "BrokenConnection",
    "CatalogueNode",
    "ChangeLog",
    "Changes",
    "Conflict",
    "ConnectionUsers",
    "Connections",
    "CredentialCheck",
    "CredentialType",
    "Data",
    "EgressClient",
    "EgressFailed",
    "EgressRefused",
    "EgressResponse",
    "Entitlement",
    "EntitlementProvider",
    "EntitlementQuery",
    "Entitlements",
    "EventContext",
    "EventHandler",
    "EventType",
    "FieldError",
    "Forbidden",
    "HmacScheme",
    "InboundWebhook",
    "InvalidSignature",
    "JobContext",
    "JobSpec",
    "Jobs",
    "Manifest",
    "Members",
    "Model",
    "NodeContext",
    "NodeRunner",
    "NodeSpec",
    "Nodes",
    "NotFound",
    "OAuth2Config",
    "OAuth2Credentials",
    "Operator",
    "Pagination",
    "PaymentRequired",
    "Permission",
    "PreconditionFailed",
    "PreconditionRequired",
    "Principal",
    "Problem",
    "Query",
    "Reader",
    "RequestMeta",
    "Schedule",
    "Secret",
    "SecretUnreadable",
    "Services",
    "SettingsCheck",
    "StepJournal",
    "TemplateFailed",
    "TemplateSandbox",
    "Tenant",
    "TenantScoped",
    "Tenants",
    "Unprocessable",
    "Vault",
    "WebhookEndpoint",
    "WebhookEndpointCreated",
    "WebhookReply",
    "WebhookRoute",
    "Webhooks",
    "check_list",
    "check_version",
    "create_tenant_table",
    "declarative_base",
    "decode_cursor",
    "enable_tenant_rls",
    "encode_cursor",
    "etag",
    "grant_runtime",
    "hookimpl",
    "list_and_count",
    "list_rows",
    "open_services",
    "parse_if_match",
    "utcnow",
    "uuid7",
    "verify_hmac",
    "verify_standard_webhook",
]
