"""hello: the smallest complete BusinessOS plugin.

Copy this folder to start your own. It shows every piece a plugin usually needs: a manifest,
a route, a tenant table with its migration, a permission, per-tenant settings and a workflow
node. It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import MetaData, func, select

from hello_plugin.models import Base, Ping
from hello_plugin.routes import ping
from kernel import sdk

manifest = sdk.Manifest(
    name="hello",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Hello",
    description="Answers pings and counts them per tenant.",
)


class HelloSettings(msgspec.Struct, kw_only=True):
    greeting: str = "pong"
    """What /api/hello/ping answers with."""


class SayHelloConfig(msgspec.Struct):
    name: str


class SayHelloOutput(msgspec.Struct):
    message: str
    pings: int
    """The tenant's ping count, this greeting included."""


async def say_hello(ctx: sdk.NodeContext, config: SayHelloConfig) -> SayHelloOutput:
    """Greet ``config.name``, counting the greeting as one of the tenant's pings."""
    message = f"hello, {config.name}"
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        session.add(Ping(tenant_id=ctx.tenant_id, message=message))
        await session.flush()
        count = (await session.execute(select(func.count()).select_from(Ping))).scalar_one()
    ctx.logger.info("said hello", extra={"step": ctx.idempotency_key})
    return SayHelloOutput(message=message, pings=count)


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [ping]


@sdk.hookimpl
def businessos_metadata() -> MetaData:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission("hello.pings.read", "Ping and see the ping count")]


@sdk.hookimpl
def businessos_settings_schema() -> type[HelloSettings]:
    return HelloSettings


@sdk.hookimpl
def businessos_workflow_nodes() -> list[sdk.NodeSpec]:
    return [
        sdk.NodeSpec(
            key="hello.say_hello",
            kind="action",
            title="Say hello",
            description="Produces a greeting for a name.",
            config=SayHelloConfig,
            output=SayHelloOutput,
            run=say_hello,
        )
    ]
