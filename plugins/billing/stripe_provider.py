"""Stripe through the official ``stripe`` package: PaymentIntents to collect an invoice, webhooks
(signatures verified with ``stripe.Webhook.construct_event``) to learn how they ended.

Configured by the operator for the installation, from the environment (never a tenant's
setting): ``BUSINESSOS_BILLING_STRIPE_SECRET_KEY``, ``BUSINESSOS_BILLING_STRIPE_WEBHOOK_SECRET``
and, for a local stand-in of Stripe's API, ``BUSINESSOS_BILLING_STRIPE_API_BASE``. A tenant is
charged when its billing profile names its Stripe customer and payment method.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import stripe

from plugins.billing.payments import ChargeResult

__all__ = ["StripeProvider", "configured"]


class StripeProvider:
    name = "stripe"

    def __init__(self, api_key: str, *, api_base: str | None = None, webhook_secret: str | None = None) -> None:
        addresses: Any = {"api": api_base} if api_base else None
        self._client = stripe.StripeClient(
            api_key, base_addresses=addresses, http_client=stripe.HTTPXClient(), max_network_retries=2
        )
        self._webhook_secret = webhook_secret

    async def charge(
        self, tenant_id: uuid.UUID, invoice: Any, idempotency_key: str, *, customer: str, payment_method: str
    ) -> ChargeResult:
        """One off-session PaymentIntent for what the invoice still owes, confirmed at once."""
        params: Any = {
            "amount": invoice.total_minor - invoice.amount_paid_minor,
            "currency": invoice.currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "description": f"Invoice {invoice.number}",
            "metadata": {"tenant_id": str(tenant_id), "invoice_id": str(invoice.id)},
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        except stripe.CardError as exc:
            intent_id = getattr(getattr(exc, "error", None), "payment_intent", None)
            return ChargeResult("failed", getattr(intent_id, "id", None), exc.code or "card_error")
        except stripe.StripeError as exc:
            return ChargeResult("failed", None, type(exc).__name__)
        if intent.status == "succeeded":
            return ChargeResult("succeeded", intent.id)
        return ChargeResult("pending", intent.id)

    @property
    def verifies(self) -> bool:
        """Whether a webhook secret is set (without one no event can be trusted)."""
        return bool(self._webhook_secret)

    def event(self, payload: bytes, signature: str) -> Any:
        """The verified event of a webhook delivery (``ValueError`` or a signature error if not)."""
        if not self._webhook_secret:
            raise ValueError("no webhook secret is configured")
        return stripe.Webhook.construct_event(  # type: ignore[no-untyped-call]
            payload.decode(), signature, self._webhook_secret
        )


def configured() -> StripeProvider | None:
    """The installation's Stripe provider, or ``None`` when no key is set."""
    key = os.environ.get("BUSINESSOS_BILLING_STRIPE_SECRET_KEY")
    if not key:
        return None
    return StripeProvider(
        key, api_base=os.environ.get("BUSINESSOS_BILLING_STRIPE_API_BASE") or None,
        webhook_secret=os.environ.get("BUSINESSOS_BILLING_STRIPE_WEBHOOK_SECRET") or None,
    )
