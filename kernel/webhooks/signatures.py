"""Checking that an inbound webhook was signed by whoever holds its secret.

Two families cover the providers met in practice:

- **Standard Webhooks** (`standardwebhooks.com`, used by Svix, Clerk, Resend, ...): headers
  ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``,
  space-separated when several), over ``<id>.<timestamp>.<body>``, a ``whsec_`` base64 secret and a
  five-minute tolerance. Verified by the reference ``standardwebhooks`` package.
- **Provider-style HMAC** (GitHub, Shopify, Slack, ...): one header carrying the HMAC of the body (or
  of a template of timestamp and body), hex or base64, perhaps after a prefix such as ``sha256=``,
  and optionally a timestamp header checked against a tolerance. Described by :class:`HmacScheme`.

Comparisons are constant-time. Any failure is :class:`InvalidSignature` (401) with a reason that
says what was wrong, never the expected signature or the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from kernel.errors import Problem

__all__ = ["HmacScheme", "InvalidSignature", "verify_hmac", "verify_standard_webhook"]

log = logging.getLogger("businessos.webhooks")

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


class InvalidSignature(Problem):
    """401: the webhook's signature is missing, wrong, or its timestamp is outside the tolerance."""

    status, slug, title = 401, "invalid-signature", "Invalid webhook signature"


@dataclass(frozen=True)
class HmacScheme:
    """How a provider signs its webhooks with a shared secret.

    Examples: GitHub ``HmacScheme(header="x-hub-signature-256", prefix="sha256=")``; Shopify
    ``HmacScheme(header="x-shopify-hmac-sha256", encoding="base64")``; Slack
    ``HmacScheme(header="x-slack-signature", prefix="v0=", timestamp_header="x-slack-request-timestamp",
    template="v0:{timestamp}:{body}")``.
    """

    header: str
    """The header carrying the signature (any case)."""
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    """Text before the signature in the header, e.g. ``sha256=``."""
    timestamp_header: str | None = None
    """A header with the signing time in Unix seconds; when set it is required and checked."""
    tolerance: int = 300
    """Seconds the timestamp may differ from now, either way."""
    template: str = "{body}"
    """What was signed: ``{body}`` is the raw body, ``{timestamp}`` the timestamp header's value."""

    def __post_init__(self) -> None:
        if self.algorithm not in _DIGESTS or self.encoding not in ("hex", "base64") or not self.header:
            raise ValueError(f"unusable HMAC scheme: {self!r}")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def verify_standard_webhook(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Check a Standard Webhooks signature (five-minute tolerance); :class:`InvalidSignature` if not."""
    try:
        verifier = Webhook(secret)
    except Exception:  # not base64, or empty: the tenant's secret is unusable, not the sender's fault
        log.warning("a Standard Webhooks signing secret is not a whsec_ base64 value")
        raise InvalidSignature("webhook signature cannot be verified") from None
    try:
        verifier.verify(body, _lower(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise InvalidSignature(f"webhook signature rejected: {exc}") from None
    except Exception:  # ValueError, binascii.Error, UnicodeDecodeError on malformed headers or body
        raise InvalidSignature("webhook signature rejected: malformed signature headers or body") from None


def verify_hmac(
    secret: str | bytes, body: bytes, headers: Mapping[str, str], scheme: HmacScheme, *, now: float | None = None
) -> None:
    """Check a provider-style HMAC signature described by ``scheme``; :class:`InvalidSignature` if not."""
    found = _lower(headers)
    presented = found.get(scheme.header.lower(), "").strip()
    if not presented.startswith(scheme.prefix) or len(presented) == len(scheme.prefix):
        raise InvalidSignature(f"webhook signature rejected: no {scheme.header} header of the expected form")
    try:
        given = (
            bytes.fromhex(presented[len(scheme.prefix) :])
            if scheme.encoding == "hex"
            else base64.b64decode(presented[len(scheme.prefix) :], validate=True)
        )
    except (ValueError, binascii.Error):
        raise InvalidSignature(f"webhook signature rejected: {scheme.header} is not {scheme.encoding}") from None
    timestamp = ""
    if scheme.timestamp_header is not None:
        timestamp = found.get(scheme.timestamp_header.lower(), "").strip()
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise InvalidSignature(f"webhook signature rejected: no valid {scheme.timestamp_header} header")
        if abs((time.time() if now is None else now) - int(timestamp)) > scheme.tolerance:
            raise InvalidSignature("webhook signature rejected: timestamp outside the tolerance")
    # The body goes in last, between the template's pieces, so it cannot smuggle a placeholder.
    pieces = [part.replace("{timestamp}", timestamp).encode() for part in scheme.template.split("{body}")]
    signed = body.join(pieces)
    key = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, signed, _DIGESTS[scheme.algorithm]).digest()
    if not hmac.compare_digest(expected, given):
        raise InvalidSignature("webhook signature rejected: no matching signature")
