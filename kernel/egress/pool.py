"""One host name's kept-alive connections for :class:`~kernel.egress.client.PinnedTransport`, on
aiohttp.

The pinned transport hands a pool only requests it has already judged: the URL names the judged
address (an IP literal, so nothing here resolves a name), ``Host`` keeps the name, and the
``sni_hostname`` extension carries it for TLS, where the certificate is checked against it. The
pool just moves bytes. aiohttp rather than httpx's own transport because of what a request costs
in CPU: httpcore's pure-Python HTTP/1.1 (h11), anyio's cancel scopes per read and write, two
socket writes per request and a readiness syscall per pooled connection at each request made a
small POST through the egress client cost about 0.5-0.65 ms of CPU, against about 0.25 ms on this
pool (aiohttp alone: 0.1 ms; see bench/README.md, ``webhook_deliveries.py``).

It keeps what httpx's transport guaranteed the egress client: no proxy from the environment, no
cookie jar (one tenant's target must not set cookies for the next call), bodies passed through
undecoded (httpx decodes them, so the size cap counts decoded bytes), httpx's timeouts and
exception types.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpPool"]

_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
"""Headers aiohttp would add on its own; the request carries httpx's (the encodings httpx can
decode), so aiohttp adds none."""
_KEEPALIVE_SECONDS = 5.0
"""As httpx's default keep-alive expiry."""


class _Body(httpx.AsyncByteStream):
    """The answer's body as aiohttp reads it, errors turned into httpx's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "read timed out") from error
        except (aiohttp.ClientError, OSError) as error:
            raise httpx.ReadError(str(error) or type(error).__name__) from error

    async def aclose(self) -> None:
        self._response.release()  # back to the pool once read to the end, closed otherwise


class AiohttpPool(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession`` (made on first use, inside the loop)."""

    def __init__(self, context: ssl.SSLContext, *, limit: int = 100) -> None:
        self._context = context
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._context, limit=self._limit, keepalive_timeout=_KEEPALIVE_SECONDS, use_dns_cache=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False,
                skip_auto_headers=_AUTO_HEADERS, timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            connect, read, pool = key
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() != b"transfer-encoding"  # the whole body is sent, with its length
        ]
        server_hostname = request.extensions.get("sni_hostname") if request.url.scheme == "https" else None
        try:
            response = await self._client().request(
                request.method, URL(str(request.url), encoded=True), headers=headers, data=body or None,
                allow_redirects=False, server_hostname=server_hostname, timeout=self._timeout(request),
            )
        except aiohttp.ConnectionTimeoutError as error:
            raise httpx.ConnectTimeout(str(error) or "connect timed out", request=request) from error
        except TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "read timed out", request=request) from error
        except aiohttp.ClientConnectorError as error:  # refused, unreachable, TLS handshake
            raise httpx.ConnectError(str(error), request=request) from error
        except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError) as error:  # no answer it could read
            raise httpx.RemoteProtocolError(str(error), request=request) from error
        except (aiohttp.ClientError, OSError) as error:
            raise httpx.NetworkError(str(error) or type(error).__name__, request=request) from error
        version = response.version
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            extensions={
                "http_version": f"HTTP/{version.major}.{version.minor}".encode() if version else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
