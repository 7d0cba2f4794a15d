"""Inbound webhooks: public routes of plugins whose tenant comes from a hashed path token.

- :mod:`kernel.webhooks.contract`: what a plugin declares (:class:`WebhookRoute`) and receives
  (:class:`InboundWebhook`, answering with :class:`WebhookReply`).
- :mod:`kernel.webhooks.service`: endpoints per tenant (:class:`Webhooks`, ``services.webhooks``).
- :mod:`kernel.webhooks.signatures`: Standard Webhooks and provider-style HMAC verification.
- :mod:`kernel.webhooks.routes`: ``/hooks/<plugin>/<token>``.
"""

from __future__ import annotations
