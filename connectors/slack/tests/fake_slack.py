"""A local server that speaks the part of Slack's Web API the connector uses, with Slack's answer
shapes: ``{"ok": true, ...}``, or HTTP 200 with ``{"ok": false, "error": "invalid_auth"}``."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GOOD_TOKEN = "xoxb-good-token-for-tests"
"""The one bot token the fake workspace accepts."""


@dataclass
class FakeSlack:
    """A workspace: channels (more than one ``conversations.list`` page), users, posted messages."""

    channels: list[dict[str, Any]] = field(
        default_factory=lambda: (
            [{"id": f"C{i:07d}", "name": f"room-{i}", "is_archived": False} for i in range(450)]
            + [{"id": "CGENERAL1", "name": "general", "is_archived": False}]
        )
    )
    users: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "ada@example.com": {
                "id": "U0ADA",
                "name": "ada",
                "real_name": "Ada Lovelace",
                "profile": {"email": "ada@example.com", "real_name": "Ada Lovelace"},
            },
        }
    )
    posted: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    url: str = ""
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {GOOD_TOKEN}"

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if "Authorization" not in request.headers:
            return web.json_response({"ok": False, "error": "not_authed"})
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        handler = getattr(self, method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        answer: dict[str, Any] = handler(args)
        return web.json_response(answer)

    def auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "bot",
            "team_id": "T0FAKE",
            "user_id": "U0BOT",
            "bot_id": "B0BOT",
        }

    def conversations_list(self, args: dict[str, Any]) -> dict[str, Any]:
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 100)
        page = self.channels[start : start + limit]
        following = start + limit if start + limit < len(self.channels) else None
        return {"ok": True, "channels": page, "response_metadata": {"next_cursor": str(following or "")}}

    def chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in {c["id"] for c in self.channels}:
            return {"ok": False, "error": "channel_not_found"}
        ts = f"1700000000.{next(self._ts):06d}"
        message = {"type": "message", "text": args.get("text", ""), "user": "U0BOT", "ts": ts}
        if args.get("blocks"):
            message["blocks"] = args["blocks"]
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        self.posted.append({"channel": channel, **args})
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def users_lookupByEmail(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("email", "")).lower())
        if user is None:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": user}


@contextmanager
def running_slack() -> Iterator[FakeSlack]:
    """The fake Web API on a free port of 127.0.0.1, in a thread with its own event loop (the
    app under test may call it while the test's loop waits); ``url`` is its ``.../api/`` base."""
    slack = FakeSlack()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/api/{method}", slack.handle)
    runner = web.AppRunner(app, access_log=None)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return port

    thread = threading.Thread(target=loop.run_forever, name="fake-slack", daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    slack.url = f"http://127.0.0.1:{port}/api/"
    try:
        yield slack
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
