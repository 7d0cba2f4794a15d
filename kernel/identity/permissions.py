"""Roles, permissions and who gets what by default.

Every route declares what it needs in ``opt["permission"]``: ``PUBLIC`` (anyone),
``AUTHENTICATED`` (any signed-in principal of the tenant) or a permission name
``<plugin>.<resource>.<verb>``. A route that declares nothing is refused (deny by default).
"""

from __future__ import annotations

from collections.abc import Mapping

from kernel.plugins.contract import Permission

__all__ = [
    "AUTHENTICATED",
    "KERNEL_PERMISSIONS",
    "OPERATOR",
    "PUBLIC",
    "ROLES",
    "default_grants",
]

PUBLIC = "public"
AUTHENTICATED = "authenticated"
OPERATOR = "operator"
"""Only the installation's operators (``/api/admin``): no tenant role ever has it."""

ROLES = ("owner", "admin", "member", "viewer")

KERNEL_PERMISSIONS = [
    Permission("kernel.tenant.read", "See the tenant's profile"),
    Permission("kernel.modules.read", "List modules and their settings"),
    Permission("kernel.modules.write", "Enable and disable modules, change their settings"),
    Permission("kernel.modules.purge", "Delete all of the tenant's data of a disabled module"),
    Permission("kernel.members.read", "List the tenant's members and invitations"),
    Permission("kernel.invitations.write", "Invite people to the tenant"),
    Permission("kernel.members.write", "Change members' roles and remove members"),
    Permission("kernel.roles.read", "See what each role may do"),
    Permission("kernel.roles.write", "Change what each role may do"),
    Permission("kernel.api_keys.read", "List API keys"),
    Permission("kernel.api_keys.write", "Create and revoke API keys"),
    Permission("kernel.audit.read", "Read and verify the audit log"),
    Permission("kernel.events.deliveries.read", "See event deliveries, their attempts and dead letters"),
    Permission("kernel.events.deliveries.write", "Redeliver an event to a handler"),
    Permission("kernel.ai.use", "Call AI models through the tenant's provider keys and budgets"),
    Permission("kernel.ai.keys.read", "See which AI provider keys are configured (never the keys)"),
    Permission("kernel.ai.keys.write", "Store and remove AI provider keys"),
    Permission("kernel.ai.usage.read", "Read AI usage, costs and budgets"),
    Permission("kernel.ai.budgets.write", "Set the tenant's AI budgets"),
    Permission("kernel.ai.prompts.read", "List, read and preview the tenant's prompt templates"),
    Permission("kernel.ai.prompts.write", "Create, version and delete prompt templates"),
    Permission("kernel.ai.settings.write", "Change the tenant's AI settings (models, fallbacks, prompt logging)"),
    Permission("kernel.ai.documents.read", "List AI documents and search them (embedding the query is metered)"),
    Permission("kernel.ai.documents.write", "Add AI documents (embedding them is metered) and delete them"),
    Permission("kernel.connections.read", "List connections and their types (never a credential)"),
    Permission("kernel.connections.write", "Create, authorize, test, rename and delete connections"),
]

# Kernel permissions a member has; the rest of the kernel's are administrative.
_MEMBER_KERNEL = {
    "kernel.tenant.read", "kernel.modules.read", "kernel.members.read", "kernel.ai.use",
    "kernel.ai.documents.read", "kernel.ai.documents.write", "kernel.ai.prompts.read", "kernel.connections.read",
}
_VIEWER_KERNEL = {"kernel.tenant.read", "kernel.modules.read"}


def default_grants(role: str, permissions: Mapping[str, tuple[Permission, str]]) -> frozenset[str]:
    """The built-in grants of ``role`` among ``permissions`` (name -> (permission, owner); the
    kernel's and plugins'). A permission naming its ``roles`` goes to those (and the owner) only."""
    if role == "owner":
        return frozenset(permissions)
    chosen = {name for name, (p, _) in permissions.items() if p.roles is not None and role in p.roles}
    names = {name for name, (p, _) in permissions.items() if p.roles is None}
    if role == "admin":
        return frozenset(names | chosen)
    kernel = {n for n in names if n.startswith("kernel.")}
    plugin = (names - kernel) | chosen
    if role == "member":
        return frozenset((kernel & _MEMBER_KERNEL) | plugin)
    if role == "viewer":
        return frozenset((kernel & _VIEWER_KERNEL) | {n for n in plugin - chosen if n.endswith(".read")} | chosen)
    return frozenset()
