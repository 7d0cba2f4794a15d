"""Stripe's events, received once for the whole installation.

Stripe sends every event of the operator's account to one endpoint,
``POST /api/billing/stripe/webhook`` (public: the signature is the credential). The body is
verified with the operator's webhook secret (``BUSINESSOS_BILLING_STRIPE_WEBHOOK_SECRET``)
through ``stripe.Webhook.construct_event``; anything that does not verify is a 400 problem and
changes nothing. A verified PaymentIntent event is routed by the metadata billing put on the
intent when it created it (``tenant_id``, ``invoice_id``), and applied only inside that tenant's
transaction (row-level security) and only when the intent's customer is the one that tenant's
billing profile names: an event about tenant A can reach tenant A's invoices only.

The older per-tenant endpoint (an inbound webhook path made by
``POST /api/admin/billing/tenants/{t}/stripe/webhook``) stays as an alias for installations
that configured it; it also accepts only events whose metadata names its own tenant.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import text

from kernel import sdk
from plugins.billing.payments import ChargeResult, apply_result

__all__ = ["HANDLED", "StripeUnavailable", "receive"]

logger = logging.getLogger("businessos.billing.stripe")

HANDLED = ("payment_intent.succeeded", "payment_intent.payment_failed")


class StripeUnavailable(sdk.Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


async def receive(
    services: sdk.Services, payload: bytes, signature: str, *, only_tenant: uuid.UUID | None = None
) -> dict[str, Any]:
    """Verify and apply one delivery; answers what Stripe is told (200 unless the signature
    fails: 400, or Stripe is not configured: 503). ``only_tenant``: the alias endpoint's tenant."""
    import stripe

    from plugins.billing.stripe_provider import configured

    provider = configured()
    if provider is None or not provider.verifies:
        raise StripeUnavailable("Stripe webhooks are not configured on this installation")
    try:
        event = provider.event(payload, signature)
    except (stripe.SignatureVerificationError, ValueError):  # a bad or old signature, a malformed body
        raise sdk.BadRequest("the Stripe-Signature header does not verify this payload", errors=[
            sdk.FieldError(field="Stripe-Signature", message="a valid signature of the body")]) from None
    kind = event.get("type")
    intent = (event.get("data") or {}).get("object") or {}
    metadata = intent.get("metadata") or {}
    tenant_id, invoice_id = _uuid(metadata.get("tenant_id")), _uuid(metadata.get("invoice_id"))
    if kind not in HANDLED or tenant_id is None or invoice_id is None:
        return {"received": True, "ignored": "not a payment of a billing invoice"}
    if only_tenant is not None and tenant_id != only_tenant:
        return {"received": True, "ignored": "another tenant's payment"}
    tenant = await services.tenants.find(str(tenant_id))
    if tenant is None:
        return {"received": True, "ignored": "unknown tenant"}
    async with services.data.tenant(tenant.id) as session:
        invoice = (await session.execute(text("select id from billing_invoices where id = :i"),
                                         {"i": invoice_id})).scalar_one_or_none()
        customer = (await session.execute(text("select stripe_customer from billing_profiles limit 1"))
                    ).scalar_one_or_none()
    if invoice is None or (intent.get("customer") and intent.get("customer") != customer):
        logger.warning("Stripe event %s names tenant %s but not its invoice or customer", event.get("id"), tenant.id)
        return {"received": True, "ignored": "not this tenant's invoice"}
    if kind == "payment_intent.succeeded":
        result = ChargeResult("succeeded", intent.get("id"))
    else:
        error = (intent.get("last_payment_error") or {}).get("code") or "payment_failed"
        result = ChargeResult("failed", intent.get("id"), error)
    amount = int(intent.get("amount_received") or intent.get("amount") or 0)
    await apply_result(services, tenant.id, invoice_id, result, amount)
    return {"received": True}
