from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["Module", "ModuleList", "ModuleSettings"]


class Module(msgspec.Struct, frozen=True):
    name: str
    version: str
    status: Literal["active", "disabled"]
    """``disabled`` when the plugin could not be loaded on this server; ``reason`` says why."""
    enabled: bool
    """Whether this tenant has switched the module on."""
    reason: str | None = None
    title: str = ""
    description: str = ""
    depends_on: tuple[str, ...] = ()
    distribution: str | None = None


class ModuleList(msgspec.Struct, frozen=True):
    modules: list[Module]


class ModuleSettings(msgspec.Struct, frozen=True):
    module: str
    settings: dict[str, Any]
    schema: dict[str, Any] | None = None
    """The settings' JSON Schema (clients such as the console build their form from it)."""
