"""What a chat call sends, from what its request names: the tenant's settings (default model),
a prompt template (rendered, with its default model and parameters) and a conversation (its
stored messages first).

A plain call (messages, no template, no conversation) reads nothing: the settings come from the
proxy's per-process cache (``kernel.ai.call_cache``).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.conversations import ConversationPlan, continue_conversation
from kernel.ai.prompts import rendered
from kernel.ai.tenant_settings import TenantAISettings
from kernel.db.models import uuid7
from kernel.errors import FieldError, Unprocessable

if TYPE_CHECKING:
    from kernel.ai.proxy import ChatParams

__all__ = ["Composition", "compose", "needs_session", "one_source"]


def one_source(messages: list[dict[str, Any]] | None, template: str | None) -> list[dict[str, Any]]:
    """A chat request's own messages; 422 unless exactly one of ``messages`` and ``template`` is given."""
    if (messages is None) == (template is None):
        raise Unprocessable(
            "give exactly one of messages and template",
            errors=[FieldError(field="messages" if messages is None else "template", message="exactly one of "
                               "messages and template")],
        )
    return messages or []


@dataclass(frozen=True)
class Composition:
    params: ChatParams
    """With the messages to send and the model to call."""
    template_id: uuid.UUID | None = None
    template_version: int | None = None
    conversation: ConversationPlan | None = None


def needs_session(params: ChatParams) -> bool:
    """Whether composing ``params`` reads the database (a template or a conversation to continue)."""
    return params.template is not None or params.conversation_id is not None


async def compose(
    session: AsyncSession | None, actor: str | None, params: ChatParams, settings: TenantAISettings
) -> Composition:
    """The call ``params`` describe, with the tenant's ``settings``; ``session`` is the tenant's
    transaction, needed only when :func:`needs_session`. 422 naming ``model`` when no model is
    given and the tenant has no default, 404 for an unknown template or a conversation that is not
    the caller's."""
    changes: dict[str, Any] = {}
    template_id = template_version = None
    messages = params.messages
    if params.template is not None:
        assert session is not None
        out = await rendered(session, params.template, dict(params.variables or {}), params.template_version)
        template_id, template_version, messages = out.prompt_id, out.version, out.messages
        changes["messages"] = messages
        if params.model is None and out.model:
            changes["model"] = out.model
        if params.temperature is None and out.parameters.temperature is not None:
            changes["temperature"] = out.parameters.temperature
        if params.max_tokens is None and out.parameters.max_tokens is not None:
            changes["max_tokens"] = out.parameters.max_tokens
    plan = None
    if params.conversation_id is not None:
        assert session is not None
        conversation, history = await continue_conversation(session, params.conversation_id, actor)
        plan = ConversationPlan(id=conversation.id, new=False, created_by=actor, messages=list(messages))
        changes["messages"] = [*history, *messages]
        if params.model is None and "model" not in changes and conversation.model:
            changes["model"] = conversation.model
    elif params.save:
        plan = ConversationPlan(id=uuid7(), new=True, created_by=actor, messages=list(messages))
    if params.model is None and "model" not in changes:
        if not settings.default_model:
            raise Unprocessable(
                "model is required: this tenant has no default model (PUT /api/ai/settings)",
                errors=[FieldError(field="model", message="required")],
            )
        changes["model"] = settings.default_model
    if changes:
        params = dataclasses.replace(params, **changes)
    return Composition(
        params=params, template_id=template_id, template_version=template_version,
        conversation=plan,
    )
