"""A local OpenAI-compatible server for the AI tests: real HTTP on 127.0.0.1, run by uvicorn in a
thread, speaking ``/v1/chat/completions`` (JSON, and server-sent events with a final usage chunk
when ``stream_options.include_usage``), ``/v1/embeddings`` and OpenAI-style errors.

Behaviour by model name: ``rate-limited`` -> 429, ``broken`` -> 500, ``bad-request`` -> 400;
any other model answers. A key not in ``valid_keys`` -> 401. Every key received is recorded.
``failures[model] = n`` makes the next ``n`` chat calls for that model answer 503 (then it answers).
``script`` scripts the next answers (tool calls, JSON). Embedding models named ``bow-<n>``
answer a hashed bag of words of ``n`` dimensions (unit length), so that texts sharing words are
near each other; other embedding models answer four numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, post
from litestar.response import Stream

__all__ = ["FakeOpenAI", "bag_of_words", "fake_openai"]

REPLY = ["Hello", " from", " the", " local", " model", "."]
PROMPT_TOKENS = 11


@dataclass
class FakeOpenAI:
    url: str = ""
    valid_keys: set[str] = field(default_factory=set)
    received_keys: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0
    chunk_delay: float = 0.005
    failures: dict[str, int] = field(default_factory=dict)
    script: list[dict[str, Any]] = field(default_factory=list)
    """Assistant messages the next non-streamed chat calls answer with, in order (a message with
    ``tool_calls`` finishes with ``tool_calls``); once empty the usual reply comes back."""

    @property
    def base(self) -> str:
        return self.url + "/v1"


def _error(status: int, message: str, kind: str, code: str | None) -> Response[bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def _app(state: FakeOpenAI) -> Litestar:
    def check(request: Request[Any, Any, Any]) -> Response[bytes] | None:
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        state.received_keys.append(key)
        if key not in state.valid_keys:
            shown = key[:3] + "*" * 4 + key[-4:]
            return _error(401, f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key")
        return None

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        body = msgspec.json.decode(await request.body())
        state.requests.append(body)
        refused = check(request)
        if refused is not None:
            return refused
        model = body["model"]
        if model == "rate-limited":
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        if model == "broken":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        if model == "bad-request":
            return _error(400, "This model's maximum context length is 8 tokens.", "invalid_request_error", None)
        if state.failures.get(model, 0) > 0:
            state.failures[model] -= 1
            return _error(503, "The engine is currently overloaded.", "server_error", None)
        if state.delay:
            await asyncio.sleep(state.delay)
        words = REPLY[: max(1, min(len(REPLY), int(body.get("max_tokens") or len(REPLY))))]
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(words),
            "total_tokens": PROMPT_TOKENS + len(words),
            "prompt_tokens_details": {"cached_tokens": 3},
        }
        created = int(time.time())
        if not body.get("stream") and state.script:
            scripted = state.script.pop(0)
            finish = "tool_calls" if scripted.get("tool_calls") else "stop"
            answer = {
                "id": "chatcmpl-local", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", **scripted}, "finish_reason": finish}],
                "usage": usage,
            }
            return Response(msgspec.json.encode(answer), media_type="application/json")
        if not body.get("stream"):
            answer = {
                "id": "chatcmpl-local",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
            return Response(msgspec.json.encode(answer), media_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncIterator[bytes]:
            base = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": created, "model": model}
            for i, word in enumerate(words):
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield b"data: " + msgspec.json.encode({**base, "choices": [choice]}) + b"\n\n"
                await asyncio.sleep(state.chunk_delay or 0.005)
            last = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield b"data: " + msgspec.json.encode({**base, "choices": [last]}) + b"\n\n"
            if include_usage:
                yield b"data: " + msgspec.json.encode({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return Stream(chunks(), media_type="text/event-stream")

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = msgspec.json.decode(await request.body())
        state.requests.append(body)
        refused = check(request)
        if refused is not None:
            return refused
        if body["model"] == "broken":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        bow = re.fullmatch(r"bow-(\d+)", body["model"])
        data = [
            {
                "object": "embedding", "index": i,
                "embedding": (
                    bag_of_words(str(text), int(bow.group(1))) if bow
                    else [float(len(str(text)) % 7), 0.5, 0.25, 1.0]
                ),
            }
            for i, text in enumerate(inputs)
        ]
        # Bag-of-words models bill a token per byte (the proxy's own upper bound), others one per input.
        tokens = sum(len(str(text).encode()) for text in inputs) if bow else len(inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(msgspec.json.encode(answer), media_type="application/json")

    return Litestar([chat, embeddings])


def bag_of_words(text: str, dimensions: int) -> list[float]:
    """A unit vector with one signed count per hashed lower-case word: cosine similarity grows
    with the words two texts share."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector] if any(vector) else [1.0] + [0.0] * (dimensions - 1)


@contextmanager
def fake_openai(valid_keys: set[str]) -> Iterator[FakeOpenAI]:
    """Run the local provider on a free port for the ``with`` block."""
    state = FakeOpenAI(valid_keys=set(valid_keys))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the local OpenAI server did not start")
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)
