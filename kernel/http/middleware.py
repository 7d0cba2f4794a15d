"""The outermost HTTP layer: request id, client address, body-size limit, security headers.

:class:`HardeningMiddleware` is plain ASGI and wraps the whole Litestar handler (outside routing
and CORS), so that 404s, CORS preflights and every error carry the same headers. Litestar's
``middleware=[...]`` would not do: that list is applied per route, after routing.

Per request it:

- keeps a sane incoming ``X-Request-ID`` or makes one, stores it in ``scope["state"]["request_id"]``
  and echoes it in the response;
- stores the client address in ``scope["state"]["client_ip"]``: the TCP peer, or, when the peer is
  one of ``settings.trusted_proxies``, the rightmost ``X-Forwarded-For`` hop that is not a trusted
  proxy (the leftmost entries are whatever the client chose to send);
- refuses a body over ``settings.max_body_bytes`` with 413: at once when ``Content-Length`` says
  so, or as soon as a chunked body streams past it;
- refuses a NUL character in the path or a query parameter with 422 naming the parameter
  (PostgreSQL cannot store one; JSON bodies are checked in :mod:`kernel.http.request`);
- adds security headers to every response; HSTS only when the request came over TLS (scheme
  ``https``, or ``X-Forwarded-Proto: https`` from a trusted proxy); ``Cache-Control: no-store`` on
  ``/api/auth/*``, on responses that set cookies, and on routes with ``opt["no_store"] = True``;
  the ``RateLimit-*`` headers of the rate-limit decision (see :mod:`kernel.http.ratelimit`);
- answers ``OPTIONS`` with an ``Allow`` that lists every method of the path: Litestar makes the
  automatic ``OPTIONS`` handler when a path's first handler is registered and lists only that
  handler's methods, also after more handlers join the path (e.g. GET, then POST).
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec
from litestar.routes import HTTPRoute

from kernel.errors import FieldError, PayloadTooLarge, Problem, Unprocessable, problem_document

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

    from kernel.settings import Settings

__all__ = ["EXPOSED_HEADERS", "REQUEST_ID_HEADER", "SECURITY_HEADERS", "HardeningMiddleware", "hardening"]

REQUEST_ID_HEADER = "X-Request-ID"
HSTS = "max-age=63072000; includeSubDomains"
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
EXPOSED_HEADERS: tuple[str, ...] = (
    REQUEST_ID_HEADER,
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)
"""Response headers a browser client on another origin may read (CORS ``expose_headers``)."""

NO_STORE_PREFIX = "/api/auth/"
NO_STORE_OPT = "no_store"

_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:=+/@-]{0,127}")
_STATIC = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS]
_HSTS = (b"strict-transport-security", HSTS.encode())
_NO_STORE = (b"cache-control", b"no-store")
_RATE_LIMIT_MARK = b"ratelimit-limit"


class _ProxyTrust:
    """Which addresses are trusted proxies; answers are cached (the same few peers repeat)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self.classify = lru_cache(maxsize=4096)(self._classify)

    def _classify(self, host: str) -> tuple[str, bool] | None:
        """(normalized address, trusted?), or ``None`` when ``host`` is not an IP address."""
        host = host.strip()
        if host.startswith("["):  # [v6]:port
            host = host[1 : host.find("]")]
        elif host.count(":") == 1:  # v4:port
            host = host.partition(":")[0]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address), any(address in network for network in self.networks)

    def trusted(self, host: str) -> bool:
        found = self.classify(host)
        return found is not None and found[1]

    def client(self, peer: str, forwarded_for: str) -> str:
        """The rightmost hop of ``forwarded_for`` that is not a trusted proxy."""
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            found = self.classify(hop)
            if found is None:
                break  # not an address, so not written by a trusted proxy: keep the last verified hop
            client, trusted = found
            if not trusted:
                break
        return client


class HardeningMiddleware:
    """See the module docstring. Configure with :func:`hardening`."""

    def __init__(self, app: ASGIApp, settings: Settings, allow: dict[int, bytes] | None = None) -> None:
        self.app = app
        self.allow = allow or {}  # id of a path's OPTIONS handler -> the path's Allow header
        self.max_body = settings.max_body_bytes
        self.proxies = _ProxyTrust(settings.trusted_proxies) if settings.trusted_proxies else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        forwarded_for: list[bytes] = []
        forwarded_proto: bytes | None = None
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == b"content-length":
                length = value
        if request_id is None or not _SANE_REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex().encode()

        client = scope.get("client")
        peer = client[0] if client else None
        tls = scope.get("scheme") in ("https", "wss")
        if self.proxies is not None and peer is not None and self.proxies.trusted(peer):
            if forwarded_for:
                peer = self.proxies.client(peer, b",".join(forwarded_for).decode("latin-1"))
            if forwarded_proto is not None:
                tls = forwarded_proto.split(b",")[0].strip().lower() in (b"https", b"wss")

        state = scope["state"]  # Litestar creates it before calling its handler
        state["request_id"] = request_id.decode("ascii")
        state["client_ip"] = peer
        if kind != "http":
            await self.app(scope, receive, send)
            return

        extra = [*_STATIC, (b"x-request-id", request_id)]
        if tls:
            extra.append(_HSTS)
        no_store = scope["path"].startswith(NO_STORE_PREFIX)

        declared = None
        if length is not None and length.isdigit():
            declared = int(length) if len(length) < 19 else self.max_body + 1  # int() of 5000 digits raises
        if declared is not None and declared > self.max_body:
            too_large = PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")
            await self._refuse(scope, send, extra, state["request_id"], too_large)
            return
        nul = _nul_field(scope)
        if nul is not None:
            message = "must not contain NUL characters"
            problem = Unprocessable(f"{nul} {message}", errors=[FieldError(field=nul, message=message)])
            await self._refuse(scope, send, extra, state["request_id"], problem)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                names = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in names)  # a route's own value wins
                decision = state.get("rate_limit")
                if decision is not None and _RATE_LIMIT_MARK not in names:
                    headers.extend((k.lower().encode(), v.encode()) for k, v in decision.headers().items())
                handler = scope.get("route_handler")
                if (
                    no_store
                    or b"set-cookie" in names
                    or (handler is not None and handler.opt.get(NO_STORE_OPT))
                ):
                    headers = [h for h in headers if h[0].lower() != b"cache-control"]
                    headers.append(_NO_STORE)
                if handler is not None and id(handler) in self.allow:
                    headers = [h for h in headers if h[0].lower() != b"allow"]
                    headers.append((b"allow", self.allow[id(handler)]))
                message["headers"] = headers
            await send(message)

        if declared is None:  # chunked (or unparsable): count while it streams
            receive = self._limited(receive)
        await self.app(scope, receive, send_with_headers)

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that refuses a streamed body once it grows past the limit."""
        limit = self.max_body
        received = 0

        async def limited_receive() -> ReceiveMessage:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
            return message

        return limited_receive

    async def _refuse(
        self, scope: Scope, send: Send, headers: list[tuple[bytes, bytes]], request_id: str, problem: Problem
    ) -> None:
        # Answered here, before routing: the body is never read.
        body = msgspec.json.encode(
            problem_document(
                status=problem.status,
                slug=problem.slug,
                title=problem.title,
                detail=problem.detail,
                instance=scope["path"],
                errors=problem.errors,
                request_id=request_id,
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": problem.status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _allow_headers(app: Any) -> dict[int, bytes]:
    """The ``Allow`` of each path, keyed by the id of the path's ``OPTIONS`` handler."""
    allow: dict[int, bytes] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods = ", ".join(sorted(route.methods)).encode()
            for handler in route.route_handlers:
                if set(handler.http_methods) == {"OPTIONS"}:
                    allow[id(handler)] = methods
    return allow
def _nul_field(scope: Scope) -> str | None:
    """The query parameter (or ``path``) that holds a NUL character, which no column can store."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "\\u0000") or "query"
    return None


def hardening(app: Any, settings: Settings) -> None:
    """Wrap a built Litestar app's handler in :class:`HardeningMiddleware` (outermost layer)."""
    app.asgi_handler = HardeningMiddleware(app.asgi_handler, settings, _allow_headers(app))
