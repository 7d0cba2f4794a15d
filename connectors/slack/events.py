"""The Events API: Slack's deliveries to ``/hooks/slack/<token>?connection=<id>``.

Each tenant creates an endpoint for one of its Slack connections (``POST /api/slack/events-url``)
and pastes the URL into the app's *Event Subscriptions*. The path token names the tenant; the
``connection`` query parameter names which of that tenant's connections signs the deliveries (it
is looked up under the tenant's row-level security, so naming another tenant's connection finds
nothing). Each delivery's ``X-Slack-Signature`` (``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``
under the signing secret) is checked, with five minutes of tolerance on
``X-Slack-Request-Timestamp``, before anything is read from the body; then the URL-verification
challenge is answered, or the event is recorded as ``slack.event.received``, once per Slack
``event_id`` (``slack_received`` remembers it, so Slack's retries start nothing new).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request, post
from sqlalchemy.dialects.postgresql import insert

from connectors.slack.credentials import SlackCredentials
from connectors.slack.models import ReceivedEvent
from connectors.slack.nodes import SlackEventReceived
from kernel import sdk

__all__ = ["SLACK_SIGNATURE", "EventsUrl", "EventsUrlRequest", "create_events_url", "on_slack_event"]

MANAGE = "slack.endpoints.manage"

SLACK_SIGNATURE = sdk.HmacScheme(
    header="X-Slack-Signature",
    prefix="v0=",
    timestamp_header="X-Slack-Request-Timestamp",
    template="v0:{timestamp}:{body}",
    tolerance=300,
)


class _Envelope(msgspec.Struct, kw_only=True):
    type: str
    challenge: str | None = None
    event_id: str | None = None
    team_id: str | None = None
    event: dict[str, Any] | None = None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def on_slack_event(hook: sdk.InboundWebhook) -> sdk.WebhookReply | None:
    """Verify a delivery with the named connection's signing secret, then answer the challenge or
    record the event (once per ``event_id``: Slack's retries are acknowledged, not recorded again)."""
    try:
        connection = uuid.UUID(hook.query.get("connection", ""))
    except ValueError:
        raise sdk.InvalidSignature("webhook signature cannot be verified") from None
    try:
        creds = await hook.services.connections.open(hook.tenant_id, connection, SlackCredentials)
    except (sdk.NotFound, sdk.Unprocessable):  # unknown here, or not a Slack connection
        raise sdk.InvalidSignature("webhook signature cannot be verified") from None
    if not creds.signing_secret:
        raise sdk.InvalidSignature("webhook signature cannot be verified")
    sdk.verify_hmac(creds.signing_secret, hook.body, hook.headers, SLACK_SIGNATURE)
    try:
        envelope = msgspec.json.decode(hook.body, type=_Envelope)
    except msgspec.DecodeError as error:
        raise sdk.BadRequest(f"not a Slack Events API body: {error}") from None
    if envelope.type == "url_verification":
        return sdk.WebhookReply(200, {"challenge": envelope.challenge or ""})
    if envelope.type != "event_callback" or envelope.event is None:
        return None  # app_rate_limited and future envelope types: acknowledged, nothing to start
    event = envelope.event
    payload = SlackEventReceived(
        connection=str(connection),
        event_id=envelope.event_id or "",
        team_id=envelope.team_id,
        type=str(event.get("type") or ""),
        channel=_text(event.get("channel")),
        user=_text(event.get("user")),
        text=_text(event.get("text")),
        ts=_text(event.get("ts") or event.get("event_ts")),
        thread_ts=_text(event.get("thread_ts")),
        event=event,
    )
    async with hook.services.data.tenant(hook.tenant_id) as session:
        if payload.event_id:  # Slack always sends one; without it there is nothing to key on
            fresh = await session.execute(
                insert(ReceivedEvent)
                .values(tenant_id=hook.tenant_id, id=sdk.uuid7(), connection_id=connection, event_id=payload.event_id)
                .on_conflict_do_nothing(constraint="uq_slack_received_event")
                .returning(ReceivedEvent.id)
            )
            if fresh.first() is None:
                return None  # Slack's retry of a delivery already recorded
        await hook.services.changes.emit(
            session, tenant_id=hook.tenant_id, event="slack.event.received", payload=payload
        )
    return None


class EventsUrlRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID


class EventsUrl(msgspec.Struct, kw_only=True):
    endpoint_id: uuid.UUID
    path: str
    """``/hooks/slack/whk_...?connection=<id>``: prefix it with the public base URL and paste it
    as the app's Request URL. Shown only now."""


@post("/api/slack/events-url", opt={"permission": MANAGE}, status_code=201)
async def create_events_url(
    data: EventsUrlRequest, tenant: sdk.Tenant, services: sdk.Services, request: Request[Any, Any, Any]
) -> EventsUrl:
    """A new Events API endpoint for one of the tenant's Slack connections (404 for an unknown
    or another tenant's connection)."""
    creds = await services.connections.open(tenant.id, data.connection, SlackCredentials)
    if not creds.signing_secret:
        raise sdk.Unprocessable(
            "the connection has no signing secret",
            errors=[sdk.FieldError(field="connection", message="the connection has no signing secret")],
        )
    created = await services.webhooks.create(tenant.id, "events", actor=sdk.Actor.of_request(request))
    return EventsUrl(endpoint_id=created.id, path=f"{created.path}?connection={data.connection}")
