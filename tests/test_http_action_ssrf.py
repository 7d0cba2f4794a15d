"""The egress SSRF corpus through the ``http.request`` action: every URL refused (422 naming
``url``), no connection ever reaching a forbidden listener.

The listeners, the DNS server and the corpus are the egress tests' own; the platform resolves
through that DNS server and allows only the one address standing in for the public internet, as
an operator's settings would."""

from __future__ import annotations

from pathlib import Path

from connectors.http.nodes import RequestConfig, send_request
from kernel.egress import EgressClient, EgressRefused
from kernel.settings import Settings
from kernel.testing import node_context
from tests.conftest import new_tenant, open_client, other_process, settings_for
from tests.test_egress import ALLOWED, Listeners, Zone, _names, corpus, world

__all__ = ["world"]


async def test_the_ssrf_corpus_through_the_http_action_reaches_no_forbidden_listener(
    world: tuple[Listeners, Zone, EgressClient], settings: Settings, tmp_path: Path
) -> None:
    state, zone, _ = world
    _names(zone)
    assert settings.database_url and settings.redis_url
    platform = settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS="http",
        BUSINESSOS_EGRESS_ALLOW_NETWORKS=f"{ALLOWED}/32", BUSINESSOS_EGRESS_NAMESERVERS=f"127.0.0.1:{zone.port}",
        BUSINESSOS_EGRESS_MAX_REDIRECTS="3",
    )
    async with open_client(platform) as client:
        tenant = await new_tenant(client, "ssrf")
        enabled = await client.post("/api/modules/http/enable", headers={"X-Tenant-ID": tenant["slug"]})
        assert enabled.status_code == 200
    urls = corpus(state.port)
    outcomes: dict[str, str] = {}
    async with other_process(platform) as kernel:
        services = kernel.services("http")
        # The allowed listener answers: the corpus is refused for where it points, not because nothing works.
        allowed = RequestConfig(url=f"http://allowed.test:{state.port}/echo")
        ok = await send_request(node_context(services, tenant["id"]), allowed)
        assert ok.status == 200
        for url in urls:
            try:
                out = await send_request(node_context(services, tenant["id"]), RequestConfig(url=url, retries=0))
            except EgressRefused as refused:
                assert refused.status == 422 and refused.errors[0].field == "url"
                outcomes[url] = "refused"
            else:
                outcomes[url] = f"answered {out.status}"
    assert state.forbidden_connections == 0
    assert {u: o for u, o in outcomes.items() if o != "refused"} == {}
    print(f"http action SSRF corpus: {len(urls)} URLs, all refused, {state.forbidden_connections} forbidden")

