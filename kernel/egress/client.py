"""``sdk.EgressClient``: the one way plugin and kernel code call a URL a tenant can steer.

Why our own transport and not ``drawbridge`` (the httpx SSRF wrapper we read first): it is the
same idea (resolve once, judge every address, connect to the judged one with Host and SNI kept for
the name, follow redirects by hand), but at 0.1.x from one author it resolves only through
``getaddrinfo`` (no resolver to inject, so neither our DNS-rebinding test nor an operator's egress
nameserver), has no deadline over the whole exchange, and its fixed list lets IPv4-compatible
``[::7f00:1]`` through. What we need is about 200 lines on httpx's public transport API, so we
keep them here rather than pin an alpha package and patch around it.

How it holds:

* :class:`PinnedTransport` judges every request it sends (the first and each redirect hop, also
  when another library such as the OpenAI SDK drives the httpx client): it reads IP literals in
  every spelling, resolves names once through the injected :class:`Resolver`, refuses when any
  A/AAAA record is non-public, then sends to the judged address with the original ``Host`` header
  and TLS SNI/certificate name. No second lookup happens, so a DNS answer that changes (rebinding)
  cannot move the connection. Kept-alive connections are pooled per host name, so a connection
  made (and its certificate checked) for one name never serves another on the same address; the
  pool itself is aiohttp (``kernel.egress.pool``: a fraction of httpcore's CPU per request), and
  only moves bytes to the address it is given.
* :class:`EgressClient` follows redirects itself (at most ``max_redirects``), drops credentials
  when the origin changes, caps the whole exchange at ``timeout`` seconds and the body at
  ``max_bytes`` (streamed: it stops reading past the cap), and never reads proxy variables from
  the environment (``trust_env=False``). It hands its requests straight to the transport (not
  through ``httpx.AsyncClient.send``), so no cookie set by one call's target rides along with
  another call; parsed URLs are kept per text (a value, not a judgement: every request is still
  resolved and judged).

A refused URL raises :class:`EgressRefused`, a 422 problem naming the caller's field; a target that
fails (timeout, connection error, too large, too many redirects) raises :class:`EgressFailed`, 502.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from kernel.egress.addresses import Address, AddressPolicy, literal_address
from kernel.egress.pool import AiohttpPool
from kernel.egress.resolver import Resolver, SystemResolver, resolver_for
from kernel.errors import FieldError, Problem, Unprocessable
from kernel.observability.tracing import trace_transport
from kernel.settings import Settings

__all__ = ["EgressClient", "EgressFailed", "EgressRefused", "EgressResponse", "PinnedTransport"]

_REDIRECTS = (301, 302, 303, 307, 308)
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
_USER_AGENT = "BusinessOS-egress/1"
_POOLED_HOSTS = 256
_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)
_PARSED_URLS = 1024
"""How many parsed URLs (and pinned forms of them) are kept: parsing one costs tens of
microseconds, and a webhook or connector calls the same few URLs again and again."""


class EgressRefused(Unprocessable):
    """The URL (or a redirect it led to) points somewhere an outbound call may not go: 422 naming
    the field the URL came from."""

    def __init__(self, url: str, reason: str, *, field: str = "url") -> None:
        super().__init__(
            f"{field} is refused: {reason}",
            errors=[FieldError(field=field, message=reason)],
            extra={"url": url},
        )
        self.reason = reason


class EgressFailed(Problem):
    """The target was allowed but the exchange failed (timeout, connection, size, redirects)."""

    status, slug, title = 502, "egress-failed", "Outbound call failed"


class _Refusal(Exception):
    """Raised inside the transport; :class:`EgressClient` turns it into :class:`EgressRefused`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class _UrlCache:
    """Parsed URLs by their text, bounded (emptied when full). A URL is a value: sharing one parsed
    object between calls changes nothing but the cost."""

    def __init__(self) -> None:
        self._urls: dict[Any, httpx.URL] = {}

    def get(self, key: Any) -> httpx.URL | None:
        return self._urls.get(key)

    def put(self, key: Any, url: httpx.URL) -> httpx.URL:
        if len(self._urls) >= _PARSED_URLS:
            self._urls.clear()
        self._urls[key] = url
        return url


def _host(url: httpx.URL) -> str:
    """The host as it goes on the wire: IDNA-encoded names, IPv6 without brackets."""
    return url.raw_host.decode("ascii").lower()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that connects only to addresses the policy accepts, pinned per request."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver,
        *,
        verify: ssl.SSLContext | bool = True,
        pool: Callable[[ssl.SSLContext], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """``pool`` builds the transport that holds one host name's connections (default:
        :class:`~kernel.egress.pool.AiohttpPool`); whatever it is must honour the ``sni_hostname``
        extension, ignore proxies and keep no cookies."""
        self.policy = policy
        self.resolver = resolver
        # One context for every pool (loading the CA bundle per host would cost milliseconds each).
        self._verify = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self._new_pool = pool or AiohttpPool
        self._pools: dict[str, httpx.AsyncBaseTransport] = {}
        self._pinned_urls = _UrlCache()
        # Past _POOLED_HOSTS names, calls go through one pool without keep-alive.
        self._unpooled = httpx.AsyncHTTPTransport(
            verify=self._verify, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def _pool(self, host: str) -> httpx.AsyncBaseTransport:
        """Connections are kept per host *name*: httpcore keys its pool by the address we pass,
        and a connection (TLS session, certificate checked for one name) must never serve another
        name that happens to resolve to the same address."""
        pool = self._pools.get(host)
        if pool is None:
            if len(self._pools) >= _POOLED_HOSTS:
                return self._unpooled
            pool = self._pools[host] = self._new_pool(self._verify)
        return pool

    async def address_for(self, url: httpx.URL) -> Address:
        """The one address a request to ``url`` will connect to; :class:`_Refusal` otherwise."""
        shown, host = str(url), _host(url)
        if url.scheme not in ("http", "https"):
            raise _Refusal(shown, "only http and https URLs may be called")
        if not host:
            raise _Refusal(shown, "the URL has no host")
        try:
            literal = literal_address(host)
        except ValueError as error:
            raise _Refusal(shown, f"host {host!r} {error}") from None
        addresses = [literal] if literal is not None else await self.resolver.resolve(host)
        if not addresses:
            raise _Refusal(shown, f"host {host!r} does not resolve")
        for address in addresses:
            reason = self.policy.refusal(address)
            if reason is not None:
                named = f"host {host!r} resolves to {address}: " if literal is None else ""
                raise _Refusal(shown, named + reason)
        first = addresses[0]
        mapped = first.ipv4_mapped if isinstance(first, ipaddress.IPv6Address) else None
        return mapped or first  # ::ffff:a.b.c.d was judged as a.b.c.d: connect to that

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        address = await self.address_for(request.url)
        extensions = dict(request.extensions)
        headers = httpx.Headers(request.headers)
        if "host" not in headers:
            headers["host"] = request.url.netloc.decode("ascii")
        host = _host(request.url)
        if request.url.scheme == "https" and literal_address(host) is None:
            extensions["sni_hostname"] = host  # the certificate is checked for the name
        # The pinned URL depends only on the URL and the address judged just now, so its parsed
        # form is kept (the judgement above is not: it runs on every request).
        key = (str(request.url), address)
        url = self._pinned_urls.get(key) or self._pinned_urls.put(key, request.url.copy_with(host=str(address)))
        pinned = httpx.Request(
            request.method,
            url,
            headers=headers,
            stream=request.stream,
            extensions=extensions,
        )
        return await self._pool(host).handle_async_request(pinned)

    async def aclose(self) -> None:
        for pool in [*self._pools.values(), self._unpooled]:
            await pool.aclose()
        self._pools.clear()


@dataclass(frozen=True)
class EgressResponse:
    """A finished outbound call: status, headers, the (size-capped) body and the final URL."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    truncated: bool = False
    """The body was cut at the size cap (only when the call asked for ``truncate=True``)."""

    @property
    def text(self) -> str:
        found = _CHARSET.search(self.headers.get("content-type", ""))
        try:
            return self.content.decode(found.group(1) if found else "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return msgspec.json.decode(self.content)


class EgressClient:
    """Outbound HTTP for code that calls URLs a tenant can steer (webhooks, connectors, AI bases).

    One per process (``kernel.egress``; plugins reach it as ``services.http``). Every call resolves
    and judges its target, connects to the judged address, re-judges each redirect hop and is
    bounded in time, redirects and size."""

    def __init__(
        self,
        *,
        allow_networks: tuple[str, ...] = (),
        resolver: Resolver | None = None,
        timeout: float = 30.0,
        max_redirects: int = 5,
        max_bytes: int = 10 * 1024 * 1024,
        verify: ssl.SSLContext | bool = True,
        pool: Callable[[ssl.SSLContext], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """``verify``: certificate checking, ``True`` (the system's CAs) or an ``ssl.SSLContext``
        (a private CA; tests). ``pool``: see :class:`PinnedTransport`."""
        self.policy = AddressPolicy(allow_networks)
        self.transport = PinnedTransport(self.policy, resolver or SystemResolver(), verify=verify, pool=pool)
        trace_transport(self.transport)
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.max_bytes = max_bytes
        self._client: httpx.AsyncClient | None = None
        self._urls = _UrlCache()
        self._timeouts = httpx.Timeout(timeout).as_dict()

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressClient:
        """The client the operator's settings describe (allowlist, nameservers, caps)."""
        return cls(
            allow_networks=settings.egress_allow_networks,
            resolver=resolver_for(settings.egress_nameservers),
            timeout=settings.egress_timeout_seconds,
            max_redirects=settings.egress_max_redirects,
            max_bytes=settings.egress_max_response_bytes,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def httpx_client(self) -> httpx.AsyncClient:
        """The underlying httpx client, for libraries that take one (the OpenAI SDK through
        litellm). Every request it sends is judged and pinned by the transport; redirects it
        follows on its own are judged too, but not counted or size-capped by this class."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self.transport, trust_env=False, follow_redirects=False,
                timeout=httpx.Timeout(self.timeout), headers={"user-agent": _USER_AGENT},
            )
        return self._client

    async def check(self, url: str, *, field: str = "url") -> str:
        """Judge ``url`` now without calling it (when storing a webhook URL, say); 422 when refused.
        The call itself judges again: a name may resolve elsewhere later."""
        try:
            await self.transport.address_for(httpx.URL(url))
        except _Refusal as refusal:
            raise EgressRefused(url, refusal.reason, field=field) from None
        except httpx.InvalidURL as error:
            raise EgressRefused(url, f"not a valid URL ({error})", field=field) from None
        return url

    async def check_host(self, host: str, port: int, *, field: str = "host") -> str:
        """Judge a host for a protocol other than HTTP (SMTP, NATS) by the same rules and return
        the one address to connect to (connect to it, not to the name, so a DNS answer that
        changes cannot move the connection; keep the name for TLS). 422 naming ``field`` when
        refused."""
        shown = f"{host}:{port}"
        if not 0 < port < 65536:
            raise EgressRefused(shown, f"port {port} is out of range", field=field)
        try:
            address = await self.transport.address_for(httpx.URL(scheme="http", host=host.strip("[]"), port=port))
        except _Refusal as refusal:
            raise EgressRefused(shown, refusal.reason, field=field) from None
        except httpx.InvalidURL as error:
            raise EgressRefused(shown, f"not a valid host ({error})", field=field) from None
        return str(address)

    async def get(self, url: str, **options: Any) -> EgressResponse:
        return await self.request("GET", url, **options)

    async def post(self, url: str, **options: Any) -> EgressResponse:
        return await self.request("POST", url, **options)

    async def request(
        self,
        method: str,
        url: str,
        *,
        field: str = "url",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        seconds: float | None = None,
        max_bytes: int | None = None,
        max_redirects: int | None = None,
        truncate: bool = False,
        follow_redirects: bool = True,
    ) -> EgressResponse:
        """Call ``url`` and return the whole (capped) response. ``field`` names the input the URL
        came from, for the 422 a refusal raises. ``seconds`` bounds everything: resolution, every
        redirect hop and reading the body. With ``truncate``, a body over the cap is cut there
        (``truncated`` says so) instead of failing the call. Without ``follow_redirects``, a redirect
        is answered as it came (a secret in a custom header must not follow one to another origin)."""
        limit = self.timeout if seconds is None else seconds
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(
                    method, url, field=field, headers=headers, params=params, content=content, json=json,
                    max_bytes=self.max_bytes if max_bytes is None else max_bytes,
                    max_redirects=self.max_redirects if max_redirects is None else max_redirects,
                    truncate=truncate, follow_redirects=follow_redirects,
                )
        except TimeoutError:
            raise EgressFailed(f"{field}: no complete answer within {limit:g} s", extra={"url": url}) from None

    def _build(
        self, method: str, url: str, *, headers: Mapping[str, str] | None, params: Mapping[str, str] | None,
        content: bytes | str | None, json: Any,
    ) -> httpx.Request:
        """The request ``httpx_client.build_request`` would make (its default headers, our
        timeouts), with the URL parsed once per distinct text and no cookies."""
        target = self._urls.get(url) or self._urls.put(url, httpx.URL(url))
        if params:
            target = target.copy_merge_params(params)
        merged = self.httpx_client.headers.copy()
        if headers:
            merged.update(headers)
        return httpx.Request(
            method, target, headers=merged, content=content, json=json, extensions={"timeout": self._timeouts}
        )

    async def _exchange(
        self, method: str, url: str, *, field: str, headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None, content: bytes | str | None, json: Any, max_bytes: int, max_redirects: int,
        truncate: bool = False, follow_redirects: bool = True,
    ) -> EgressResponse:
        client = self.httpx_client
        try:
            request = self._build(method, url, headers=headers, params=params, content=content, json=json)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            raise EgressRefused(url, f"not a valid URL ({error})", field=field) from None
        for hop in range(max_redirects + 1):
            try:
                # Straight to the transport: redirects, the deadline and the size cap are ours, and
                # no cookie jar is kept between calls (one tenant's receiver must not set cookies
                # that go with another tenant's calls).
                response = await self.transport.handle_async_request(request)
                response.request = request
            except _Refusal as refusal:
                reason = refusal.reason if hop == 0 else f"redirected to {refusal.url}: {refusal.reason}"
                raise EgressRefused(url, reason, field=field) from None
            except httpx.HTTPError as error:
                failure = f"{field}: {type(error).__name__} calling {request.url}"
                raise EgressFailed(failure, extra={"url": url}) from None
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location or not follow_redirects:
                    body, cut = await _read_capped(response, max_bytes, field, url, truncate)
                    return EgressResponse(response.status_code, response.headers, body, str(request.url), cut)
            finally:
                await response.aclose()
            request = _next_request(client, request, response.status_code, location, field, url)
        raise EgressFailed(f"{field}: more than {max_redirects} redirects", extra={"url": url})


def _next_request(
    client: httpx.AsyncClient, previous: httpx.Request, status: int, location: str, field: str, url: str
) -> httpx.Request:
    try:
        target = previous.url.join(location)
    except httpx.InvalidURL as error:
        raise EgressRefused(url, f"redirected to an invalid URL ({error})", field=field) from None
    method = previous.method
    body: bytes | None = previous.content if previous.content else None
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
    headers = httpx.Headers(previous.headers)
    headers.pop("host", None)
    if body is None:
        for name in ("content-length", "content-type", "transfer-encoding"):
            headers.pop(name, None)
    if (target.scheme, target.host, target.port) != (previous.url.scheme, previous.url.host, previous.url.port):
        for name in _CREDENTIAL_HEADERS:
            headers.pop(name, None)
    try:
        return client.build_request(method, target, headers=headers, content=body)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise EgressRefused(url, f"redirected to an invalid URL ({error})", field=field) from None


async def _read_capped(
    response: httpx.Response, max_bytes: int, field: str, url: str, truncate: bool = False
) -> tuple[bytes, bool]:
    declared = response.headers.get("content-length")
    if not truncate and declared and declared.isdigit() and int(declared) > max_bytes:
        raise EgressFailed(f"{field}: the answer is larger than {max_bytes} bytes", extra={"url": url})
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_bytes():  # decoded: a compressed bomb counts at full size
            size += len(chunk)
            if size > max_bytes:
                if truncate:
                    chunks.append(chunk[: len(chunk) - (size - max_bytes)])
                    return b"".join(chunks), True
                raise EgressFailed(f"{field}: the answer is larger than {max_bytes} bytes", extra={"url": url})
            chunks.append(chunk)
    except httpx.HTTPError as error:
        raise EgressFailed(f"{field}: {type(error).__name__} reading the answer", extra={"url": url}) from None
    return b"".join(chunks), False
