"""hello: the smallest complete BusinessOS plugin.

Copy this folder to start your own. It shows every piece a plugin usually needs: a manifest,
a route, a tenant table with its migration, a permission, per-tenant settings and a workflow
node. It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from hello_plugin.models import Base
from hello_plugin.routes import ping
from kernel import sdk

manifest = sdk.Manifest(
    name="hello",
    version="0.1.0",
    kernel_api=">=1.0,<2",
    title="Hello",
    description="Answers pings and counts them per tenant.",
)


class HelloSettings(msgspec.Struct, kw_only=True):
    greeting: str = "pong"
    """What /api/hello/ping answers with."""


class SayHelloConfig(msgspec.Struct):
    name: str


async def say_hello(config: SayHelloConfig, **_: Any) -> dict[str, str]:
    return {"message": f"hello, {config.name}"}


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [ping]


@sdk.hookimpl
def businessos_metadata() -> Any:
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
            run=say_hello,
        )
    ]
