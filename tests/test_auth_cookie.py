"""The refresh cookie a browser opts into with ``X-Refresh-Cookie: 1``: the refresh token moves
from the answer's body into an HttpOnly, SameSite=Strict cookie scoped to ``/api/auth``, so a
reloaded page stays signed in while no script ever holds the token. Rotation and reuse detection
are the body's, unchanged; without the header the cookie is ignored (the CSRF guard).

The cookie is ``Secure``, which the test client's cookie jar would keep off its plain-http test
server: every request here carries the cookie it means to send in its own ``Cookie`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import new_tenant, open_client

OPT_IN = {"X-Refresh-Cookie": "1"}


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client that adds no credentials of its own: every header (and cookie) is the test's."""
    async with open_client(settings) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


async def post(api: AsyncTestClient[Any], path: str, *, cookie: str | None = None, **kwargs: Any) -> Any:
    api.cookies.clear()  # only the cookie this request names travels
    headers = dict(kwargs.pop("headers", {}))
    if cookie is not None:
        headers["Cookie"] = f"businessos_refresh={cookie}"
    return await api.post(path, headers=headers, **kwargs)


def set_cookie(response: Any) -> tuple[str, dict[str, str]]:
    """The refresh cookie the answer sets: its value and its attributes (lower-cased names)."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    parsed = SimpleCookie()
    parsed.load(headers[0])
    morsel = parsed["businessos_refresh"]
    attributes = {k: str(v) for k, v in morsel.items() if v}
    for flag in ("secure", "httponly"):  # flags without a value
        if flag in headers[0].lower().replace(" ", "").split(";"):
            attributes[flag] = "true"
    return morsel.value, attributes


def unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def signed_in(api: AsyncTestClient[Any], access: str) -> bool:
    api.cookies.clear()
    response = await api.get("/api/auth/me", headers={"Authorization": f"Bearer {access}"})
    return bool(response.status_code == 200)


async def test_the_refresh_cookie_is_httponly_strict_and_scoped_and_the_body_leaves_the_token_out(
    api: AsyncTestClient[Any],
) -> None:
    tenant = await new_tenant(api, "cookie")
    # The console trades the token of its sign-in for the cookie.
    response = await post(api, "/api/auth/refresh", json={"refresh_token": tenant["refresh_token"]}, headers=OPT_IN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] == "" and await signed_in(api, body["access_token"])
    value, attributes = set_cookie(response)
    assert value.startswith("rt_") and value != tenant["refresh_token"]
    assert attributes["path"] == "/api/auth"
    assert attributes["samesite"].lower() == "strict"
    assert attributes["httponly"] == "true" and attributes["secure"] == "true"
    assert int(attributes["max-age"]) == 30 * 86400
    assert "no-store" in response.headers["cache-control"]

    # A reload: no body, only the cookie (and the opt-in header); the cookie rotates again.
    again = await post(api, "/api/auth/refresh", cookie=value, headers=OPT_IN)
    assert again.status_code == 200, again.text
    newer, _ = set_cookie(again)
    assert newer not in (value, "") and again.json()["refresh_token"] == ""
    assert await signed_in(api, again.json()["access_token"])

    # Without the opt-in header the cookie is not read: a cross-site form cannot use it.
    unauthorized(await post(api, "/api/auth/refresh", cookie=newer))
    # No cookie and no body: 401, nothing set.
    lonely = await post(api, "/api/auth/refresh", headers=OPT_IN)
    unauthorized(lonely)
    assert lonely.headers.get_list("set-cookie") == []
    # The body's answer without the header is unchanged: the token is in it, no cookie.
    plain = await post(api, "/api/auth/refresh", json={"refresh_token": newer})
    assert plain.status_code == 200 and plain.json()["refresh_token"].startswith("rt_")
    assert plain.headers.get_list("set-cookie") == []


async def test_a_replayed_refresh_cookie_revokes_the_family(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "cookie")
    first = await post(api, "/api/auth/refresh", json={"refresh_token": tenant["refresh_token"]}, headers=OPT_IN)
    c1, _ = set_cookie(first)
    second = await post(api, "/api/auth/refresh", cookie=c1, headers=OPT_IN)
    c2, _ = set_cookie(second)
    # c1 was used: presenting it again (a stolen copy) ends the whole family, c2 included.
    unauthorized(await post(api, "/api/auth/refresh", cookie=c1, headers=OPT_IN))
    unauthorized(await post(api, "/api/auth/refresh", cookie=c2, headers=OPT_IN))


async def test_logout_ends_the_cookies_session_only_and_clears_it(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "cookie")
    login = await post(
        api, "/api/auth/login", json={"email": tenant["email"], "password": tenant["password"]},
        headers={"X-Tenant-ID": tenant["slug"]},
    )
    other_device = login.json()["refresh_token"]
    first = await post(api, "/api/auth/refresh", json={"refresh_token": tenant["refresh_token"]}, headers=OPT_IN)
    cookie, _ = set_cookie(first)
    access = first.json()["access_token"]
    out = await post(
        api, "/api/auth/logout", cookie=cookie, headers={**OPT_IN, "Authorization": f"Bearer {access}"}
    )
    assert out.status_code == 200, out.text
    assert out.json() == {"sessions_ended": 1}
    cleared, attributes = set_cookie(out)
    assert cleared == "" and attributes["max-age"] == "0" and attributes["path"] == "/api/auth"
    unauthorized(await post(api, "/api/auth/refresh", cookie=cookie, headers=OPT_IN))
    # The user's session elsewhere (its own family) is untouched.
    assert (await post(api, "/api/auth/refresh", json={"refresh_token": other_device})).status_code == 200
