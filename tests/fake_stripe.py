"""A local stand-in for the part of Stripe's API billing uses: ``POST /v1/payment_intents``.

It speaks Stripe's wire format (form-encoded requests with bracketed keys, JSON objects back,
``Idempotency-Key`` replays the first answer, card errors as HTTP 402 with an ``error`` object)
so the official ``stripe`` client can be pointed at it (``base_addresses={"api": url}``).
Payment methods decide the outcome as Stripe's test cards do: ``pm_card_chargeDeclined``
declines, ``pm_card_processing`` stays ``processing`` (a webhook settles it), others succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from litestar import Litestar, Request, Response, post

__all__ = ["FakeStripe", "fake_stripe", "signed"]


@dataclass
class FakeStripe:
    api_key: str
    url: str = ""
    intents: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)


def _form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: ``metadata[tenant_id]=...`` becomes a nested dict."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        if "[" in key:
            outer, inner = key.split("[", 1)
            result.setdefault(outer, {})[inner.rstrip("]")] = value
        else:
            result[key] = value
    return result


def _app(state: FakeStripe) -> Litestar:
    @post("/v1/payment_intents", status_code=200)
    async def create_intent(request: Request[Any, Any, Any]) -> Response[bytes]:
        if request.headers.get("authorization") != f"Bearer {state.api_key}":
            error = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}
            return Response(json.dumps(error).encode(), status_code=401, media_type="application/json")
        key = request.headers.get("idempotency-key", "")
        if key and key in state.replies:
            status, body = state.replies[key]
            return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")
        params = _form(await request.body())
        intent = {
            "id": f"pi_{uuid.uuid4().hex[:24]}", "object": "payment_intent", "amount": int(params["amount"]),
            "currency": params["currency"], "customer": params.get("customer"),
            "payment_method": params.get("payment_method"), "metadata": params.get("metadata", {}),
            "amount_received": 0, "status": "succeeded",
        }
        method = params.get("payment_method")
        if method == "pm_card_chargeDeclined":
            intent["status"] = "requires_payment_method"
            status, body = 402, {"error": {"type": "card_error", "code": "card_declined",
                                           "message": "Your card was declined.", "payment_intent": intent}}
        else:
            if method == "pm_card_processing":
                intent["status"] = "processing"
            else:
                intent["amount_received"] = intent["amount"]
            status, body = 200, intent
        state.intents.append({"params": params, "status": status, "idempotency_key": key, "intent": intent})
        if key:
            state.replies[key] = (status, body)
        return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")

    return Litestar([create_intent], openapi_config=None)


def signed(payload: bytes, secret: str, at: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, as Stripe computes it."""
    timestamp = at if at is not None else int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@contextmanager
def fake_stripe(api_key: str) -> Iterator[FakeStripe]:
    """Run the stand-in on a free local port for the ``with`` block."""
    state = FakeStripe(api_key=api_key)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the local Stripe server did not start")
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)
