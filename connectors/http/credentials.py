"""The credential types of ``http.request``: bearer token, basic, API key, OAuth 2.0.

Each may name a ``check_url``: testing the connection (``POST /api/connections/{id}/test``) sends
a GET there with the credentials applied and fails on anything but a 2xx, saying which status came
back, the way a Zapier auth test request does.
"""

from __future__ import annotations

import base64
from typing import Literal

import msgspec

from kernel import sdk

__all__ = [
    "TYPES",
    "ApiKey",
    "BasicAuth",
    "BearerToken",
    "OAuth2",
    "apply_auth",
]


class BearerToken(msgspec.Struct, kw_only=True):
    token: sdk.Secret
    check_url: str = ""
    """A URL answering 2xx to a GET with valid credentials (optional)."""


class BasicAuth(msgspec.Struct, kw_only=True):
    username: str
    password: sdk.Secret
    check_url: str = ""


class ApiKey(msgspec.Struct, kw_only=True):
    name: str
    """The header (``X-API-Key``) or query parameter (``api_key``) that carries the key."""
    value: sdk.Secret
    location: Literal["header", "query"] = "header"
    prefix: str = ""
    """Put before the key in a header, e.g. ``"Token "``."""
    check_url: str = ""


class OAuth2(sdk.OAuth2Credentials, kw_only=True):
    """Any OAuth 2.0 provider: the tenant gives its endpoints and client."""

    check_url: str = ""


def apply_auth(
    creds: msgspec.Struct, headers: dict[str, str], query: dict[str, str]
) -> None:
    """Put the credentials on a request's headers or query (in place)."""
    if isinstance(creds, BearerToken):
        headers["Authorization"] = f"Bearer {creds.token}"
    elif isinstance(creds, BasicAuth):
        pair = f"{creds.username}:{creds.password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    elif isinstance(creds, ApiKey):
        if creds.location == "header":
            headers[creds.name] = creds.prefix + creds.value
        else:
            query[creds.name] = creds.value
    elif isinstance(creds, OAuth2):
        kind = "Bearer" if creds.token_type.lower() == "bearer" else creds.token_type
        headers["Authorization"] = f"{kind} {creds.access_token}"
    else:  # a type of this plugin nobody taught apply_auth
        raise sdk.Unprocessable(
            f"{type(creds).__name__} credentials cannot authenticate a request",
            errors=[sdk.FieldError("connection", "unsupported credential type")],
        )


async def check(services: sdk.Services, creds: msgspec.Struct) -> None:
    """GET ``check_url`` with the credentials; anything but a 2xx fails, naming the status."""
    url = getattr(creds, "check_url", "")
    if not url:
        raise sdk.Unprocessable(
            "give check_url (a URL that answers 2xx to these credentials) to test them",
            errors=[sdk.FieldError("credentials.check_url", "required to test the connection")],
        )
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    apply_auth(creds, headers, query)
    response = await services.http.request(
        "GET", url, field="credentials.check_url", headers=headers, params=query, seconds=15, max_bytes=64 * 1024,
        follow_redirects=False,
    )
    if response.status_code in (401, 403):
        raise sdk.Forbidden(f"the credentials were refused: {url} answered {response.status_code}")
    if not 200 <= response.status_code < 300:
        raise sdk.Unprocessable(
            f"{url} answered {response.status_code}",
            errors=[sdk.FieldError("credentials.check_url", f"answered {response.status_code}, not 2xx")],
        )


TYPES = [
    sdk.CredentialType(
        key="http.bearer", title="Bearer token", schema=BearerToken, check=check,
        description="Authorization: Bearer <token>",
    ),
    sdk.CredentialType(
        key="http.basic", title="Basic auth", schema=BasicAuth, check=check,
        description="Authorization: Basic with a user name and password",
    ),
    sdk.CredentialType(
        key="http.api_key", title="API key", schema=ApiKey, check=check,
        description="A key in a header or a query parameter",
    ),
    sdk.CredentialType(
        key="http.oauth2", title="OAuth 2.0", schema=OAuth2, check=check, oauth=sdk.OAuth2Config(),
        description="Authorization code with PKCE against any provider; tokens refresh themselves",
    ),
]
