"""What the AI proxy adds to a model call: ``POST /v1/chat/completions`` through ``businessos
serve`` against a direct ``litellm.completion`` to the same local OpenAI-compatible server.

Starts the local provider (``tests/fake_openai.py``) and ``businessos serve`` on the embedded
servers in a temporary directory, then measures sequentially, with one client: the direct litellm
calls (``litellm.acompletion``, which the proxy wraps, is the baseline; the synchronous
``litellm.completion`` is shown too), the proxied call (API key auth, tenant key unsealed, price,
ledger row, audit row and event in one transaction), and the proxied call under a budget (plus
the reservation). Added latency is the difference of medians. The four paths are timed in five
alternating blocks each, so that drift on a shared machine affects them alike. On a loaded
machine wall-clock medians swing by more than what is measured, so the CPU time the server
process spends per call (user + system, from /proc, over each path's blocks; settlements that run
after an answer are counted where they run) is shown too: it does not grow with others' load.

Like for like: the direct calls import litellm the way the server does
(``kernel.ai.pricing.litellm``: its per-call INFO logging off, no debug banners) and pass the
arguments the proxy passes (``timeout``, no retries); both sides keep their connections alive (the
client's ``httpx.Client`` to the server, litellm's cached client and the proxy's pooled one to the
provider). ``--billing`` runs the server with the billing plugin, so that every call also reserves
in the plan's AI tokens (the free plan meters them).

    python bench/ai_proxy.py [--requests 200] [--billing]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from served import operator_headers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.fake_openai import fake_openai

PROVIDER_KEY = "sk-bench-" + uuid.uuid4().hex
MESSAGES = [{"role": "user", "content": "Say hello"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_ms(pid: int | None) -> float:
    """User + system CPU time (ms) process ``pid`` has used so far (0 where /proc is missing)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _in_blocks(
    calls: list[Callable[[], object]], n: int, rounds: int = 5, server: int | None = None
) -> tuple[list[list[float]], list[float]]:
    """``n`` timings (ms) of each call, taken in ``rounds`` alternating blocks: drift on a shared
    machine hits all paths alike, while each path still pays for what its previous request left
    running (the proxy's settlement after the answer). Also the server process's CPU time per
    call of each path (ms)."""
    samples: list[list[float]] = [[] for _ in calls]
    cpu = [0.0 for _ in calls]
    per_block = max(1, n // rounds)
    for _ in range(rounds):
        for index, (call, timings) in enumerate(zip(calls, samples, strict=True)):
            used = _cpu_ms(server)
            for _ in range(per_block):
                start = time.perf_counter()
                call()
                timings.append((time.perf_counter() - start) * 1000)
            cpu[index] += _cpu_ms(server) - used
    return samples, [total / max(1, len(timings)) for total, timings in zip(cpu, samples, strict=True)]


def _p(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--billing", action="store_true", help="serve with the billing plugin (plan AI tokens)")
    arguments = parser.parse_args()
    n = arguments.requests
    from kernel.ai.pricing import litellm as load_litellm

    litellm = load_litellm()  # as the server loads it: without litellm's per-call INFO logging
    timeout = int(os.environ.get("BUSINESSOS_AI_TIMEOUT_SECONDS", "60"))  # the server's default
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-ai-"))
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_PLUGINS": "billing" if arguments.billing else "",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_LOG_LEVEL": "WARNING",
        "BUSINESSOS_AI_ALLOW_PRIVATE_BASES": "1",
    }
    with fake_openai({PROVIDER_KEY}) as provider:
        provider.chunk_delay = 0.0
        server = subprocess.Popen(
            [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port), "--no-jobs"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if client.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("serve did not become healthy")
                    time.sleep(0.2)

                operator: dict[str, str] = {}
                if arguments.billing:
                    # The plan's rate limit now applies (Free: 60 a minute per principal): the
                    # bench's tenants go on Enterprise, through an operator as an installer would.
                    operator = operator_headers(client, env)

                def tenant_key(budget: bool) -> dict[str, str]:
                    """A new tenant with the provider key and an API key (and a large budget)."""
                    slug = f"bench-{uuid.uuid4().hex[:8]}"
                    owner = {"email": f"owner@{slug}.example", "password": f"pw-{uuid.uuid4().hex}"}
                    made = client.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner}).json()
                    auth = {"Authorization": f"Bearer {made['access_token']}"}
                    if operator:
                        client.put(
                            f"/api/admin/tenants/{slug}/plan", json={"plan": "enterprise"}, headers=operator
                        ).raise_for_status()
                    client.put(
                        "/api/ai/keys/openai", json={"api_key": PROVIDER_KEY, "api_base": provider.base}, headers=auth
                    ).raise_for_status()
                    if budget:
                        client.put(
                            "/api/ai/budgets", json={"monthly_cost_limit": 1000}, headers=auth
                        ).raise_for_status()
                    made_key = client.post("/api/api-keys", json={"name": "bench", "role": "member"}, headers=auth)
                    return {"Authorization": f"Bearer {made_key.json()['key']}"}

                plain, budgeted = tenant_key(budget=False), tenant_key(budget=True)
                body = {"model": "openai/gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}
                call = {
                    "model": "openai/gpt-4o-mini", "messages": MESSAGES, "api_key": PROVIDER_KEY,
                    "api_base": provider.base, "max_tokens": 16,
                    # What the proxy passes too (kernel.ai.proxy.AIProxy._arguments).
                    "timeout": timeout, "num_retries": 0, "max_retries": 0,
                }
                loop = asyncio.new_event_loop()

                def direct() -> None:
                    loop.run_until_complete(litellm.acompletion(**call))

                def direct_sync() -> None:
                    litellm.completion(**call)

                def proxied() -> None:
                    client.post("/v1/chat/completions", json=body, headers=plain).raise_for_status()

                def proxied_with_budget() -> None:
                    client.post("/v1/chat/completions", json=body, headers=budgeted).raise_for_status()

                paths = [direct, direct_sync, proxied, proxied_with_budget]
                _in_blocks(paths, 20, rounds=1)  # warm-up
                (direct_ms, sync_ms, proxy_ms, budget_ms), cpu = _in_blocks(paths, n, server=server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    base50, base99 = _p(direct_ms)
    header = f"{'chat completion (ms), one client, sequential':<46} {'p50':>8} {'p99':>8}"
    print(f"{header} {'added p50':>10} {'added p99':>10} {'server CPU/call':>16}")
    for name, samples, used in (
        ("direct litellm.acompletion (baseline)", direct_ms, None),
        ("direct litellm.completion (synchronous)", sync_ms, None),
        ("proxy /v1/chat/completions", proxy_ms, cpu[2]),
        ("proxy /v1/chat/completions with a budget", budget_ms, cpu[3]),
    ):
        p50, p99 = _p(samples)
        shown = "" if used is None else f"{used:16.2f}"
        print(f"{name:<46} {p50:8.2f} {p99:8.2f} {p50 - base50:10.2f} {p99 - base99:10.2f} {shown}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
