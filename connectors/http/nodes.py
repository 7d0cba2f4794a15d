"""``http.request``: call any HTTP API from a workflow, through the egress client only.

Retries: a 429 or 5xx answer (and a failed exchange) is retried up to ``retries`` times; a
``Retry-After`` (seconds or an HTTP date) is honoured when it is at most ``max_retry_wait``
seconds, and a longer one ends the retries at once (the step fails saying when to come back)
rather than holding a worker. Without one the wait doubles from 0.5 s. The step's idempotency key
goes out as ``Idempotency-Key`` on every attempt, so a server that honours it acts once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlencode, urljoin

import msgspec

from kernel import sdk

from .credentials import ApiKey, apply_auth

__all__ = ["NODES", "Paging", "RequestConfig", "RequestOutput", "send_request"]

MAX_BYTES = 10 * 1024 * 1024
MAX_PAGES = 100
_SECRET_FIELDS = frozenset({"token", "password", "value", "access_token", "refresh_token", "client_secret"})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*"?([^";,]*)"?""", re.IGNORECASE)


class Paging(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Follow pages: the ``Link`` header's ``rel="next"`` (``link``), or a cursor the JSON body
    holds at ``cursor_path`` sent back as the query parameter ``cursor_param`` (``cursor``)."""

    mode: Literal["link", "cursor"] = "link"
    cursor_path: str = ""
    """Dotted path of the next cursor in the body, e.g. ``meta.next_cursor``; empty or null ends."""
    cursor_param: str = "cursor"
    items_path: str = ""
    """Dotted path of each page's list of items; the output's ``items`` joins them."""
    max_pages: int = 10


class RequestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    query: dict[str, str] = msgspec.field(default_factory=dict)
    json: Any = None
    """A JSON body (at most one of ``json``, ``form`` and ``body``)."""
    form: dict[str, str] | None = None
    """A form body (``application/x-www-form-urlencoded``)."""
    body: str | None = None
    """A raw body, sent with ``content_type``."""
    content_type: str | None = None
    connection: uuid.UUID | None = None
    """A connection of one of this plugin's credential types; its credentials authenticate."""
    max_bytes: int = 1024 * 1024
    """Cap of each response body; past it the body is cut and ``truncated`` is true."""
    timeout: float = 30.0
    """Seconds for one attempt (resolution, redirects, reading the body)."""
    retries: int = 3
    max_retry_wait: float = 30.0
    fail_on_error: bool = True
    """A final 4xx/5xx fails the step; ``False`` hands it on as output."""
    paging: Paging | None = None


class RequestOutput(msgspec.Struct, kw_only=True):
    status: int
    headers: dict[str, str]
    body: Any
    """Decoded JSON when the answer is JSON (and whole), its text otherwise. With paging: a list of
    every page's body."""
    truncated: bool = False
    attempts: int = 1
    pages: int = 1
    items: list[Any] | None = None
    """With ``paging.items_path``: every page's items, in order."""


def _invalid(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(f"{field}: {message}", errors=[sdk.FieldError(field, message)])


def _check(config: RequestConfig) -> None:
    if sum(x is not None for x in (config.json, config.form, config.body)) > 1:
        raise _invalid("json", "give at most one of json, form and body")
    if not 1 <= config.max_bytes <= MAX_BYTES:
        raise _invalid("max_bytes", f"between 1 and {MAX_BYTES}")
    if not 0 <= config.retries <= 10:
        raise _invalid("retries", "between 0 and 10")
    if not 0 < config.timeout <= 300:
        raise _invalid("timeout", "between 0 and 300 seconds")
    if not 0 <= config.max_retry_wait <= 300:
        raise _invalid("max_retry_wait", "between 0 and 300 seconds")
    if config.paging is not None:
        if not 1 <= config.paging.max_pages <= MAX_PAGES:
            raise _invalid("paging.max_pages", f"between 1 and {MAX_PAGES}")
        if config.paging.mode == "cursor" and not config.paging.cursor_path:
            raise _invalid("paging.cursor_path", "required with mode cursor")


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), ``None`` if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _dig(value: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _next_link(header: str | None, base: str) -> str | None:
    for match in _LINK.finditer(header or ""):
        rels = _REL.findall(match.group(2))
        if any("next" in rel.lower().split() for rel in rels):
            return str(urljoin(base, match.group(1)))
    return None


def _decode(response: sdk.EgressResponse) -> Any:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not response.truncated and (kind == "application/json" or kind.endswith("+json")):
        try:
            return response.json()
        except msgspec.DecodeError:
            pass
    return response.text


def _scrub(problem: sdk.Problem, secrets: list[str]) -> sdk.Problem:
    """The same problem without any secret value in its detail (an API key in a URL)."""
    detail = problem.detail
    for value in secrets:
        if value:
            detail = detail.replace(value, "••••")
    extra = {k: v for k, v in problem.extra.items() if k != "url"}
    if detail == problem.detail and extra == problem.extra:
        return problem
    return type(problem)(detail, errors=problem.errors, extra=extra)


async def _attempts(
    ctx: sdk.NodeContext, config: RequestConfig, url: str, headers: dict[str, str], query: dict[str, str],
    content: bytes | None, secrets: list[str], sleep: Any, follow_redirects: bool,
) -> tuple[sdk.EgressResponse, int]:
    """One logical request: the first attempt and its retries."""
    attempt = 0
    while True:
        attempt += 1
        wait: float | None = None
        try:
            response = await ctx.services.http.request(
                config.method, url, field="url", headers=headers, params=query or None, content=content,
                seconds=config.timeout, max_bytes=config.max_bytes, truncate=True,
                follow_redirects=follow_redirects,
            )
        except sdk.EgressFailed as failed:
            if attempt > config.retries:
                raise _scrub(failed, secrets) from None
        else:
            if response.status_code not in _RETRY_STATUSES or attempt > config.retries:
                return response, attempt
            wait = retry_after(response.headers.get("retry-after"))
            if wait is not None and wait > config.max_retry_wait:
                if config.fail_on_error:
                    raise sdk.Problem(
                        f"{config.method} {url} answered {response.status_code} and asks to retry after {wait:g} s, "
                        f"more than max_retry_wait ({config.max_retry_wait:g} s)",
                        extra={"status": response.status_code, "retry_after": wait},
                    )
                return response, attempt
        await sleep(min(wait if wait is not None else 0.5 * 2 ** (attempt - 1), config.max_retry_wait))


async def send_request(ctx: sdk.NodeContext, config: RequestConfig, *, sleep: Any = asyncio.sleep) -> RequestOutput:
    """Run ``http.request`` (``sleep`` is how it waits between attempts)."""
    _check(config)
    headers = dict(config.headers)
    query = dict(config.query)
    content: bytes | None = None
    if config.json is not None:
        content = msgspec.json.encode(config.json)
        headers.setdefault("Content-Type", "application/json")
    elif config.form is not None:
        content = urlencode(config.form).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif config.body is not None:
        content = config.body.encode()
        if config.content_type:
            headers.setdefault("Content-Type", config.content_type)
    if not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = ctx.idempotency_key
    secrets: list[str] = []
    follow_redirects = True
    if config.connection is not None:
        creds = await ctx.services.connections.open(ctx.tenant_id, config.connection)
        apply_auth(creds, headers, query)
        values = msgspec.to_builtins(creds)
        secrets = [str(v) for k, v in values.items() if k in _SECRET_FIELDS and v]
        if isinstance(creds, ApiKey) and creds.location == "header":
            # The egress client drops Authorization on a redirect to another origin, not a custom
            # header: a key in one follows no redirect.
            follow_redirects = False

    async def one(url: str, q: dict[str, str]) -> tuple[sdk.EgressResponse, int]:
        return await _attempts(ctx, config, url, headers, q, content, secrets, sleep, follow_redirects)

    response, attempts = await one(config.url, query)
    bodies = [_decode(response)]
    items = _items(bodies[0], config.paging)
    truncated = response.truncated
    paging = config.paging
    while paging is not None and len(bodies) < paging.max_pages and 200 <= response.status_code < 300:
        if paging.mode == "link":
            link = _next_link(response.headers.get("link"), response.url)
            if link is None:
                break
            response, used = await one(link, {})
        else:
            cursor = _dig(bodies[-1], paging.cursor_path)
            if cursor in (None, ""):
                break
            response, used = await one(config.url, {**query, paging.cursor_param: str(cursor)})
        attempts += used
        bodies.append(_decode(response))
        truncated = truncated or response.truncated
        if items is not None:
            items += _items(bodies[-1], paging) or []
    if config.fail_on_error and response.status_code >= 400:
        raise sdk.Problem(
            f"{config.method} {_shown(config.url, secrets)} answered {response.status_code}",
            extra={"status": response.status_code},
        )
    return RequestOutput(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.multi_items()},
        body=bodies if paging is not None else bodies[0],
        truncated=truncated, attempts=attempts, pages=len(bodies), items=items,
    )


def _items(body: Any, paging: Paging | None) -> list[Any] | None:
    if paging is None or not paging.items_path:
        return None
    found = _dig(body, paging.items_path)
    return list(found) if isinstance(found, list) else []


def _shown(url: str, secrets: list[str]) -> str:
    for value in secrets:
        url = url.replace(value, "••••")
    return url


async def _run(ctx: sdk.NodeContext, config: RequestConfig) -> RequestOutput:
    return await send_request(ctx, config)


NODES = [
    sdk.NodeSpec(
        key="http.request",
        kind="action",
        title="HTTP request",
        description="Call an HTTP API: method, URL, headers, query, a JSON, form or raw body, auth from a "
        "connection; retries on 429/5xx honouring Retry-After; optional paging.",
        config=RequestConfig,
        output=RequestOutput,
        run=_run,
    ),
]
