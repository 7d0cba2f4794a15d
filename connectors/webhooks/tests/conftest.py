"""A platform with the webhooks plugin, a worker, and the world its deliveries reach.

Everything listens on loopback. The receiver on 127.0.0.7 stands for "the outside": the operator
allowlist (``BUSINESSOS_EGRESS_ALLOW_NETWORKS``) admits exactly 127.0.0.7/32, as in the egress
client's own tests. A forbidden listener on 127.0.0.1 (same port) counts connections and must see
none. A small DNS server answers the test names, one of them first with the allowed address and
then with the forbidden one (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import msgspec
import pytest
from aiohttp import web
from litestar.testing import AsyncTestClient
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from kernel.testing import (
    TestWorker,
    businessos_database_url,
    businessos_servers,
    businessos_settings,
    new_tenant,
    open_client,
    running_worker,
)

__all__ = ["businessos_database_url", "businessos_servers", "businessos_settings"]

OUTSIDE = "127.0.0.7"
FORBIDDEN = "127.0.0.1"


@pytest.fixture(scope="session")
def businessos_plugins() -> frozenset[str]:
    return frozenset({"webhooks"})


# -- DNS ---------------------------------------------------------------------------------------


@dataclass
class Zone:
    """A answers per name, served in turn (the last repeats)."""

    port: int = 0
    records: dict[str, list[str]] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)

    def answer(self, name: str) -> str | None:
        name = name.rstrip(".").lower()
        turns = self.records.get(name)
        if turns is None:
            return None
        self.asked[name] = self.asked.get(name, 0) + 1
        return turns[min(self.asked[name], len(turns)) - 1]


@pytest.fixture(scope="session")
def zone() -> Iterator[Zone]:
    found = Zone()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            question = query.question[0]
            if dns.rdatatype.to_text(question.rdtype) == "A":
                value = found.answer(question.name.to_text())
                if value is None:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                else:
                    reply.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", value))
            sock.sendto(reply.to_wire(), self.client_address)

    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


# -- the platform ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hooks_settings(businessos_settings: Any, zone: Zone) -> Any:
    """The test platform, allowed to reach 127.0.0.7 and resolving through the test DNS server."""
    return msgspec.structs.replace(
        businessos_settings, egress_allow_networks=(f"{OUTSIDE}/32",),
        egress_nameservers=(f"127.0.0.1:{zone.port}",), event_sweep_seconds=1,
    )


@pytest.fixture
async def client(hooks_settings: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    """An API client; a request naming a tenant (``X-Tenant-ID``) acts as its owner."""
    async with open_client(hooks_settings) as made:
        yield made


@pytest.fixture
async def worker(hooks_settings: Any) -> AsyncIterator[TestWorker]:
    async with running_worker(hooks_settings) as running:
        yield running


async def make_tenant(client: AsyncTestClient[Any], prefix: str = "wh") -> dict[str, str]:
    """A tenant with the webhooks module on; returns its headers."""
    tenant = await new_tenant(client, prefix)
    headers = {"X-Tenant-ID": tenant["slug"]}
    response = await client.post("/api/modules/webhooks/enable", headers=headers)
    assert response.status_code == 200, response.text
    return headers


# -- the receiver and the forbidden listener -------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: list[int]
    """Indexes of the path's secrets whose signature verified (Webhook(secret).verify)."""


@dataclass
class Receiver:
    """An HTTP receiver on 127.0.0.7 that verifies Standard Webhooks signatures as a real one
    would. ``status[path]`` sets its answer (200 by default); ``secrets[path]`` the secrets to
    verify with."""

    port: int = 0
    got: list[Received] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, list[str]] = field(default_factory=dict)
    forbidden_connections: int = 0
    runner: web.AppRunner | None = None
    hold: asyncio.Event | None = None

    def url(self, path: str) -> str:
        return f"http://{OUTSIDE}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = []
        for index, secret in enumerate(self.secrets.get(request.path, [])):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(index)
            except WebhookVerificationError:
                pass
        self.got.append(Received(request.path, headers, body, verified))
        if request.path.startswith("/hang") and self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.status.get(request.path, 200), text='{"ok": true}',
                            content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, OUTSIDE, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    await made.start()

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        made.forbidden_connections += 1
        writer.close()

    forbidden = await asyncio.start_server(count, FORBIDDEN, made.port)
    try:
        yield made
    finally:
        forbidden.close()
        await made.stop()
