"""The HTTP clients AI calls go through: the egress client wherever litellm takes one of ours.

litellm's OpenAI path (``openai/...`` models: the openai provider and every OpenAI-compatible
``api_base``) accepts ``client=``, an ``AsyncOpenAI`` that we build on the egress client's httpx
client, so the provider connection goes to the address our transport judged (no second lookup,
DNS rebinding fails, redirects judged per hop, no proxy variables). One ``AsyncOpenAI`` is kept
per (key, base) so calls keep their connections alive.

Groq and Anthropic run through litellm's own HTTP handler, which takes no client of ours: for
them the tenant's ``api_base`` is judged by :func:`kernel.ai.keys.check_api_base` when stored and
before calls (cached for a minute), and litellm connects by itself: a DNS answer that changes
between that check and litellm's connection is the gap that remains there.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import TYPE_CHECKING, Any, cast

import httpx

from kernel.egress import EgressClient, resolver_for
from kernel.settings import Settings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["PRIVATE_NETWORKS", "ProviderClients"]

PRIVATE_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
"""What ``BUSINESSOS_AI_ALLOW_PRIVATE_BASES`` opens to AI calls (never link-local)."""

_KEPT = 1024


def _aiohttp_pool(context: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """litellm's aiohttp transport (what its own calls use, faster than httpcore) for one host's
    connections, with the environment's proxies switched off. It sends ``sni_hostname`` as
    aiohttp's ``server_hostname``, so TLS keeps the name while connecting to the judged address."""
    from aiohttp import ClientSession
    from litellm.llms.custom_httpx.aiohttp_transport import LiteLLMAiohttpTransport

    class _Direct(LiteLLMAiohttpTransport):
        async def _get_proxy_settings(self, request: httpx.Request) -> None:
            return None  # never a proxy from the environment

    return _Direct(client=lambda: ClientSession(trust_env=False), ssl_verify=context)


class ProviderClients:
    """``client=`` arguments for litellm, built on one egress client for AI bases."""

    def __init__(self, settings: Settings) -> None:
        private = PRIVATE_NETWORKS if settings.ai_allow_private_bases else ()
        self.egress = EgressClient(
            allow_networks=settings.egress_allow_networks + private,
            resolver=resolver_for(settings.egress_nameservers),
            timeout=settings.ai_timeout_seconds,
            pool=_aiohttp_pool,
        )
        self._openai: dict[tuple[str, str], AsyncOpenAI] = {}

    def arguments(self, litellm_model: str, api_key: str, api_base: str | None) -> dict[str, Any]:
        """Extra litellm arguments for one call: ``client`` where litellm accepts ours."""
        if not litellm_model.startswith("openai/") or not api_base:
            return {}
        key = (hashlib.sha256(api_key.encode()).hexdigest(), api_base)
        client = self._openai.get(key)
        if client is None:
            from openai import AsyncOpenAI  # loaded with litellm, which calls reach only after it

            if len(self._openai) >= _KEPT:
                self._openai.clear()
            client = self._openai[key] = AsyncOpenAI(
                # The OpenAI SDK is typed for httpx2 and accepts an httpx client too (its "legacy" path).
                api_key=api_key, base_url=api_base, http_client=cast(Any, self.egress.httpx_client), max_retries=0
            )
        return {"client": client}

    async def aclose(self) -> None:
        self._openai.clear()
        await self.egress.aclose()
