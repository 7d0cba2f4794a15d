"""A local HTTP API and OAuth 2.0 provider for the tests: real HTTP on 127.0.0.1 (uvicorn in a
thread), speaking the authorization-code grant with PKCE (RFC 6749, RFC 7636) and the refresh
grant with rotating refresh tokens, plus API endpoints that check bearer, basic and API-key
credentials, echo requests, fail on demand (429/503 with ``Retry-After``), page (``Link`` header
or a cursor) and answer large bodies.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import uvicorn
from litestar import Litestar, Request, Response, get, post, route
from litestar.datastructures import State

__all__ = ["LocalApi", "local_api"]


@dataclass
class LocalApi:
    url: str = ""
    clients: dict[str, str] = field(default_factory=lambda: {"client-1": "client-secret-1"})
    bearer_tokens: set[str] = field(default_factory=set)
    basic_users: dict[str, str] = field(default_factory=dict)
    api_keys: set[str] = field(default_factory=set)
    expires_in: int = 3600
    refuse_refresh: bool = False
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    access_tokens: set[str] = field(default_factory=set)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """What the next calls of ``/api/flaky`` answer, in order (then 200)."""
    flaky_calls: int = 0


def _client(api: LocalApi, request: Request[Any, Any, Any], form: dict[str, str]) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    else:
        user, password = form.get("client_id", ""), form.get("client_secret", "")
    return user if api.clients.get(user) == password else None


def _tokens(api: LocalApi, client_id: str, scope: str) -> dict[str, Any]:
    access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    api.access_tokens.add(access)
    api.refresh_tokens[refresh] = client_id
    return {"access_token": access, "token_type": "bearer", "expires_in": api.expires_in, "refresh_token": refresh,
            "scope": scope}


def _error(code: str, status: int = 400) -> Response[Any]:
    return Response({"error": code, "error_description": f"{code} (local provider)"}, status_code=status)


def _app(api: LocalApi) -> Litestar:
    @get("/oauth/authorize")
    async def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
        q = request.query_params
        if q.get("response_type") != "code" or q.get("client_id") not in api.clients:
            return _error("unauthorized_client")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return _error("invalid_request")
        code = secrets.token_urlsafe(16)
        api.codes[code] = {"client_id": q["client_id"], "redirect_uri": q.get("redirect_uri"),
                           "challenge": q["code_challenge"], "scope": q.get("scope", "")}
        target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
        return Response(None, status_code=302, headers={"location": target})

    @post("/oauth/token", status_code=200)
    async def token(request: Request[Any, Any, Any]) -> Response[Any]:
        form = dict(parse_qsl((await request.body()).decode()))
        api.token_requests.append(form)
        client_id = _client(api, request, form)
        if client_id is None:
            return _error("invalid_client", 401)
        if form.get("grant_type") == "authorization_code":
            grant = api.codes.pop(form.get("code", ""), None)  # single use
            if grant is None or grant["client_id"] != client_id or grant["redirect_uri"] != form.get("redirect_uri"):
                return _error("invalid_grant")
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if challenge != grant["challenge"]:
                return _error("invalid_grant")
            return Response(_tokens(api, client_id, grant["scope"]))
        if form.get("grant_type") == "refresh_token":
            owner = api.refresh_tokens.pop(form.get("refresh_token", ""), None)  # rotated
            if api.refuse_refresh or owner != client_id:
                return _error("invalid_grant")
            return Response(_tokens(api, client_id, ""))
        return _error("unsupported_grant_type")

    def _authorized(request: Request[Any, Any, Any]) -> bool:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return header[7:] in api.bearer_tokens or header[7:] in api.access_tokens
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return api.basic_users.get(user) == password
        key = request.headers.get("x-api-key") or request.query_params.get("api_key")
        return key is not None and key in api.api_keys

    @get("/api/me")
    async def me(request: Request[Any, Any, Any]) -> Response[Any]:
        if not _authorized(request):
            return Response({"error": "unauthorized"}, status_code=401)
        return Response({"ok": True})

    @route("/api/echo", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request[Any, Any, Any]) -> Response[Any]:
        seen = {
            "method": request.method, "headers": {k.lower(): v for k, v in request.headers.items()},
            "query": dict(request.query_params), "body": (await request.body()).decode(),
            "authorized": _authorized(request),
        }
        api.requests.append(seen)
        return Response(seen, status_code=200)

    @get("/api/flaky")
    async def flaky() -> Response[Any]:
        api.flaky_calls += 1
        if api.failures:
            status, headers = api.failures.pop(0)
            return Response({"error": status}, status_code=status, headers=headers)
        return Response({"ok": True, "calls": api.flaky_calls})

    @get("/api/link-pages")
    async def link_pages(page: int = 1) -> Response[Any]:
        headers = {"link": f'</api/link-pages?page={page + 1}>; rel="next", </api/link-pages?page=1>; rel="first"'}
        return Response({"items": [f"l{page}a", f"l{page}b"]}, headers=headers if page < 3 else {})

    @get("/api/cursor-pages")
    async def cursor_pages(cursor: str = "") -> Response[Any]:
        nxt = {"": "c2", "c2": "c3", "c3": None}[cursor]
        return Response({"data": [f"item-{cursor or 'c1'}"], "meta": {"next": nxt}})

    @get("/api/ping")
    async def ping() -> Response[Any]:
        return Response({"ok": True})

    @get("/api/big")
    async def big(size: int = 1000) -> Response[Any]:
        return Response("x" * size, media_type="text/plain")

    @get("/api/redirect")
    async def redirect(to: str) -> Response[Any]:
        return Response(None, status_code=302, headers={"location": to})

    return Litestar(
        [authorize, token, me, echo, flaky, link_pages, cursor_pages, ping, big, redirect], state=State(), debug=False,
    )


@contextmanager
def local_api() -> Iterator[LocalApi]:
    """Run the local API on a free port of 127.0.0.1 for the ``with`` block."""
    api = LocalApi()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(api), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the local API did not start")
        time.sleep(0.01)
    api.url = f"http://127.0.0.1:{port}"
    try:
        yield api
    finally:
        server.should_exit = True
        thread.join(10)
