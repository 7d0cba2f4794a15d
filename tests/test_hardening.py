from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from kernel.app import create_app, load_app_plugins
from kernel.http.middleware import _ProxyTrust
from kernel.settings import Settings
from tests.conftest import new_tenant, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.servers import api_servers

MAX_BODY = 2048
ORIGIN = "https://app.example.com"
SECURITY = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

# A plugin whose public routes show what the middleware decided, set a cookie, or ask for no-store.
_PROBE = """
from litestar import Request, Response
from litestar.datastructures import Cookie

PUBLIC = {"permission": sdk.PUBLIC}

@get("/api/" + NAME + "/probe", opt=PUBLIC)
async def probe(request: Request) -> dict:
    state = request.scope["state"]
    return {"client_ip": state.get("client_ip"), "request_id": state.get("request_id")}

@post("/api/" + NAME + "/echo", opt=PUBLIC, status_code=200)
async def echo(request: Request) -> dict:
    return {"size": len(await request.body())}

@get("/api/" + NAME + "/cookie", opt=PUBLIC)
async def cookie() -> Response:
    return Response({"ok": True}, cookies=[Cookie(key="session", value="s", httponly=True, secure=True)])

@get("/api/" + NAME + "/secret", opt={**PUBLIC, "no_store": True})
async def secret() -> dict:
    return {"token": "t"}

@sdk.hookimpl
def businessos_routes():
    return [probe, echo, cookie, secret]
"""


@dataclass(frozen=True)
class Probe:
    name: str
    site: Path
    """Directory holding the installed plugin (PYTHONPATH for a server process)."""
    tenant: str
    """Slug of a tenant that enabled the plugin (its routes, even public ones, need one)."""


@pytest.fixture(scope="module")
async def probe(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Probe]:
    name = unique("probe")
    plugin = FakePlugin(name=name, source=plugin_source(name, _PROBE))
    with installed(tmp_path_factory.mktemp("probe"), plugin) as site:
        async with client_for(
            settings, tmp_path_factory.mktemp("probe-data"), Probe(name, site, "")
        ) as client:
            tenant = await new_tenant(client, "probe")
            enabled = await client.post(
                f"/api/modules/{name}/enable",
                headers={"X-Tenant-ID": tenant["slug"], "Authorization": f"Bearer {tenant['access_token']}"},
            )
            assert enabled.status_code == 200, enabled.text
        yield Probe(name, site, tenant["slug"])


@pytest.fixture(scope="module")
async def real_servers(
    settings: Settings, probe: Probe, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    """Two real API processes: one behind trusted proxies (127.0.0.1 and 10/8), one without."""
    common = {
        "PYTHONPATH": str(probe.site),
        "BUSINESSOS_PLUGINS": probe.name,
        "BUSINESSOS_MAX_BODY_BYTES": str(MAX_BODY),
    }
    trusting_env = {**common, "BUSINESSOS_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"}
    async with (
        api_servers(settings, tmp_path_factory.mktemp("proxied"), env=trusting_env) as proxied,
        api_servers(settings, tmp_path_factory.mktemp("direct"), env=common) as direct,
    ):
        yield {"proxied": proxied[0] + f"/api/{probe.name}", "direct": direct[0] + f"/api/{probe.name}"}


def http_client(probe: Probe) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"X-Tenant-ID": probe.tenant})


@asynccontextmanager
async def client_for(
    settings: Settings, tmp_path: Path, probe: Probe, base_url: str = "http://testserver.local"
) -> AsyncIterator[AsyncTestClient[Any]]:
    """A test client on an app with the probe plugin, naming the probe's tenant by default."""
    assert settings.database_url and settings.redis_url
    local = settings_for(
        settings.database_url,
        settings.redis_url,
        tmp_path,
        BUSINESSOS_PLUGINS=probe.name,
        BUSINESSOS_MAX_BODY_BYTES=str(MAX_BODY),
        BUSINESSOS_CORS_ORIGINS=ORIGIN,
    )
    app = create_app(local, load_app_plugins(local.plugins_allowlist))
    async with AsyncTestClient(app, base_url=base_url) as client:
        if probe.tenant:
            client.headers["X-Tenant-ID"] = probe.tenant
        yield client


def _hardened(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    assert response.headers.get("x-request-id")


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_every_response_carries_the_security_headers(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    async with client_for(settings, tmp_path, probe) as client:
        ok = await client.get("/health")
        assert ok.status_code == 200
        unrouted = await client.get("/no/such/route")
        _problem(unrouted, 404)
        invalid = await client.post("/api/tenants", json={"slug": "Not A Slug"})
        _problem(invalid, 422)
        wrong_method = await client.delete("/health")
        _problem(wrong_method, 405)
        preflight = await client.options(
            "/api/tenants", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        for response in (ok, unrouted, invalid, wrong_method, preflight):
            _hardened(response)
            assert "strict-transport-security" not in response.headers
        assert "no-store" not in ok.headers.get("cache-control", "")


async def test_hsts_only_when_the_request_came_over_tls(
    settings: Settings, tmp_path: Path, probe: Probe, real_servers: dict[str, str]
) -> None:
    async with client_for(settings, tmp_path, probe, base_url="https://testserver.local") as client:
        response = await client.get("/health")
        assert response.headers["strict-transport-security"].startswith("max-age=")
    async with client_for(settings, tmp_path, probe) as client:
        response = await client.get("/health", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in response.headers  # "testclient" is no proxy
    async with http_client(probe) as http:
        proxied = await http.get(real_servers["proxied"] + "/probe", headers={"X-Forwarded-Proto": "https"})
        assert proxied.headers["strict-transport-security"].startswith("max-age=")
        plain = await http.get(real_servers["proxied"] + "/probe", headers={"X-Forwarded-Proto": "http"})
        assert "strict-transport-security" not in plain.headers
        direct = await http.get(real_servers["direct"] + "/probe", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in direct.headers


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    real_servers: dict[str, str], probe: Probe
) -> None:
    async def client_ip(which: str, *forwarded: str) -> str:
        headers = [("X-Forwarded-For", value) for value in forwarded]
        response = await http.get(real_servers[which] + "/probe", headers=headers)
        assert response.status_code == 200, response.text
        value: str = response.json()["client_ip"]
        return value

    async with http_client(probe) as http:
        assert await client_ip("direct", "203.0.113.7") == "127.0.0.1"
        assert await client_ip("direct") == "127.0.0.1"
        assert await client_ip("proxied") == "127.0.0.1"
        assert await client_ip("proxied", "203.0.113.7") == "203.0.113.7"
        # The rightmost hop that is not a trusted proxy; what the client wrote to its left is not believed.
        assert await client_ip("proxied", "198.51.100.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
        assert await client_ip("proxied", "198.51.100.1", "203.0.113.7, 10.1.2.3") == "203.0.113.7"
        assert await client_ip("proxied", "10.9.9.9, 10.1.2.3") == "10.9.9.9"
        assert await client_ip("proxied", "[2001:db8::1]:443") == "2001:db8::1"
        assert await client_ip("proxied", "203.0.113.9:5555") == "203.0.113.9"
        assert await client_ip("proxied", "not-an-address") == "127.0.0.1"


def test_forwarded_for_parsing() -> None:
    trust = _ProxyTrust(("10.0.0.0/8", "2001:db8:ffff::/48"))
    assert trust.client("10.0.0.1", "::ffff:10.2.3.4, 2001:db8:ffff::9") == "10.2.3.4"
    assert trust.client("10.0.0.1", "bogus, 203.0.113.1") == "203.0.113.1"
    assert trust.client("10.0.0.1", " ") == "10.0.0.1"
    assert trust.trusted("10.200.0.1") and not trust.trusted("11.0.0.1") and not trust.trusted("testclient")


async def test_forwarded_for_from_an_untrusted_peer_does_not_split_its_bucket(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    # The test client's peer is "testclient", never a trusted proxy: every X-Forwarded-For is ignored.
    async with client_for(settings, tmp_path, probe) as client:
        for spoofed in ("203.0.113.1", "203.0.113.2"):
            response = await client.get(f"/api/{probe.name}/probe", headers={"X-Forwarded-For": spoofed})
            assert response.json()["client_ip"] == "testclient"


async def test_request_id_is_kept_when_sane_and_made_otherwise(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    async with client_for(settings, tmp_path, probe) as client:
        sane = "req-7f3a9c:trace=42"
        kept = await client.get(f"/api/{probe.name}/probe", headers={"X-Request-ID": sane})
        assert kept.headers["x-request-id"] == sane and kept.json()["request_id"] == sane
        for insane in ("x" * 200, "has space", "new\tline", "-leading-dash", ""):
            response = await client.get("/health", headers={"X-Request-ID": insane})
            assert response.headers["x-request-id"] != insane
            assert len(response.headers["x-request-id"]) == 32
        made = {(await client.get("/health")).headers["x-request-id"] for _ in range(3)}
        assert len(made) == 3
        body = _problem(await client.get("/nowhere", headers={"X-Request-ID": sane}), 404)
        assert body["request_id"] == sane


async def test_auth_responses_and_token_setting_responses_are_not_stored(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    async with client_for(settings, tmp_path, probe) as client:
        tenant = await new_tenant(client, "hard")
        login = await client.post(
            "/api/auth/login",
            json={"email": tenant["email"], "password": tenant["password"]},
            headers={"X-Tenant-ID": tenant["slug"]},
        )
        assert login.status_code == 200, login.text
        refused = await client.post(
            "/api/auth/login", json={"email": tenant["email"], "password": "wrong-password-1"}
        )
        assert refused.status_code >= 400
        me = await client.get(
            "/api/auth/me",
            headers={"Authorization": f"Bearer {tenant['access_token']}", "X-Tenant-ID": tenant["slug"]},
        )
        assert me.status_code == 200, me.text
        cookie = await client.get(f"/api/{probe.name}/cookie")
        assert "set-cookie" in cookie.headers
        secret = await client.get(f"/api/{probe.name}/secret")
        for response in (login, refused, me, cookie, secret):
            assert response.headers.get_list("cache-control") == ["no-store"], response.url
        assert "cache-control" not in (await client.get(f"/api/{probe.name}/probe")).headers


async def test_a_body_declared_over_the_limit_answers_413(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    echo = f"/api/{probe.name}/echo"
    async with client_for(settings, tmp_path, probe) as client:
        fits = await client.post(echo, content=b"x" * MAX_BODY)
        assert fits.status_code == 200 and fits.json() == {"size": MAX_BODY}
        declared = await client.post(echo, content=b"x" * (MAX_BODY + 1))
        assert "exceeds" in _problem(declared, 413)["detail"]
        assert declared.json()["instance"] == echo
        _hardened(declared)


async def test_a_body_over_the_limit_answers_413_from_a_real_server(
    real_servers: dict[str, str], probe: Probe
) -> None:
    async def chunks(count: int, size: int = 512) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"x" * size

    # The test client cannot stream a request body; a real server and httpx can (chunked).
    async with http_client(probe) as http:
        fits = await http.post(real_servers["direct"] + "/echo", content=chunks(4))
        assert fits.status_code == 200 and fits.json() == {"size": MAX_BODY}
        assert fits.request.headers.get("transfer-encoding") == "chunked"
        too_big = await http.post(real_servers["direct"] + "/echo", content=chunks(6))
        assert too_big.request.headers.get("transfer-encoding") == "chunked"
        _problem(too_big, 413)
        declared = await http.post(real_servers["direct"] + "/echo", content=b"x" * (MAX_BODY * 4))
        _problem(declared, 413)
        _hardened(declared)


async def test_cors_preflight_answers_only_allowed_origins(
    settings: Settings, tmp_path: Path, probe: Probe
) -> None:
    async with client_for(settings, tmp_path, probe) as client:
        allowed = await client.options(
            "/api/tenants",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        other = await client.options(
            "/api/tenants",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        simple = await client.get("/health", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        exposed = {h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "retry-after", "ratelimit-remaining"} <= exposed
        foreign = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
