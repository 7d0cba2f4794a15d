"""Schemathesis over the whole OpenAPI document, against a real API process.

The run is the property-based test of issue 10: Hypothesis, driven by the document the server
serves, generates valid and invalid requests for every operation (examples, coverage, fuzzing and
stateful phases) and every check schemathesis has runs on each answer, ``not_a_server_error``
among them: no request may answer 5xx. A fixed seed and a small number of examples per operation
keep it reproducible and bounded.

The tenant owner's access token authenticates the run (examples, coverage and fuzzing phases) and
a stateful run: scenarios of calls chained along the document's links (what a POST created is read,
changed and deleted through its id; ``kernel/http/openapi.py``), which must follow some links. A
third, shorter run uses an API key in ``X-API-Key``. The AI operations that call out reach the
suite's local OpenAI-compatible server, registered as the tenant's key.

Run alone: ``python -m pytest -q -s tests/test_openapi_fuzz.py`` (``-s`` shows the case counts).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import settings_for
from tests.fake_openai import fake_openai
from tests.servers import api_servers

PLUGINS = "crm,projects,webhooks"
SEED = 20261130
PROVIDER_KEY = "sk-fuzz-" + "0" * 24
STATEFUL_STEPS = 8
STATEFUL_SCENARIOS = 60  # about two minutes on a loaded two-core machine

# What schemathesis may call "accepted" besides 2xx: valid-looking input the server refuses for a
# reason no schema states (an id of nothing in this tenant, a name already taken, a version that
# is not the current one, a reference to another record that does not exist), a budget the run
# itself set to zero (402), and the log-in throttle that wrong passwords trip (429).
POSITIVE_EXPECTED = ["2xx", "401", "402", "403", "404", "409", "412", "422", "428", "429"]

CONFIG = f"""
[checks]
# Timing is not what this test is about: a loaded CI machine must not fail it.
max_response_time = 120

[checks.positive_data_acceptance]
expected-statuses = {json.dumps(POSITIVE_EXPECTED)}

# The stateful phase follows the document's links (POST /x -> /x/{{id}}, see kernel/http/openapi.py)
# through scenarios of at most this many calls; --max-examples bounds the number of scenarios.
# Only the document's own links: schemathesis' inferred ones (hundreds) would dilute the bounded run.
[phases.stateful]
max-steps = {STATEFUL_STEPS}

[phases.stateful.inference]
algorithms = []
"""


@pytest.fixture(scope="module")
async def fuzz_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(database_url, servers[1], tmp_path_factory.mktemp("fuzz"), BUSINESSOS_PLUGINS=PLUGINS)
    await migrate.upgrade(result, database_url, load_app_plugins(result.plugins_allowlist).migration_folders())
    return result


@pytest.fixture(scope="module")
async def api_url(fuzz_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    env = {
        "BUSINESSOS_PLUGINS": PLUGINS,
        "BUSINESSOS_AI_ALLOW_PRIVATE_BASES": "1",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    async with api_servers(fuzz_settings, tmp_path_factory.mktemp("fuzz-api"), env=env) as urls:
        yield urls[0]


async def _owner(http: httpx.AsyncClient, provider_base: str) -> dict[str, str]:
    """A tenant with every module and an AI key on the local provider; its owner's credentials."""
    slug = f"fuzz-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"owner-{slug}@example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "Owner"}
    created = await http.post("/api/tenants", json={"name": "Fuzz", "slug": slug, "owner": owner})
    assert created.status_code == 201, created.text
    bearer = {"Authorization": f"Bearer {created.json()['access_token']}"}
    for module in PLUGINS.split(","):
        enabled = await http.post(f"/api/modules/{module}/enable", headers=bearer)
        assert enabled.status_code == 200, enabled.text
    key = await http.put(
        "/api/ai/keys/openai", json={"api_key": PROVIDER_KEY, "api_base": provider_base}, headers=bearer
    )
    assert key.status_code == 200, key.text
    api_key = await http.post("/api/api-keys", json={"name": "fuzz", "role": "admin"}, headers=bearer)
    assert api_key.status_code == 201, api_key.text
    return {"token": created.json()["access_token"], "api_key": api_key.json()["key"], "slug": slug}


def _schemathesis(
    url: str, header: str, workdir: Path, *, max_examples: int, phases: str, extra: list[str]
) -> dict[str, Any]:
    """Run the schemathesis CLI; its exit code, output, and its case and failure counts."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    report = workdir / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{url}/schema/openapi.json",
        "--checks", "all",
        "--phases", phases,
        "--seed", str(SEED),
        "--max-examples", str(max_examples),
        # One worker: Hypothesis describes its lambdas with ast.parse, which races in CPython 3.11 threads.
        "--workers", "1",
        # The first AI call of the process imports litellm: seconds, many on a loaded machine.
        "--request-timeout", "180",
        "--header", header,
        "--no-shrink",
        "--continue-on-failure",
        "--report", "json", "--report-json-path", str(report),
        *extra,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir, check=False)
    (workdir / "schemathesis.txt").write_text(done.stdout + done.stderr)
    return {
        "returncode": done.returncode,
        "output": done.stdout + done.stderr,
        "seconds": time.monotonic() - started,
        "report": json.loads(report.read_text()) if report.exists() else {},
    }


async def test_schemathesis_finds_no_failure_over_the_whole_document(api_url: str, tmp_path: Path) -> None:
    with fake_openai({PROVIDER_KEY}) as provider:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            owner = await _owner(http, provider.base)
        runs = {
            "owner token": (f"Authorization: Bearer {owner['token']}", 6, "examples,coverage,fuzzing", []),
            # Chains of calls along the links: what one call created, the next reads, changes, deletes.
            "stateful": (f"Authorization: Bearer {owner['token']}", STATEFUL_SCENARIOS, "stateful", []),
            # ignored_auth is left to the run above: it sends a made-up bearer token beside this
            # valid X-API-Key, and the key, which takes precedence, rightly authenticates.
            "API key": (f"X-API-Key: {owner['api_key']}", 2, "examples,fuzzing", ["--exclude-checks", "ignored_auth"]),
        }
        for name, (header, examples, phases, extra) in runs.items():
            workdir = tmp_path / name.replace(" ", "-")
            workdir.mkdir()
            result = await asyncio.to_thread(
                _schemathesis, api_url, header, workdir, max_examples=examples, phases=phases, extra=extra
            )
            cases = result["report"].get("test_cases", {})
            print(
                f"\nschemathesis {result['report'].get('schemathesis_version')} ({name}): "
                f"{cases.get('generated')} cases, {cases.get('unique_failures')} failures, "
                f"{result['seconds']:.0f} s; output in {workdir / 'schemathesis.txt'}"
            )
            output = result["output"]
            assert result["returncode"] == 0, output[max(output.find("== FAILURES =="), output.find("== ERRORS ==")) :]
            if name == "stateful":
                covered = re.search(r"API Links:\s+(\d+) covered / (\d+) selected / (\d+) total", output)
                assert covered is not None, output[-3000:]
                print(f"stateful: {covered.group(0)}")
                assert int(covered.group(1)) > 0, covered.group(0)  # the links were followed
